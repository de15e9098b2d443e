"""Numerics of the fixed-function units.

- DPE: INT8 x INT8 products summed exactly in INT32; FP16/BF16 inputs with FP32 accumulation.
- RE/SE requantization and quantization: round half to even, then saturate to the integer range. The SE
  scales in FP32 (torch.quantize_per_tensor scales in double, so the two can differ by one step on exact ties).
- SE nonlinears (tanh, sigmoid): a lookup table of `segments` linear pieces over a clamped input range,
  evaluated in FP32. Documented error (tested): with 64 segments over [-8, 8], max |error| <= 6.0e-3 for
  tanh and <= 7.5e-4 for sigmoid, before the rounding of the output to its dtype.
- GEMM epilogue (`matmul_epilogue`): per-column fp32 scale, activation, conversion, as `MatMul` documents.
- Embedding pooling (`pool_rows`), per row format. FBGEMM int8 rows: ``q*scale + bias`` (two FP32 roundings),
  weighted, summed in order. ATen int8 rows: as FBGEMM's CPU kernels behind
  ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets``: per row ``acc = fma(scale*w, q, acc + bias*w)``
  (bit-exact; FMA is emulated in float64, which could round differently only when the exact sum needs more
  than 53 bits and lands on an FP32 tie, not seen in tests). FP16/FP32 rows: ``acc += x`` or
  ``acc = fma(w, x, acc)``, as ``torch.nn.functional.embedding_bag`` on FP32 rows (bit-exact). Mean divides the
  FP32 sum by the bag length; max takes the elementwise max of the rows as converted to FP32; empty bags are 0.
"""

from __future__ import annotations

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.isa import PoolMode, RowFormat

INT8_MIN, INT8_MAX = -128, 127
LUT_RANGE = 8.0
TANH_MAX_ABS_ERROR = 6.0e-3
SIGMOID_MAX_ABS_ERROR = 7.5e-4


def matmul_acc(a: np.ndarray, b: np.ndarray, dtype: DType) -> np.ndarray:
    """Batched ``a @ b`` as the DPE computes it: int8 -> exact int32 sums, fp16/bf16 -> fp32 accumulation.

    INT8 uses float BLAS, which is exact here: every partial sum is an integer of magnitude at most k * 2^14,
    held exactly by float32 up to 2^24 (k <= 1024) and by float64 up to 2^53.
    """
    if dtype == DType.INT8:
        k = a.shape[-1]
        if k * 128 * 128 >= 2**53:
            raise ValueError("k too large for exact float64 accumulation")
        # every partial sum is an integer of magnitude <= k * 2^14: float32 holds it exactly below 2^24
        exact = np.float32 if k * 128 * 128 <= 2**24 else np.float64
        out = np.matmul(a.astype(exact), b.astype(exact))
        return out.astype(np.int32)
    return np.matmul(a.astype(np.float32), b.astype(np.float32))


def add_acc(acc: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Accumulator add: INT32 wraps like the hardware adder; FP32 rounds."""
    if acc.dtype == np.int32:
        return (acc.astype(np.int64) + other.astype(np.int64)).astype(np.int32)
    return (acc.astype(np.float32) + other.astype(np.float32)).astype(np.float32)


def round_half_even_saturate(x: np.ndarray, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """Round to nearest, ties to even, then clamp to [lo, hi]. NaN saturates to 0."""
    r = np.rint(np.asarray(x, dtype=np.float64))
    r = np.nan_to_num(r, nan=0.0, posinf=hi, neginf=lo)
    return np.clip(r, lo, hi)


def quantize(x: np.ndarray, scale: float, zero_point: int, out: DType = DType.INT8) -> np.ndarray:
    """``q = saturate(round_half_even(x / scale) + zero_point)``, computed in FP32 like the SE."""
    lo, hi = (0, 255) if out == DType.UINT8 else (INT8_MIN, INT8_MAX)
    scaled = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = np.rint(scaled.astype(np.float64)) + zero_point
    q = np.nan_to_num(q, nan=float(zero_point), posinf=hi, neginf=lo)
    return np.clip(q, lo, hi).astype(out.numpy)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def requantize_acc(acc: np.ndarray, scale: float, out: DType) -> np.ndarray:
    """Integer accumulator times a per-tensor scale, rounded half to even and saturated to `out`."""
    lo, hi = (0, 255) if out == DType.UINT8 else (INT8_MIN, INT8_MAX)
    return round_half_even_saturate(acc.astype(np.float64) * scale, lo, hi).astype(out.numpy)


def cast(x: np.ndarray, out: DType) -> np.ndarray:
    """Convert to `out`: floats round to nearest even; integers round half to even and saturate."""
    if out.is_float:
        return np.asarray(x, dtype=np.float32).astype(out.numpy)
    info = np.iinfo(out.numpy)
    return round_half_even_saturate(x, int(info.min), int(info.max)).astype(out.numpy)


def _lut(fn, segments: int) -> tuple[np.ndarray, np.ndarray]:
    knots = np.linspace(-LUT_RANGE, LUT_RANGE, segments + 1, dtype=np.float64)
    return knots, fn(knots)


def lut_apply(x: np.ndarray, name: str, segments: int) -> np.ndarray:
    """Piecewise-linear LUT evaluation of tanh or sigmoid, clamped outside [-8, 8], in FP32."""
    if name == "tanh":
        knots, vals = _lut(np.tanh, segments)
    elif name == "sigmoid":
        knots, vals = _lut(lambda v: 1.0 / (1.0 + np.exp(-v)), segments)
    else:
        raise ValueError(name)
    xin = np.asarray(x, dtype=np.float32).astype(np.float64)
    return np.interp(np.clip(xin, -LUT_RANGE, LUT_RANGE), knots, vals).astype(np.float32)


def fbgemm_rows_dequantize(rows: np.ndarray, dim: int) -> np.ndarray:
    """FBGEMM int8 TBE rows ([n, 4 + dim] uint8: fp16 scale, fp16 bias, then dim uint8) -> fp32 [n, dim]."""
    head = np.ascontiguousarray(rows[:, :4]).view(np.float16).astype(np.float32)
    scale, bias = head[:, 0:1], head[:, 1:2]
    q = rows[:, 4 : 4 + dim].astype(np.float32)
    return (q * scale + bias).astype(np.float32)


def fbgemm_rows_quantize(weights: np.ndarray) -> np.ndarray:
    """fp32 [rows, dim] -> FBGEMM int8 TBE rows [rows, 4 + dim] (row-wise min/max, fp16 scale and bias)."""
    w = np.asarray(weights, dtype=np.float32)
    lo = w.min(axis=1, keepdims=True)
    hi = w.max(axis=1, keepdims=True)
    scale = ((hi - lo) / 255.0).astype(np.float16)
    bias = lo.astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 == 0, 1.0, s32)
    q = np.clip(np.rint((w - bias.astype(np.float32)) / safe), 0, 255).astype(np.uint8)
    head = np.concatenate([scale, bias], axis=1).view(np.uint8)
    return np.concatenate([head, q], axis=1)


def matmul_epilogue(
    acc: np.ndarray,
    out: DType,
    *,
    scales: np.ndarray | None = None,
    out_scale: float | None = None,
    activation: str | None = None,
    segments: int = 64,
) -> np.ndarray:
    """A MatMul block's conversion with a per-column scale and/or an activation (see `isa.MatMul`).

    `acc` [blocks, tm, tn] int32 or fp32 (bias and partials included); `scales` [blocks, 1, tn] fp32.
    """
    if scales is not None:
        v = acc.astype(np.float32) * scales.astype(np.float32)
    elif acc.dtype == np.int32 and out_scale is not None:
        v = acc.astype(np.float64) * out_scale
    else:
        v = acc
    if activation == "relu":
        v = np.maximum(v, np.zeros((), dtype=v.dtype))
    elif activation in ("sigmoid", "tanh"):
        v = lut_apply(v, activation, segments)
    elif activation is not None:
        raise ValueError(activation)
    return cast(v, out)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """FP32 fused multiply-add ``a*b + c`` rounded once (float64 holds the product of two FP32 exactly)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def aten_rows_split(rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ATen int8 rows ([n, dim + 8] uint8) -> (q [n, dim] fp32, scale [n, 1] fp32, bias [n, 1] fp32)."""
    tail = np.ascontiguousarray(rows[:, dim : dim + 8]).view(np.float32)
    return rows[:, :dim].astype(np.float32), tail[:, 0:1], tail[:, 1:2]


def aten_rows_dequantize(rows: np.ndarray, dim: int) -> np.ndarray:
    """ATen int8 rows -> fp32 [n, dim]: ``fma(scale, q, bias)`` (the first step of a pooled sum)."""
    q, scale, bias = aten_rows_split(rows, dim)
    return fma32(np.broadcast_to(scale, q.shape), q, np.broadcast_to(bias, q.shape))


def aten_rows_quantize(weights: np.ndarray) -> np.ndarray:
    """fp32 [rows, dim] -> ATen int8 rows [rows, dim + 8] (row-wise min/max, fp32 scale and bias at the tail),
    as ``torch.ops.quantized.embedding_bag_byte_prepack``."""
    w = np.asarray(weights, dtype=np.float32)
    lo = w.min(axis=1, keepdims=True)
    span = (w.max(axis=1, keepdims=True) - lo).astype(np.float32)
    scale = (span / np.float32(255.0)).astype(np.float32)
    inverse = (np.float32(255.0) / (span + np.float32(1e-8))).astype(np.float32)
    q = np.clip(np.rint((w - lo) * inverse), 0, 255).astype(np.uint8)
    tail = np.concatenate([scale, lo], axis=1).astype(np.float32).view(np.uint8)
    return np.concatenate([q, tail], axis=1)


def rows_to_float(rows: np.ndarray, fmt: RowFormat, dim: int) -> np.ndarray:
    """Stored rows of `fmt` -> fp32 [n, dim] values."""
    if fmt == RowFormat.INT8_FBGEMM:
        return fbgemm_rows_dequantize(rows, dim)
    if fmt == RowFormat.INT8_ATEN:
        return aten_rows_dequantize(rows, dim)
    return np.asarray(rows[:, :dim], dtype=np.float32)


def _bag_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _sum_in_order(rows: np.ndarray, fmt: RowFormat, dim: int, lengths: np.ndarray, w) -> np.ndarray:
    """Each bag's rows accumulated one after another, as FBGEMM's and ATen's CPU kernels do."""
    out = np.zeros((lengths.size, dim), dtype=np.float32)
    starts = _bag_starts(lengths)
    if fmt == RowFormat.INT8_ATEN:
        q, scale, bias = aten_rows_split(rows, dim)
        if w is not None:
            scale, bias = scale * w[:, None], bias * w[:, None]
    else:
        x = np.asarray(rows[:, :dim], dtype=np.float32)
    for pos in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > pos)
        r = starts[live] + pos
        acc = out[live]
        if fmt == RowFormat.INT8_ATEN:
            out[live] = fma32(np.broadcast_to(scale[r], (r.size, dim)), q[r], acc + bias[r])
        elif w is not None:
            out[live] = fma32(np.broadcast_to(w[r, None], (r.size, dim)), x[r], acc)
        else:
            out[live] = acc + x[r]
    return out


def pool_rows(
    rows: np.ndarray,
    fmt: RowFormat,
    dim: int,
    lengths: np.ndarray,
    mode: PoolMode,
    weights: np.ndarray | None,
) -> np.ndarray:
    """EmbeddingBag of stored rows ([n, row cols], in bag order) -> fp32 [bags, dim] (see the module doc)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    nz = lengths > 0
    if mode == PoolMode.MAX:
        out = np.zeros((lengths.size, dim), dtype=np.float32)
        if nz.any():
            out[nz] = np.maximum.reduceat(rows_to_float(rows, fmt, dim), _bag_starts(lengths)[nz], axis=0)
        return out
    if fmt == RowFormat.INT8_FBGEMM:
        vals = fbgemm_rows_dequantize(rows, dim) if rows.size else np.zeros((0, dim), np.float32)
        if w is not None:
            vals = vals * w[:, None]
        out = np.zeros((lengths.size, dim), dtype=np.float32)
        if nz.any():
            out[nz] = np.add.reduceat(vals, _bag_starts(lengths)[nz], axis=0)
    else:
        out = _sum_in_order(rows, fmt, dim, lengths, w)
    if mode == PoolMode.MEAN:
        out[nz] = out[nz] / lengths[nz, None].astype(np.float32)
    return out
