"""`torch.compile(model, backend="mtiasim")` against eager: a plain nn.EmbeddingBag model and torchrec DLRM_DCN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtiasim
from mtiasim import workloads
from mtiasim.runtime.backend import last_model, last_report

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:fbgemm_gpu")


class BagModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.eb = nn.EmbeddingBag(500, 16, mode="sum")
        self.eb.weight.data = torch.rand(500, 16, generator=g) - 0.5
        self.fc = nn.Linear(16 + 8, 4)

    def forward(self, dense, idx, off):
        return torch.sigmoid(self.fc(torch.cat([dense, self.eb(idx, off)], dim=1)))


def _bag_inputs(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (batch,), generator=g)
    idx = torch.randint(0, 500, (int(lengths.sum()),), generator=g)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    return torch.rand(batch, 8, generator=g), idx, off


def test_registered_on_import():
    assert "mtiasim" in torch._dynamo.list_backends()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_torch_compile_embedding_bag_model(precision):
    torch._dynamo.reset()
    model = BagModel().eval()
    compiled = torch.compile(model, backend=mtiasim.backend(precision=precision, mode="both"))
    for seed in (0, 1):  # the second call reuses the compiled program on new indices
        args = _bag_inputs(12, seed)
        with torch.no_grad():
            got = compiled(*args)
            ref = model(*args)
        assert got.shape == ref.shape
        assert last_model().check()["passed"]  # within the numerics specification's bound of fp32
        if seed == 0:  # the same numbers as mtiasim.compile, calibrated on the same (first) inputs
            assert torch.equal(
                got, mtiasim.compile(model, args, mode="functional", precision=precision)(*args)
            )
    report = last_report()
    assert report is not None and report.latency_s > 0 and report.batch == 12
    kinds = {op.kind for op in report.ops}
    assert {"tbe", "gemm"} <= kinds  # the lookups and the FC ran on the simulated chip


def test_torch_compile_torchrec_dlrm_dcn():
    torch._dynamo.reset()
    w = workloads.build("dlrm-v2-mlperf", batch=8, seed=0, max_rows=2000, materialize=True)
    compiled = torch.compile(w.model, backend="mtiasim")
    with torch.no_grad():
        got = compiled(*w.example_inputs)
        ref = w.model(*w.example_inputs)
    assert got.shape == ref.shape
    direct = mtiasim.compile(w.model, w.example_inputs, mode="functional")
    assert torch.equal(got, direct(*w.example_inputs)) and direct.check()["passed"]


class Counter(nn.Module):
    """A forward whose only work is a side effect on its own buffer: Dynamo hands over a graph with no outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)


@pytest.mark.parametrize("mode", ["functional", "both"])
def test_graph_with_no_outputs_runs_as_a_no_op(mode):
    torch._dynamo.reset()
    model = Counter()
    compiled = torch.compile(model, backend=mtiasim.backend(mode=mode))
    for _ in range(3):
        assert compiled(torch.rand(5, 4)) is None
    assert model.calls.item() == 3  # the side effect happened once per call, as in eager
    report = last_report()
    assert report is not None and report.ops == [] and report.device_s == 0 and report.macs == 0
    assert report.batch == 0 and report.samples_per_s is None  # the graph takes no data: no throughput
    doc = report.to_json()
    assert doc["ops"] == [] and doc["samples_per_s"] is None
    if mode == "both":
        assert report.latency_s == pytest.approx(report.host_s)  # the host's one op, nothing crossed PCIe
    else:
        assert last_model().check() == {
            "reference": "the model in fp32 (PyTorch)",
            "max_abs_err": 0.0,
            "max_bound": 0.0,
            "max_err_over_bound": 0.0,
            "max_sigma": 0.0,
            "max_err_over_sigma": 0.0,
            "elements": 0,
            "unbounded": 0,
            "nonfinite_reference": 0,
            "outside": 0,
            "passed": True,
            "outputs": [],
        }


def test_functional_run_claims_no_time():
    torch._dynamo.reset()
    model = BagModel().eval()
    compiled = torch.compile(model, backend="mtiasim")  # functional by default
    with torch.no_grad():
        compiled(*_bag_inputs(12, 0))
    report = last_report()
    assert report.computed and not report.timed
    assert report.latency_s is None and report.samples_per_s is None
    doc = report.to_json()
    for key in ("latency_us", "samples_per_s", "host_us", "h2d_us", "device_us", "d2h_us", "bound"):
        assert doc[key] is None, key
    assert doc["attribution_us"] == {} and "samples_per_s_per_w" not in doc
    assert (
        str(report)
        == "dynamo_graph batch 12 on mtia-v1 (int8, functional, event): not timed (functional mode)"
    )
