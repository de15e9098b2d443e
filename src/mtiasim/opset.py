"""The operator set: one entry per device operator, the one place each layer asks about it.

Every operator of the compiler's graph (`Kind`) has an `OpSpec`: what it computes, which unit runs it, and,
for an elementwise operator, everything about it in one `Elementwise` record: how the chip computes it (an
FP32 numpy function the engine runs, LUT or math library), its PyTorch reference, the aten ops that become
it, its SE cost per element and its error against the exact function (the numerics specification's
bound rule, docs/numerics.md). The front end, the reference interpreter, the compiler, the engine, the error
bounds and the benchmarks all read these records, and each checks at import that it handles every `Kind`:
adding an elementwise operator is one `Elementwise` entry here, and a missing piece is an import error.

This module sits at the bottom of the layers (it imports numpy and nothing of ours but `dtypes`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Unit(StrEnum):
    """Where an operator runs: a PE's units, the host CPU, or nowhere (a view of other bytes)."""

    DPE = "dpe"
    SE = "se"
    MLU = "mlu"
    DMA = "dma"
    HOST = "host"
    VIEW = "view"


class Kind(StrEnum):
    """The operators of the compiler's graph (`mtiasim.ir`)."""

    LINEAR = "linear"
    MATMUL = "matmul"
    ATTENTION = "attention"
    EMBEDDING_BAG = "embedding_bag"
    TBE = "tbe"
    CAT = "cat"
    CAST = "cast"
    RESHAPE = "reshape"
    PERMUTE = "permute"
    SLICE = "slice"
    INDEX = "index"
    COPY = "copy"
    QUANTIZE = "quantize"
    DEQUANTIZE = "dequantize"
    REDUCE = "reduce"
    HOST_CALL = "host_call"
    JAGGED_TO_DENSE = "jagged_to_dense"
    DENSE_TO_JAGGED = "dense_to_jagged"
    IM2COL = "im2col"
    GATHER_ROWS = "gather_rows"
    SCATTER_ROWS = "scatter_rows"
    # elementwise (see ELEMENTWISE)
    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    GELU = "gelu"
    SILU = "silu"
    ERF = "erf"
    EXP = "exp"
    EXPM1 = "expm1"
    LOG = "log"
    LOG1P = "log1p"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    ABS = "abs"
    NEG = "neg"
    SIN = "sin"
    COS = "cos"
    RECIPROCAL = "reciprocal"
    LOG2 = "log2"
    HARDTANH = "hardtanh"
    HARDSIGMOID = "hardsigmoid"
    LEAKY_RELU = "leaky_relu"
    CLAMP = "clamp"
    POW = "pow"
    ADD = "add"
    MUL = "mul"
    DIV = "div"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    EQ = "eq"
    NE = "ne"
    KEEP = "keep"
    FILL = "fill"


# ----------------------------------------------------------------------------------- SE lookup tables
LUT_RANGE = 8.0
U32 = 2.0**-24


def lut_table(name: str, segments: int) -> np.ndarray:
    """The SE's table for `name`: fp32 values of the function at `segments` + 1 knots over [-8, 8]."""
    knots = -LUT_RANGE + np.arange(segments + 1, dtype=np.float64) * (2 * LUT_RANGE / segments)
    return LUT_FUNCTIONS[name](knots).astype(np.float32)


def lut_apply(x: np.ndarray, name: str, segments: int) -> np.ndarray:
    """Piecewise-linear LUT in FP32: ``t = (clamp(x, -8, 8) + 8) * (segments / 16)``,
    ``j = min(floor(t), segments - 1)``, ``y = v[j] + (t - j) * (v[j+1] - v[j])``, every step rounded to FP32.
    NaN stays NaN."""
    vals = lut_table(name, segments)
    diffs = (vals[1:] - vals[:-1]).astype(np.float32)
    xf = np.asarray(x, dtype=np.float32)
    nan = np.isnan(xf)
    xc = np.clip(np.where(nan, np.float32(0), xf), np.float32(-LUT_RANGE), np.float32(LUT_RANGE))
    t = (xc + np.float32(LUT_RANGE)) * np.float32(segments / (2 * LUT_RANGE))
    j = np.minimum(np.floor(t), np.float32(segments - 1)).astype(np.int64)
    frac = t - j.astype(np.float32)
    y = vals[j] + frac * diffs[j]
    return np.where(nan, np.float32(np.nan), y).astype(np.float32)


def _gelu64(v: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * v * (1.0 + np.vectorize(erf)(v / math.sqrt(2.0)))


def _erf64(v: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf)(v)


LUT_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "erf": _erf64,
    "gelu_inner": lambda v: _gelu64(v) - np.maximum(v, 0.0),  # gelu(x) - relu(x): small, -> 0 at both ends
    "gelu_tanh_inner": lambda v: (
        0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3))) - np.maximum(v, 0.0)
    ),
}


# ------------------------------------------------------------------------------------- elementwise
def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _math32(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """An FP32 math-library function (range reduction and a polynomial on the SE, within 4 ulp)."""

    def chip(x: np.ndarray, **_: Any) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(_f32(x)).astype(np.float32)

    return chip


def _lut(name: str) -> Callable[..., np.ndarray]:
    def chip(x: np.ndarray, *, segments: int, **_: Any) -> np.ndarray:
        return lut_apply(x, name, segments)

    return chip


def _gelu_chip(x: np.ndarray, *, segments: int, approximate: str = "none", **_: Any) -> np.ndarray:
    """gelu(x) = relu(x) + (gelu(x) - relu(x)): the LUT holds the bounded part (exact enough beyond +-8);
    `approximate="tanh"` has a table of its own."""
    xf = _f32(x)
    table = "gelu_tanh_inner" if approximate == "tanh" else "gelu_inner"
    return (np.where(xf < 0, np.float32(0), xf) + lut_apply(xf, table, segments)).astype(np.float32)


def _silu_chip(x: np.ndarray, *, segments: int, **_: Any) -> np.ndarray:
    """silu(x) = x * sigmoid(x), the sigmoid from its LUT."""
    xf = _f32(x)
    with np.errstate(all="ignore"):
        return (xf * lut_apply(xf, "sigmoid", segments)).astype(np.float32)


def _relu_chip(x: np.ndarray, **_: Any) -> np.ndarray:
    xf = _f32(x)
    return np.where(xf < 0, np.float32(0), xf)


def _leaky_chip(x: np.ndarray, *, negative_slope: float = 0.01, **_: Any) -> np.ndarray:
    xf = _f32(x)
    with np.errstate(all="ignore"):
        return np.where(xf < 0, xf * np.float32(negative_slope), xf).astype(np.float32)


def _clamp_chip(x: np.ndarray, *, min: float | None = None, max: float | None = None, **_: Any) -> np.ndarray:  # noqa: A002
    y = _f32(x)
    if min is not None:
        y = np.where(y < np.float32(min), np.float32(min), y)
    if max is not None:
        y = np.where(y > np.float32(max), np.float32(max), y)
    return y.astype(np.float32)


def _pow_chip(x: np.ndarray, *, exponent: float = 1.0, **_: Any) -> np.ndarray:
    """x ** c: exact products for small integer c (repeated multiplication), else exp(c log x) in FP32."""
    xf = _f32(x)
    with np.errstate(all="ignore"):
        c = float(exponent)
        if c == int(c) and 0 <= c <= 4:
            y = np.ones_like(xf)
            for _i in range(int(c)):
                y = (y * xf).astype(np.float32)
            return y
        return np.power(xf, np.float32(c)).astype(np.float32)


def _add_chip(x: np.ndarray, y: np.ndarray, *, alpha: float = 1.0, **_: Any) -> np.ndarray:
    """x + alpha * y: one FP32 add (after an FP32 multiply when alpha is not 1)."""
    xf, yf = _f32(x), _f32(y)
    with np.errstate(all="ignore"):
        if alpha != 1.0:
            yf = (yf * np.float32(alpha)).astype(np.float32)
        return np.asarray(xf + yf, dtype=np.float32)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def chip(x: np.ndarray, y: np.ndarray, **_: Any) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(fn(_f32(x), _f32(y)), dtype=np.float32)

    return chip


@dataclass(frozen=True)
class Elementwise:
    """An elementwise operator, whole.

    - `chip(x[, y], segments=..., **attrs)`: what the SE computes, FP32 in and out (numpy);
    - `torch(x[, y], **attrs)`: the PyTorch reference of the model's meaning;
    - `aten`: the aten ops (name or name.overload) the front end converts to it; their scalar arguments after
      the tensors are the `attrs`, by position (`defaults` when absent);
    - `se_ops`: SE operations per element (timing and energy);
    - error rule (docs/numerics.md section 4). Unary: ``e_out = slope * e_in + abs_error + rel_error * |f(r)| +
      in_rel_error * (|r| + e_in)``, `slope` bounding |f'| over [r - e_in, r + e_in] (a number, or a function of
      the interval's ends on torch tensors), capped at `span` (the output's range width). Binary: `rule` is
      `sum`, `product`, `quotient`, `extremum`, `compare` (a mask: wrong where the operands are within their
      errors of each other) or `select` (x where the mask is set);
    - `epilogue`: a GEMM's RE can apply it to its FP32 result (fusion).
    """

    arity: int
    chip: Callable[..., np.ndarray]
    torch: Callable[..., Any]
    aten: tuple[str, ...]
    se_ops: int
    slope: float | Callable[[Any, Any], Any] = 1.0
    abs_error: float = 0.0
    rel_error: float = 0.0
    in_rel_error: float = 0.0
    span: float = math.inf
    rule: str = "unary"
    attrs: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    epilogue: bool = False
    doc: str = ""
    predicate: bool = False  # the result is a mask: 1.0 where true, 0.0 where false, in x's float type


def _t(name: str) -> Callable[..., Any]:
    def ref(*args: Any, **attrs: Any) -> Any:
        import torch

        return getattr(torch, name)(*args, **attrs)

    return ref


def _tnn(name: str) -> Callable[..., Any]:
    def ref(*args: Any, **attrs: Any) -> Any:
        import torch.nn.functional as F

        return getattr(F, name)(*args, **attrs)

    return ref


def _slope(fn: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """|f'| over [lo, hi] from a torch expression (torch imported when bounds are computed)."""

    def slope(lo: Any, hi: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(torch, lo, hi)

    return slope


def _pos(t: Any, lo: Any, v: Any) -> Any:
    """`v` where lo > 0, else inf (the derivative blows up at 0)."""
    return t.where(lo > 0, v, t.full_like(v, math.inf))


def _apart(t: Any, lo: Any, hi: Any, v: Any) -> Any:
    """`v` where [lo, hi] does not hold 0, else inf (a pole at 0)."""
    return t.where((lo > 0) | (hi < 0), v, t.full_like(v, math.inf))


def _hardtanh_chip(x: np.ndarray, *, min_val: float = -1.0, max_val: float = 1.0, **_: Any) -> np.ndarray:
    return _clamp_chip(x, min=min_val, max=max_val)


# The SE LUT's error (64 segments, tested in tests/test_numerics.py), before the output's rounding.
TANH_MAX_ABS_ERROR = 6.0e-3
SIGMOID_MAX_ABS_ERROR = 7.5e-4
ERF_MAX_ABS_ERROR = 7.7e-3
GELU_MAX_ABS_ERROR = 6.5e-3
MATH_REL_ERROR = 2.0**-21  # FP32 math library: within 4 ulp (numpy's float32 functions, measured <= 2.7 ulp)

ELEMENTWISE: dict[Kind, Elementwise] = {
    Kind.RELU: Elementwise(1, _relu_chip, _t("relu"), ("relu", "relu_"), 1, epilogue=True, doc="max(x, 0)"),
    Kind.SIGMOID: Elementwise(
        1, _lut("sigmoid"), _t("sigmoid"), ("sigmoid",), 3, 0.25, SIGMOID_MAX_ABS_ERROR, span=1.0,
        epilogue=True, doc="logistic, SE LUT",
    ),
    Kind.TANH: Elementwise(
        1, _lut("tanh"), _t("tanh"), ("tanh",), 3, 1.0, TANH_MAX_ABS_ERROR, span=2.0, epilogue=True,
        doc="tanh, SE LUT",
    ),
    Kind.ERF: Elementwise(1, _lut("erf"), _t("erf"), ("erf",), 3, 2 / math.sqrt(math.pi), ERF_MAX_ABS_ERROR,
                          span=2.0, doc="erf, SE LUT"),
    Kind.GELU: Elementwise(1, _gelu_chip, _tnn("gelu"), ("gelu",), 4, 1.13, GELU_MAX_ABS_ERROR, epilogue=True,
                           attrs=("approximate",), defaults=(("approximate", "none"),),
                           doc="x * Phi(x): relu plus an SE LUT of the rest"),
    Kind.SILU: Elementwise(1, _silu_chip, _tnn("silu"), ("silu", "silu_"), 4, 1.1, in_rel_error=SIGMOID_MAX_ABS_ERROR + 2.0**-22,
                           epilogue=True, doc="x * sigmoid(x), the sigmoid from its LUT"),
    Kind.EXP: Elementwise(1, _math32(np.exp), _t("exp"), ("exp",), 8, _slope(lambda t, lo, hi: t.exp(hi)),
                          rel_error=MATH_REL_ERROR, doc="e^x, FP32 math library"),
    Kind.EXPM1: Elementwise(1, _math32(np.expm1), _t("expm1"), ("expm1",), 8, _slope(lambda t, lo, hi: t.exp(hi)),
                            rel_error=MATH_REL_ERROR),
    Kind.LOG: Elementwise(1, _math32(np.log), _t("log"), ("log",), 8, _slope(lambda t, lo, hi: _pos(t, lo, 1 / lo)),
                          rel_error=MATH_REL_ERROR, abs_error=2.0**-24),
    Kind.LOG1P: Elementwise(1, _math32(np.log1p), _t("log1p"), ("log1p",), 8,
                            _slope(lambda t, lo, hi: _pos(t, lo + 1, 1 / (1 + lo))), rel_error=MATH_REL_ERROR),
    Kind.SQRT: Elementwise(1, _math32(np.sqrt), _t("sqrt"), ("sqrt",), 6,
                           _slope(lambda t, lo, hi: _pos(t, lo, 0.5 / lo.clamp_min(1e-300).sqrt())),
                           rel_error=2.0**-24, doc="square root, correctly rounded"),
    Kind.RSQRT: Elementwise(1, _math32(lambda v: np.float32(1) / np.sqrt(v)), _t("rsqrt"), ("rsqrt",), 6,
                            _slope(lambda t, lo, hi: _pos(t, lo, 0.5 * lo.clamp_min(1e-300) ** -1.5)),
                            rel_error=2 * MATH_REL_ERROR),
    Kind.ABS: Elementwise(1, _math32(np.abs), _t("abs"), ("abs",), 1),
    Kind.NEG: Elementwise(1, _math32(np.negative), _t("neg"), ("neg",), 1),
    Kind.SIN: Elementwise(1, _math32(np.sin), _t("sin"), ("sin",), 8, 1.0, 2.0**-24, MATH_REL_ERROR, 2.0**-23, span=2.0,
                          doc="sine, FP32 math library"),
    Kind.COS: Elementwise(1, _math32(np.cos), _t("cos"), ("cos",), 8, 1.0, 2.0**-24, MATH_REL_ERROR, 2.0**-23, span=2.0,
                          doc="cosine, FP32 math library"),
    Kind.RECIPROCAL: Elementwise(1, _math32(lambda v: np.float32(1) / v), _t("reciprocal"), ("reciprocal",), 4,
                                 _slope(lambda t, lo, hi: _apart(t, lo, hi, 1 / t.minimum(lo.abs(), hi.abs()) ** 2)),
                                 rel_error=2.0**-24, doc="1 / x (FP32 division, correctly rounded)"),
    Kind.LOG2: Elementwise(1, _math32(np.log2), _t("log2"), ("log2",), 8,
                           _slope(lambda t, lo, hi: _pos(t, lo, 1 / (lo * math.log(2)))), 2.0**-24, MATH_REL_ERROR),
    Kind.HARDTANH: Elementwise(1, _hardtanh_chip, _tnn("hardtanh"), ("hardtanh",), 2, attrs=("min_val", "max_val"),
                               defaults=(("min_val", -1.0), ("max_val", 1.0)), doc="clamp(x, min_val, max_val)"),
    Kind.HARDSIGMOID: Elementwise(1, _math32(lambda x: np.clip(x + np.float32(3), 0, 6) / np.float32(6)),
                                  _tnn("hardsigmoid"), ("hardsigmoid",), 3, slope=1 / 6, abs_error=2 * U32,
                                  span=1.0, epilogue=True, doc="clamp(x + 3, 0, 6) / 6"),
    Kind.LEAKY_RELU: Elementwise(1, _leaky_chip, _tnn("leaky_relu"), ("leaky_relu",), 2, attrs=("negative_slope",),
                                 defaults=(("negative_slope", 0.01),), epilogue=True,
                                 doc="x < 0 ? slope * x : x (|slope| <= 1)"),
    Kind.CLAMP: Elementwise(1, _clamp_chip, _t("clamp"), ("clamp",), 2, attrs=("min", "max")),
    Kind.POW: Elementwise(1, _pow_chip, _t("pow"), ("pow.Tensor_Scalar",), 8, math.inf, rel_error=4 * MATH_REL_ERROR,
                          attrs=("exponent",), rule="power", doc="x ** c for a constant c"),
    Kind.ADD: Elementwise(2, _add_chip, _t("add"), ("add.Tensor", "add_.Tensor", "sub.Tensor"), 1, rule="sum",
                          attrs=("alpha",), defaults=(("alpha", 1.0),), doc="x + alpha * y (sub: alpha -1)"),
    Kind.MUL: Elementwise(2, _binary(np.multiply), _t("mul"), ("mul.Tensor", "mul_.Tensor"), 1, rule="product"),
    Kind.DIV: Elementwise(2, _binary(np.divide), _t("div"), ("div.Tensor",), 4, rule="quotient",
                          rel_error=MATH_REL_ERROR, doc="x / y (FP32 division, correctly rounded)"),
    Kind.MAXIMUM: Elementwise(2, _binary(np.maximum), _t("maximum"), ("maximum",), 1, rule="extremum"),
    Kind.MINIMUM: Elementwise(2, _binary(np.minimum), _t("minimum"), ("minimum",), 1, rule="extremum"),
}  # fmt: skip


def _compare(fn: Callable[[Any, Any], Any], doc: str) -> Elementwise:
    """A comparison: a mask of 1.0/0.0 (PyTorch's bool, as a number the SE can select with)."""
    name = fn.__name__

    def ref(x: Any, y: Any, **_: Any) -> Any:
        import torch

        dt = x.dtype if x.is_floating_point() else torch.float32
        return fn(x, y).to(dt)

    def chip(x: np.ndarray, y: np.ndarray, **_: Any) -> np.ndarray:
        return fn(_f32(x), _f32(y)).astype(np.float32)

    aten = (f"{name}.Tensor", f"{name}.Scalar")
    return Elementwise(2, chip, ref, aten, 1, rule="compare", predicate=True, doc=doc)


def _keep_chip(x: np.ndarray, m: np.ndarray, **_: Any) -> np.ndarray:
    return np.where(_f32(m) != 0, _f32(x), np.float32(0)).astype(np.float32)


def _keep_ref(x: Any, m: Any, **_: Any) -> Any:
    import torch

    return torch.where(m != 0, x, torch.zeros((), dtype=x.dtype))


def _fill_chip(m: np.ndarray, *, value: float = 0.0, **_: Any) -> np.ndarray:
    return np.where(_f32(m) != 0, np.float32(value), np.float32(0)).astype(np.float32)


def _fill_ref(m: Any, *, value: float = 0.0, **_: Any) -> Any:
    import torch

    return torch.where(m != 0, torch.tensor(value, dtype=m.dtype), torch.zeros((), dtype=m.dtype))


ELEMENTWISE.update(
    {
        Kind.GT: _compare(operator.gt, "x > y as 1.0/0.0"),
        Kind.GE: _compare(operator.ge, "x >= y as 1.0/0.0"),
        Kind.LT: _compare(operator.lt, "x < y as 1.0/0.0"),
        Kind.LE: _compare(operator.le, "x <= y as 1.0/0.0"),
        Kind.EQ: _compare(operator.eq, "x == y as 1.0/0.0"),
        Kind.NE: _compare(operator.ne, "x != y as 1.0/0.0"),
        Kind.KEEP: Elementwise(2, _keep_chip, _keep_ref, (), 1, rule="select",
                               doc="x where the mask y is set, else 0 (torch.where is keep(x, m) + keep(y, !m))"),
        Kind.FILL: Elementwise(1, _fill_chip, _fill_ref, (), 1, rule="fill", attrs=("value",),
                               defaults=(("value", 0.0),), doc="the constant value where the mask is set, else 0"),
    }
)  # fmt: skip


@dataclass(frozen=True)
class OpSpec:
    kind: Kind
    unit: Unit
    doc: str
    elementwise: Elementwise | None = field(default=None, repr=False)


_OTHER = {
    Kind.LINEAR: (Unit.DPE, "y = x @ w.T (+ b): x [.., K], w [N, K], b [N]; attrs activation, x_quant"),
    Kind.MATMUL: (Unit.DPE, "y = a @ b for 2-D a [M, K], b [K, N], or batched [B, M, K] @ [B, K, N]"),
    Kind.ATTENTION: (
        Unit.DPE,
        "softmax(scale q k^T + mask) v (scaled dot-product attention) for q [.., Sq, D], k [.., Skv, D], "
        "v [.., Skv, Dv] of equal batch dims, an optional mask [.., Sq or 1, Skv] broadcast over the batch "
        "dims: attrs scale, causal (keys after the query masked), mask (bool: 1.0 keeps a key, 0.0 masks it; "
        "add: added to the scores); a row with every key masked gives 0",
    ),
    Kind.EMBEDDING_BAG: (
        Unit.SE,
        "pooled rows of one table: weight [R, D], indices [?], offsets [B(+1)], per_sample_weights [?]; "
        "attrs mode (sum|mean|max), include_last_offset, padding_idx, row_format (isa.RowFormat), one_per_bag "
        "(an embedding: a row per index, [?, D] when their number is known per call only)",
    ),
    Kind.TBE: (
        Unit.SE,
        "pooled rows of several tables in one byte buffer (FBGEMM TBE): attrs tables "
        "((start_byte, dim, rows, row_bytes), ...), mode, row_format",
    ),
    Kind.CAT: (Unit.VIEW, "concatenation along attr dim (in place: producers write their windows)"),
    Kind.CAST: (Unit.SE, "x converted to attr dtype"),
    Kind.RESHAPE: (Unit.VIEW, "same elements, attr shape (a view when contiguous)"),
    Kind.PERMUTE: (Unit.MLU, "dimensions reordered by attr dims"),
    Kind.SLICE: (Unit.VIEW, "x[..., start:end:step, ...] along attr dim"),
    Kind.INDEX: (Unit.MLU, "x[:, rows, cols] for constant index vectors (DLRM's dot-interaction triangle)"),
    Kind.COPY: (Unit.DMA, "y = x"),
    Kind.QUANTIZE: (Unit.SE, "int8 y = saturate(round(x / attr scale) + attr zero_point) (a PT2E point)"),
    Kind.DEQUANTIZE: (Unit.SE, "y = (x - attr zero_point) * attr scale"),
    Kind.HOST_CALL: (
        Unit.HOST,
        'an aten op the chip has no kernel for, run by the host CPU (fallback="host"): attr call, its '
        "inputs over PCIe and its output back",
    ),
    Kind.JAGGED_TO_DENSE: (
        Unit.DMA,
        "jagged rows to padded dense (fbgemm.jagged_to_padded_dense): values [T, D], offsets [B+1] -> [B, S, D]; "
        "row offsets[b] + s to [b, s] for s < min(length, S), attr padding elsewhere; attr max_len S (mtiasim.jagged)",
    ),
    Kind.DENSE_TO_JAGGED: (
        Unit.DMA,
        "padded dense back to jagged rows (fbgemm.dense_to_jagged): dense [B, S, D], offsets [B+1] -> [T, D]; "
        "[b, s] to row offsets[b] + s for s < min(length, S), zeros in every other row (mtiasim.jagged)",
    ),
    Kind.REDUCE: (
        Unit.SE,
        "attr op (sum|mean|max|min) of the last dim, kept: [.., N] -> [.., 1] (FP32 accumulation in order)",
    ),
    Kind.IM2COL: (
        Unit.DMA,
        "a 1-D convolution's columns: x [N, L, C] (channels last) -> [N, L_out, K * C], column k * C + c of "
        "row (n, t) = x[n, t * stride + k * dilation - pad_left, c] (0 outside); attrs kernel, stride, "
        "dilation, pad (left, right)",
    ),
    Kind.GATHER_ROWS: (
        Unit.DMA,
        "rows of x [T, W] picked by the index data idx (per call): in groups g < attr groups of attr count "
        "indices, output row g * count + i = x[g * row_step + idx[g * index_step + i]]",
    ),
    Kind.SCATTER_ROWS: (
        Unit.DMA,
        "a copy of dst [T, W] with rows of src [groups * count, W] (or the constant row attr value) written "
        "(attr accumulate: added, in FP32 in index order) at rows g * row_step + idx[g * index_step + i]; "
        "attr cols: the first columns written",
    ),
}

SPECS: dict[Kind, OpSpec] = {}
for _k, (_unit, _doc) in _OTHER.items():
    SPECS[_k] = OpSpec(_k, _unit, _doc)
for _k, _e in ELEMENTWISE.items():
    SPECS[_k] = OpSpec(_k, Unit.SE, _e.doc or _k.value, _e)
_missing = set(Kind) - set(SPECS)
if _missing:  # pragma: no cover - a Kind added without its entry
    raise ImportError(f"opset: no OpSpec for {sorted(_missing)}")

EPILOGUE_ACTIVATIONS = tuple(k for k, e in ELEMENTWISE.items() if e.epilogue and e.arity == 1)


def elementwise(kind: str) -> Elementwise | None:
    """The elementwise record of an operator name, or None."""
    try:
        return ELEMENTWISE.get(Kind(kind))
    except ValueError:
        return None


def require(handled: set[str] | frozenset[str], where: str, exclude: set[Kind] | None = None) -> None:
    """An import-time check that `where` handles every operator (elementwise ones generically)."""
    missing = set(Kind) - set(ELEMENTWISE) - set(handled) - set(exclude or ())
    if missing:
        raise ImportError(f"{where} has no rule for operator(s) {', '.join(sorted(missing))} (mtiasim.opset)")
