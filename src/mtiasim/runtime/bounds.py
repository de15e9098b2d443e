"""Error bounds against fp32 that follow from the numerics specification (docs/numerics.md, section "Bounds").

For a compiled graph and one call's inputs, `error_bounds` runs the graph's fp32 meaning (`run_graph`) and
carries, next to every value r, a bound e on |device value - r|, element by element, through the rules below.
They are worst-case (triangle inequality, first and second order terms kept), so a device result outside
them is a bug, not bad luck; they are as tight as the per-element data allows, so they say how much
precision a model loses to int8 or fp16 on these inputs. Notation: u_d the unit roundoff of dtype d (fp16
2^-11, bf16 2^-8, fp32 2^-24), x^ = |r| + e an upper bound of a device magnitude.

- storing a value computed in fp32 as dtype d: e' = e + u_d (|r| + e) + (half the smallest subnormal of d);
  beyond d's largest finite value the bound is infinite (the device may overflow to inf);
- int8 quantization with scale s and zero point z: e' = e + max(s/2, saturation), saturation being how far
  [r - e, r + e] reaches outside [(-128 - z) s, (127 - z) s]; per-row (dynamic) scales never saturate;
- float FC: sum_k |W| e_x + u_d sum_k |W| x^ (weights rounded to d) + (K + 8) u_32 (sum_k |W| x^ + |b|);
- int8 FC: sum_k |W| e_q + (s_w/2) sum_k x^ (weights rounded to int8; 0 for a PT2E model's own int8
  weights) + (K + 8) u_32 (sum_k (|W| + s_w/2) x^ + |b|);
- matmul of two activations: sum_k (|a| e_b + |b| e_a + e_a e_b) + (K + 4) u_32 sum_k |a||b|;
- activations: relu e, sigmoid e/4 + L_sigmoid, tanh e + L_tanh (L the LUT's documented error);
  add e_a + |alpha| e_b, mul |a| e_b + |b| e_a + e_a e_b; layout ops carry e unchanged (im2col, row gathers
  and written rows too); k rows added to a row: their errors plus k u_32 of the row's total magnitude;
- embedding bags: each stored row's error (int8 rows: s/2 + 2 u_16 (|min| + (max - min)) with the row's
  fp16 scale s; fp16 rows u_16 |w|), summed with |per-sample weight|, plus (L + 3) u_32 of the magnitudes,
  divided by L for mean, the largest for max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtiasim.compiler import CompiledGraph
from mtiasim.dtypes import DType
from mtiasim.frontend.reference import (
    batched_table_bags,
    dequantized,
    jagged_rows,
    normalize_bags,
    run_graph,
    tbe_table,
)
from mtiasim.frontend.reference_rows import gather_rows, im2col, scatter_rows
from mtiasim.ir import Node, ValueKind
from mtiasim.isa import RowFormat
from mtiasim.opset import ELEMENTWISE, MATH_REL_ERROR, Kind, elementwise, require

U32 = 2.0**-24
UNIT_ROUNDOFF = {DType.FP16: 2.0**-11, DType.BF16: 2.0**-8, DType.FP32: U32}
HALF_SUBNORMAL = {DType.FP16: 2.0**-25, DType.BF16: 2.0**-134, DType.FP32: 2.0**-150}
LARGEST = {DType.FP16: 65504.0, DType.BF16: 3.3895e38, DType.FP32: 3.4028e38}


@dataclass
class OutputBound:
    """One graph output: the fp32 reference, the bound on |device - reference| element by element (inf where
    the device may overflow or a non-finite value reached the element), and the expected size of the error
    (`sigma`: the rounding errors taken as independent, propagated in quadrature; not a bound)."""

    name: str
    reference: torch.Tensor
    bound: torch.Tensor
    sigma: torch.Tensor

    def check(self, got: torch.Tensor) -> dict[str, float | bool | int]:
        """Compare a device result with the reference under the bound: the worst error, the worst bound, the
        worst error relative to its bound and to sigma, and whether every element is within (where the
        reference is non-finite the device must be non-finite too)."""
        g = got.detach().to(torch.float64).reshape(self.reference.shape)
        r = self.reference.to(torch.float64)
        finite = torch.isfinite(r)
        err = (g - r).abs()
        err = torch.where(finite, err, torch.zeros_like(err))
        ok = err <= self.bound * (1 + 1e-9)
        # non-finite references: the device must be non-finite there too (docs/numerics.md section 3: a LUT
        # saturates, so x * sigmoid(x) at -inf is -inf on the chip, NaN in PyTorch)
        same = ~torch.isfinite(r) & ~torch.isfinite(g)
        ok = torch.where(finite, ok, same)
        ok |= torch.isinf(self.bound) & ~torch.isfinite(g)  # an overflow the bound allows
        fin_b = torch.isfinite(self.bound) & finite
        fin_s = torch.isfinite(self.sigma) & finite

        def ratio(den: torch.Tensor, mask: torch.Tensor) -> float:
            q = torch.where(den > 0, err / den.clamp_min(1e-300), (err > 0).double() * math.inf)
            return float(q[mask].max()) if bool(mask.any()) else 0.0

        return {
            "max_abs_err": float(err[finite].max()) if bool(finite.any()) else 0.0,
            "max_bound": float(self.bound[fin_b].max()) if bool(fin_b.any()) else math.inf,
            "max_err_over_bound": ratio(self.bound, fin_b),
            "max_sigma": float(self.sigma[fin_s].max()) if bool(fin_s.any()) else math.inf,
            "max_err_over_sigma": ratio(self.sigma, fin_s),
            "elements": int(r.numel()),
            "unbounded": int((~torch.isfinite(self.bound) & finite).sum()),
            "nonfinite_reference": int((~finite).sum()),
            "outside": int((~ok).sum()),
            "passed": bool(ok.all()),
        }


@dataclass
class Err:
    """A value's error against fp32: `e` the worst case, `var` the variance estimate (element by element)."""

    e: torch.Tensor
    var: torch.Tensor

    def map(self, fn) -> Err:
        return Err(fn(self.e), fn(self.var))


def stored_bound(e: np.ndarray, r_abs: np.ndarray, dtype: DType) -> np.ndarray:
    """The "store as dtype d" rule on numpy arrays (the benchmarks' checks): e + u_d (|r| + e) + tiny."""
    zero = torch.zeros(np.shape(e), dtype=torch.float64)
    a = torch.from_numpy(np.asarray(r_abs, np.float64))
    return _stored(Err(torch.from_numpy(np.asarray(e, np.float64)), zero), a, dtype).e.numpy()


def accumulation_bound(magnitudes: np.ndarray, terms: int) -> np.ndarray:
    """FP32 accumulation of `terms` exact terms whose magnitudes sum to `magnitudes`: (terms + 4) u_32 of it."""
    return (terms + 4) * U32 * np.asarray(magnitudes, dtype=np.float64)


def bound_check(got: np.ndarray, ref: np.ndarray, bound: np.ndarray, reference: str) -> dict[str, object]:
    """A benchmark's numbers against a float64 reference under the specification's element bound."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    same = (np.isnan(g) & np.isnan(r)) | (np.isinf(r) & (g == r))  # non-finite where the reference is
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(g - r))
    bound = np.broadcast_to(np.asarray(bound, np.float64), err.shape)
    bound = np.where(same, 0.0, bound)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(bound > 0, err / np.where(bound > 0, bound, 1), np.where(err > 0, np.inf, 0))
    finite = np.isfinite(bound)
    return {
        "reference": reference,
        "max_abs_err": float(np.nan_to_num(err, nan=np.inf).max(initial=0.0)),
        "max_bound": float(bound[finite].max(initial=0.0)),
        "max_err_over_bound": float(np.nan_to_num(ratio[finite], nan=np.inf).max(initial=0.0)),
        "passed": bool((err <= bound * (1 + 1e-9)).all()),
    }


def _stored(x: Err, a: torch.Tensor, dtype: DType) -> Err:
    """Rounding to `dtype`: at most u_d (|r| + e) (+ half a subnormal), about u_d |r| / sqrt(3)."""
    if dtype not in UNIT_ROUNDOFF:
        return x
    u = UNIT_ROUNDOFF[dtype]
    e = x.e + u * (a + x.e) + HALF_SUBNORMAL[dtype]
    e = torch.where(a + x.e >= LARGEST[dtype], torch.full_like(e, math.inf), e)
    return Err(e, x.var + (u * a) ** 2 / 3)


def _quantized(x: Err, r: torch.Tensor, scale, zero_point: int = 0) -> Err:
    """int8 quantization: at most max(s/2, saturation) more, about s^2/12 more variance (plus saturation)."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    hi = (127 - zero_point) * scale
    lo = (-128 - zero_point) * scale
    sat = torch.clamp(torch.maximum(r + x.e - hi, lo - (r - x.e)), min=0.0)
    sat0 = torch.clamp(torch.maximum(r - hi, lo - r), min=0.0)
    return Err(x.e + torch.maximum(scale / 2, sat), x.var + scale**2 / 12 + sat0**2)


class _Magnitudes(dict):
    """|reference| in float64, computed when first asked for (weights and tables only if an op needs them)."""

    def __init__(self, env: dict[str, Any]) -> None:
        super().__init__()
        self.env = env

    def __missing__(self, v: str) -> torch.Tensor:
        m = self.env[v].detach().to(torch.float64).abs()
        self[v] = m
        return m


class _Errors(dict):
    """Each value's Err; a weight (never rounded on its own) has none."""

    def __init__(self, mag: _Magnitudes, params: dict) -> None:
        super().__init__()
        self.mag, self.params = mag, params

    def __missing__(self, v: str) -> Err:
        exact = v in self.params or (v in self.mag.env and not self.mag.env[v].is_floating_point())
        if not exact:  # weights and integer values (a host call's indices) carry no rounding error
            raise KeyError(v)
        z = torch.zeros_like(self.mag[v])
        return Err(z, z)


def error_bounds(compiled: CompiledGraph, inputs: dict[str, torch.Tensor]) -> list[OutputBound]:
    """The fp32 reference of every graph output, its error bound and expected error for this call's inputs.
    Runs the graph once, keeping only the values still to be read (memory: a few copies of the live ones)."""
    g = compiled.graph
    fm = compiled.formats
    env: dict[str, Any] = {}
    mag = _Magnitudes(env)
    err = _Errors(mag, g.params)
    for v in g.inputs:
        t = inputs.get(v)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            z = torch.zeros(t.shape, dtype=torch.float64)
            env[v] = t
            err[v] = _stored(Err(z, z), mag[v], fm.dtypes.get(v, DType.FP32))
    producer = g.producer()
    outputs: dict[str, OutputBound] = {}

    def after(node: Node, values: dict[str, Any]) -> None:
        env.update({k: values[k] for k in (*node.inputs, node.outputs[0]) if k in values})
        y = node.outputs[0]
        if isinstance(values[y], torch.Tensor) and values[y].is_floating_point():
            x = _node_bound(node, g, fm, env, mag, err, producer)
            dt = fm.dtypes.get(y, DType.FP32)
            if dt == DType.INT8:
                yq = fm.acts[y]
                x = _quantized(x, env[y].detach().to(torch.float64), yq.scale, yq.zero_point)
            else:
                x = _stored(x, mag[y], dt)
            # where the reference is not finite, or an error came from a non-finite value, nothing is bounded
            nonfinite = ~torch.isfinite(mag[y])
            inf = torch.full_like(x.e, math.inf)
            err[y] = Err(
                torch.where(nonfinite | torch.isnan(x.e), inf, x.e),
                torch.where(nonfinite | torch.isnan(x.var), inf, x.var),
            )
            if y in g.outputs:
                outputs[y] = OutputBound(y, env[y].detach().clone(), err[y].e, err[y].var.sqrt())
        # forget what the graph will not read again
        for store in (env, mag, err):
            for k in [k for k in store if k not in values]:
                del store[k]

    run_graph(g, inputs, keep=False, after=after)
    for v in g.outputs:
        if v not in outputs:  # an output the device does not compute (a graph input returned as is)
            t = inputs[v]
            outputs[v] = OutputBound(v, t.detach().clone(), err[v].e, err[v].var.sqrt())
    return [outputs[v] for v in g.outputs]


def _unary(kind: str, x: Err, r_in: torch.Tensor | None, f_abs: torch.Tensor, attrs: dict) -> Err:
    """An operator-set unary op (docs/numerics.md section 4): slope over [r - e, r + e] times e, plus the
    chip's absolute, relative-to-output and relative-to-input errors, capped at the output's range width."""
    spec = ELEMENTWISE[Kind(kind)]
    if spec.rule == "fill":  # a constant where the mask is set: wrong by the constant where it may flip
        worst = torch.where(
            x.e > 0, torch.full_like(x.e, abs(float(attrs.get("value", 0.0)))), torch.zeros_like(x.e)
        )
        return Err(worst, worst**2 / 4)
    if spec.rule == "power":
        c = float(attrs.get("exponent", 1.0))
        lo, hi = r_in - x.e, r_in + x.e
        m = torch.maximum(lo.abs(), hi.abs())
        if c >= 1:
            slope = abs(c) * m ** (c - 1)
        else:
            slope = torch.where(
                lo > 0, abs(c) * lo.clamp_min(1e-300) ** (c - 1), torch.full_like(lo, math.inf)
            )
        slope0 = abs(c) * r_in.abs().clamp_min(1e-300) ** (c - 1) if c != 1 else torch.ones_like(r_in)
    elif callable(spec.slope):
        slope = spec.slope(r_in - x.e, r_in + x.e)
        slope0 = spec.slope(r_in, r_in)
    else:
        slope = slope0 = spec.slope
    if kind == Kind.LEAKY_RELU.value:
        slope = slope0 = max(1.0, abs(float(attrs.get("negative_slope", 0.01))))
    inp = 0.0 if r_in is None else r_in.abs()
    worst = slope * x.e + spec.abs_error + spec.rel_error * f_abs + spec.in_rel_error * (inp + x.e)
    worst = torch.where(torch.isnan(worst), torch.full_like(worst, math.inf), worst)
    if math.isfinite(spec.span):  # a bounded function's range, unless its input may be an overflow (an Inf
        # stored for a finite value: the function of it may be NaN, gelu(-inf), then anything downstream) or
        # NaN itself (an FC's fused activation sees its error before it is stored: NaN where an Inf input meets
        # a weight stored as 0, whose product is NaN on the chip)
        worst = torch.where(torch.isfinite(x.e), torch.clamp(worst, max=spec.span), worst)
    chip = spec.abs_error**2 + (spec.rel_error * f_abs) ** 2 + (spec.in_rel_error * inp) ** 2
    return Err(worst, slope0**2 * x.var + chip / 3)


def _binary(
    kind: str, a: Err, b: Err, ma: torch.Tensor, mb: torch.Tensor, f_abs: torch.Tensor, gap: torch.Tensor
) -> Err:
    """An operator-set binary op: sum, product, quotient or extremum of two values with errors; a comparison
    (`gap` = |x - y| of the references: within the errors, the mask may flip by 1) or a selection by a mask
    (where the mask may flip, the result may be x or 0)."""
    spec = ELEMENTWISE[Kind(kind)]
    if spec.rule == "compare":
        flip = (gap <= a.e + b.e) | torch.isnan(gap)
        worst = flip.to(torch.float64)
        return Err(worst, worst / 4)
    if spec.rule == "select":
        worst = torch.where(b.e > 0, ma + a.e, torch.where(mb != 0, a.e, torch.zeros_like(a.e)))
        var = torch.where(b.e > 0, (ma + a.e) ** 2 / 4, torch.where(mb != 0, a.var, torch.zeros_like(a.var)))
        return Err(worst, var)
    if spec.rule == "sum":
        return Err(a.e + b.e, a.var + b.var)
    if spec.rule == "product":
        return Err(ma * b.e + mb * a.e + a.e * b.e, ma**2 * b.var + mb**2 * a.var)
    if spec.rule == "quotient":
        den = mb * (mb - b.e)
        worst = torch.where(
            mb > b.e, (ma * b.e + mb * a.e) / den.clamp_min(1e-300), torch.full_like(den, math.inf)
        )
        worst = worst + spec.rel_error * f_abs
        var = (a.var + f_abs**2 * b.var) / (mb**2).clamp_min(1e-300) + (spec.rel_error * f_abs) ** 2 / 3
        return Err(worst, var)
    if spec.rule == "extremum":
        return Err(torch.maximum(a.e, b.e), torch.maximum(a.var, b.var))
    raise ValueError(f"no bound rule {spec.rule!r} for {kind}")


def _node_bound(node: Node, g, fm, ref, mag, err: dict[str, Err], producer) -> Err:
    op, a = node.op, node.attrs
    ins = node.inputs
    fd = fm.precision.float_dtype
    u = UNIT_ROUNDOFF.get(fd, 0.0)
    y = node.outputs[0]
    if op == "linear":
        x, pre = _linear(node, g, fm, ref, mag, err)
        act = a.get("activation")
        return x if act in (None, "none") else _unary(act, x, pre, mag[y], {})
    if op == "matmul":
        x, w = ins
        tb = a.get("transpose_b")

        def t(v: torch.Tensor) -> torch.Tensor:
            return v.transpose(-1, -2) if tb else v

        ma, mb = mag[x], t(mag[w])
        ea, eb = err[x], err[w].map(t)
        k = ma.shape[-1]
        worst = ma @ eb.e + ea.e @ mb + ea.e @ eb.e + (k + 4) * U32 * (ma @ mb)
        return Err(worst, ma**2 @ eb.var + ea.var @ mb**2)
    if op in ("embedding_bag", "tbe"):
        return _bags(node, g, fm, ref, mag)
    if op == "attention":
        return _attention(node, fm, ref, err)
    spec = elementwise(op)
    if spec is not None and spec.arity == 1:
        return _unary(op, err[ins[0]], ref[ins[0]].detach().to(torch.float64), mag[y], a)
    if spec is not None:
        r0 = ref[ins[0]].detach().to(torch.float64)
        tiny = HALF_SUBNORMAL.get(fd, 0.0)  # a constant rounded to a subnormal: absolutely
        if "scalar" in a:  # a constant operand, rounded to the activations' type
            c = torch.full_like(mag[ins[0]], abs(float(a["scalar"])))
            other = Err(u * c + tiny, (u * c + tiny) ** 2 / 3)
            return _binary(op, err[ins[0]], other, mag[ins[0]], c, mag[y], (r0 - float(a["scalar"])).abs())
        alpha = float(a.get("alpha", 1.0))
        scale = abs(alpha)
        if g.kinds.get(ins[1]) == ValueKind.PARAM:
            m = u * scale * mag[ins[1]] + tiny
            eb = Err(m, m**2 / 3)
        else:
            eb = Err(scale * err[ins[1]].e, scale**2 * err[ins[1]].var)
        ea = err[ins[0]]
        if g.kinds.get(ins[0]) == ValueKind.PARAM:  # a weight first: a constant rounded to the activations'
            m = u * mag[ins[0]] + tiny
            ea = Err(m, m**2 / 3)
        gap = (r0 - alpha * ref[ins[1]].detach().to(torch.float64)).abs()
        return _binary(op, ea, eb, mag[ins[0]], scale * mag[ins[1]], mag[y], gap)
    if op == "dequantize":  # a PT2E quantization point kept as is: the quantize's input and its rounding
        q = producer.get(ins[0])
        if q is None or q.op != "quantize":
            z = torch.zeros_like(mag[y])
            return Err(z, z)
        src = q.inputs[0]
        return _quantized(
            err[src], ref[src].detach().to(torch.float64), q.attrs["scale"], q.attrs["zero_point"]
        )
    x = err[ins[0]]
    if op == "cat":
        return Err(
            torch.cat([err[v].e for v in ins], dim=a["dim"]),
            torch.cat([err[v].var for v in ins], dim=a["dim"]),
        )
    if op in ("cast", "copy"):
        return x
    if op in ("jagged_to_dense", "dense_to_jagged"):  # row copies: each row keeps its error, padding has none
        return x.map(lambda t: jagged_rows(node, t, ref[ins[1]], 0.0))
    if op == "reduce":
        return _reduce(a["op"], x, mag[ins[0]], mag[y])
    if op == "host_call":  # any function the host runs: the specification bounds nothing after it
        inf = torch.full_like(mag[y], math.inf)
        return Err(inf, inf)
    if op == "reshape":
        return x.map(lambda t: t.reshape(a["shape"]))
    if op == "permute":
        return x.map(lambda t: t.permute(a["dims"]))
    if op == "slice":
        return x.map(lambda t: t.narrow(a["dim"], a["start"], a["end"] - a["start"]))
    if op == "index":
        return x.map(lambda t: t.reshape(t.shape[0], -1)[:, list(a["columns"])])
    if op == "im2col":  # the padding's zeros are exact
        return x.map(lambda t: im2col(t, a))
    if op == "gather_rows":
        return x.map(lambda t: gather_rows(t, ref[ins[1]], a, node.where()))
    if op == "scatter_rows":
        return _scatter(node, x, err[ins[2]] if len(ins) > 2 else None, ref, mag, u)
    raise ValueError(f"no error bound rule for op {op!r} ({node.where()})")


def _scatter(node: Node, dst: Err, src: Err | None, ref, mag, u: float) -> Err:
    """Rows written: their errors replace the destination's. Rows added (in FP32, in index order): the errors
    add up, plus one FP32 rounding per add of at most u_32 of the running sum's magnitude (bounded by the
    row's total magnitude)."""
    a, ins = node.attrs, node.inputs
    idx = ref[ins[1]]

    def put(base: torch.Tensor, rows: torch.Tensor | None, value: float = 0.0) -> torch.Tensor:
        b = {**a, "value": value}
        return scatter_rows(base, idx, rows, b, node.where(), torch.float64)

    if src is None:  # a constant, rounded to the activations' dtype
        c = abs(float(a["value"]))
        e_src, v_src, m_src = None, None, None
        e_val, m_val = u * c, c
    else:
        e_src, v_src, m_src = src.e, src.var, mag[ins[2]]
        e_val = m_val = 0.0
    if not a.get("accumulate"):
        return Err(put(dst.e, e_src, e_val), put(dst.var, v_src, e_val**2 / 3))
    total = put(mag[ins[0]] + dst.e, None if src is None else m_src + e_src, m_val + e_val)
    adds = put(torch.zeros_like(dst.e), None if src is None else torch.ones_like(src.e), 1.0)
    e = put(dst.e, e_src, e_val) + adds * U32 * total
    return Err(e, put(dst.var, v_src, e_val**2 / 3) + adds * (U32 * total) ** 2 / 3)


ATTENTION_CHUNK = 64  # batch items whose scores are bounded at once (memory)


def _attention(node: Node, fm, ref, err: dict[str, Err]) -> Err:
    """Fused attention (docs/numerics.md section 4): the scores' error delta (the inputs' errors through the
    product, its FP32 rounding, the mask's error and its addition), the chip's relative error rho on every
    unnormalised weight (the FP32 subtraction of the running max, exp, rounding to the DPE dtype, the
    block rescaling), combined as a log-perturbation a = expm1(|delta| + rho') of each weight: with w the fp32
    softmax and eps = sum_j w_j a_j per row,
    ``|out - ref| <= (sum_j w_j a_j V_j + eps sum_j w_j V_j) / (1 - eps) + sum_j w_j e_v,j`` (V = |v| + e_v),
    plus the FP32 accumulation of the sums and products ((6 Skv + 6) u_32 of the weighted magnitudes) and the
    absolute rounding of subnormal weights. Masked keys (-inf on both sides) weigh nothing; a row whose
    boolean mask may flip is bounded by max |v| + |ref|."""
    a = node.attrs
    q, k, v = node.inputs[:3]
    dt = fm.dtypes.get(v, fm.precision.float_dtype)
    u_p, tiny = UNIT_ROUNDOFF.get(dt, U32), HALF_SUBNORMAL.get(dt, 0.0)
    Q, K, V = (ref[x].detach().to(torch.float64) for x in (q, k, v))
    batch, (s_q, d), (s_kv, dv) = Q.shape[:-2], Q.shape[-2:], V.shape[-2:]
    n = math.prod(batch)
    Q, K, V = Q.reshape(n, s_q, d), K.reshape(n, s_kv, d), V.reshape(n, s_kv, dv)
    eQ, eK, eV = (err[x].e.reshape(n, -1, err[x].e.shape[-1]) for x in (q, k, v))
    varV = err[v].var.reshape(n, s_kv, dv)
    scores = (*batch, s_q, s_kv)
    M = eM = None
    if a.get("mask"):
        m = node.inputs[3]
        M = ref[m].detach().to(torch.float64).broadcast_to(scores).reshape(n, s_q, s_kv)
        eM = err[m].e.broadcast_to(scores).reshape(n, s_q, s_kv)
    scale = float(a["scale"])
    out_e = torch.empty(n, s_q, dv, dtype=torch.float64)
    out_var = torch.empty_like(out_e)
    causal = torch.ones(s_q, s_kv).triu(1).bool() if a.get("causal") else None
    for i0 in range(0, n, ATTENTION_CHUNK):
        sl = slice(i0, i0 + ATTENTION_CHUNK)
        q_, k_, v_, eq, ek, ev = Q[sl], K[sl], V[sl], eQ[sl], eK[sl], eV[sl]
        aq, ak = q_.abs(), k_.abs()
        kt, ekt = ak.transpose(1, 2), ek.transpose(1, 2)
        t = scale * (q_ @ k_.transpose(1, 2))
        delta = scale * (aq @ ekt + eq @ kt + eq @ ekt) + (d + 4) * U32 * scale * ((aq + eq) @ (kt + ekt))
        flip = torch.zeros(t.shape[:-1], dtype=torch.bool)
        if M is not None and a["mask"] == "bool":
            t = torch.where(M[sl] != 0, t, torch.full_like(t, -math.inf))
            flip = (eM[sl] >= 0.5).any(-1)  # a 1.0/0.0 mask flips only by a whole 1
        elif M is not None:
            t = t + M[sl]
            delta = delta + torch.where(torch.isfinite(M[sl]), eM[sl], torch.zeros_like(delta))
            delta = delta + U32 * (t.abs() + delta)  # the SE's FP32 addition
        if causal is not None:
            t = t.masked_fill(causal, -math.inf)
        live = torch.isfinite(t)
        bad = torch.isnan(t).any(-1) | torch.isnan(delta).any(-1)
        mx = torch.where(live, t, torch.full_like(t, -math.inf)).amax(-1, keepdim=True)
        mn = torch.where(live, t, torch.full_like(t, math.inf)).amin(-1, keepdim=True)
        none = ~live.any(-1, keepdim=True)
        mx0, mn0 = torch.where(none, 0.0, mx), torch.where(none, 0.0, mn)
        big = torch.where(live, delta, torch.zeros_like(delta)).amax(-1, keepdim=True)
        w = torch.where(live, torch.exp(torch.where(live, t - mx0, -math.inf)), torch.zeros_like(t))
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
        rho = (u_p + MATH_REL_ERROR + U32 * ((mx0 - t).abs() + 2 * big + 1)
               + s_kv * (MATH_REL_ERROR + 4 * U32) + U32 * (mx0 - mn0 + 2 * big))  # fmt: skip
        rho = torch.where(live, rho, torch.zeros_like(rho))
        amp = torch.where(live, torch.expm1(delta + rho * (1 + 2 * rho)), torch.zeros_like(t))
        eps = (w * amp).sum(-1, keepdim=True)
        vh = v_.abs() + ev
        wv = w @ vh
        e1 = torch.where(eps < 1, ((w * amp) @ vh + eps * wv) / (1 - eps).clamp_min(1e-300), math.inf)
        e2 = w @ ev
        acc = (6 * s_kv + 6) * U32 * (wv + e1)
        sub = 2 * tiny * (vh.sum(-2, keepdim=True) + s_kv * vh.amax(-2, keepdim=True))
        e = e1 + e2 + acc + torch.where(none, 0.0, sub)
        wide = vh.amax(-2, keepdim=True) + (w @ v_).abs()
        e = torch.where(flip[..., None], wide, e)
        e = torch.where(bad[..., None], math.inf, e)
        out_e[sl] = e
        out_var[sl] = (w**2) @ varV[sl] + (e1 + acc) ** 2 / 9
    shape = (*batch, s_q, dv)
    return Err(out_e.reshape(shape), out_var.reshape(shape))


def _reduce(op: str, x: Err, mag_in: torch.Tensor, mag_out: torch.Tensor) -> Err:
    """A row reduction (docs/numerics.md): max/min move by at most the largest input error; a sum adds its
    inputs' errors and n - 1 FP32 roundings of partial sums bounded by sum |x|; a mean divides by n and
    rounds once more."""
    if op in ("max", "min"):
        return Err(x.e.amax(-1, keepdim=True), x.var.amax(-1, keepdim=True))
    n = mag_in.shape[-1]
    total = (mag_in + x.e).sum(-1, keepdim=True)
    e = x.e.sum(-1, keepdim=True) + max(n - 1, 0) * U32 * total
    var = x.var.sum(-1, keepdim=True) + n * (U32 * total) ** 2 / 3
    if op == "mean":
        e, var = e / max(n, 1) + U32 * mag_out, var / max(n, 1) ** 2
    return Err(e, var)


def _linear(node: Node, g, fm, ref, mag, err: dict[str, Err]) -> tuple[Err, torch.Tensor]:
    """device = (W + dW)(x + d) (+ b): error = dW x + (W + dW) d + accumulation, with dW the exact weight
    error (rounding to fp16/bf16, or int8 quantization; 0 for a PT2E model's own int8 weights) and d the
    input's error (after its quantization for int8). Also returns the fp32 reference before the activation."""
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    p = g.params[w]
    W = ref[w].detach().to(torch.float64)
    k = W.shape[1]
    bias = mag[b].reshape(-1) if b is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    ex = err[x]
    rx = ref[x].detach().to(torch.float64)
    if not fm.precision.int8:
        Wd = torch.from_numpy(_to_dtype(W, fm.precision.float_dtype))
        eq = ex
    else:
        lq = fm.linears[node.name]
        if lq.w_q is None:
            raise ValueError(f"no error bound without weights ({node.where()})")
        Wd = torch.from_numpy(lq.w_q.astype(np.float64) * lq.w_scales.astype(np.float64)[:, None])
        if p.quant is not None:
            Wd = W  # the model's weights are its int8 values dequantized: exact
        if fm.dtypes.get(x) == DType.INT8:
            eq = ex  # quantized by the producing FC's epilogue, already in its error
        elif lq.x is not None:
            eq = _quantized(ex, rx, lq.x.scale, lq.x.zero_point)
        else:  # per row: the largest |x| of the row maps to 127, nothing saturates
            row = (mag[x] + ex.e).amax(dim=-1, keepdim=True) / 127
            row0 = mag[x].amax(dim=-1, keepdim=True) / 127
            eq = Err(ex.e + row / 2 * (1 + 2.0**-20), ex.var + row0**2 / 12)
    dW = Wd - W
    dwx = rx @ dW.T  # exact, signed
    absWd = Wd.abs()
    xh = mag[x] + eq.e
    worst = dwx.abs() + eq.e @ absWd.T + (k + 8) * U32 * (xh @ absWd.T + bias)
    var = dwx**2 + eq.var @ (Wd**2).T
    if fm.precision.int8 and b is not None and lq.post_bias is None:  # the bias rounded to INT32
        step = lq.x.scale * torch.from_numpy(lq.w_scales.astype(np.float64))
        worst, var = worst + step / 2, var + step**2 / 12
    pre = rx @ W.T + (ref[b].detach().to(torch.float64).reshape(-1) if b is not None else 0.0)
    return Err(worst, var), pre


def _to_dtype(t: torch.Tensor, dtype: DType) -> np.ndarray:
    """`t` rounded to `dtype` (as the compiler stores weights), as float64 values."""
    torch_dtype = {DType.FP16: torch.float16, DType.BF16: torch.bfloat16}.get(dtype, torch.float32)
    return t.to(torch.float32).to(torch_dtype).to(torch.float64).numpy()


def _bags(node: Node, g, fm, ref, mag) -> Err:
    """Pooled rows: per-row storage error, weighted and pooled, plus fp32 accumulation."""
    a = node.attrs
    weight = g.params[node.inputs[0]].tensor
    parts = []
    if node.op == "tbe":
        for spec in a["tables"]:
            table = tbe_table(weight, spec, a["row_format"]).to(torch.float64)
            parts.append((table, 4 * U32 * table.abs(), torch.zeros_like(table)))
        pooled_inputs = _tbe_bags(node, ref, len(a["tables"]))
    else:
        fmt = RowFormat(a["row_format"])
        if fmt.is_quantized:  # the model's own quantized rows
            table = dequantized(weight, fmt, fmt.dim_of(weight.shape[1]), torch.float64)
            row_err, row_var = 4 * U32 * table.abs(), torch.zeros_like(table)
        else:
            table = weight.detach().to(torch.float64)
            if fm.precision.int8:
                lo = table.amin(dim=1, keepdim=True)
                hi = table.amax(dim=1, keepdim=True)
                s16 = torch.from_numpy(((hi - lo) / 255).numpy().astype(np.float32).astype(np.float16))
                s16 = s16.to(torch.float64)
                u16 = UNIT_ROUNDOFF[DType.FP16]
                row_err = (
                    s16 / 2 + 2 * u16 * (lo.abs() + (hi - lo)) + 4 * U32 * (lo.abs() + hi.abs())
                ).expand_as(table)
                row_var = (s16**2 / 12).expand_as(table)
            else:
                row_err = UNIT_ROUNDOFF[DType.FP16] * table.abs() + HALF_SUBNORMAL[DType.FP16]
                row_var = (UNIT_ROUNDOFF[DType.FP16] * table) ** 2 / 3
        parts.append((table, row_err, row_var))
        pooled_inputs = [_bag_args(node, ref)]
    worst, var = [], []
    for (table, row_err, row_var), (idx, off, w) in zip(parts, pooled_inputs, strict=True):
        mode = a["mode"]
        wabs = None if w is None else w.abs()
        lengths = (off[1:] - off[:-1]).to(torch.float64)
        longest = int(lengths.max()) if lengths.numel() else 0

        if mode == "max":
            e, v = _pool(idx, off, row_err, "max", None), _pool(idx, off, row_var, "max", None)
        else:
            e = _pool(idx, off, row_err, mode, wabs) + (longest + 3) * U32 * _pool(
                idx, off, table.abs(), mode, wabs
            )
            v = _pool(idx, off, row_var, "sum", None if w is None else w**2)
            if mode == "mean":
                v = v / lengths.clamp_min(1)[:, None] ** 2
        worst.append(e)
        var.append(v)
    return Err(torch.cat(worst, dim=1), torch.cat(var, dim=1))


def _pool(idx: torch.Tensor, off: torch.Tensor, rows: torch.Tensor, mode: str, weights) -> torch.Tensor:
    return F.embedding_bag(idx, rows, off, mode=mode, per_sample_weights=weights, include_last_offset=True)


def _bag_args(node: Node, ref) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    a = node.attrs
    ins = node.inputs
    idx, off, w = normalize_bags(
        ref[ins[1]],
        ref[ins[2]] if len(ins) > 2 else None,
        ref[ins[3]] if len(ins) > 3 else None,
        include_last_offset=a.get("include_last_offset", False),
        padding_idx=a.get("padding_idx"),
        one_per_bag=a.get("one_per_bag", False),
    )
    wt = None if w is None else torch.from_numpy(w).to(torch.float64)
    return torch.from_numpy(idx), torch.from_numpy(off), wt


def _tbe_bags(node: Node, ref, n_tables: int) -> list:
    ins = node.inputs
    psw = ref[ins[3]].to(torch.float64) if len(ins) > 3 else None
    out = []
    for t in range(n_tables):
        idx, off, w = batched_table_bags(ref[ins[1]], ref[ins[2]], psw, t, n_tables)
        out.append((idx.to(torch.int64), off, w))
    return out


# the operators `_node_bound` has a rule for (elementwise ones through their opset record); a quantize's int8
# output carries no float error of its own (its dequantize takes the rounding)
require(
    {"linear", "matmul", "attention", "embedding_bag", "tbe", "dequantize", "quantize", "cat", "cast", "copy",
     "reshape", "permute", "slice", "index", "reduce", "host_call", "jagged_to_dense", "dense_to_jagged",
     "im2col", "gather_rows", "scatter_rows"},
    "runtime.bounds",
)  # fmt: skip
