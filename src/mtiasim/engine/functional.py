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
    blocks = _int8_blocks if cmd.dtype == DType.INT8 else _float_blocks
    out = blocks(cmd, a_run, b_run)
    if bias_run is not None:
        out = nx.add_acc(out, bias_run.get(0, cmd.blocks))
    if partials is not None:
        out = nx.add_acc(out, partials)
    return out


def _operand_rows(tiles: np.ndarray, groups: int, steps: int) -> np.ndarray:
    """Tiles [groups * steps, t, tk] (a block's K steps one after another) as [groups, t, steps * tk] of the
    operand dtype `numerics.int8_matmul_exact` takes fastest (`_int8_operands`): each group's tiles side by
    side along K, converted in one pass."""
    _, t, tk = tiles.shape
    out = np.empty((groups, t, steps, tk), dtype=_int8_operands())
    out[...] = tiles.reshape(groups, steps, t, tk).transpose(0, 2, 1, 3)
    return out.reshape(groups, t, steps * tk)


def _int8_operands() -> type:
    """int8 where PyTorch's integer GEMM multiplies int8 operands as they are (`numerics.integer_gemm`), else
    float32 for float BLAS."""
    return np.int8 if nx.integer_gemm() is not None else np.float32


def _band_rows(run: TileRun, start: int, groups: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`groups` groups of `steps` tiles of `run` from tile `start` as rows [u, t, steps * tk] (of the operand
    dtype, `_int8_operands`) and each group's index into them: the distinct row bands of one array, read once
    each, when the tiles are laid out so (`TileRun.bands`: then views where int8); else every group's tiles
    side by side (`_operand_rows`)."""
    got = run.bands(start, groups, steps)
    if got is not None:
        values, which = got
        return values.astype(_int8_operands(), copy=False), which
    return _operand_rows(run.get(start, start + groups * steps), groups, steps), np.arange(groups)


def _int8_blocks(cmd: MatMul, a_run: TileRun, b_run: TileRun) -> np.ndarray:
    """INT8 accumulators: every block's rows of A times its column of B, as exact int32 sums by float BLAS
    (`numerics.int8_matmul_exact`)."""
    if cmd.b_mode == Operand.STREAM:
        return _int8_streamed_b(cmd, a_run, b_run)
    return _int8_resident_b(cmd, a_run, b_run)


def _int8_streamed_b(cmd: MatMul, a_run: TileRun, b_run: TileRun) -> np.ndarray:
    """Every block has its own B tiles: a batched product."""
    steps, tm, tn = cmd.steps, cmd.tile_m, cmd.tile_n
    blocks = cmd.blocks
    out = np.empty((blocks, tm, tn), dtype=np.int32)
    per_block = steps * cmd.tile_k * (tm + tn) * 4
    chunk = max(1, MATMUL_CHUNK_BYTES // max(per_block, 1))
    for b0 in range(0, blocks, chunk):
        b1 = min(blocks, b0 + chunk)
        a = _a_rows(cmd, a_run, b0, b1)
        b = _operand_rows(b_run.get(b0 * steps, b1 * steps), b1 - b0, steps).transpose(0, 2, 1)
        out[b0:b1] = nx.int8_matmul_exact(a, b)
    return out


def _int8_resident_b(cmd: MatMul, a_run: TileRun, b_run: TileRun) -> np.ndarray:
    """A resident B (block b is row b // n_blocks, column b % n_blocks): its columns [K, tn] converted once;
    the distinct A row bands (`_band_rows`; a streamed A repeated for every column is read once) times every
    column in one product when that is no more work than the blocks' own products, else each column's blocks
    as one taller product."""
    steps, tm, tn, n = cmd.steps, cmd.tile_m, cmd.tile_n, cmd.n_blocks
    k = steps * cmd.tile_k
    blocks = cmd.blocks
    b_vals, b_which = _band_rows(b_run, 0, n, steps)
    b_rows = (b_vals if b_vals.shape[0] == n else b_vals[b_which]).reshape(n * tn, k)  # B^T: [n * tn, K]
    out = np.empty((blocks, tm, tn), dtype=np.int32)
    chunk = max(n, MATMUL_CHUNK_BYTES // max(k * tm * 4, 1) // n * n)
    stream = cmd.a_mode == Operand.STREAM
    for b0 in range(0, blocks, chunk):  # whole rows of blocks
        b1 = min(blocks, b0 + chunk)
        g0, g1 = (b0, b1) if stream else (b0 // n, b1 // n)
        a_vals, which = _band_rows(a_run, g0 * steps, g1 - g0, steps)
        per_block = np.arange(b1 - b0) if stream else np.arange(b1 - b0) // n
        band = which[per_block]  # each block's A band
        u = a_vals.shape[0]
        if u * n <= b1 - b0:  # every band times every column: one product
            prod = nx.int8_matmul_exact(a_vals.reshape(u * tm, k), b_rows.T)
            if u * n == b1 - b0 and (band == np.arange(b1 - b0) // n).all():  # block b: band b // n
                out[b0:b1].reshape(u, n, tm, tn)[...] = prod.reshape(u, tm, n, tn).transpose(0, 2, 1, 3)
            else:
                col = np.arange(b0, b1) % n
                out[b0:b1] = prod.reshape(u, tm, n, tn)[band, :, col, :]
            continue
        for j in range(n):  # each column's blocks (b0 is a multiple of n) as one taller product
            aj = a_vals[band[j::n]].reshape(-1, k)
            got = nx.int8_matmul_exact(aj, b_rows[j * tn : (j + 1) * tn].T)
            out[b0 + j : b1 : n] = got.reshape(-1, tm, tn)
    return out


def _a_rows(cmd: MatMul, a_run: TileRun, b0: int, b1: int) -> np.ndarray:
    """The A operand of blocks [b0, b1) as [b1 - b0, tile_m, K] (`_operand_rows`)."""
    steps = cmd.steps
    if cmd.a_mode == Operand.STREAM:
        return _operand_rows(a_run.get(b0 * steps, b1 * steps), b1 - b0, steps)
    im = np.arange(b0, b1) // cmd.n_blocks
    tiles = a_run.take((im[:, None] * steps + np.arange(steps)[None, :]).reshape(-1))
    return _operand_rows(tiles, b1 - b0, steps)


def _float_blocks(cmd: MatMul, a_run: TileRun, b_run: TileRun) -> np.ndarray:
    """FP16/BF16 accumulators (fp32): each block's exact sum over its K range, rounded once."""
    steps, tm, tn, tk = cmd.steps, cmd.tile_m, cmd.tile_n, cmd.tile_k
    blocks = cmd.blocks
    out = np.zeros((blocks, tm, tn), dtype=np.float32)
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
        if cmd.b_mode == Operand.STREAM:
            b = b_run.get(b0 * steps, b1 * steps).reshape(b1 - b0, steps, tn, tk)
        else:
            b = b_run.take((jn[:, None] * steps + s[None, :]).reshape(-1)).reshape(b1 - b0, steps, tn, tk)
        b_cat = b.transpose(0, 1, 3, 2).reshape(b1 - b0, steps * tk, tn)
        out[b0:b1] = nx.matmul_acc(a_cat, b_cat, cmd.dtype)
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
        return nx.cast(nx.to_float32(x) if x.dtype.kind == "f" else x, out, stats)
    y32 = None if y is None else nx.to_float32(y)
    r = nx.elementwise(op.value, nx.to_float32(x), y32, segments=segments, **dict(cmd.params))
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
