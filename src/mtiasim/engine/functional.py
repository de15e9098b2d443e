"""What each command computes on the data of its tiles (functional mode), built on `numerics`.

The resolver (`engine.resolve`) moves tiles between CBs and memory and checks the commands' rules; it hands
each computing command's input tiles to a function here and pushes what comes back. Tiles are arrays
[n, rows, cols]; conversions report what they met into the job's `numerics.ConversionStats`.
"""

from __future__ import annotations

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.engine import numerics as nx
from mtiasim.engine.tiles import TileRun
from mtiasim.isa import MatMul, Operand, SeMap, SeOp, SePool, SeRowReduce

# how many bytes of operands a MatMul's blocks are multiplied in at once (bounds a functional run's memory)
MATMUL_CHUNK_BYTES = 48 * 2**20


def matmul_blocks(
    cmd: MatMul, a_run: TileRun, b_run: TileRun, bias_run: TileRun | None, partials: np.ndarray | None
) -> np.ndarray:
    """A MatMul's accumulators [blocks, tile_m, tile_n] (int32 or fp32): each block's products over its
    steps, plus the bias tiles and the partial blocks reduced in from upstream."""
    steps, tm, tn, tk = cmd.steps, cmd.tile_m, cmd.tile_n, cmd.tile_k
    blocks = cmd.blocks
    acc_np = np.int32 if cmd.acc_dtype == DType.INT32 else np.float32
    out = np.zeros((blocks, tm, tn), dtype=acc_np)
    per_block = steps * tk * (tm + tn) * 8
    chunk = max(1, MATMUL_CHUNK_BYTES // max(per_block, 1))
    for b0 in range(0, blocks, chunk):
        b1 = min(blocks, b0 + chunk)
        bidx = np.arange(b0, b1)
        im, jn = bidx // cmd.n_blocks, bidx % cmd.n_blocks
        s = np.arange(steps)
        if cmd.a_mode == Operand.STREAM:
            a = a_run.get(b0 * steps, b1 * steps).reshape(b1 - b0, steps, tm, tk)
        else:
            a = a_run.take((im[:, None] * steps + s[None, :]).reshape(-1)).reshape(b1 - b0, steps, tm, tk)
        a_cat = a.transpose(0, 2, 1, 3).reshape(b1 - b0, tm, steps * tk)
        if cmd.dtype == DType.INT8 and cmd.b_mode != Operand.STREAM:
            # blocks that share a resident B tile run as one taller product (integer sums: exact either way)
            for j in np.unique(jn).tolist():
                sel = np.flatnonzero(jn == j)
                b = b_run.take(j * steps + s).reshape(steps, tn, tk)
                b_cat = b.transpose(0, 2, 1).reshape(steps * tk, tn)
                rows = a_cat[sel].reshape(sel.size * tm, steps * tk)
                out[b0 + sel] = nx.matmul_acc(rows, b_cat, cmd.dtype).reshape(sel.size, tm, tn)
            continue
        if cmd.b_mode == Operand.STREAM:
            b = b_run.get(b0 * steps, b1 * steps).reshape(b1 - b0, steps, tn, tk)
        else:
            b = b_run.take((jn[:, None] * steps + s[None, :]).reshape(-1)).reshape(b1 - b0, steps, tn, tk)
        b_cat = b.transpose(0, 1, 3, 2).reshape(b1 - b0, steps * tk, tn)
        out[b0:b1] = nx.matmul_acc(a_cat, b_cat, cmd.dtype)
    if bias_run is not None:
        out = nx.add_acc(out, bias_run.get(0, blocks))
    if partials is not None:
        out = nx.add_acc(out, partials)
    return out


def convert_blocks(
    acc: np.ndarray,
    cmd: MatMul,
    out_dtype: DType,
    vectors: dict[str, np.ndarray],
    segments: int,
    stats: nx.ConversionStats,
) -> np.ndarray:
    """A MatMul's output blocks: its accumulators through the epilogue (`vectors`: the blocks' scales,
    row_scales and post_bias tiles), or as they are when there is nothing to apply."""
    plain = not vectors and cmd.activation is None and cmd.out_scale is None
    if plain and out_dtype == cmd.acc_dtype:
        return acc
    return nx.matmul_epilogue(
        acc,
        out_dtype,
        scales=vectors.get("scales"),
        row_scales=vectors.get("row_scales"),
        post_bias=vectors.get("post_bias"),
        out_scale=cmd.out_scale,
        out_zero_point=cmd.out_zero_point,
        activation=cmd.activation.value if cmd.activation is not None else None,
        segments=segments,
        stats=stats,
    )


def dynamic_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 parameters covering [min(lo, 0), max(hi, 0)] (zero stays exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zero_point


def se_map(
    cmd: SeMap, x: np.ndarray, y: np.ndarray | None, qparams, segments: int, stats: nx.ConversionStats
) -> np.ndarray:
    """An SE map's output tiles: (de)quantization with `qparams` (scale, zero point; default the command's),
    a copy or cast, or an elementwise operator of `x` (and `y`) rounded to the output dtype."""
    op, out = cmd.op, cmd.out_dtype
    scale, zp = qparams if qparams is not None else (cmd.scale, cmd.zero_point)
    if op == SeOp.QUANTIZE:
        return nx.quantize(x, scale, zp, out, stats)
    if op == SeOp.DEQUANTIZE:
        return nx.cast(nx.dequantize(x, scale, zp), out, stats)
    if op in (SeOp.COPY, SeOp.CAST):
        if op == SeOp.COPY and x.dtype == out.numpy:
            return x.copy()
        return nx.cast(x.astype(np.float32) if x.dtype.kind == "f" else x, out, stats)
    y32 = None if y is None else y.astype(np.float32)
    r = nx.elementwise(op.value, x.astype(np.float32), y32, segments=segments, **dict(cmd.params))
    return nx.cast(r, out, stats)


def minmax(tiles: np.ndarray) -> np.ndarray:
    """The min and max over every element of `tiles`, as one [1, 1, 2] fp32 tile."""
    x = tiles.astype(np.float32)
    return np.array([[[x.min(), x.max()]]], dtype=np.float32)


def _bands(tiles: np.ndarray, band: int) -> np.ndarray:
    """Tiles [bands * band, tr, tc] as [bands, band, tr, tc]: each band a row of tiles."""
    n, tr, tc = tiles.shape
    return tiles.reshape(n // band, band, tr, tc)


def row_scales(tiles: np.ndarray, band: int) -> np.ndarray:
    """Symmetric int8 scales of the rows of each band of tiles (`numerics.row_scales` of the rows' max |x|,
    non-finite values ignored): [bands, tr, 1] fp32."""
    x = np.abs(tiles.astype(np.float32))
    x = np.where(np.isfinite(x), x, np.float32(0))
    amax = _bands(x, band).max(axis=(1, 3))
    return nx.row_scales(amax)[:, :, None]


def reduce_rows(tiles: np.ndarray, cmd: SeRowReduce, stats: nx.ConversionStats) -> np.ndarray:
    """The SE's reduction of the first `cmd.cols` columns of each band's rows, in `cmd.out_dtype`:
    [bands, tr, 1]."""
    x = _bands(tiles, cmd.band)
    bands, _, tr, tc = x.shape
    rows = x.transpose(0, 2, 1, 3).reshape(bands * tr, cmd.band * tc)[:, : cmd.cols]
    r = nx.reduce_rows(rows, cmd.op.value).reshape(bands, tr, 1)
    return nx.cast(r, cmd.out_dtype, stats)


def pool(cmd: SePool, rows: np.ndarray, weights: np.ndarray | None, stats: nx.ConversionStats) -> np.ndarray:
    """The pooled bags of gathered `rows` (in bag order; `weights`: one per row), in `cmd.out_dtype`:
    [bags, 1, dim]."""
    pooled = nx.pool_rows(rows, cmd.row_format, cmd.dim, np.asarray(cmd.lengths), cmd.mode, weights)
    return nx.cast(pooled, cmd.out_dtype, stats)[:, None, :]
