"""INT8 bit-exactness: the simulated chip against an independent INT8 reference in plain torch integer ops.

The reference implements the scheme `compiler/precision.py` documents, from its description only: weights
symmetric per output channel (scale max|w|/127), activations symmetric per tensor (scale max|x|/127 over the
calibration inputs, the same example inputs), INT32 accumulation, INT32 bias at s_x*s_w, epilogue
fp32(acc + bias) * fp32(s_x*s_w/s_y) -> activation -> round half to even, saturate (int8 between FCs) or fp16
(the model output). Graph inputs cross PCIe as fp16 and are quantized on the SE in fp32.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import mtiasim
from mtiasim.runtime.run import TOLERANCE


def _round_saturate_int8(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(v.to(torch.float64)), -128, 127).to(
        torch.int32
    )  # torch.round: ties to even


def int8_mlp_reference(layers: list[nn.Linear], relu: list[bool], x: torch.Tensor) -> torch.Tensor:
    """The int8 forward of Linear(+ReLU) layers, integer ops only between the layers."""
    # calibration: max |value| of each FC input in fp32, as the compiler measures on the example inputs
    amax, h = [], x
    with torch.no_grad():
        for lin, r in zip(layers, relu, strict=True):
            amax.append(float(h.abs().max()))
            h = lin(h)
            h = torch.relu(h) if r else h
    s_in = [a / 127 if a > 0 else 1.0 for a in amax]
    x_dev = x.to(torch.float16).to(torch.float32)  # the host converts inputs to the device's fp16
    q = _round_saturate_int8(x_dev / torch.tensor(s_in[0], dtype=torch.float32))
    for i, (lin, r) in enumerate(zip(layers, relu, strict=True)):
        w = lin.weight.detach().to(torch.float32)
        w_amax = w.abs().amax(dim=1)
        s_w = torch.where(w_amax > 0, w_amax / 127, torch.ones_like(w_amax))  # fp32, per output channel
        w_q = torch.clamp(torch.round(w / s_w[:, None]), -127, 127).to(torch.int64)
        acc = q.to(torch.int64) @ w_q.T  # exact
        s_acc = s_in[i] * s_w.to(torch.float64)
        if lin.bias is not None:
            acc = acc + torch.round(lin.bias.detach().to(torch.float64) / s_acc).to(torch.int64)
        acc32 = acc.to(torch.int32).to(torch.float32)
        last = i == len(layers) - 1
        out_scale = (s_acc / (1.0 if last else s_in[i + 1])).to(torch.float32)
        v = acc32 * out_scale
        v = torch.relu(v) if r else v
        if last:
            return v.to(torch.float16).to(torch.float32)
        q = _round_saturate_int8(v)
    raise AssertionError("no layers")


def _mlp(widths: list[int], relu: list[bool], bias: bool, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for k, n, r in zip(widths, widths[1:], relu, strict=False):
        lin = nn.Linear(k, n, bias=bias)
        lin.weight.data = (torch.rand(lin.weight.shape, generator=g) - 0.5) * (2 / k**0.5)
        if bias:
            lin.bias.data = torch.rand(n, generator=g) - 0.5
        mods.append(lin)
        if r:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 48),
    widths=st.lists(st.integers(1, 96), min_size=2, max_size=5),
    relu_bits=st.integers(0, 15),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_int8_mlp_is_bit_exact(batch, widths, relu_bits, bias, seed):
    relu = [bool(relu_bits >> i & 1) for i in range(len(widths) - 1)]
    model = _mlp(widths, relu, bias, seed)
    x = torch.randn(batch, widths[0], generator=torch.Generator().manual_seed(seed + 1))
    got = mtiasim.compile(model, (x,), mode="functional", precision="int8")(x)
    ref = int8_mlp_reference([m for m in model if isinstance(m, nn.Linear)], relu, x)
    assert torch.equal(got, ref), f"max diff {float((got - ref).abs().max()):.3g}"
    with torch.no_grad():
        fp32 = model(x)
    # the documented tolerance is for outputs in (0, 1); relative to the output's range here
    assert float((got - fp32).abs().max()) <= 5 * TOLERANCE["int8"] * max(1.0, float(fp32.abs().max()))


def test_int8_reference_detects_a_one_step_difference():
    """The comparison is sensitive: one int8 step in one weight changes the output."""
    model = _mlp([32, 16, 8], [True, False], True, 3)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    got = mtiasim.compile(model, (x,), mode="functional", precision="int8")(x)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    ref = int8_mlp_reference(layers, [True, False], x)
    assert torch.equal(got, ref)
    w = layers[1].weight.data
    s = w.abs().amax(dim=1) / 127
    w[0, 0] += s[0] * (1.0 if w[0, 0] < 0 else -1.0)  # one int8 step, inside the range
    assert not torch.equal(int8_mlp_reference(layers, [True, False], x), ref)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_float_precisions_round_as_stated(precision):
    """fp16/bf16 FCs: within the stated tolerance of fp32, and not bit-equal to it (rounding is real)."""
    model = _mlp([64, 64, 8], [True, False], True, 5)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    got = mtiasim.compile(model, (x,), mode="functional", precision=precision)(x)
    with torch.no_grad():
        ref = model(x)
    err = float((got - ref).abs().max())
    assert 0 < err <= TOLERANCE[precision] * max(1.0, float(ref.abs().max()))
