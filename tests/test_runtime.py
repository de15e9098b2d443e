"""Whole models on the simulated chip: compile, run, compare with torch; reports and errors."""

import json

import pytest
import torch
from torch import nn

import mtiasim
from mtiasim.cli import main
from mtiasim.errors import CapacityError, UnsupportedOperatorError, UsageError


class MlpEmb(nn.Module):
    """A small recommendation model: bottom MLP, EmbeddingBags, concat, top MLP."""

    def __init__(self, dense_in, widths, tables, dim, mode, top, act, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers, w = [], dense_in
        for width in widths:
            layers += [nn.Linear(w, width), nn.ReLU()]
            w = width
        self.bottom = nn.Sequential(*layers)
        self.ebs = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode=mode) for rows in tables)
        for eb in self.ebs:
            eb.weight.data = torch.rand(eb.weight.shape, generator=g) - 0.5
        self.top = nn.Linear(w + dim * len(tables), top)
        self.act = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[act]
        for p in list(self.bottom.parameters()) + list(self.top.parameters()):
            p.data = (torch.rand(p.shape, generator=g) - 0.5) * (2.0 / max(1, p.shape[-1]) ** 0.5)

    def forward(self, x, indices, offsets):
        parts = [self.bottom(x)] + [eb(i, o) for eb, i, o in zip(self.ebs, indices, offsets, strict=True)]
        return self.act(self.top(torch.cat(parts, dim=1)))


def _inputs(batch, tables, pooling, dense_in, seed):
    g = torch.Generator().manual_seed(seed)
    idx, off = [], []
    for rows in tables:
        lengths = torch.randint(0, pooling + 1, (batch,), generator=g)
        idx.append(torch.randint(0, rows, (int(lengths.sum()),), generator=g))
        off.append(torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]]))
    return torch.rand(batch, dense_in, generator=g), idx, off


# random models against torch: tests/test_fuzz_numerics.py (bit-exact int8 oracle, bounds for every precision)


def test_call_with_new_inputs_and_timing_report():
    model = MlpEmb(13, [32, 16], [100, 50, 30], 16, "sum", 1, "sigmoid", 0).eval()
    args = _inputs(8, [100, 50, 30], 3, 13, 0)
    cm = mtiasim.compile(model, args, mode="both", precision="int8")
    cm(*args)
    first = cm.report
    args2 = _inputs(8, [100, 50, 30], 3, 13, 1)  # other bag sizes: index lengths are dynamic
    got = cm(*args2)
    assert got.shape == model(*args2).shape and cm.check()["passed"]
    rep = cm.report
    assert rep.computed and rep.latency_s > rep.device_s > 0
    assert rep.latency_s == pytest.approx(rep.host_s + rep.h2d_s + rep.device_s + rep.d2h_s)
    assert sum(rep.attribution_s.values()) == pytest.approx(rep.latency_s, rel=1e-6)
    kinds = {op.kind for op in rep.ops}
    assert {"tbe", "gemm"} <= kinds
    # the lookups and the bottom MLP run side by side on disjoint sub-grids
    tbe = next(op for op in rep.ops if op.kind == "tbe")
    bottom = [op for op in rep.ops if op.lane == "dense" and op.kind == "gemm"]
    assert bottom and any(op.start_us < tbe.end_us and tbe.start_us < op.end_us for op in bottom)
    assert first.device_s > 0
    doc = rep.to_json()
    assert doc["latency_us"] > 0 and doc["samples_per_s"] == pytest.approx(8 / rep.latency_s, rel=1e-3)


def test_timing_mode_returns_zeros_of_the_right_shape():
    model = MlpEmb(5, [8], [20], 4, "sum", 3, "relu", 0).eval()
    args = _inputs(4, [20], 2, 5, 0)
    cm = mtiasim.compile(model, args)
    out = cm(*args)
    assert out.shape == (4, 3) and not out.any() and not cm.report.computed


def test_unsupported_operator_is_reported_with_its_module():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.topk(self.fc(x), 2).values

    with pytest.raises(UnsupportedOperatorError, match=r"operator aten::topk has no MTIA kernel \(module "):
        mtiasim.compile(M(), (torch.rand(2, 4),))


def test_wrong_input_shape_is_one_line():
    model = MlpEmb(5, [8], [20], 4, "sum", 3, "relu", 0).eval()
    cm = mtiasim.compile(model, _inputs(4, [20], 2, 5, 0))
    with pytest.raises(UsageError) as err:
        cm(*_inputs(6, [20], 2, 5, 0))
    assert "\n" not in str(err.value)


def test_index_out_of_range():
    model = MlpEmb(5, [8], [20], 4, "sum", 3, "relu", 0).eval()
    x, idx, off = _inputs(4, [20], 2, 5, 0)
    cm = mtiasim.compile(model, (x, idx, off))
    bad = [torch.full_like(idx[0], 25)]
    with pytest.raises(
        UsageError, match=r"lookup .* \(module ebs.0 .*\): index 25 is outside the table's rows \[0, 20\)$"
    ):
        cm(x, bad, off)


def test_out_of_memory_names_the_buffer():
    from mtiasim.hw import load_chip

    chip = load_chip("mtia-v1").with_values({"dram.bytes": 1 << 20, "sram.bytes": 1 << 20})
    model = MlpEmb(5, [8], [200_000], 16, "sum", 3, "relu", 0).eval()
    with pytest.raises(CapacityError, match=r"does not fit LPDDR5"):
        mtiasim.compile(model, _inputs(4, [200_000], 2, 5, 0), chip=chip)


def test_cli_run_check_json(capsys):
    code = main(
        ["run", "dlrm-kaggle", "--batch", "16", "--check", "--max-rows", "1000", "--warmup", "0", "--json"]
    )
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads(out)
    chk = res["check"]
    assert chk["passed"] and chk["max_abs_err"] <= chk["max_bound"] and chk["max_err_over_bound"] <= 1
    assert res["latency_us"] > 0 and res["samples_per_s"] > 0
    assert {
        "reference",
        "max_abs_err",
        "max_rel_err",
        "max_bound",
        "max_err_over_bound",
        "max_sigma",
        "max_err_over_sigma",
        "elements",
        "unbounded",
        "nonfinite_reference",
        "outside",
        "passed",
    } == set(chk)
    assert chk["elements"] == 16 and chk["unbounded"] == chk["outside"] == chk["nonfinite_reference"] == 0
    assert [o["output"] for o in res["numerics"]["outputs"]] and res["numerics"]["passed"]


def test_cli_unknown_workload(capsys):
    assert main(["run", "dlrm-nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtiasim: error: ") and "dlrm-kaggle" in err and err.count("\n") == 1
