"""Lazily materialised tile sequences: what circular buffers hold in functional mode.

A DMA of thousands of tiles does not copy them up front: the CB holds a view (tensor + origins) and a consumer
materialises the tiles it needs, in chunks. That keeps functional runs of large GEMMs within memory.
"""

from __future__ import annotations

from collections.abc import Hashable
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
    # what determines `origins` (the stream's `TileLoop`): where given, `TileRun.bands` keeps its band plans
    layout: Hashable | None = None
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
        n = o.shape[0]
        r_lo, c_lo = int(o[:, 0].min()), int(o[:, 1].min())
        r_hi, c_hi = int(o[:, 0].max()) + tr, int(o[:, 1].max()) + tc
        if (r_hi - r_lo) * (c_hi - c_lo) <= 4 * n * tr * tc:
            # tiles past the edge, over a region not much larger than they are: windows of a zero-padded copy
            padded = np.zeros((r_hi - r_lo, c_hi - c_lo), dtype=self.array.dtype)
            part = self.array[r_lo : min(r_hi, nrow), c_lo : min(c_hi, ncol)]
            padded[: part.shape[0], : part.shape[1]] = part
            windows = np.lib.stride_tricks.sliding_window_view(padded, (tr, tc))
            return windows[o[:, 0] - r_lo, o[:, 1] - c_lo]
        rows = o[:, 0:1] + np.arange(tr)[None, :]
        cols = o[:, 1:2] + np.arange(tc)[None, :]
        rmask = rows < nrow
        cmask = cols < ncol
        out = self.array[np.minimum(rows, nrow - 1)[:, :, None], np.minimum(cols, ncol - 1)[:, None, :]]
        mask = rmask[:, :, None] & cmask[:, None, :]
        if not mask.all():
            out = np.where(mask, out, np.zeros((), dtype=out.dtype))
        return out

    def band_origins(self, start: int, groups: int, steps: int) -> np.ndarray | None:
        """Tiles [start, start + groups * steps) as `groups` row bands, when they are: each group's `steps` tiles
        side by side along a row of the array (columns advancing by the tile width), all inside it. Returns the
        bands' origins [groups, 2], None when the tiles are laid out otherwise."""
        tr, tc = self.tile
        nrow, ncol = self.array.shape
        o = self.origins[start : start + groups * steps].reshape(groups, steps, 2)
        first = o[:, 0]
        if not (
            (o[:, :, 0] == first[:, None, 0]).all()
            and (o[:, :, 1] == first[:, None, 1] + np.arange(steps, dtype=np.int64) * tc).all()
        ):
            return None
        if (first < 0).any() or (first[:, 0] + tr > nrow).any() or (first[:, 1] + steps * tc > ncol).any():
            return None
        return first

    def bands(self, origins: np.ndarray, width: int) -> np.ndarray:
        """The [tile rows, `width`] regions of the array at `origins` (inside it), in its dtype: [n, tr, width].
        Bands stacked one under the other are one slice of the array (a view)."""
        tr = self.tile[0]
        r, c = origins[:, 0], origins[:, 1]
        n = r.size
        r0, c0 = int(r[0]), int(c[0])
        if (c == c0).all() and (r == r0 + tr * np.arange(n, dtype=np.int64)).all():
            return self.array[r0 : r0 + n * tr, c0 : c0 + width].reshape(n, tr, width)
        return np.lib.stride_tricks.sliding_window_view(self.array, (tr, width))[r, c]


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

    def bands(self, start: int, groups: int, steps: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Tiles [start, start + groups * steps) as `groups` row bands of one array, each distinct band read once:
        (the distinct bands [u, tile rows, steps * tile cols] in the array's dtype, each group's band [groups]);
        None unless those tiles lie in one piece of a `TensorTiles` and form bands (`TensorTiles.band_origins`).
        Groups at the same origins read the same data (the array is read now, as `get` would read it)."""
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        stop = start + groups * steps
        if not 0 <= i < len(self.pieces) or stop > self._starts[i + 1] or groups <= 0:
            return None
        p = self.pieces[i]
        if not isinstance(p.source, TensorTiles):
            return None
        src = p.source
        at = p.offset + start - int(self._starts[i])
        key = None if src.layout is None else (src.layout, src.tile, src.array.shape, at, groups, steps)
        plan = _BAND_PLANS.get(key, False) if key is not None else False
        if plan is False:
            plan = _band_plan(src, at, groups, steps)
            if key is not None:
                if len(_BAND_PLANS) >= BAND_PLANS_KEPT:
                    _BAND_PLANS.clear()
                _BAND_PLANS[key] = plan
        if plan is None:
            return None
        origins, which = plan
        return src.bands(origins, steps * src.tile[1]), which

    def take(self, index: np.ndarray) -> np.ndarray:
        """Tiles at arbitrary positions (resident operands)."""
        index = np.asarray(index)
        lo, hi = int(index.min()), int(index.max()) + 1
        block = self.get(lo, hi)
        return block[index - lo]


# `TileRun.bands`' plans, by what they follow from alone (the tiles' layout, the array's shape, the range): a
# compiled model's calls read the same streams, and working a plan out took ~70 us of every int8 product
BAND_PLANS_KEPT = 1 << 14
_BAND_PLANS: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}


def _band_plan(src: TensorTiles, at: int, groups: int, steps: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct bands' origins and each group's band among them (`TileRun.bands`), read-only; None when the
    tiles do not form bands."""
    origins = src.band_origins(at, groups, steps)
    if origins is None:
        return None
    key = origins[:, 0] * (src.array.shape[1] + 1) + origins[:, 1]
    if groups == 1 or (np.diff(key) > 0).all():  # distinct, in order: every band as it comes
        plan = (np.array(origins), np.arange(groups))
    else:
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        plan = (origins[first], inverse.reshape(-1))
    for a in plan:
        a.flags.writeable = False
    return plan
