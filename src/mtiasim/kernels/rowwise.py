"""Row reductions on the SIMD Engine: sum, mean, max or min of every row of a [M, N] view into [M, 1].

Each PE owns whole bands of rows (a band: one tile row across all of x's columns, as `quantize_rows_job`
cuts them). Core 0 streams the band's tiles in through a circular buffer four tiles deep; core 1 has the SE
fold every band into one [rows, 1] tile (`SeRowReduce`: FP32 accumulation, lanes past the last column
masked) and DMAs it out. Softmax, layer norm, variance and the like are built from this and elementwise jobs
whose second operand is the [M, 1] result broadcast over columns (`elementwise_job`).
"""

from __future__ import annotations

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import DmaIn, DmaOut, Job, PeProgram, ReduceOp, SeRowReduce, TensorDecl, TileLoop, TileStream
from mtiasim.kernels.common import Region, cb_layout
from mtiasim.kernels.tiling import row_bands

CB_IN, CB_OUT = 0, 1
DEPTH = 4


def reduce_rows_job(
    chip: Chip, name: str, op: ReduceOp, x: TensorDecl, out: TensorDecl, *, region: Region | None = None
) -> Job:
    """``out[m, 0] = op(x[m, :])`` for an [M, N] `x` and an [M, 1] `out` (its dtype: the result's)."""
    region = region or Region.whole(chip)
    region.check(chip)
    if out.shape != (x.rows, 1):
        raise UsageError(
            f"{name}: a row reduction of {x.rows}x{x.cols} writes [{x.rows}, 1], not {out.shape}"
        )
    if not out.dtype.is_float:
        raise UsageError(f"{name}: a row reduction writes a float dtype, not {out.dtype.value}")
    tile, band, shares = row_bands(x.rows, x.cols, x.dtype.itemsize, region.size)
    tr, tc = tile
    pes = {}
    pe_list = [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]
    for pe, (n_bands, lp) in zip(pe_list, shares, strict=False):
        b0 = lp.base[0] // tr
        sizes = {CB_IN: DEPTH * tr * tc * x.dtype.itemsize, CB_OUT: DEPTH * tr * out.dtype.itemsize}
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        c0, c1 = prog.cores
        c0.append(DmaIn.one(CB_IN, TileStream(x.name, tile, lp)))
        c1.append(SeRowReduce(CB_IN, CB_OUT, lp.n, band, op, x.cols, out.dtype))
        rows_dims = ((n_bands, tr, 0),) if n_bands > 1 else ()
        c1.append(DmaOut(CB_OUT, TileStream(out.name, (tr, 1), TileLoop((b0 * tr, 0), rows_dims))))
        pes[pe] = prog
    return Job(name, "reduce", pes, work={"elements": float(x.rows * x.cols)})
