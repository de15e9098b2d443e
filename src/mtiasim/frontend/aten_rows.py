"""aten reductions and the row-wise operators built on them: sum, mean, amax/amin, max/min over dims, var/std,
softmax, log_softmax, layer_norm, rms_norm and batch_norm (eval).

Each becomes `reduce` nodes (a row reduction of the last dim, kept as 1) and elementwise nodes whose second
operand is that column broadcast back over the row (`emit_binary`), with views (`reshape`) and, when the
reduced dims are not the last ones, a swap of the last two dims (`permute`, on the MLU) around them.
Batch norm in eval is a per-channel affine map whose scale and shift are computed here from the running
statistics (the compiler folds it into a preceding FC).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

from mtiasim.dtypes import DType
from mtiasim.frontend.aten import Ctx, _arg, _aten_overloads, _out, _register, emit_binary, mask_type
from mtiasim.frontend.dtypes import to_dtype
from mtiasim.ir import DYNAMIC, TensorType
from mtiasim.opset import Kind

aten = torch.ops.aten


class Rows:
    """Emits the nodes of one aten op, named after it."""

    def __init__(self, ctx: Ctx, node: fx.Node) -> None:
        self.ctx, self.node, self.n = ctx, node, 0

    def name(self, tag: str) -> str:
        self.n += 1
        return f"{self.node.name}_{tag}{self.n}"

    def shape(self, x: str) -> tuple[int, ...]:
        return self.ctx.type(x).shape

    def tt(self, x: str, shape: tuple[int, ...] | None = None) -> TensorType:
        return TensorType(self.shape(x) if shape is None else tuple(shape), self.ctx.type(x).dtype)

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.ctx.reshape(x, tuple(shape), self.name("view"))

    def swap_last(self, x: str) -> str:
        s = self.shape(x)
        dims = tuple(range(len(s) - 2)) + (len(s) - 1, len(s) - 2)
        return self.ctx.emit("permute", [x], self.tt(x, s[:-2] + (s[-1], s[-2])), {"dims": dims},
                             name=self.name("swap"))  # fmt: skip

    def transpose(self, x: str) -> str:
        """The last two dims swapped: a view when one of them is 1, else a permute (the MLU)."""
        s = self.shape(x)
        if 1 in s[-2:]:
            return self.reshape(x, s[:-2] + (s[-1], s[-2]))
        return self.swap_last(x)

    def reduce(self, x: str, op: str) -> str:
        """[.., N] -> [.., 1]."""
        return self.ctx.emit("reduce", [x], self.tt(x, self.shape(x)[:-1] + (1,)), {"op": op},
                             name=self.name(op))  # fmt: skip

    def unary(self, kind: Kind, x: str, **attrs: Any) -> str:
        return self.ctx.emit(kind.value, [x], self.tt(x), attrs, name=self.name(kind.value))

    def scalar(self, kind: Kind, x: str, c: float) -> str:
        return self.ctx.emit(kind.value, [x], self.tt(x), {"scalar": float(c)}, name=self.name(kind.value))

    def binary(self, kind: Kind, x: str, y: str) -> str:
        """x [M, N] with y of x's shape, [M, 1] or [1, N]."""
        return emit_binary(self.ctx, kind, x, y, self.tt(x), {}, self.name(kind.value))

    def rows_of(self, x: str, dims: list[int]) -> tuple[str, bool]:
        """`x` as [rows, n] with the elements of `dims` (adjacent, after normalising) along each row: (that
        view, whether a swap of the last two dims was needed)."""
        s = self.shape(x)
        r = len(s)
        dims = sorted({d % r for d in dims}) if dims else list(range(r))
        if any(d == DYNAMIC for d in s):
            raise self.ctx.fail(
                f"a reduction over a tensor of data-dependent shape {list(s)} is not supported"
            )
        if dims != list(range(dims[0], dims[-1] + 1)):
            raise self.ctx.fail(f"a reduction over non-adjacent dims {dims} is not supported")
        before, inner, after = (
            math.prod(s[: dims[0]]),
            math.prod(s[dims[0] : dims[-1] + 1]),
            math.prod(s[dims[-1] + 1 :]),
        )
        if after == 1:
            return self.reshape(x, (before, inner)), False
        x3 = self.reshape(x, (before, inner, after))
        swapped = self.swap_last(x3)  # [before, after, inner]
        return self.reshape(swapped, (before * after, inner)), True

    def back(self, y2: str, out_shape: tuple[int, ...]) -> str:
        """A [rows, 1] reduction as the op's output: its rows are the kept dims in memory order."""
        return self.reshape(y2, out_shape)


def _dims(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(d) for d in value]


def _finish(ctx: Ctx, node: fx.Node, value: str, tuple_len: int = 0) -> None:
    if tuple_len:
        ctx.tuples[node.name] = [value] + [None] * (tuple_len - 1)
    else:
        ctx.result(node, value)


def _reduce_op(
    ctx: Ctx, node: fx.Node, op: str, dims: list[int], tuple_len: int = 0, out: TensorType | None = None
) -> None:
    rw = Rows(ctx, node)
    x = ctx.value_of(node.args[0])
    x2, _ = rw.rows_of(x, dims)
    out = out or (_out(node) if not tuple_len else _first_out(node))
    y = rw.reduce(x2, op)
    if ctx.type(y).dtype != out.dtype:
        y = ctx.emit(
            "cast", [y], TensorType(ctx.type(y).shape, out.dtype), {"dtype": out.dtype}, name=rw.name("cast")
        )
    _finish(ctx, node, rw.back(y, out.shape), tuple_len)


def _first_out(node: fx.Node) -> TensorType:
    val = node.meta["val"][0]
    return TensorType(tuple(int(d) for d in val.shape), to_dtype(val.dtype))  # type: ignore[arg-type]


@_register([aten.sum.dim_IntList, aten.sum.default])
def _sum(ctx: Ctx, node: fx.Node) -> None:
    dims = _dims(_arg(node, 1, "dim")) if node.target is aten.sum.dim_IntList else []
    _reduce_op(ctx, node, "sum", dims)


@_register([aten.mean.dim, aten.mean.default])
def _mean(ctx: Ctx, node: fx.Node) -> None:
    dims = _dims(_arg(node, 1, "dim")) if node.target is aten.mean.dim else []
    _reduce_op(ctx, node, "mean", dims)


@_register([aten.amax.default, aten.amin.default, aten.max.default, aten.min.default])
def _extremum(ctx: Ctx, node: fx.Node) -> None:
    op = "max" if node.target in (aten.amax.default, aten.max.default) else "min"
    dims = _dims(_arg(node, 1, "dim")) if node.target in (aten.amax.default, aten.amin.default) else []
    _reduce_op(ctx, node, op, dims)


@_register(_aten_overloads(("any.dim", "any.dims", "any", "all.dim", "all.dims", "all")))
def _any_all(ctx: Ctx, node: fx.Node) -> None:
    """any/all of masks (1.0/0.0): their max/min."""
    op = "max" if "any" in str(node.target) else "min"
    dims = _dims(_arg(node, 1, "dim")) if len(node.args) > 1 or "dim" in node.kwargs else []
    _reduce_op(ctx, node, op, dims, out=mask_type(ctx, node))


@_register(_aten_overloads(("linalg_vector_norm",)))
def _vector_norm(ctx: Ctx, node: fx.Node) -> None:
    """||x||_p over dims: sqrt(sum x^2) for p = 2, sum |x| for 1, max |x| for inf, (sum |x|^p)^(1/p) else."""
    p = float(_arg(node, 1, "ord", 2))
    dims = _dims(_arg(node, 2, "dim"))
    rw = Rows(ctx, node)
    x = ctx.value_of(node.args[0])
    out = _out(node)
    x2, _ = rw.rows_of(x, dims)
    if p == 2:
        y = rw.unary(Kind.SQRT, rw.reduce(rw.binary(Kind.MUL, x2, x2), "sum"))
    elif p == 1:
        y = rw.reduce(rw.unary(Kind.ABS, x2), "sum")
    elif p == math.inf:
        y = rw.reduce(rw.unary(Kind.ABS, x2), "max")
    elif p > 0:
        powered = rw.unary(Kind.POW, rw.unary(Kind.ABS, x2), exponent=p)
        y = rw.unary(Kind.POW, rw.reduce(powered, "sum"), exponent=1.0 / p)
    else:
        raise ctx.fail(f"vector norm of order {p} is not supported")
    ctx.result(node, rw.back(y, out.shape))


@_register([aten.max.dim, aten.min.dim])
def _extremum_dim(ctx: Ctx, node: fx.Node) -> None:
    """max/min over a dim: the values (the indices, output 1, have no kernel)."""
    _reduce_op(ctx, node, "max" if node.target is aten.max.dim else "min", _dims(node.args[1]), tuple_len=2)


def _variance(ctx: Ctx, node: fx.Node, dims: list[int], correction: float) -> tuple[Rows, str, str]:
    """(rows, mean [rows, 1], var [rows, 1]) of the first argument over `dims`."""
    rw = Rows(ctx, node)
    x2, _ = rw.rows_of(ctx.value_of(node.args[0]), dims)
    n = rw.shape(x2)[1]
    mean = rw.reduce(x2, "mean")
    d = _sub(rw, x2, mean)
    var = rw.reduce(rw.binary(Kind.MUL, d, d), "mean")
    if correction:
        var = rw.scalar(Kind.MUL, var, n / max(n - correction, 0) if n > correction else math.inf)
    return rw, mean, var


def _sub(rw: Rows, x: str, y: str) -> str:
    return emit_binary(rw.ctx, Kind.ADD, x, y, rw.tt(x), {"alpha": -1.0}, rw.name("sub"))


def _correction(node: fx.Node) -> float:
    if node.target in (aten.var.correction, aten.std.correction, aten.var_mean.correction):
        c = node.kwargs.get("correction", node.args[2] if len(node.args) > 2 else None)
        return 1.0 if c is None else float(c)
    unbiased = _arg(node, 2, "unbiased", True)
    return 1.0 if unbiased else 0.0


@_register([aten.var.correction, aten.var.dim, aten.std.correction, aten.std.dim, aten.var_mean.correction])
def _var(ctx: Ctx, node: fx.Node) -> None:
    dims = _dims(_arg(node, 1, "dim"))
    rw, mean, var = _variance(ctx, node, dims, _correction(node))
    std = node.target in (aten.std.correction, aten.std.dim)
    if node.target is aten.var_mean.correction:
        out = _first_out(node)
        ctx.tuples[node.name] = [rw.back(var, out.shape), rw.back(mean, out.shape)]
        return
    res = rw.unary(Kind.SQRT, var) if std else var
    _finish(ctx, node, rw.back(res, _out(node).shape))


def _softmax_rows(rw: Rows, x2: str, log: bool) -> str:
    """softmax (or log_softmax) of every row of [rows, n]: exp(x - max) / sum."""
    shifted = _sub(rw, x2, rw.reduce(x2, "max"))
    e = rw.unary(Kind.EXP, shifted)
    total = rw.reduce(e, "sum")
    if log:
        return _sub(rw, shifted, rw.unary(Kind.LOG, total))
    return rw.binary(Kind.DIV, e, total)


@_register([aten._softmax.default, aten.softmax.int, aten._log_softmax.default, aten.log_softmax.int])
def _softmax(ctx: Ctx, node: fx.Node) -> None:
    log = node.target in (aten._log_softmax.default, aten.log_softmax.int)
    rw = Rows(ctx, node)
    x = ctx.value_of(node.args[0])
    s = rw.shape(x)
    out = _out(node)
    if ctx.type(x).dtype != out.dtype:
        x = ctx.emit("cast", [x], TensorType(s, out.dtype), {"dtype": out.dtype}, name=rw.name("cast"))
    d = int(node.args[1]) % max(len(s), 1)
    x2, swapped = rw.rows_of(x, [d])
    y2 = _softmax_rows(rw, x2, log)
    if swapped:  # [before * after, n] -> [before, after, n] -> [before, n, after]
        before, after = math.prod(s[:d]), math.prod(s[d + 1 :])
        y2 = rw.swap_last(rw.reshape(y2, (before, after, s[d])))
    ctx.result(node, rw.reshape(y2, out.shape))


def _affine(rw: Rows, y2: str, weight: Any, bias: Any, n: int) -> str:
    """y * weight + bias for per-column vectors of n (either may be None)."""
    ctx = rw.ctx
    if weight is not None:
        y2 = rw.binary(Kind.MUL, y2, ctx.reshape(ctx.value_of(weight), (1, n), rw.name("w")))
    if bias is not None:
        y2 = rw.binary(Kind.ADD, y2, ctx.reshape(ctx.value_of(bias), (1, n), rw.name("b")))
    return y2


@_register([aten.layer_norm.default, aten.native_layer_norm.default])
def _layer_norm(ctx: Ctx, node: fx.Node) -> None:
    """(x - mean) * rsqrt(var + eps) * weight + bias over the last len(normalized_shape) dims."""
    native = node.target is aten.native_layer_norm.default
    x = ctx.value_of(node.args[0])
    s = ctx.type(x).shape
    k = len(node.args[1])
    weight, bias = _arg(node, 2, "weight"), _arg(node, 3, "bias")
    eps = float(_arg(node, 4, "eps", 1e-5))
    rw = Rows(ctx, node)
    x2, _ = rw.rows_of(x, list(range(len(s) - k, len(s))))
    n = rw.shape(x2)[1]
    mean = rw.reduce(x2, "mean")
    d = _sub(rw, x2, mean)
    var = rw.reduce(rw.binary(Kind.MUL, d, d), "mean")
    y2 = rw.binary(Kind.MUL, d, rw.unary(Kind.RSQRT, rw.scalar(Kind.ADD, var, eps)))
    y = rw.reshape(_affine(rw, y2, weight, bias, n), s)
    _finish(ctx, node, y, 3 if native else 0)


def _rms_norm_op() -> list[Any]:
    op = getattr(aten, "rms_norm", None)
    return [op.default] if op is not None else []


@_register(_rms_norm_op())
def _rms_norm(ctx: Ctx, node: fx.Node) -> None:
    """x * rsqrt(mean(x^2) + eps) * weight over the last len(normalized_shape) dims."""
    x = ctx.value_of(node.args[0])
    s = ctx.type(x).shape
    k = len(node.args[1])
    weight = _arg(node, 2, "weight")
    eps = _arg(node, 3, "eps")
    if eps is None:
        eps = torch.finfo(node.args[0].meta["val"].dtype).eps
    rw = Rows(ctx, node)
    x2, _ = rw.rows_of(x, list(range(len(s) - k, len(s))))
    ms = rw.reduce(rw.binary(Kind.MUL, x2, x2), "mean")
    y2 = rw.binary(Kind.MUL, x2, rw.unary(Kind.RSQRT, rw.scalar(Kind.ADD, ms, float(eps))))
    ctx.result(node, rw.reshape(_affine(rw, y2, weight, None, rw.shape(x2)[1]), s))


@_register([aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default])
def _batch_norm(ctx: Ctx, node: fx.Node) -> None:
    """Eval batch norm over dim 1: x * scale + shift per channel, with scale = weight / sqrt(var + eps) and
    shift = bias - mean * scale computed here in fp32 from the running statistics."""
    legit = node.target is aten._native_batch_norm_legit_no_training.default
    x = ctx.value_of(node.args[0])
    weight, bias, r_mean, r_var = node.args[1:5]
    if not legit and bool(_arg(node, 5, "training", False)):
        raise ctx.fail("batch_norm in training mode is not supported (call model.eval())")
    eps = float(node.args[6] if legit else _arg(node, 7, "eps", 1e-5))
    s = ctx.type(x).shape
    c = s[1]
    rw = Rows(ctx, node)
    stats = [ctx.value_of(v) if v is not None else None for v in (weight, bias, r_mean, r_var)]
    virtual = any(ctx.params[v].virtual for v in stats if v is not None)
    scale = shift = None
    if not virtual:

        def vec(v: str | None, default: float) -> torch.Tensor:
            if v is None:
                return torch.full((c,), default, dtype=torch.float64)
            return ctx.param_tensors[v].detach().to(torch.float64).reshape(c)

        w64, b64, m64, v64 = vec(stats[0], 1.0), vec(stats[1], 0.0), vec(stats[2], 0.0), vec(stats[3], 1.0)
        scale64 = w64 / torch.sqrt(v64 + eps)
        scale, shift = scale64.to(torch.float32), (b64 - m64 * scale64).to(torch.float32)
    inner = math.prod(s[2:])
    if inner == 1:  # [B, C]: a row of C
        shape_c = (1, c)
        x2 = rw.reshape(x, (s[0], c))
    else:  # [B, C, ...]: one value per row of [B * C, inner]
        shape_c = (s[0] * c, 1)
        x2 = rw.reshape(x, (s[0] * c, inner))
        scale = None if scale is None else scale.repeat(s[0])
        shift = None if shift is None else shift.repeat(s[0])
    tt = TensorType(shape_c, DType.FP32)
    p_scale = ctx.new_param(node.name + "_scale", None if scale is None else scale.reshape(shape_c), tt,
                            "<batch_norm scale>")  # fmt: skip
    p_shift = ctx.new_param(node.name + "_shift", None if shift is None else shift.reshape(shape_c), tt,
                            "<batch_norm shift>")  # fmt: skip
    y2 = rw.binary(Kind.ADD, rw.binary(Kind.MUL, x2, p_scale), p_shift)
    _finish(ctx, node, rw.reshape(y2, s), 3 if legit else 0)


@_register([aten.mm.default, aten.bmm.default, aten.matmul.default])
def _matmul(ctx: Ctx, node: fx.Node) -> None:
    """a @ b for operands of rank >= 2: 2-D products (batch dims of a folded into its rows), batched products
    over equal batch dims, and a 2-D a times a batch of b (a cross net's W @ x_l) as one product with b's
    columns as rows: (b^T a^T)^T."""
    rw = Rows(ctx, node)
    a, b = ctx.value_of(node.args[0]), ctx.value_of(node.args[1])
    sa, sb = rw.shape(a), rw.shape(b)
    out = _out(node)
    dt = out.dtype
    if len(sa) < 2 or len(sb) < 2 or DYNAMIC in sa + sb:
        raise ctx.fail(f"matmul of shapes {list(sa)} and {list(sb)} is not supported (rank >= 2, static)")
    (m, k), (k2, n) = sa[-2:], sb[-2:]
    ba, bb = sa[:-2], sb[:-2]
    batch_a, batch_b = math.prod(ba), math.prod(bb)
    if len(sb) == 2 or (batch_b == 1 and len(sa) != len(sb)):  # [.., M, K] @ [K, N]: one 2-D product
        a2 = rw.reshape(a, (batch_a * m, k))
        shape = (batch_a * m, n)
        y = ctx.emit("matmul", [a2, rw.reshape(b, (k2, n))], TensorType(shape, dt),
                     name=node.name if shape == out.shape else rw.name("mm"))  # fmt: skip
    elif len(sa) == 2 or (
        batch_a == 1 and len(sa) != len(sb)
    ):  # [M, K] @ [.., K, N] = ([.., N, K] @ [K, M])^T
        bt = rw.reshape(rw.transpose(rw.reshape(b, (batch_b, k2, n))), (batch_b * n, k2))
        if a in ctx.params:
            prod = ctx.emit(
                "linear", [bt, rw.reshape(a, (m, k))], TensorType((batch_b * n, m), dt), name=rw.name("mm")
            )
        else:
            at = rw.transpose(rw.reshape(a, (m, k)))
            prod = ctx.emit("matmul", [bt, at], TensorType((batch_b * n, m), dt), name=rw.name("mm"))
        y = rw.transpose(rw.reshape(prod, (batch_b, n, m)))
    elif (1,) * (len(bb) - len(ba)) + ba == (1,) * (len(ba) - len(bb)) + bb:  # equal batch dims
        a3, b3 = rw.reshape(a, (batch_a, m, k)), rw.reshape(b, (batch_b, k2, n))
        shape = (batch_a, m, n)
        y = ctx.emit(
            "matmul",
            [a3, b3],
            TensorType(shape, dt),
            name=node.name if shape == out.shape else rw.name("bmm"),
        )
    else:
        raise ctx.fail(f"matmul of shapes {list(sa)} and {list(sb)}: batch dims broadcast (an expand)")
    ctx.result(node, rw.reshape(y, out.shape))
