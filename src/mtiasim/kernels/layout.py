"""Layout operators: batched transpose on the MLU, and concat by DMA.

Transpose ``[m, k, n] -> [m, n, k]``: each PE takes whole batches; core 0 DMAs [tk, tn] tiles in, the MLU
transposes them, core 1 DMAs the [tn, tk] tiles to their transposed place.

Concat of two ``[m, k, n]`` tensors along the last dimension into ``[m, k, 2n]``: pure data movement, each
tile read into the local store and written to its place in the output.
"""

from __future__ import annotations

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import DmaIn, DmaOut, Job, MluTranspose, PeProgram, TensorDecl, TileLoop, TileStream
from mtiasim.kernels.common import Region, cb_layout, split
from mtiasim.kernels.tiling import grid_loops, tile_shape

CB_IN, CB_OUT, CB_IN2 = 0, 1, 2
DEPTH = 4


def largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def transpose_job(
    chip: Chip, name: str, x: TensorDecl, out: TensorDecl, *, region: Region | None = None
) -> Job:
    region = region or Region.whole(chip)
    region.check(chip)
    if len(x.shape) != 3 or out.shape != (x.shape[0], x.shape[2], x.shape[1]) or out.dtype != x.dtype:
        raise UsageError(
            f"{name}: transpose maps [m, k, n] to [m, n, k] of the same dtype; got {x.shape} -> {out.shape}"
        )
    m, k, n = x.shape
    tk, tn = largest_divisor(k, 64), largest_divisor(n, 64)
    pes = {}
    pe_list = [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]
    for pe, (b0, b1) in zip(pe_list, split(m, len(pe_list), 1), strict=False):
        nb = b1 - b0
        if nb <= 0:
            continue
        tile_bytes = tk * tn * x.dtype.itemsize
        prog = PeProgram(
            pe, cb_layout(chip, pe, {CB_IN: DEPTH * tile_bytes, CB_OUT: DEPTH * tile_bytes}, name), ([], [])
        )
        dims_in = tuple(d for d in ((nb, k, 0), (k // tk, tk, 0), (n // tn, 0, tn)) if d[0] > 1)
        dims_out = tuple(d for d in ((nb, n, 0), (k // tk, 0, tk), (n // tn, tn, 0)) if d[0] > 1)
        s_in = TileStream(x.name, (tk, tn), TileLoop((b0 * k, 0), dims_in))
        s_out = TileStream(out.name, (tn, tk), TileLoop((b0 * n, 0), dims_out))
        prog.cores[0].append(DmaIn.one(CB_IN, s_in))
        prog.cores[1].append(MluTranspose(CB_IN, CB_OUT, s_in.n_tiles))
        prog.cores[1].append(DmaOut(CB_OUT, s_out))
        pes[pe] = prog
    return Job(name, "transpose", pes, work={"elements": float(m * k * n)})


def concat_job(
    chip: Chip, name: str, x: TensorDecl, y: TensorDecl, out: TensorDecl, *, region: Region | None = None
) -> Job:
    """``out[..., :n] = x``, ``out[..., n:] = y`` for x, y of the same shape [..., n]."""
    region = region or Region.whole(chip)
    region.check(chip)
    if (
        x.shape != y.shape
        or out.shape != (*x.shape[:-1], 2 * x.shape[-1])
        or not (x.dtype == y.dtype == out.dtype)
    ):
        raise UsageError(
            f"{name}: concat of {x.shape} and {y.shape} along the last dim cannot give {out.shape}"
        )
    rows, n = x.rows, x.cols
    tile = tile_shape(rows, n, x.dtype.itemsize)
    loops = grid_loops(rows, n, tile, region.size)
    pe_list = [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]
    tile_bytes = tile[0] * tile[1] * x.dtype.itemsize
    pes = {}
    for pe, lp in zip(pe_list, loops, strict=False):
        prog = PeProgram(
            pe, cb_layout(chip, pe, {CB_IN: DEPTH * tile_bytes, CB_IN2: DEPTH * tile_bytes}, name), ([], [])
        )
        shifted = TileLoop((lp.base[0], lp.base[1] + n), lp.dims)
        prog.cores[0].append(DmaIn.one(CB_IN, TileStream(x.name, tile, lp)))
        prog.cores[0].append(DmaIn.one(CB_IN2, TileStream(y.name, tile, lp)))
        prog.cores[1].append(DmaOut(CB_IN, TileStream(out.name, tile, lp)))
        prog.cores[1].append(DmaOut(CB_IN2, TileStream(out.name, tile, shifted)))
        pes[pe] = prog
    return Job(name, "concat", pes, work={"elements": float(out.rows * out.cols)})
