"""Elementwise operators on the SIMD Engine: quantize, dequantize, ReLU, tanh, sigmoid, add, mul, cast.

Each PE takes a rectangle of tiles of the tensor's 2-D view; core 0 loops the DMA of tiles in, core 1 has the
SE transform them and DMAs the results out, through circular buffers four tiles deep.

A binary op's second operand is either of x's shape, a [1, N] row broadcast over x's [M, N] rows (a bias,
a per-column scale): each PE reads the [1, tile cols] pieces of its column range once and keeps them resident
while its tiles stream past (or, if they do not fit its local store, re-reads one per tile), or an [M, 1]
column broadcast over its columns (a row's max or sum, in softmax and the norms): the [tile rows, 1] piece
beside each tile streams in with it.

Dynamic quantization (scale from the data) takes two passes, since v1's SE quantizes with a given scale and
has no fused min/max (ISCA'25 lists that as new in 2i): every PE reduces its tiles to [min, max] and writes
them out, all PEs meet at a barrier, then each reads the partials, reduces them, re-reads its input and
quantizes it. PE 0 also writes the global [min, max] (the quantization parameters) out.
"""

from __future__ import annotations

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import (
    Barrier,
    CbPop,
    DmaIn,
    DmaOut,
    Job,
    PeProgram,
    SeMap,
    SeMinMax,
    SeOp,
    SeRowScale,
    TensorDecl,
    TileLoop,
    TileStream,
    loop,
)
from mtiasim.isa.commands import BINARY_SE_OPS
from mtiasim.kernels.common import Region, cb_layout
from mtiasim.kernels.tiling import grid_loops, row_bands, tile_shape

CB_IN, CB_IN2, CB_OUT, CB_MM, CB_Q = 0, 1, 2, 3, 4
DEPTH = 4


def _pes(region: Region) -> list[tuple[int, int]]:
    return [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]


def elementwise_job(
    chip: Chip,
    name: str,
    op: SeOp,
    x: TensorDecl,
    out: TensorDecl,
    *,
    y: TensorDecl | None = None,
    scale: float = 1.0,
    zero_point: int = 0,
    region: Region | None = None,
    params: tuple[tuple[str, object], ...] = (),
) -> Job:
    """``out = op(x[, y])`` with a static scale for (de)quantization and the operator's constants `params`;
    a [1, N] `y` broadcasts over x's rows, an [M, 1] `y` over its columns."""
    region = region or Region.whole(chip)
    region.check(chip)
    row_bcast = y is not None and y.shape != x.shape and y.rows == 1 and y.cols == x.cols
    col_bcast = y is not None and y.shape != x.shape and y.cols == 1 and y.rows == x.rows
    if x.shape != out.shape or (y is not None and y.shape != x.shape and not (row_bcast or col_bcast)):
        raise UsageError(
            f"{name}: elementwise shapes differ: {x.shape}, {out.shape}" + (f", {y.shape}" if y else "")
        )
    binary = op in BINARY_SE_OPS
    if binary != (y is not None):
        raise UsageError(f"{name}: {op.value} takes {'two inputs' if binary else 'one input'}")
    tile = tile_shape(x.rows, x.cols, max(x.dtype.itemsize, out.dtype.itemsize))
    loops = grid_loops(x.rows, x.cols, tile, region.size)
    pes = {}
    for pe, lp in zip(_pes(region), loops, strict=False):
        tb_in = tile[0] * tile[1] * x.dtype.itemsize
        sizes = {CB_IN: DEPTH * tb_in, CB_OUT: DEPTH * tile[0] * tile[1] * out.dtype.itemsize}
        n = lp.n
        y_stream, period = None, 0
        if y is not None and row_bcast:
            y_stream, period = _row_broadcast(chip, y, tile, lp, sum(sizes.values()))
            sizes[CB_IN2] = max(period, DEPTH) * tile[1] * y.dtype.itemsize
        elif y is not None and col_bcast:
            # the [tile rows, 1] piece of the column beside every tile (re-read per tile: a few bytes)
            y_stream = TileStream(y.name, (tile[0], 1), TileLoop((lp.base[0], 0), _no_cols(lp)))
            sizes[CB_IN2] = DEPTH * tile[0] * y.dtype.itemsize
        elif y is not None:
            y_stream = TileStream(y.name, tile, lp)
            sizes[CB_IN2] = DEPTH * tile[0] * tile[1] * y.dtype.itemsize
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        prog.cores[0].append(DmaIn.one(CB_IN, TileStream(x.name, tile, lp)))
        if y_stream is not None:
            prog.cores[0].append(DmaIn.one(CB_IN2, y_stream))
        prog.cores[1].append(
            SeMap(
                op,
                CB_IN,
                CB_OUT,
                n,
                out.dtype,
                src2=CB_IN2 if y is not None else None,
                scale=scale,
                zero_point=zero_point,
                src2_period=period,
                params=params,
            )
        )
        prog.cores[1].append(DmaOut(CB_OUT, TileStream(out.name, tile, lp)))
        if period:
            prog.cores[1].append(CbPop(CB_IN2, period))
        pes[pe] = prog
    return Job(name, op.value, pes, work={"elements": float(x.rows * x.cols)})


def _no_cols(lp: TileLoop) -> tuple[tuple[int, int, int], ...]:
    """The loop's dims with their column steps dropped: the tiles' row origins, one per tile."""
    return tuple((count, dr, 0) for count, dr, _dc in lp.dims)


def _row_broadcast(
    chip: Chip, y: TensorDecl, tile: tuple[int, int], lp: TileLoop, used_bytes: int
) -> tuple[TileStream, int]:
    """The [1, tile cols] pieces of a row vector a PE's tiles need: (stream, resident count), or, when they do
    not fit the local store next to the other buffers, one re-read per tile (count 0)."""
    col_dims = [d for d in lp.dims if d[1] == 0 and d[2] != 0]
    n_cols = col_dims[0][0] if col_dims else 1
    piece = tile[1] * y.dtype.itemsize
    if used_bytes + max(n_cols, DEPTH) * piece + 1024 <= chip.local_memory.bytes:
        dims = ((n_cols, 0, tile[1]),) if n_cols > 1 else ()
        return TileStream(y.name, (1, tile[1]), TileLoop((0, lp.base[1]), dims)), n_cols
    dims = tuple((count, 0, dc) for count, _dr, dc in lp.dims)
    return TileStream(y.name, (1, tile[1]), TileLoop((0, lp.base[1]), dims)), 0


def dynamic_quantize_job(
    chip: Chip,
    name: str,
    x: TensorDecl,
    out: TensorDecl,
    partials: TensorDecl,
    qparams: TensorDecl,
    *,
    region: Region | None = None,
) -> Job:
    """``out = quantize(x)`` with asymmetric int8 parameters from the tensor's own [min, max].

    `partials` is an [n_pes, 2] fp32 scratch tensor; `qparams` a [1, 2] fp32 output holding [min, max].
    """
    region = region or Region.whole(chip)
    region.check(chip)
    if out.dtype != DType.INT8 or x.shape != out.shape:
        raise UsageError(f"{name}: quantize writes int8 of the input's shape")
    tile = tile_shape(x.rows, x.cols, x.dtype.itemsize)
    loops = grid_loops(x.rows, x.cols, tile, region.size)
    pe_list = _pes(region)[: len(loops)]
    if partials.shape != (len(pe_list), 2) or partials.dtype != DType.FP32:
        raise UsageError(f"{name}: partials must be [{len(pe_list)}, 2] fp32")
    if qparams.shape != (1, 2) or qparams.dtype != DType.FP32:
        raise UsageError(f"{name}: qparams must be [1, 2] fp32")
    group = "quantize"
    pes = {}
    for i, (pe, lp) in enumerate(zip(pe_list, loops, strict=True)):
        tb_in = tile[0] * tile[1] * x.dtype.itemsize
        sizes = {
            CB_IN: DEPTH * tb_in,
            CB_OUT: DEPTH * tile[0] * tile[1],
            CB_MM: max(2 * 8, 8 * len(pe_list)),
            CB_Q: 64,
        }
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        c0, c1 = prog.cores
        n = lp.n
        xs = TileStream(x.name, tile, lp)
        # pass 1: local [min, max] -> partials[i]
        c0.append(DmaIn.one(CB_IN, xs))
        c1.append(SeMinMax(CB_IN, CB_MM, n))
        c1.append(DmaOut(CB_MM, TileStream(partials.name, (1, 2), loop((i, 0)))))
        c0.append(Barrier("group", group))
        c1.append(Barrier("group", group))
        # pass 2: global [min, max], then quantize a second read of the input
        c0.append(DmaIn.one(CB_MM, TileStream(partials.name, (1, 2), loop((0, 0), (len(pe_list), 1, 0)))))
        c1.append(SeMinMax(CB_MM, CB_Q, len(pe_list)))
        c0.append(DmaIn.one(CB_IN, xs))
        c1.append(SeMap(SeOp.QUANTIZE, CB_IN, CB_OUT, n, DType.INT8, scale_cb=CB_Q))
        c1.append(DmaOut(CB_OUT, TileStream(out.name, tile, lp)))
        if i == 0:
            c1.append(DmaOut(CB_Q, TileStream(qparams.name, (1, 2), loop((0, 0)))))
        else:
            c1.append(CbPop(CB_Q, 1))
        pes[pe] = prog
    return Job(
        name, "quantize", pes, groups={group: tuple(pe_list)}, work={"elements": float(x.rows * x.cols)}
    )


def quantize_rows_job(
    chip: Chip,
    name: str,
    x: TensorDecl,
    out: TensorDecl,
    scales: TensorDecl,
    *,
    region: Region | None = None,
) -> Job:
    """Dynamic per-row quantization: ``scales[m] = max|x[m]| / 127`` and ``out = quantize(x, scales)`` (int8,
    symmetric), the FBGEMM-style input of an int8 FC whose activations are not calibrated.

    Each PE owns whole bands of rows (a band: one tile row across all of x's columns). v1's SE has no fused
    min/max, so it takes two passes over its bands: the SE reduces every band to a [rows, 1] tile of scales,
    then the input is read again and quantized with them; the scales stay resident, then go out too.
    """
    region = region or Region.whole(chip)
    region.check(chip)
    if out.dtype != DType.INT8 or x.shape != out.shape:
        raise UsageError(f"{name}: per-row quantization writes int8 of the input's shape")
    if scales.shape != (x.rows, 1) or scales.dtype != DType.FP32:
        raise UsageError(f"{name}: row scales must be [{x.rows}, 1] fp32")
    tile, band, shares = row_bands(x.rows, x.cols, x.dtype.itemsize, region.size)
    tr, tc = tile
    pes = {}
    for pe, (n_bands, lp) in zip(_pes(region), shares, strict=False):
        b0 = lp.base[0] // tr
        n = lp.n
        sizes = {
            CB_IN: DEPTH * tr * tc * x.dtype.itemsize,
            CB_OUT: DEPTH * tr * tc,
            CB_Q: n_bands * tr * 4,
        }
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        c0, c1 = prog.cores
        xs = TileStream(x.name, tile, lp)
        c0.append(DmaIn.one(CB_IN, xs))
        c1.append(SeRowScale(CB_IN, CB_Q, n, band))
        c0.append(DmaIn.one(CB_IN, xs))
        c1.append(
            SeMap(SeOp.QUANTIZE, CB_IN, CB_OUT, n, DType.INT8, row_scale_cb=CB_Q, row_scale_period=band)
        )
        c1.append(DmaOut(CB_OUT, TileStream(out.name, tile, lp)))
        rows_dims = ((n_bands, tr, 0),) if n_bands > 1 else ()
        c1.append(DmaOut(CB_Q, TileStream(scales.name, (tr, 1), TileLoop((b0 * tr, 0), rows_dims))))
        pes[pe] = prog
    return Job(name, "quantize", pes, work={"elements": float(x.rows * x.cols)})
