"""Numerics of the fixed-function units (the specification is docs/numerics.md; this module implements it, on
arrays; `engine.functional` applies it to each command's tiles).

- DPE: INT8 x INT8 products summed exactly in INT32. FP16/BF16: products exact, a PE's sum over its K range
  formed exactly (modelled in float64) and rounded once to FP32; K-split partials added in FP32 in chain order.
- Conversions (`quantize`, `cast`, the MatMul epilogue's output) share one rule: quantize multiplies by the
  FP32 reciprocal of the scale, rounds half to even, adds the zero point and saturates; NaN becomes the zero
  point; float casts round to nearest even and overflow to +-inf. Each conversion can report what it met
  (`ConversionStats`: non-finite inputs, saturated integers, overflowed floats), so nothing is lost silently.
- SE elementwise operators: as their `mtiasim.opset.Elementwise` records compute them (`elementwise`):
  IEEE FP32 operations, the SE's lookup tables (`opset.lut_apply`: tanh within 6.0e-3, sigmoid 7.5e-4 with 64
  segments) or the FP32 math library, before the rounding of the output to its dtype.
- GEMM epilogue (`matmul_epilogue`): as `isa.MatMul` documents.
- Embedding pooling (`pool_rows`), per row format. FBGEMM int8 rows: ``q*scale + bias`` (two FP32 roundings),
  weighted, summed in order. ATen int8 and int4 rows and FBGEMM int4 rows: as FBGEMM's CPU kernels behind
  ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` / ``embedding_bag_4bit_rowwise_offsets`` and
  ``fbgemm.int_nbit_split_embedding_codegen_lookup_function``: per row ``acc = fma(scale*w, q, acc + bias*w)``
  with the fp16 scale and bias widened to FP32 (bit-exact; FMA is emulated in float64, which could round differently only when the exact sum needs more
  than 53 bits and lands on an FP32 tie, not seen in tests). FP16/FP32 rows: ``acc += x`` or
  ``acc = fma(w, x, acc)``, as ``torch.nn.functional.embedding_bag`` on FP32 rows (bit-exact). Mean divides the
  FP32 sum by the bag length; max takes the elementwise max of the rows as converted to FP32; empty bags are 0.
"""

from __future__ import annotations

import functools
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.engine import blas
from mtiasim.isa import PoolMode, RowFormat
from mtiasim.opset import ELEMENTWISE, Kind
from mtiasim.opset import SIGMOID_MAX_ABS_ERROR as SIGMOID_MAX_ABS_ERROR  # re-exported
from mtiasim.opset import TANH_MAX_ABS_ERROR as TANH_MAX_ABS_ERROR
from mtiasim.opset import lut_apply as lut_apply

INT8_MIN, INT8_MAX = -128, 127
# the SE's lookup tables and elementwise operators are defined with the operator set
LUT_MAX_ABS_ERROR = {k.value: e.abs_error for k, e in ELEMENTWISE.items() if e.abs_error}


@dataclass
class ConversionStats:
    """What the conversions of one job met: elements converted, NaN/Inf made finite by an integer conversion,
    integers clamped to their range, finite floats that overflowed to +-inf."""

    converted: int = 0
    nonfinite: int = 0
    saturated: int = 0
    overflow: int = 0

    def merge(self, other: ConversionStats) -> None:
        self.converted += other.converted
        self.nonfinite += other.nonfinite
        self.saturated += other.saturated
        self.overflow += other.overflow

    @property
    def clean(self) -> bool:
        return not (self.nonfinite or self.saturated or self.overflow)


def _int_range(out: DType) -> tuple[int, int]:
    info = np.iinfo(out.numpy)
    return int(info.min), int(info.max)


# fp16 <-> fp32 conversions of at least this many elements go through PyTorch when the process has loaded it,
# in pieces below its grain size (PyTorch runs those on the calling thread: its pool's threads, woken for every
# conversion, wait long on a busy host)
HALF_CONVERT_MIN = 4096
HALF_CONVERT_PIECE = 16384


def _loaded_torch():
    """PyTorch if this process has loaded it (a run from the PyTorch path has), else None: it converts fp16
    <-> fp32 with the CPU's vector instructions, ~10x numpy's element-by-element conversion. Both round to
    nearest even, so the bits are the same, but for NaN payloads (hardware quiets a signaling NaN, numpy keeps
    its bits): NaNs are converted by numpy. Not imported here: a process without it keeps numpy's."""
    return sys.modules.get("torch")


def _half_convert(x: np.ndarray, to: type) -> np.ndarray:
    """`x` (fp16 or fp32) as `to` (np.float32 or np.float16), as numpy's ``astype`` gives it, fast."""
    torch = _loaded_torch() if x.size >= HALF_CONVERT_MIN else None
    if torch is None:
        with np.errstate(over="ignore"):  # overflow to +-inf is the rounding's (and is counted by `cast`)
            return x.astype(to)
    out = np.empty(x.shape, dtype=to)
    with warnings.catch_warnings():  # a read-only view is only read here
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(np.ascontiguousarray(x).reshape(-1))
    dst = torch.from_numpy(out.reshape(-1))
    for i in range(0, x.size, HALF_CONVERT_PIECE):
        dst[i : i + HALF_CONVERT_PIECE].copy_(src[i : i + HALF_CONVERT_PIECE])
    wide = out if to is np.float32 else x
    if np.isnan(wide.max()):  # a NaN anywhere makes the max NaN: one pass, no mask, when there is none
        nan = np.isnan(wide)
        with np.errstate(over="ignore"):
            out[nan] = x[nan].astype(to)
    return out


def to_float32(x: np.ndarray) -> np.ndarray:
    """`x` as an fp32 array (a new one for fp16: the conversion is exact; otherwise as ``np.asarray``)."""
    x = np.asarray(x)
    if x.dtype == np.float16:
        return _half_convert(x, np.float32)
    return np.asarray(x, dtype=np.float32)


FP32_EXACT_INT = 2**24  # every integer of at most this magnitude is an FP32 value

# int8 x int8 products are at most 2^14 in magnitude: float32 holds every partial sum of up to 2^10 of them exactly
INT8_EXACT_K_FP32 = 2**24 // 2**14


def int8_matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of int8 values (int8 arrays, or float32 arrays of int8 values; batched like `np.matmul`) as
    int32 sums, exact. With int8 operands where PyTorch's integer GEMM is exact on this CPU (`integer_gemm`)
    that multiplies them; otherwise float BLAS does: K is cut into chunks of at most `INT8_EXACT_K_FP32`, whose
    float32 sums are exact integers (in any summation order); the chunks' sums are added in int32, which wraps
    as the accumulator does (the sum modulo 2^32; it only can past K = 2^17). A large product uses more BLAS
    threads (`blas.threads_for`)."""
    if a.dtype == np.int8 and b.dtype == np.int8:
        gemm = integer_gemm()
        if gemm is not None:
            return gemm(a, b)
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    k = a.shape[-1]
    with blas.threads_for(_macs(a, b)):
        out = np.matmul(a[..., :INT8_EXACT_K_FP32], b[..., :INT8_EXACT_K_FP32, :]).astype(np.int32)
        for k0 in range(INT8_EXACT_K_FP32, k, INT8_EXACT_K_FP32):
            k1 = min(k, k0 + INT8_EXACT_K_FP32)
            out += np.matmul(a[..., k0:k1], b[..., k0:k1, :]).astype(np.int32)
    return out


# int8 products go to PyTorch's integer GEMM (`torch._int_mm`: oneDNN, on VNNI or AMX int8 units ~8x float
# BLAS) in K chunks this long, over which no int32 partial sum can overflow however the kernel forms it
# (with the unsigned-offset form of s8 x s8, 255 * 128 * 2^15 < 2^31); the chunks are added in int32, wrapping
INT8_EXACT_K_INT = 2**15
_INTEGER_GEMM: list = []  # the probed `integer_gemm` (None: not exact here), once PyTorch is loaded


def integer_gemm():
    """PyTorch's int8 x int8 -> int32 GEMM as ``gemm(a, b)`` over numpy arrays (2-D or batched), where the
    process has loaded PyTorch and the GEMM passed `_exact_on_this_cpu`; else None (float BLAS then).
    Integer sums are exact in any order, so only an int16 saturation (which oneDNN's int8 kernels can have on
    CPUs without VNNI) could change a bit: the probe catches it."""
    if _INTEGER_GEMM:
        return _INTEGER_GEMM[0]
    torch = _loaded_torch()
    if torch is None:
        return None  # not cached: the process may load PyTorch later
    int_mm = getattr(torch, "_int_mm", None)

    def mm2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a.shape[1]
        if k <= INT8_EXACT_K_INT:
            return int_mm(_as_tensor(torch, a), _as_tensor(torch, b)).numpy()
        out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int32)
        for k0 in range(0, k, INT8_EXACT_K_INT):
            part = int_mm(
                _as_tensor(torch, a[:, k0 : k0 + INT8_EXACT_K_INT]),
                _as_tensor(torch, b[k0 : k0 + INT8_EXACT_K_INT]),
            )
            np.add(out, part.numpy(), out=out, dtype=np.int32)  # int32 addition wraps, as the adder does
        return out

    def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # read-only operands (the engine's views of weights) are only read
            warnings.simplefilter("ignore", UserWarning)
            if a.ndim == 2 and b.ndim == 2:
                return mm2(a, b)
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a = np.broadcast_to(a, (*batch, *a.shape[-2:]))
            b = np.broadcast_to(b, (*batch, *b.shape[-2:]))
            out = np.empty((*batch, a.shape[-2], b.shape[-1]), dtype=np.int32)
            for i in np.ndindex(*batch):
                out[i] = mm2(a[i], b[i])
            return out

    exact = int_mm is not None and _exact_on_this_cpu(gemm)
    _INTEGER_GEMM.append(gemm if exact else None)
    return _INTEGER_GEMM[0]


def _as_tensor(torch, x: np.ndarray):
    """A 2-D numpy array as a tensor sharing its memory when its layout is row- or column-major (with any
    leading dimension), a contiguous copy otherwise: `torch._int_mm` takes only those layouts (it returns
    garbage for a broadcast's zero stride, where `np.broadcast_to` gives one)."""
    rows, cols = x.shape
    r, c = (s // x.itemsize for s in x.strides)
    if not ((c == 1 and r >= max(cols, 1)) or (r == 1 and c >= max(rows, 1))):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x)


def _exact_on_this_cpu(gemm) -> bool:
    """Whether `gemm` gives the exact products of the int8 extremes (where int16 intermediate sums of
    ``u8 * s8`` pairs saturate), of random matrices, of odd and empty shapes, of strided, transposed and
    broadcast views, and past one K chunk."""
    rng = np.random.default_rng(20261203)

    def ints(*shape: int) -> np.ndarray:
        return rng.integers(-128, 128, shape, dtype=np.int8)

    cases = [
        (np.full((17, 64), x, np.int8), np.full((64, 9), y, np.int8))
        for x in (127, -128)
        for y in (127, -128)
    ]
    cases += [
        (ints(m, k), ints(k, n)) for m, k, n in ((1, 1, 1), (3, 7, 5), (33, 300, 65), (0, 4, 3), (4, 0, 3))
    ]
    cases += [
        (ints(40, 90)[3:30, 5:77], ints(9, 72).T),  # a window of a wider array; a transposed one
        (ints(20, 30)[::2, ::3], ints(10, 6)),  # no unit stride
        (np.broadcast_to(ints(1, 16), (5, 16)), ints(16, 4)),  # a zero stride
        (ints(2, INT8_EXACT_K_INT + 9), ints(INT8_EXACT_K_INT + 9, 3)),  # two K chunks
        (ints(3, 4, 20), ints(20, 6)),  # batched
    ]
    try:
        for a, b in cases:
            got = gemm(a, b)
            want = np.matmul(a.astype(np.int64), b.astype(np.int64))
            if got.dtype != np.int32 or got.shape != want.shape or not np.array_equal(got, want):
                return False
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _macs(a: np.ndarray, b: np.ndarray) -> int:
    """Multiply-accumulates of the batched product ``a @ b``."""
    return int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), dtype=np.int64)) * int(
        a.shape[-2] * a.shape[-1] * b.shape[-1]
    )


def matmul_acc(a: np.ndarray, b: np.ndarray, dtype: DType) -> np.ndarray:
    """Batched ``a @ b`` as the DPE computes it: int8 -> exact int32 sums (`int8_matmul_exact`), fp16/bf16 ->
    the exact sum of the products rounded once to fp32 (float64 holds every fp16 product exactly and their sum
    to 53 bits)."""
    if dtype == DType.INT8:
        return int8_matmul_exact(a, b)
    # IEEE results, not numpy warnings: beyond FP32 is +-inf, inf * 0 and inf - inf are NaN
    with np.errstate(over="ignore", invalid="ignore"):
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)


def add_acc(acc: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Accumulator add: INT32 wraps like the hardware adder; FP32 rounds."""
    if acc.dtype == np.int32:  # numpy's int32 addition wraps (two's complement), as the adder does
        return np.add(acc, other.astype(np.int32, copy=False), dtype=np.int32)
    return (acc.astype(np.float32) + other.astype(np.float32)).astype(np.float32)


def reciprocal32(scale: float) -> np.float32:
    """The FP32 multiplier a quantizer uses for `scale` (1/scale computed in float64, rounded once)."""
    return np.float32(1.0 / float(scale))


def quantize(
    x: np.ndarray, scale, zero_point, out: DType = DType.INT8, stats: ConversionStats | None = None
) -> np.ndarray:
    """``q = saturate(round_half_even(float32(x) * float32(1/scale)) + zero_point)`` in FP32, as the SE (and
    torch's ``quantized_decomposed.quantize_per_tensor``) computes it; NaN gives the zero point.

    `scale` and `zero_point` are scalars, or arrays that broadcast against `x` (per-row scales)."""
    lo, hi = _int_range(out)
    xf = to_float32(x)
    recip = (1.0 / np.asarray(scale, dtype=np.float64)).astype(np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.asarray(xf * recip)
        np.rint(q, out=q)
        q = np.asarray(q + zp)  # a new array this function owns (`zp` may broadcast it further)
    finite = np.isfinite(xf)
    # the common case, every input, scale and zero point finite: no NaN can arise, and the saturated values are
    # counted only if the extremes leave the range (a few passes over the data fewer)
    clean = bool(finite.all()) and bool(np.isfinite(recip).all()) and bool(np.isfinite(zp).all())
    if stats is not None:
        stats.converted += xf.size
        if not clean:
            stats.nonfinite += int(xf.size - np.count_nonzero(finite))
            stats.saturated += int(np.count_nonzero(finite & ((q < lo) | (q > hi))))
        elif q.size and (q.min() < lo or q.max() > hi):
            stats.saturated += int(np.count_nonzero((q < lo) | (q > hi)))
    if not clean:
        nan = np.isnan(q)
        if nan.any():
            np.copyto(q, np.broadcast_to(zp, q.shape), where=nan)
    if max(-lo, hi) <= FP32_EXACT_INT:  # the bounds are FP32 values: saturate in FP32
        return np.clip(q, lo, hi, out=q).astype(out.numpy)
    return np.clip(q.astype(np.float64), lo, hi).astype(out.numpy)


def row_scales(amax: np.ndarray) -> np.ndarray:
    """Symmetric int8 scales of rows with max |x| `amax`: ``float32(amax) * float32(1/127)``, 1 where 0."""
    s = np.asarray(amax, dtype=np.float32) * np.float32(1.0 / INT8_MAX)
    return np.where(s > 0, s, np.float32(1)).astype(np.float32)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


@functools.cache
def overflow_threshold(out: DType) -> float:
    """The smallest FP32 magnitude that float dtype `out` rounds (to nearest even) to infinity: a bisection
    over the FP32 bit patterns from 1.0 to inf, rounding to `out` being monotone in magnitude."""
    lo, hi = int(np.float32(1).view(np.uint32)), int(np.float32(np.inf).view(np.uint32))
    while hi - lo > 1:  # invariant: lo rounds to a finite value, hi to inf
        mid = (lo + hi) // 2
        with np.errstate(over="ignore"):
            to_inf = np.isinf(np.uint32(mid).view(np.float32).astype(out.numpy).astype(np.float32))
        lo, hi = (lo, mid) if to_inf else (mid, hi)
    return float(np.uint32(hi).view(np.float32))


def cast(x: np.ndarray, out: DType, stats: ConversionStats | None = None) -> np.ndarray:
    """Convert to `out`: floats round to nearest even (overflowing to +-inf); integers round half to even
    and saturate (NaN gives 0)."""
    if out.is_float:
        xf = to_float32(x)
        if out == DType.FP16:
            y = _half_convert(xf, np.float16)
        else:
            with np.errstate(over="ignore"):
                y = xf.astype(out.numpy)
        if stats is not None and out != DType.FP32:  # NaN/Inf stay what they are; only overflow is new
            stats.converted += xf.size
            big = np.float32(overflow_threshold(out))  # every |x| from here on (inf included) becomes inf
            with np.errstate(invalid="ignore"):
                # counted only when the extremes reach it (a NaN extreme compares false: counted too)
                if xf.size and not (xf.max() < big and xf.min() > -big):
                    reached = np.count_nonzero(np.abs(xf) >= big)
                    stats.overflow += int(reached - np.count_nonzero(np.isinf(xf)))
        return y
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        lo, hi = _int_range(out)
        xi = np.asarray(x, dtype=np.int64)
        if stats is not None:
            stats.converted += xi.size
            stats.saturated += int(np.count_nonzero((xi < lo) | (xi > hi)))
        return np.clip(xi, lo, hi).astype(out.numpy)
    return quantize(x, 1.0, 0, out, stats)


def matmul_epilogue(
    acc: np.ndarray,
    out: DType,
    *,
    scales: np.ndarray | None = None,
    row_scales: np.ndarray | None = None,
    post_bias: np.ndarray | None = None,
    out_scale: float | None = None,
    out_zero_point: int = 0,
    activation: str | None = None,
    segments: int = 64,
    stats: ConversionStats | None = None,
) -> np.ndarray:
    """A MatMul block's conversion (see `isa.MatMul`): ``v = float32(acc)``, times the per-row then the
    per-column scales, plus the float bias, the activation, then `quantize` with `out_scale` (integer output)
    or a cast (float output), each step in FP32.

    `acc` [blocks, tm, tn] int32 or fp32 (integer bias and partials included); `scales` and `post_bias`
    [blocks, 1, tn] fp32; `row_scales` [blocks, tm, 1] fp32.
    """
    v = acc.astype(np.float32)  # a copy: the steps below work in place, each rounded to FP32
    with np.errstate(over="ignore", invalid="ignore"):
        for vector, step in ((row_scales, np.multiply), (scales, np.multiply), (post_bias, np.add)):
            if vector is None:
                continue
            vector = vector.astype(np.float32, copy=False)
            if np.broadcast_shapes(v.shape, vector.shape) == v.shape:
                step(v, vector, out=v)
            else:
                v = step(v, vector)
    if activation is not None:
        v = elementwise(activation, v, segments=segments)
    if not out.is_float:
        return quantize(v, 1.0 if out_scale is None else out_scale, out_zero_point, out, stats)
    return cast(v, out, stats)


def fbgemm_rows_dequantize(rows: np.ndarray, dim: int) -> np.ndarray:
    """FBGEMM int8 TBE rows ([n, 4 + dim] uint8: fp16 scale, fp16 bias, then dim uint8) -> fp32 [n, dim]."""
    head = np.ascontiguousarray(rows[:, :4]).view(np.float16).astype(np.float32)
    scale, bias = head[:, 0:1], head[:, 1:2]
    q = rows[:, 4 : 4 + dim].astype(np.float32)
    q *= scale  # FP32 multiply, then FP32 add, in place
    q += bias
    return q


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


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """FP32 fused multiply-add ``a*b + c`` rounded once (float64 holds the product of two FP32 exactly)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def unpack_nibbles(packed: np.ndarray, dim: int) -> np.ndarray:
    """[n, ceil(dim/2)] uint8 of 4-bit values -> [n, dim] uint8 (element 2i in the low nibble of byte i)."""
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), dtype=np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :dim]


def quantized_rows_split(
    rows: np.ndarray, fmt: RowFormat, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantized rows of `fmt` -> (q [n, dim] fp32, scale [n, 1] fp32, bias [n, 1] fp32)."""
    values, qparams = fmt.layout(dim)
    sb = np.ascontiguousarray(rows[:, qparams]).view(fmt.qparams_dtype.numpy).astype(np.float32)
    q = unpack_nibbles(rows[:, values], dim) if fmt.bits == 4 else rows[:, values]
    return q.astype(np.float32), sb[:, 0:1], sb[:, 1:2]


def fused_rows_dequantize(rows: np.ndarray, fmt: RowFormat, dim: int) -> np.ndarray:
    """Rows of a fused-dequantize format (`FUSED_DEQUANTIZE`) -> fp32 [n, dim]: ``fma(scale, q, bias)`` (the
    first step of a pooled sum)."""
    q, scale, bias = quantized_rows_split(rows, fmt, dim)
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


# formats pooled as FBGEMM's CPU kernels pool them: per row ``acc = fma(scale*w, q, acc + bias*w)``
FUSED_DEQUANTIZE = frozenset({RowFormat.INT8_ATEN, RowFormat.INT4_ATEN, RowFormat.INT4_FBGEMM})


def rows_to_float(rows: np.ndarray, fmt: RowFormat, dim: int) -> np.ndarray:
    """Stored rows of `fmt` -> fp32 [n, dim] values."""
    if fmt == RowFormat.INT8_FBGEMM:
        return fbgemm_rows_dequantize(rows, dim)
    if fmt in FUSED_DEQUANTIZE:
        return fused_rows_dequantize(rows, fmt, dim)
    return np.asarray(rows[:, :dim], dtype=np.float32)


def _bag_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _add_in_bag_order(vals: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FP32 [bags, dim]: each bag's rows of `vals` (in bag order) added one after another to a zero sum. The
    bags are taken longest first, so the bags still adding a row at each position are a leading slice."""
    longest = int(lengths.max(initial=0))
    order = np.argsort(-lengths, kind="stable")
    starts = _bag_starts(lengths)[order]
    longer = np.bincount(lengths, minlength=longest + 1)[::-1].cumsum()[::-1]  # bags of at least l rows
    acc = np.zeros((lengths.size, vals.shape[1]), dtype=np.float32)
    for pos in range(longest):
        n = int(longer[pos + 1])
        acc[:n] += vals[starts[:n] + pos]
    out = np.empty_like(acc)
    out[order] = acc
    return out


def _sum_in_order(rows: np.ndarray, fmt: RowFormat, dim: int, lengths: np.ndarray, w) -> np.ndarray:
    """Each bag's rows accumulated one after another, as FBGEMM's and ATen's CPU kernels do."""
    fused = fmt in FUSED_DEQUANTIZE
    if not fused and w is None:
        return _add_in_bag_order(np.asarray(rows[:, :dim], dtype=np.float32), lengths)
    out = np.zeros((lengths.size, dim), dtype=np.float32)
    starts = _bag_starts(lengths)
    if fused:
        q, scale, bias = quantized_rows_split(rows, fmt, dim)
        if w is not None:
            scale, bias = scale * w[:, None], bias * w[:, None]
    else:
        x = np.asarray(rows[:, :dim], dtype=np.float32)
    for pos in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > pos)
        r = starts[live] + pos
        acc = out[live]
        if fused:
            out[live] = fma32(np.broadcast_to(scale[r], (r.size, dim)), q[r], acc + bias[r])
        else:
            out[live] = fma32(np.broadcast_to(w[r, None], (r.size, dim)), x[r], acc)
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
        # in bag order: numpy's add.reduceat sums a bag of 4 rows pairwise, one FP32 rounding away from it
        out = _add_in_bag_order(vals, lengths)
    else:
        out = _sum_in_order(rows, fmt, dim, lengths, w)
    if mode == PoolMode.MEAN:
        out[nz] = out[nz] / lengths[nz, None].astype(np.float32)
    return out


def elementwise(
    op: str, x: np.ndarray, y: np.ndarray | None = None, *, segments: int = 64, **attrs
) -> np.ndarray:
    """An elementwise operator of the operator set, FP32 in and out, as the SE computes it."""
    spec = ELEMENTWISE[Kind(op)]
    xf = np.asarray(x, dtype=np.float32)
    if spec.arity == 2:
        return spec.chip(xf, np.asarray(y, dtype=np.float32), segments=segments, **attrs)
    out = spec.chip(xf, segments=segments, **attrs)
    special = ~np.isfinite(xf)
    if special.any():
        # the SE's special-value table: a non-finite input gives what PyTorch gives for it (a LUT alone would
        # saturate at its edge, and silu(-inf) would be -inf where PyTorch's is NaN)
        import torch

        # each value alone (PyTorch's scalar path: its vectorized gelu gives NaN at +inf, this +inf, the limit)
        values = xf[special]
        ref = np.array([spec.torch(torch.tensor([v]), **attrs).item() for v in values.tolist()], np.float32)
        out = np.array(out, dtype=np.float32, copy=True)
        out[special] = ref
    return out


def reduce_rows(x: np.ndarray, op: str) -> np.ndarray:
    """The SE's row reduction of [rows, cols] values (docs/numerics.md): sum accumulates in FP32 in column
    order (`cumsum` is sequential), mean divides that sum by cols in FP32, max/min give NaN for a row holding
    one. Returns [rows] FP32."""
    xf = np.asarray(x, dtype=np.float32)
    rows, cols = xf.shape
    if cols == 0:
        return np.zeros(rows, np.float32)
    with np.errstate(all="ignore"):
        if op in ("sum", "mean"):
            total = np.cumsum(xf, axis=1, dtype=np.float32)[:, -1]
            return (total / np.float32(cols)).astype(np.float32) if op == "mean" else total
        fn = np.max if op == "max" else np.min  # np.max/np.min propagate NaN
        return fn(xf, axis=1).astype(np.float32)
