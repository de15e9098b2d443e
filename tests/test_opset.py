"""The operator set (`mtiasim.opset`): every elementwise operator compiles from PyTorch, runs on the SE in
every precision within the numerics specification's bound, and is benchmarked; the tables are complete."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtiasim
from mtiasim.bench.ops import UNARY, bench_op
from mtiasim.opset import ELEMENTWISE, LUT_FUNCTIONS, Kind, lut_apply, require

# how a model writes each operator (inputs made positive where the function needs it)
UNARY_CALLS = {
    Kind.RELU: torch.relu,
    Kind.SIGMOID: torch.sigmoid,
    Kind.TANH: torch.tanh,
    Kind.ERF: torch.erf,
    Kind.GELU: F.gelu,
    Kind.SILU: F.silu,
    Kind.EXP: torch.exp,
    Kind.EXPM1: torch.expm1,
    Kind.LOG: lambda v: torch.log(v.abs() + 0.5),
    Kind.LOG1P: lambda v: torch.log1p(v.abs()),
    Kind.SQRT: lambda v: torch.sqrt(v.abs() + 0.25),
    Kind.RSQRT: lambda v: torch.rsqrt(v.abs() + 0.25),
    Kind.ABS: torch.abs,
    Kind.NEG: torch.neg,
    Kind.LEAKY_RELU: lambda v: F.leaky_relu(v, 0.2),
    Kind.CLAMP: lambda v: torch.clamp(v, -0.5, 0.75),
    Kind.POW: lambda v: v**2,
    Kind.SIN: torch.sin,
    Kind.COS: torch.cos,
    Kind.RECIPROCAL: lambda v: torch.reciprocal(v.abs() + 0.5),
    Kind.LOG2: lambda v: torch.log2(v.abs() + 0.5),
    Kind.HARDTANH: lambda v: F.hardtanh(v, -0.5, 2.0),
    Kind.HARDSIGMOID: F.hardsigmoid,
}
BINARY_CALLS = {
    Kind.ADD: lambda a, b: a - b,
    Kind.MUL: lambda a, b: a * b,
    Kind.DIV: lambda a, b: a / (b.abs() + 1.0),
    Kind.MAXIMUM: torch.maximum,
    Kind.MINIMUM: torch.minimum,
    # masks: comparisons as 1.0/0.0 (used as numbers and to select), torch.where, masked_fill
    Kind.GT: lambda a, b: (a > b).float() * a + b,
    Kind.GE: lambda a, b: torch.where(a >= b, a, b * 0.5),
    Kind.LT: lambda a, b: (a < 0.25).to(a.dtype) - b,
    Kind.LE: lambda a, b: torch.where(a <= b, 1.5, b),
    Kind.EQ: lambda a, b: torch.where(torch.logical_not(a > b), a, b),
    Kind.NE: lambda a, b: torch.where((a != b) & (b > 0), a * b, b),
    Kind.KEEP: lambda a, b: torch.where(a > 0, a, b),
    Kind.FILL: lambda a, b: a.masked_fill(b > 0.3, -1.5),
}


def test_every_elementwise_operator_has_a_test_here():
    assert set(UNARY_CALLS) | set(BINARY_CALLS) == set(ELEMENTWISE)


class Unary(nn.Module):
    def __init__(self, fn, k: int = 24, n: int = 17) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.fn = nn.Linear(k, n), nn.Linear(n, 5), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x))) + self.fn(x[:, :5])  # after an FC (fused if it can be) and alone


class Binary(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.c, self.fn = nn.Linear(24, 17), nn.Linear(24, 17), nn.Linear(17, 5), fn

    def forward(self, x):
        return self.c(self.fn(self.a(x), self.b(x)))


@pytest.mark.parametrize("precision", ["int8", "fp16", "bf16"])
@pytest.mark.parametrize("kind", list(UNARY_CALLS) + list(BINARY_CALLS), ids=str)
def test_operator_in_a_model_is_within_its_bound(kind, precision):
    model = (Unary(UNARY_CALLS[kind]) if kind in UNARY_CALLS else Binary(BINARY_CALLS[kind])).eval()
    x = torch.randn(33, 24)
    cm = mtiasim.compile(model, (x,), mode="functional", precision=precision)
    assert {n.op for n in cm.compiled.graph.nodes} & {kind.value, "linear"}
    cm(x)
    res = cm.check()
    assert res["passed"], res
    assert res["max_abs_err"] > 0 or kind in (Kind.ABS, Kind.NEG)  # rounding is real


@pytest.mark.parametrize("op", UNARY)
def test_every_unary_operator_is_a_benchmark_that_passes_its_check(op):
    res = bench_op(op, m=8, k=16, n=32, mode="both")
    assert res["check"]["passed"], res["check"]
    assert res["seconds"] > 0 and res["bound"] in ("compute", "sram", "dispatch", "latency")


LUT_KINDS = [Kind.SIGMOID, Kind.TANH, Kind.ERF, Kind.GELU, Kind.SILU]
MATH_DOMAINS = {Kind.EXP: (-20, 20), Kind.EXPM1: (-20, 20), Kind.LOG: (1e-3, 1e4), Kind.LOG1P: (-0.9, 1e4),
                Kind.SQRT: (0, 1e4), Kind.RSQRT: (1e-3, 1e4)}  # fmt: skip


@pytest.mark.parametrize("kind", LUT_KINDS + list(MATH_DOMAINS), ids=str)
def test_chip_errors_are_as_documented(kind):
    """The documented error holds (SE lookup tables over [-20, 20], math functions over their domain) and is
    tight (not a blanket)."""
    spec = ELEMENTWISE[kind]
    lo, hi = MATH_DOMAINS.get(kind, (-20, 20))
    x = np.linspace(lo, hi, 200001, dtype=np.float32)
    got = spec.chip(x, segments=64).astype(np.float64)
    ref = spec.torch(torch.from_numpy(x.astype(np.float64))).numpy()
    err = np.abs(got - ref)
    allowed = spec.abs_error + spec.in_rel_error * np.abs(x) + spec.rel_error * np.abs(ref)
    assert (err <= allowed).all(), float((err - allowed).max())
    if kind in LUT_KINDS:  # a table's error is a property of the table: the documented figure is tight
        assert (err > allowed / 4).any()


def test_lut_knots_are_the_function_rounded_to_fp32():
    for name, fn in LUT_FUNCTIONS.items():
        knots = np.linspace(-8, 8, 65)
        assert np.array_equal(lut_apply(knots.astype(np.float32), name, 64), fn(knots).astype(np.float32))


def test_a_layer_without_a_rule_fails_at_import():
    with pytest.raises(
        ImportError, match=r"^somewhere has no rule for operator\(s\) attention, cast, cat, .*mtiasim.opset"
    ):
        require({"linear"}, "somewhere")


def test_every_kernel_kind_has_one_record_in_the_kernel_table(monkeypatch):
    from mtiasim.compiler import kernel_table
    from mtiasim.compiler.kinds import LOWERING_ONLY, KernelKind

    assert set(kernel_table.KERNELS) == set(KernelKind) - LOWERING_ONLY
    monkeypatch.delitem(kernel_table.KERNELS, KernelKind.REDUCE)
    with pytest.raises(ImportError, match=r"no record for kernel kind\(s\) reduce"):
        kernel_table._check_table()


def test_sub_of_two_activations_and_scalar_forms():
    class M(nn.Module):
        def forward(self, x, y):
            return torch.clamp((x - 2 * y) / 3.0, max=1.5) * 0.5 + torch.maximum(x, y) ** 3

    x, y = torch.randn(9, 11), torch.randn(9, 11)
    for precision in ("fp16", "int8"):
        cm = mtiasim.compile(M(), (x, y), mode="functional", precision=precision)
        got = cm(x, y)
        assert got.shape == (9, 11) and cm.check()["passed"]
    assert math.isfinite(float(got.abs().max()))


def test_ops_command_lists_the_operator_set(capsys):
    import json

    from mtiasim.cli import main

    assert main(["ops", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["op"] for r in res["ops"]} == {k.value for k in Kind}
    assert "aten::gelu" in res["aten_converted"] and "aten::linear" in res["aten_converted"]
    gelu = next(r for r in res["ops"] if r["op"] == "gelu")
    assert gelu["unit"] == "se" and gelu["epilogue"] and gelu["abs_error"] == ELEMENTWISE[Kind.GELU].abs_error
