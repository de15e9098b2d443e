"""Global memory as the command set sees it: tensors in SRAM or LPDDR5, and tile streams over them.

A tensor is addressed through its 2-D view [rows, cols] (rows = product of the leading dims), row-major with a
row pitch. A tile stream is a sequence of [tile_rows, tile_cols] tiles whose origins follow an affine loop nest;
tiles that run past the tensor's edge are clipped on the memory side (and zero-padded in the local store).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
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


# loops of up to this many tiles keep their offsets (`_sample_offsets`, at most 256 KiB each)
KEPT_OFFSETS_MAX_TILES = 16384


@dataclass(frozen=True, slots=True)
class TileLoop:
    """Tile origins (row, col) in elements: ``base + sum(i_d * step_d)`` over a nest of (count, row_step,
    col_step) loops, outermost first."""

    base: tuple[int, int]
    dims: tuple[tuple[int, int, int], ...]
    n: int = field(init=False, repr=False, compare=False)  # tiles: the product of the loop counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", math.prod(d[0] for d in self.dims))

    def origins(self) -> np.ndarray:
        """All origins as an int64 array [n, 2], in loop order (a new array; a short nest's offsets are kept)."""
        if self.n <= KEPT_OFFSETS_MAX_TILES:
            offsets = _sample_offsets(self.dims, self.n)[0]
        else:
            offsets = _loop_offsets(self.dims, self.n)[0]
        return offsets + np.array(self.base, dtype=np.int64)

    def sample(self, max_tiles: int) -> tuple[np.ndarray, float]:
        """Up to `max_tiles` origins spread evenly over the loop, and the factor that scales them to all."""
        offsets, scale = _sample_offsets(self.dims, max_tiles)
        return offsets + np.array(self.base, dtype=np.int64), scale


def _loop_offsets(dims: tuple[tuple[int, int, int], ...], max_tiles: int) -> tuple[np.ndarray, float]:
    """`TileLoop.sample` of a loop based at (0, 0)."""
    n = math.prod(d[0] for d in dims) if dims else 1
    if n <= max_tiles:
        rows = np.zeros(1, dtype=np.int64)
        cols = np.zeros(1, dtype=np.int64)
        for count, dr, dc in dims:
            i = np.arange(count, dtype=np.int64)
            rows = (rows[:, None] + i[None, :] * dr).reshape(-1)
            cols = (cols[:, None] + i[None, :] * dc).reshape(-1)
        out, scale = np.stack([rows, cols], axis=1), 1.0
    else:
        rem = np.linspace(0, n - 1, max_tiles).round().astype(np.int64)
        out = np.zeros((max_tiles, 2), dtype=np.int64)
        for count, dr, dc in reversed(dims):
            i = rem % count
            rem //= count
            out[:, 0] += i * dr
            out[:, 1] += i * dc
        scale = n / max_tiles
    return out, scale


@functools.lru_cache(maxsize=1024)
def _sample_offsets(dims: tuple[tuple[int, int, int], ...], max_tiles: int) -> tuple[np.ndarray, float]:
    """`_loop_offsets`, kept: a sample depends only on the loop nest, which many streams share (the same
    command on several PEs, at other bases). Read-only, as it is shared."""
    out, scale = _loop_offsets(dims, max_tiles)
    out.setflags(write=False)
    return out, scale


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
    return _clip(origins[:, 0], origins[:, 1], tile[0], tile[1], decl.rows, decl.cols)


def _clip(r0, c0, tile_rows, tile_cols, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of tiles at (r0, c0) that lie inside a [rows, cols] tensor (arrays or numbers)."""
    nr = np.clip(np.minimum(r0 + tile_rows, rows) - r0, 0, None)
    nc = np.clip(np.minimum(c0 + tile_cols, cols) - c0, 0, None)
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
    tiles = tile_runs([(decl, stream)], max_sample_tiles)
    starts, lengths, _stream_of = tiles.run_list()
    scale = float(tiles.scale[0])
    return RunStats(
        n_runs=float(tiles.runs.sum()) * scale,
        bytes=float(lengths.sum()) * scale,
        sample_starts=starts,
        sample_lengths=lengths,
        sample_scale=scale,
    )


@dataclass(frozen=True, slots=True)
class TileRuns:
    """The sampled tiles of several streams as contiguous runs: a tile's runs start at `first` and follow one
    another `pitch` bytes apart, `runs` of `run_bytes` each (one run for a tile of whole packed rows, else one
    per row). Stream i owns the tiles `tile_at[i]:tile_at[i + 1]`, which stand for all its tiles scaled by
    `scale[i]`. Per tile: int64 arrays; per stream: `tile_at` (and its end), `scale` (float64)."""

    first: np.ndarray
    runs: np.ndarray
    run_bytes: np.ndarray
    pitch: np.ndarray
    tile_at: np.ndarray
    scale: np.ndarray

    def per_stream(self, per_tile: np.ndarray) -> np.ndarray:
        """Sums of an integer quantity of every tile, per stream (exact)."""
        total = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(per_tile, dtype=np.int64)])
        return total[self.tile_at[1:]] - total[self.tile_at[:-1]]

    def stream_of(self) -> np.ndarray:
        """The stream of every tile."""
        return np.repeat(np.arange(self.scale.size), np.diff(self.tile_at))

    def run_list(self, tiles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every run of every tile (or of the tiles at indices `tiles`), in order: (start address, length in
        bytes, stream index)."""
        at = np.arange(self.runs.size) if tiles is None else tiles
        counts = self.runs[at]
        tile_of = np.repeat(at, counts)
        # a tile's k-th run starts k pitches after its first
        k = np.arange(tile_of.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = self.first[tile_of] + k * self.pitch[tile_of]
        return starts, self.run_bytes[tile_of], self.stream_of()[tile_of]


def tile_runs(pairs: list[tuple[TensorDecl, TileStream]], max_sample_tiles: int = 256) -> TileRuns:
    """The runs of up to `max_sample_tiles` tiles of each stream (spread over it), all streams in one pass."""
    offsets, scales, params = [], [], []
    for decl, stream in pairs:
        o, scale = _sample_offsets(stream.loop.dims, max_sample_tiles)
        offsets.append(o)
        scales.append(scale)
        item = decl.dtype.itemsize
        packed = decl.pitch == decl.cols * item
        params.append(
            (*stream.loop.base, decl.address, decl.pitch, item, decl.rows, decl.cols, *stream.tile, packed)
        )
    counts = [len(o) for o in offsets]
    per_tile = np.repeat(np.array(params, dtype=np.int64).reshape(-1, 10), counts, axis=0).T
    r_base, c_base, address, pitch, item, rows, cols, tile_rows, tile_cols, packed = per_tile
    origins = np.concatenate(offsets) if offsets else np.zeros((0, 2), dtype=np.int64)
    r0, c0 = origins[:, 0] + r_base, origins[:, 1] + c_base
    nr, nc = _clip(r0, c0, tile_rows, tile_cols, rows, cols)
    full_rows = (nc == cols) & (packed == 1)
    return TileRuns(
        first=address + r0 * pitch + c0 * item,
        runs=np.where(full_rows, (nr > 0).astype(np.int64), nr),
        run_bytes=np.where(full_rows, nr * nc * item, nc * item),
        pitch=pitch,
        tile_at=np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts, dtype=np.int64)]),
        scale=np.array(scales, dtype=np.float64),
    )
