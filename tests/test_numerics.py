"""Datapath numerics against torch: rounding, saturation, integer exactness, LUT error, FBGEMM rows."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine import numerics as nx

floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def torch_quantize_fp32(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """The SE's quantization in torch ops: FP32 division, round half to even, saturate."""
    q = torch.round(x.float() / torch.tensor(scale, dtype=torch.float32)) + zp
    return torch.clamp(q, -128, 127).to(torch.int8)


@given(st.lists(floats, min_size=1, max_size=200), st.floats(1e-3, 50), st.integers(-20, 20))
def test_quantize_matches_torch(values, scale, zp):
    x = np.array(values, dtype=np.float32)
    scale = float(np.float32(scale))
    ours = nx.quantize(x, scale, zp)
    assert np.array_equal(ours, torch_quantize_fp32(torch.from_numpy(x), scale, zp).numpy())
    # torch.quantize_per_tensor scales in double: it may differ by one step on exact FP32 ties, never more
    ref = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, torch.qint8).int_repr().numpy()
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


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


def test_requantize_matches_torch_rounding():
    acc = np.arange(-5000, 5000, 7, dtype=np.int32)
    scale = 0.0371
    ours = nx.requantize_acc(acc, scale, DType.INT8)
    ref = torch.clamp(torch.round(torch.from_numpy(acc).double() * scale), -128, 127).to(torch.int8).numpy()
    assert np.array_equal(ours, ref)


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
