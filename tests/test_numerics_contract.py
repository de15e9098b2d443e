"""Regressions of issue 8's numeric findings (items 1, 2, 8 and 9) and the quantization a user can choose."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mtiasim
from mtiasim import NumericsWarning, UsageError
from mtiasim.compiler.precision import quantize_weight


class Bags(nn.Module):
    """An EmbeddingBag (optionally weighted) feeding an FC: the int8 path's quantization points."""

    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bag = nn.EmbeddingBag(50, 8, mode="sum")
        self.fc = nn.Linear(8, 3)
        self.weighted = weighted

    def forward(self, idx, off, psw=None):
        return self.fc(self.bag(idx, off, per_sample_weights=psw))


def _bags(batch: int, pooling: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 50, (batch * pooling,), generator=g)
    return idx, torch.arange(0, batch * pooling, pooling)


def _conversions(cm) -> dict:
    return {k: vars(v) for k, v in cm.report.conversions.items()}


def test_nan_input_is_reported_not_silently_dropped():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = torch.randn(4, 6)
    cm = mtiasim.compile(m, (x,), mode="functional")
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.warns(
        NumericsWarning, match=r"^model Sequential: op input_q .*: 1 NaN/Inf input value\(s\)$"
    ):
        out = cm(bad)
    assert torch.isfinite(out).all()  # int8 has no NaN: the hardware's rule (docs/numerics.md section 3) ...
    assert _conversions(cm)["input_q"]["nonfinite"] == 1  # ... and it is counted, per op
    assert cm.report.to_json()["numerics_warnings"] == [w for w in cm.report.numerics_warnings]
    # fp16 keeps the NaN where PyTorch has it: visible, so no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericsWarning)
        out16 = mtiasim.compile(m, (x,), mode="functional", precision="fp16")(bad)
    assert torch.equal(torch.isnan(out16), torch.isnan(m(bad)))


def test_nan_per_sample_weight_is_reported():
    m = Bags(weighted=True).eval()
    idx, off = _bags(4, 3)
    psw = torch.rand(idx.numel())
    cm = mtiasim.compile(m, (idx, off, psw), mode="functional")
    psw2 = psw.clone()
    psw2[0] = float("nan")
    with pytest.warns(NumericsWarning, match=r"NaN/Inf input value\(s\)"):
        cm(idx, off, psw2)


def test_inf_in_the_example_inputs_calibrates_on_the_finite_values():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    x = torch.randn(16, 6)
    x[3, 1] = float("inf")
    with pytest.warns(NumericsWarning, match=r"calibration: input held 1 NaN/Inf value\(s\)"):
        cm = mtiasim.compile(m, (x,), mode="functional")
    clean = torch.randn(16, 6)
    out = cm(clean)
    assert out.unique(dim=0).shape[0] == 16  # not every output identical (the scale is not inf)
    with torch.no_grad():
        assert float((out - m(clean)).abs().max()) < 0.05


def test_saturation_beyond_calibration_warns_and_multi_batch_calibration_fixes_it():
    m = Bags().eval()
    small = _bags(8, 2)  # bags of 2 ...
    big = _bags(8, 6, seed=1)  # ... then bags of 6: pooled sums three times larger
    cm = mtiasim.compile(m, small, mode="functional")
    with pytest.warns(NumericsWarning, match=r"value\(s\) saturated"):
        cm(*big)
    assert _conversions(cm)["embedding_bag_pooled_q"]["saturated"] > 0
    calibrated = mtiasim.compile(m, small, mode="functional", calibration=[small, big])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericsWarning)
        out = calibrated(*big)
    assert calibrated.check()["passed"] and calibrated.report.conversions == {}
    assert float((out - m(*big)).abs().max()) < float((cm(*big) - m(*big)).abs().max())


@pytest.mark.parametrize("scheme", ["static", "dynamic", "static,per-tensor", "dynamic,per-tensor"])
def test_quantization_schemes_are_within_their_bounds(scheme):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(30, 20), nn.Sigmoid(), nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3)).eval()
    x = torch.randn(64, 30) * torch.logspace(-2, 1, 64)[:, None]  # rows of very different scales
    cm = mtiasim.compile(m, (x,), mode="both", quantization=scheme)
    cm(x)
    res = cm.check()
    assert res["passed"], res
    kinds = {op.kind for op in cm.report.ops}
    assert ("quantize" in kinds) and (cm.report.latency_s > 0)


def test_dynamic_rows_beat_static_on_rows_of_different_scales():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    x = torch.randn(64, 30) * torch.logspace(-3, 1, 64)[:, None]
    ref = m(x)
    rel = {}
    for scheme in ("static", "dynamic"):
        out = mtiasim.compile(m, (x,), mode="functional", quantization=scheme)(x)
        rel[scheme] = float(((out - ref).abs() / ref.abs().amax(dim=1, keepdim=True)).max())
    assert rel["dynamic"] < rel["static"] / 4, rel


def test_quantization_argument_errors():
    m = nn.Sequential(nn.Linear(4, 2)).eval()
    x = torch.randn(2, 4)
    with pytest.raises(UsageError, match=r"^quantization: unknown scheme 'per-row' \(known: static, dynamic"):
        mtiasim.compile(m, (x,), quantization="per-row")
    with pytest.raises(UsageError, match=r"^model Sequential: calibration must be a non-empty list"):
        mtiasim.compile(m, (x,), calibration=[])
    with pytest.raises(UsageError, match=r"^calibration batch 0: model Sequential: the inputs do not match"):
        mtiasim.compile(m, (x,), calibration=[(x, x)])
    with pytest.raises(UsageError, match=r"check\(\) compares the last call's numbers"):
        mtiasim.compile(m, (x,)).check()


def test_out_of_range_example_indices_are_a_usage_error():
    m = Bags().eval()
    idx, off = _bags(4, 3)
    with pytest.raises(
        UsageError, match=r"^op embedding_bag_pooled .* index 1\d\d is outside the table's rows \[0, 50\)$"
    ):
        mtiasim.compile(m, (idx + 100, off), mode="functional")


def test_float_indices_at_call_time_are_refused_like_eager():
    m = Bags().eval()
    idx, off = _bags(4, 3)
    cm = mtiasim.compile(m, (idx, off))
    with pytest.raises(
        UsageError,
        match=r"lookup embedding_bag_pooled table 0 \(module bag .*\): indices must be an integer tensor, got torch.float32$",
    ):
        cm(idx.float(), off)
    with pytest.raises(RuntimeError):
        m(idx.float(), off)


def test_a_weight_with_nan_cannot_be_quantized():
    m = nn.Sequential(nn.Linear(4, 2)).eval()
    m[0].weight.data[0, 0] = float("nan")
    with pytest.raises(UsageError, match=r"holds NaN or Inf: int8 quantization needs finite weights"):
        mtiasim.compile(m, (torch.randn(2, 4),))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0), (2, 4)])
def test_a_weight_with_nan_or_inf_anywhere_cannot_be_quantized(bad, where):
    w = torch.randn(3, 5)
    w[where] = bad
    with pytest.raises(
        UsageError, match=r"^an FC weight holds NaN or Inf: int8 quantization needs finite weights$"
    ):
        quantize_weight(w)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_weight_quantization_is_the_documented_formula(per_tensor):
    """scale = f32(max|w| / 127) per row (1 for a zero row), q = saturate(round-half-even(w * f32(1 / scale))):
    rows of mixed signs, a negative extreme, signed zeros, subnormals, a zero row, odd sizes, fp16 weights."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(9, 13, generator=g) * torch.logspace(-30, 30, 9).reshape(9, 1)
    w[1] = -w[1].abs()  # the extreme is negative
    w[2] = 0.0
    w[3, :4] = torch.tensor([-0.0, 0.0, 1e-45, -1e-45])
    w[4] = torch.tensor([127.0, -63.5, 0.5, -0.5, 1.5, 2.5] + [0.0] * 7)  # ties round to even
    for weights in (w, w.clamp(-6e4, 6e4).to(torch.float16).to(torch.float32)):
        x = weights.numpy().astype(np.float32)
        amax = np.abs(x).max(axis=1)
        if per_tensor:
            amax = np.full_like(amax, amax.max())
        scales = np.where(amax > 0, amax.astype(np.float64) / 127, 1.0).astype(np.float32)
        recip = (1.0 / scales.astype(np.float64)).astype(np.float32)
        want = np.clip(np.rint(x * recip[:, None]), -127, 127).astype(np.int8)
        q, s = quantize_weight(weights, per_tensor)
        assert q.dtype == np.int8 and s.dtype == np.float32
        np.testing.assert_array_equal(s, scales)
        np.testing.assert_array_equal(q, want)
    assert quantize_weight(torch.zeros(0, 4))[0].shape == (0, 4)


@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.Tanh()])
def test_an_inf_input_meeting_a_weight_stored_as_zero_is_unbounded_after_a_fused_activation(act):
    # fp16 weights: +-1e-8 is stored as 0, and the chip's inf * 0 is NaN where fp32 gives inf * 1e-8 = +-inf.
    # The FC's fused sigmoid/tanh of that NaN is NaN on the chip, +-1 or 0 in fp32: the bound must leave the
    # element unbounded, not cap it at the function's range (found by make fuzz: linear, sigmoid, relu)
    m = nn.Sequential(nn.Linear(2, 3, bias=False), act).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1e-8, 0.5], [0.25, 0.5], [-1e-8, 0.25]]))
    x = torch.tensor([[float("inf"), 1.0], [0.5, -1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # IEEE results, not numpy's RuntimeWarnings
        cm = mtiasim.compile(m, (x,), mode="functional", precision="fp16")
        got = cm(x)
    assert torch.isnan(got[0, 0]) and torch.isnan(got[0, 2])  # the chip's inf * 0
    with torch.no_grad():
        assert torch.isfinite(m(x)[0]).all()  # fp32: no NaN
    res = cm.check()
    assert res["passed"], res
    assert res["outputs"][0]["unbounded"] == 3  # row 0: inf * 0.25 and inf * 1e-8 are unbounded too
