"""Models quantized with PyTorch's own PT2E flow (torchao's prepare_pt2e / convert_pt2e): mtiasim honours
their quantize/dequantize nodes and int8 weights instead of quantizing again (docs/numerics.md section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mtiasim
from mtiasim.runtime.bounds import error_bounds

pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")


def quantize_pt2e(model: nn.Module, example: tuple, calibration: list[tuple]) -> nn.Module:
    exported = torch.export.export(model, example, strict=False).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = pt2e.prepare_pt2e(exported, quantizer)
    for batch in calibration:
        prepared(*batch)
    return pt2e.convert_pt2e(prepared)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)).eval()


def test_pt2e_mlp_runs_with_its_own_scales_and_weights():
    model = _mlp()
    x = torch.randn(64, 16)
    q = quantize_pt2e(model, (x,), [(torch.randn(64, 16),) for _ in range(4)])
    cm = mtiasim.compile(q, (x,), mode="functional")
    graph = cm.compiled.graph
    linears = [n for n in graph.nodes if n.op == "linear"]
    assert len(linears) == 3 and all("x_quant" in n.attrs for n in linears)
    assert not [n for n in graph.nodes if n.op in ("quantize", "dequantize")]  # all absorbed by the FCs
    # the device holds the model's own int8 weights, not a re-quantization of them
    frozen = [v for k, v in q.state_dict().items() if v.dtype == torch.int8]
    ours = [
        b.data for b in cm.compiled.lowered.buffers.values() if b.role == "weight" and b.dtype.value == "int8"
    ]
    assert len(ours) == 3 and all(any(np.array_equal(o, f.numpy()) for f in frozen) for o in ours)
    got = cm(x)
    with torch.no_grad():
        fake_quant, fp32 = q(x), model(x)
    # PT2E's own quantization, not ours: far closer to its fake-quant model than to the float model. The
    # int8 arithmetic differs only in rounding (INT32 bias, folded scales): an intermediate int8 value then
    # lands one step apart now and then (a few % of the outputs move by more than the fp16 rounding)
    to_pt2e = (got - fake_quant).abs()
    to_fp32 = (got - fp32).abs()
    assert float(to_pt2e.mean()) < 0.1 * float(to_fp32.mean()), (float(to_pt2e.mean()), float(to_fp32.mean()))
    assert float((to_pt2e <= 2**-10 * float(fake_quant.abs().max())).float().mean()) > 0.9
    values = cm.captured.host(cm.captured.flat_inputs((x,), {}))
    assert error_bounds(cm.compiled, values)[0].check(got)["passed"]


def test_pt2e_dlrm_with_embedding_bags():
    """The zoo's DLRM (Kaggle configuration, small tables) through PT2E: zero points, the interaction in fp16."""
    from mtiasim import workloads

    w = workloads.build("dlrm-kaggle", batch=64, max_rows=500, materialize=True, seed=0)
    calib = [workloads.build("dlrm-kaggle", batch=64, max_rows=500, materialize=True, seed=s).example_inputs
             for s in (1, 2)]  # fmt: skip
    q = quantize_pt2e(w.model, w.example_inputs, calib)
    cm = mtiasim.compile(q, w.example_inputs, mode="both")
    zps = {n.attrs["x_quant"][1] for n in cm.compiled.graph.nodes if n.op == "linear"}
    assert any(z != 0 for z in zps)  # asymmetric activations (uint8 in PT2E) are taken as they are
    got = cm(*w.example_inputs)
    with torch.no_grad():
        fake_quant = q(*w.example_inputs)
    assert float((got - fake_quant).abs().max()) < 2e-3
    assert cm.report.latency_s > 0


def test_pt2e_quantize_before_a_non_fc_op_is_kept():
    """A quantize/dequantize pair that feeds no FC runs on the SE as the model says (fake quantization)."""

    class M(nn.Module):
        def forward(self, x):
            q = torch.ops.quantized_decomposed.quantize_per_tensor(x, 0.05, 3, -128, 127, torch.int8)
            return torch.ops.quantized_decomposed.dequantize_per_tensor(q, 0.05, 3, -128, 127, torch.int8) * 2

    x = torch.randn(8, 40) * 3
    cm = mtiasim.compile(M(), (x,), mode="functional", precision="fp16")
    assert [n.op for n in cm.compiled.graph.nodes][:2] == ["quantize", "dequantize"]
    with pytest.warns(mtiasim.NumericsWarning, match=r"of 320 value\(s\) saturated"):
        got = cm(x)  # 3 sigma of x reaches past 127 * 0.05
    # fp16 precision: the input crosses as fp16, is quantized and dequantized as the model says, doubled
    assert torch.equal(got, M()(x.half().float()).half().float())
