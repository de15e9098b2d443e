"""Global memory as the command set sees it: tensors in SRAM or LPDDR5, and tile streams over them.

A tensor is addressed through its 2-D view [rows, cols] (rows = product of the leading dims), row-major with a
row pitch. A tile stream is a sequence of [tile_rows, tile_cols] tiles whose origins follow an affine loop nest;
tiles that run past the tensor's edge are clipped on the memory side (and zero-padded in the local store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from mtiasim.dtypes import DType


class Level(StrEnum):
    """A global memory level. LPDDR5 tensors may be reached through the on-chip SRAM in cache mode."""

    SRAM = "sram"
    DRAM = "dram"


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """A tensor resident in global memory at a byte address of its level.

    `base` names the buffer an alias views (see `MemoryPlan.alias`); None for a buffer of its own.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    level: Level
    address: int
    cached: bool = False
    row_pitch_bytes: int | None = None
    base: str | None = None

    @property
    def root(self) -> str:
        """The buffer holding the bytes: `base` for an alias, else the tensor itself."""
        return self.base if self.base is not None else self.name

    @property
    def contiguous(self) -> bool:
        return self.pitch == self.cols * self.dtype.itemsize

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def pitch(self) -> int:
        return self.row_pitch_bytes if self.row_pitch_bytes is not None else self.cols * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.rows * self.pitch

    @property
    def end(self) -> int:
        return self.address + self.nbytes


@dataclass(frozen=True, slots=True)
class TileLoop:
    """Tile origins (row, col) in elements: ``base + sum(i_d * step_d)`` over a nest of (count, row_step,
    col_step) loops, outermost first."""

    base: tuple[int, int]
    dims: tuple[tuple[int, int, int], ...]

    @property
    def n(self) -> int:
        return math.prod(d[0] for d in self.dims) if self.dims else 1

    def origins(self) -> np.ndarray:
        """All origins as an int64 array [n, 2], in loop order."""
        rows = np.array([self.base[0]], dtype=np.int64)
        cols = np.array([self.base[1]], dtype=np.int64)
        for count, dr, dc in self.dims:
            i = np.arange(count, dtype=np.int64)
            rows = (rows[:, None] + i[None, :] * dr).reshape(-1)
            cols = (cols[:, None] + i[None, :] * dc).reshape(-1)
        return np.stack([rows, cols], axis=1)

    def sample(self, max_tiles: int) -> tuple[np.ndarray, float]:
        """Up to `max_tiles` origins spread evenly over the loop, and the factor that scales them to all."""
        n = self.n
        if n <= max_tiles:
            return self.origins(), 1.0
        pick = np.linspace(0, n - 1, max_tiles).round().astype(np.int64)
        out = np.empty((max_tiles, 2), dtype=np.int64)
        rem = pick.copy()
        rows = np.full(max_tiles, self.base[0], dtype=np.int64)
        cols = np.full(max_tiles, self.base[1], dtype=np.int64)
        for count, dr, dc in reversed(self.dims):
            i = rem % count
            rem //= count
            rows += i * dr
            cols += i * dc
        out[:, 0], out[:, 1] = rows, cols
        return out, n / max_tiles


def loop(base: tuple[int, int], *dims: tuple[int, int, int]) -> TileLoop:
    """Shorthand: ``loop((r0, c0), (count, row_step, col_step), ...)``, outermost first."""
    return TileLoop(base, tuple(d for d in dims if d[0] != 1) or ())


@dataclass(frozen=True, slots=True)
class TileStream:
    """A sequence of [tile_rows, tile_cols] tiles of one tensor."""

    tensor: str
    tile: tuple[int, int]
    loop: TileLoop

    @property
    def n_tiles(self) -> int:
        return self.loop.n


@dataclass(frozen=True, slots=True)
class RunStats:
    """Contiguous memory runs of a stream: how many, how long, and a sample of their addresses."""

    n_runs: float
    bytes: float
    sample_starts: np.ndarray
    sample_lengths: np.ndarray
    sample_scale: float

    @property
    def mean_run_bytes(self) -> float:
        return self.bytes / self.n_runs if self.n_runs else 0.0


def _clipped(decl: TensorDecl, tile: tuple[int, int], origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r0, c0 = origins[:, 0], origins[:, 1]
    nr = np.clip(np.minimum(r0 + tile[0], decl.rows) - r0, 0, None)
    nc = np.clip(np.minimum(c0 + tile[1], decl.cols) - c0, 0, None)
    return nr, nc


def _offsets(base: int, dims: list[tuple[int, int]]) -> np.ndarray:
    """``base + sum(i_d * step_d)`` over every index of a nest of (count, step) loops."""
    out = np.array([base], dtype=np.int64)
    for count, step in dims:
        out = (out[:, None] + np.arange(count, dtype=np.int64)[None, :] * step).reshape(-1)
    return out


def stream_bytes(decl: TensorDecl, stream: TileStream) -> int:
    """Bytes the stream moves on the memory side (clipped tiles)."""
    lp = stream.loop
    if stream.n_tiles > 65536:
        sample, scale = lp.sample(4096)
        nr, nc = _clipped(decl, stream.tile, sample)
        return int(round(float((nr * nc).sum()) * scale)) * decl.dtype.itemsize
    if all(dr == 0 or dc == 0 for _n, dr, dc in lp.dims):
        # every loop steps rows or columns only: the origins are all pairs of a row and a column origin,
        # so the clipped elements are (sum of clipped rows) x (sum of clipped columns)
        rows = _offsets(lp.base[0], [(n, dr) for n, dr, dc in lp.dims if dc == 0])
        cols = _offsets(lp.base[1], [(n, dc) for n, dr, dc in lp.dims if dc != 0])
        nr = np.clip(np.minimum(rows + stream.tile[0], decl.rows) - rows, 0, None)
        nc = np.clip(np.minimum(cols + stream.tile[1], decl.cols) - cols, 0, None)
        return int(nr.sum()) * int(nc.sum()) * decl.dtype.itemsize
    nr, nc = _clipped(decl, stream.tile, lp.origins())
    return int((nr * nc).sum()) * decl.dtype.itemsize


def stream_runs(decl: TensorDecl, stream: TileStream, max_sample_tiles: int = 256) -> RunStats:
    """Contiguous runs of the stream (a whole-row tile of a packed tensor is one run), with a sample of their
    start addresses and lengths for the slice/channel histograms."""
    sample, scale = stream.loop.sample(max_sample_tiles)
    nr, nc = _clipped(decl, stream.tile, sample)
    item = decl.dtype.itemsize
    packed = decl.pitch == decl.cols * item
    full_rows = (nc == decl.cols) & packed
    # runs per tile: one if the tile covers whole packed rows, else one per row
    runs_per_tile = np.where(full_rows, (nr > 0).astype(np.int64), nr)
    run_len = np.where(full_rows, nr * nc * item, nc * item)
    # every run of every sampled tile at once: a tile's k-th run starts k pitches after its origin
    counts = runs_per_tile.astype(np.int64)
    tile_of = np.repeat(np.arange(counts.size), counts)
    k = np.arange(tile_of.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    base = decl.address + sample[:, 0] * decl.pitch + sample[:, 1] * item
    st = base[tile_of] + k * decl.pitch
    ln = run_len.astype(np.int64)[tile_of]
    return RunStats(
        n_runs=float(runs_per_tile.sum()) * scale,
        bytes=float(ln.sum()) * scale,
        sample_starts=st,
        sample_lengths=ln,
        sample_scale=scale,
    )
