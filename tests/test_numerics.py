"""Datapath numerics against torch: rounding, saturation, integer exactness, LUT error, FBGEMM rows."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine import numerics as nx

pytest.importorskip("torchao.quantization.pt2e")  # registers torch.ops.quantized_decomposed

floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def torch_quantize_fp32(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """The SE's quantization in torch ops: FP32 multiply by the FP32 reciprocal, round half to even, saturate."""
    q = torch.round(x.float() * torch.tensor(1.0 / scale, dtype=torch.float32)) + zp
    return torch.clamp(q, -128, 127).to(torch.int8)


@given(st.lists(floats, min_size=1, max_size=200), st.floats(1e-3, 50), st.integers(-20, 20))
def test_quantize_matches_torch(values, scale, zp):
    x = np.array(values, dtype=np.float32)
    scale = float(np.float32(scale))
    ours = nx.quantize(x, scale, zp)
    assert np.array_equal(ours, torch_quantize_fp32(torch.from_numpy(x), scale, zp).numpy())
    # PyTorch's PT2E quantize op computes exactly this
    ref = torch.ops.quantized_decomposed.quantize_per_tensor(
        torch.from_numpy(x), scale, zp, -128, 127, torch.int8
    )
    assert np.array_equal(ours, ref.numpy())


def test_quantize_reports_nan_inf_and_saturation():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, 300.0, -129.0, 127.4], dtype=np.float32)
    stats = nx.ConversionStats()
    q = nx.quantize(x, 1.0, 0, stats=stats)
    assert q.tolist() == [0, 127, -128, 1, 127, -128, 127]
    assert (stats.converted, stats.nonfinite, stats.saturated) == (7, 3, 2)


@given(
    bits=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=200),
    small=st.lists(st.floats(-300, 300, width=32), min_size=0, max_size=200),
    scale=st.sampled_from([1.0, 0.5, 3e-3, 1e-30, 0.0, float("inf"), float("nan")]),
    zp=st.sampled_from([0, -3, 5]),
)
def test_quantize_counts_are_their_definitions(bits, small, scale, zp):
    """`quantize`'s counts are the definitions, whatever the data: non-finite inputs, and finite inputs whose
    rounded value leaves the int8 range; NaN gives the zero point. Random FP32 bit patterns (NaN, inf, huge),
    values near the range and scales of 0, inf and NaN (a NaN or infinite reciprocal)."""
    x = np.concatenate([np.array(bits, dtype=np.uint32).view(np.float32), np.array(small, dtype=np.float32)])
    stats = nx.ConversionStats()
    with np.errstate(divide="ignore"):
        q = nx.quantize(x, scale, zp, stats=stats)
        recip = np.float32(np.float64(1.0) / np.float64(scale)) if scale else np.float32(np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.rint(x * recip) + np.float32(zp)
        finite = np.isfinite(x)
        assert stats.converted == x.size and stats.nonfinite == int((~finite).sum())
        assert stats.saturated == int((finite & ((r < -128) | (r > 127))).sum())
    assert np.array_equal(
        q, np.where(np.isnan(r), zp, np.clip(np.nan_to_num(r, nan=0.0), -128, 127)).astype(np.int8)
    )


def test_fp16_cast_reports_overflow():
    stats = nx.ConversionStats()
    y = nx.cast(np.array([65504.0, 65520.0, 1e6, np.nan], np.float32), DType.FP16, stats)
    assert np.isinf(y[1:3]).all() and y[0] == 65504.0
    assert (stats.overflow, stats.nonfinite) == (2, 0)  # a NaN stays a NaN: nothing is lost


@pytest.mark.parametrize("out", [DType.FP16, DType.BF16])
@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300), near=st.integers(-4, 4))
def test_cast_overflow_count_is_the_finite_values_made_inf(out, bits, near):
    """Every finite value the cast makes infinite is counted once, and nothing else: random FP32 bit patterns
    (NaN and inf included) and the patterns around the overflow threshold."""
    edge = int(np.float32(nx.overflow_threshold(out)).view(np.uint32)) + near
    x = np.array([*bits, edge, edge | 2**31], dtype=np.uint32).view(np.float32)
    stats = nx.ConversionStats()
    with np.errstate(over="ignore"):
        y = nx.cast(x, out, stats).astype(np.float32)
    assert stats.overflow == int(np.count_nonzero(np.isfinite(x) & np.isinf(y)))


def test_overflow_thresholds_are_the_formats_rounding_midpoints():
    # halfway between the largest finite value and 2^emax+1: 65504 + 16 (fp16), 0x7F7F + half a step (bf16)
    assert nx.overflow_threshold(DType.FP16) == 65520.0
    assert np.float32(nx.overflow_threshold(DType.BF16)).view(np.uint32) == 0x7F7F8000


def test_round_half_to_even_and_saturation():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, 1000.0, -1000.0], dtype=np.float32)
    assert nx.quantize(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2, 126, 127, 127, -128]


@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_int8_matmul_exact(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    ours = nx.matmul_acc(a, b, DType.INT8)
    ref = (torch.from_numpy(a).long() @ torch.from_numpy(b).long()).numpy()
    assert ours.dtype == np.int32 and np.array_equal(ours, ref)


layouts = st.sampled_from(["contiguous", "window", "transposed", "broadcast", "every_other"])


def _laid_out(x: np.ndarray, layout: str, rng) -> np.ndarray:
    """`x`'s values in another memory layout (the views the engine hands a product)."""
    m, k = x.shape
    if layout == "window":  # rows of a wider, taller array
        big = rng.integers(-128, 128, (m + 3, k + 5), dtype=np.int8)
        big[2 : 2 + m, 4 : 4 + k] = x
        return big[2 : 2 + m, 4 : 4 + k]
    if layout == "transposed":
        return np.ascontiguousarray(x.T).T
    if layout == "broadcast" and m > 0:  # one row repeated by a zero stride
        return np.broadcast_to(x[:1], x.shape)
    if layout == "every_other":
        big = np.zeros((2 * m, 2 * k), dtype=np.int8)
        big[::2, ::2] = x
        return big[::2, ::2]
    return x


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 40), st.integers(0, 1500), st.integers(0, 40), layouts, layouts,
    st.sampled_from(["random", "extremes"]), st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_int8_products_are_exact_by_integer_gemm_and_by_float_blas(m, k, n, la, lb, values, seed):
    """int8 x int8 -> int32 sums, exact: PyTorch's integer GEMM where it is exact on this CPU (int8 operands)
    and float BLAS in K chunks (float32 operands) give the int64 product's bits, for any layout of the
    operands (windows, transposes, a broadcast's zero stride, no unit stride) and the extremes -128 and 127."""
    rng = np.random.default_rng(seed)
    if values == "extremes":
        a = rng.choice(np.array([-128, 127], np.int8), (m, k))
        b = rng.choice(np.array([-128, 127], np.int8), (k, n))
    else:
        a, b = rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8)
    a, b = _laid_out(a, la, rng), _laid_out(b, lb, rng)
    want = a.astype(np.int64) @ b.astype(np.int64)
    for got in (nx.int8_matmul_exact(a, b), nx.int8_matmul_exact(a.astype(np.float32), b.astype(np.float32))):
        assert got.dtype == np.int32 and np.array_equal(got, want)


def test_integer_gemm_is_used_only_where_it_is_exact():
    """The probe turns down an int8 GEMM that saturates int16 sums of u8 x s8 pairs (oneDNN's kernels on CPUs
    without VNNI) or that misreads a zero stride; it takes an exact one."""

    def exact(a, b):
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.int32)

    def saturating(a, b):  # pairs of (a + 128) * b summed in int16 with saturation, then the offset taken off
        u = a.astype(np.int64) + 128
        prods = u[..., :, :, None] * b.astype(np.int64)[..., None, :, :]
        k = prods.shape[-2] - prods.shape[-2] % 2
        pairs = np.clip(prods[..., :k:2, :] + prods[..., 1:k:2, :], -32768, 32767).sum(axis=-2)
        pairs = pairs + prods[..., k:, :].sum(axis=-2)
        return (pairs - 128 * b.astype(np.int64).sum(axis=-2)[..., None, :]).astype(np.int32)

    def ignores_zero_strides(a, b):
        return exact(np.ascontiguousarray(a[:1]).repeat(a.shape[0], axis=0) if 0 in a.strides else a, b) + (
            1 if 0 in a.strides else 0
        )

    assert nx._exact_on_this_cpu(exact)
    assert not nx._exact_on_this_cpu(saturating)
    assert not nx._exact_on_this_cpu(ignores_zero_strides)


@pytest.mark.skipif(
    not (torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()), reason="no VNNI or AMX int8"
)
def test_integer_gemm_runs_the_products_on_a_cpu_with_int8_dot_products():
    """Where the CPU has VNNI or AMX int8 dot products PyTorch's integer GEMM passes the probe, so functional
    runs multiply int8 operands as they are (~27 % of a DLRM-v2 B2048 call saved)."""
    assert nx.integer_gemm() is not None


def test_epilogue_quantizes_after_the_activation():
    """int8 output: dequantize per column, activation, then quantize with the output scale (not before)."""
    acc = np.arange(-600, 600, 7, dtype=np.int32).reshape(1, 1, -1)
    col = np.full((1, 1, acc.shape[-1]), 0.01, np.float32)
    got = nx.matmul_epilogue(acc, DType.INT8, scales=col, out_scale=1 / 127, activation="tanh")
    v = acc.astype(np.float32) * np.float32(0.01)
    ref = nx.quantize(nx.lut_apply(v, "tanh", 64), 1 / 127, 0)
    assert np.array_equal(got, ref)
    assert np.abs(got.astype(float) / 127 - np.tanh(acc * 0.01)).max() <= 1 / 254 + nx.TANH_MAX_ABS_ERROR


@pytest.mark.parametrize(
    "name, fn, bound",
    [
        ("tanh", np.tanh, nx.TANH_MAX_ABS_ERROR),
        ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), nx.SIGMOID_MAX_ABS_ERROR),
    ],
)
def test_lut_error_is_as_documented(name, fn, bound):
    x = np.linspace(-20, 20, 400001, dtype=np.float32)
    err = np.abs(nx.lut_apply(x, name, 64).astype(np.float64) - fn(x.astype(np.float64)))
    assert err.max() <= bound
    assert err.max() > bound / 4  # the bound is tight, not a blanket


@given(st.integers(1, 30), st.integers(1, 64), st.integers(0, 2**31 - 1))
def test_fbgemm_rows_roundtrip(rows, dim, seed):
    w = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32) * 3
    packed = nx.fbgemm_rows_quantize(w)
    assert packed.dtype == np.uint8 and packed.shape == (rows, dim + 4)
    head = packed[:, :4].copy().view(np.float16).astype(np.float32)
    back = nx.fbgemm_rows_dequantize(packed, dim)
    # each element within half a quantization step (plus fp16 rounding of the bias)
    assert np.all(np.abs(back - w) <= head[:, 0:1] * 0.5 + np.abs(head[:, 1:2]) * 2**-10 + 1e-6)


def test_fp32_accumulation_of_fp16():
    a = np.full((1, 4096), 1.0, np.float16)
    b = np.full((4096, 1), 1.0, np.float16)
    # fp16 accumulation would stall at 2048; the DPE accumulates in fp32
    assert nx.matmul_acc(a, b, DType.FP16)[0, 0] == 4096.0


def test_fp16_conversions_through_pytorch_keep_numpys_bits():
    """With torch loaded, large fp16 <-> fp32 conversions go through it: the same bits as numpy's astype,
    specials, subnormals, ties, overflow and NaN payloads (signaling ones included) alike."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 3 * nx.HALF_CONVERT_MIN, dtype=np.uint64).astype(np.uint32)
    specials = np.array(
        [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0x477FEFFF, 0x477FF000],
        dtype=np.uint32,
    )  # inf, -inf, quiet and signaling NaNs, the largest value that stays finite in fp16, the first that does not
    wide = np.concatenate([bits, specials]).view(np.float32)
    # fp16 ties and subnormals: every fp16 value, and every midpoint between neighbours
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        mids = (halves.astype(np.float64)[:-1] + halves.astype(np.float64)[1:]) / 2
        wide = np.concatenate([wide, halves.astype(np.float32), mids.astype(np.float32)])
        ref16 = wide.astype(np.float16)
    assert np.array_equal(nx.cast(wide, DType.FP16).view(np.uint16), ref16.view(np.uint16))
    assert np.array_equal(nx.to_float32(halves).view(np.uint32), halves.astype(np.float32).view(np.uint32))
    assert np.array_equal(nx.to_float32(ref16).view(np.uint32), ref16.astype(np.float32).view(np.uint32))
    finite = wide[np.isfinite(wide)]  # no NaN anywhere (the conversion's fast path), both ways
    assert np.array_equal(
        nx.cast(finite, DType.FP16).view(np.uint16), finite.astype(np.float16).view(np.uint16)
    )
    finite16 = ref16[~np.isnan(ref16)]
    assert np.array_equal(
        nx.to_float32(finite16).view(np.uint32), finite16.astype(np.float32).view(np.uint32)
    )


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_fbgemm_int8_bags_add_their_rows_in_bag_order(weighted, mode):
    """docs/numerics.md: f32(f32(q * scale) + bias), times the weight, added in bag order to an FP32 zero. A sum
    in another order (numpy's add.reduceat adds a bag of 4 rows pairwise) is an FP32 rounding away from it."""
    from mtiasim.isa.commands import PoolMode, RowFormat

    rng = np.random.default_rng(11)
    table = nx.fbgemm_rows_quantize(rng.normal(0.0, 2.0, (97, 50)).astype(np.float32))
    lengths = rng.integers(0, 13, 300)
    lengths[:4] = [0, 1, 4, 12]
    idx = rng.integers(0, 97, int(lengths.sum()))
    w = rng.uniform(0.5, 1.5, idx.size).astype(np.float32) if weighted else None
    got = nx.pool_rows(table[idx], RowFormat.INT8_FBGEMM, 50, lengths, PoolMode(mode), w)
    head = table[:, :4].copy().view(np.float16).astype(np.float32)
    want = np.zeros((lengths.size, 50), np.float32)
    at = 0
    for b, n in enumerate(lengths):
        acc = np.zeros(50, np.float32)
        for r in idx[at : at + n]:
            row = table[r, 4:].astype(np.float32) * head[r, 0] + head[r, 1]  # two FP32 roundings
            acc = acc + (row * w[at] if weighted else row)
            at += 1 if weighted else 0
        if not weighted:
            at += n
        want[b] = acc / np.float32(n) if mode == "mean" and n else acc
    np.testing.assert_array_equal(got, want)
