"""Lazily materialised tile sequences: what circular buffers hold in functional mode.

A DMA of thousands of tiles does not copy them up front: the CB holds a view (tensor + origins) and a consumer
materialises the tiles it needs, in chunks. That keeps functional runs of large GEMMs within memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class TileSource:
    """A sequence of same-shaped tiles that can be materialised by index range."""

    n: int
    shape: tuple[int, int]

    def get(self, start: int, stop: int) -> np.ndarray:  # [stop - start, *shape]
        raise NotImplementedError


@dataclass
class ArrayTiles(TileSource):
    data: np.ndarray  # [n, rows, cols]

    @property
    def n(self) -> int:  # type: ignore[override]
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    def get(self, start: int, stop: int) -> np.ndarray:
        return self.data[start:stop]


@dataclass
class TensorTiles(TileSource):
    """Tiles of a 2-D array at given origins; parts outside the array read as zero."""

    array: np.ndarray  # [rows, cols]
    origins: np.ndarray  # [n, 2]
    tile: tuple[int, int]
    _windows: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:  # type: ignore[override]
        return int(self.origins.shape[0])

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return self.tile

    def get(self, start: int, stop: int) -> np.ndarray:
        o = self.origins[start:stop]
        tr, tc = self.tile
        nrow, ncol = self.array.shape
        if tr <= nrow and tc <= ncol and (o[:, 0] + tr <= nrow).all() and (o[:, 1] + tc <= ncol).all():
            # every tile lies inside: index a window view by origin (n indices, not n x tr x tc)
            if self._windows is None:  # a view (no copy), made once per source
                self._windows = np.lib.stride_tricks.sliding_window_view(self.array, (tr, tc))
            return self._windows[o[:, 0], o[:, 1]]
        rows = o[:, 0:1] + np.arange(tr)[None, :]
        cols = o[:, 1:2] + np.arange(tc)[None, :]
        rmask = rows < nrow
        cmask = cols < ncol
        out = self.array[np.minimum(rows, nrow - 1)[:, :, None], np.minimum(cols, ncol - 1)[:, None, :]]
        mask = rmask[:, :, None] & cmask[:, None, :]
        if not mask.all():
            out = np.where(mask, out, np.zeros((), dtype=out.dtype))
        return out


@dataclass
class RowTiles(TileSource):
    """Rows of a 2-D table picked by index: tile i is ``table[rows[i]]`` as a [1, cols] tile."""

    table: np.ndarray
    rows: np.ndarray

    @property
    def n(self) -> int:  # type: ignore[override]
        return int(self.rows.shape[0])

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return (1, int(self.table.shape[1]))

    def get(self, start: int, stop: int) -> np.ndarray:
        return self.table[self.rows[start:stop]][:, None, :]


@dataclass
class Piece:
    source: TileSource
    offset: int
    count: int


class TileRun:
    """A concatenation of pieces of sources, indexed as one sequence of tiles."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.n = sum(p.count for p in pieces)
        self._starts = np.cumsum([0] + [p.count for p in pieces])

    def get(self, start: int, stop: int) -> np.ndarray:
        out = []
        for i, p in enumerate(self.pieces):
            lo, hi = int(self._starts[i]), int(self._starts[i + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out.append(p.source.get(p.offset + a - lo, p.offset + b - lo))
        if len(out) == 1:
            return out[0]
        return np.concatenate(out, axis=0)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Tiles at arbitrary positions (resident operands)."""
        index = np.asarray(index)
        lo, hi = int(index.min()), int(index.max()) + 1
        block = self.get(lo, hi)
        return block[index - lo]
