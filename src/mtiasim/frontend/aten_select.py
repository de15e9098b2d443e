"""aten selections by a mask: where, masked_fill and the logical ops, over the masks comparisons make.

A comparison's bool result is held as 1.0/0.0 in the activations' float type (`mask_type`); the SE selects
with it: ``where(m, x, y) = keep(x, m) + keep(y, m == 0)`` (keep: x where the mask is set, else 0; exact,
since one side of the sum is always 0), a constant branch is `fill` (the constant where the mask is set);
``logical_and`` is a product of masks, ``logical_or`` their maximum, ``logical_not`` a comparison with 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from mtiasim.frontend.aten import BROADCASTING, Ctx, _aten_overloads, _out, _register, emit_binary, mask_type
from mtiasim.ir import TensorType
from mtiasim.opset import Kind

aten = torch.ops.aten


def _not(ctx: Ctx, m: str, name: str) -> str:
    return ctx.emit(Kind.EQ.value, [m], ctx.type(m), {"scalar": 0.0}, name=name)


def _branch(ctx: Ctx, value: Any, m: str, out: TensorType, name: str) -> str:
    """`value` where the mask `m` is set, else 0: a tensor kept by the mask, or a constant filled."""
    if (
        isinstance(value, fx.Node)
        and value.name in ctx.param_tensors
        and ctx.param_tensors[value.name].numel() == 1
    ):
        value = float(ctx.const_tensor(value).reshape(-1)[0])  # a lifted scalar constant
    if isinstance(value, (int, float, bool)):
        return ctx.emit(Kind.FILL.value, [m], TensorType(ctx.type(m).shape, out.dtype), {"value": float(value)},
                        name=name)  # fmt: skip
    return emit_binary(ctx, Kind.KEEP, ctx.value_of(value), m, out, {}, name)


def select(ctx: Ctx, node: fx.Node, m: str, x: Any, y: Any) -> str:
    out = _out(node)
    keep_x = _branch(ctx, x, m, out, node.name + "_then")
    keep_y = _branch(ctx, y, _not(ctx, m, node.name + "_not"), out, node.name + "_else")
    return emit_binary(ctx, Kind.ADD, keep_x, keep_y, out, {}, node.name)


WHERE = _aten_overloads(("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar"))
MASKED_FILL = _aten_overloads(("masked_fill.Scalar", "masked_fill.Tensor"))
LOGICAL = _aten_overloads(("logical_and", "bitwise_and.Tensor", "logical_or", "bitwise_or.Tensor"))
BROADCASTING.update(WHERE + MASKED_FILL + LOGICAL)


@_register(WHERE)
def _where(ctx: Ctx, node: fx.Node) -> None:
    cond, x, y = node.args[:3]
    ctx.result(node, select(ctx, node, ctx.value_of(cond), x, y))


@_register(MASKED_FILL)
def _masked_fill(ctx: Ctx, node: fx.Node) -> None:
    x, m, value = node.args[:3]
    if isinstance(value, fx.Node):
        value = float(ctx.const_tensor(value).reshape(-1)[0])
    ctx.result(node, select(ctx, node, ctx.value_of(m), value, x))


@_register(_aten_overloads(("logical_not", "bitwise_not")))
def _logical_not(ctx: Ctx, node: fx.Node) -> None:
    m = ctx.value_of(node.args[0])
    ctx.result(node, ctx.emit(Kind.EQ.value, [m], mask_type(ctx, node), {"scalar": 0.0}))


@_register(LOGICAL)
def _logical_binary(ctx: Ctx, node: fx.Node) -> None:
    kind = Kind.MUL if "and" in str(node.target) else Kind.MAXIMUM
    a, b = ctx.value_of(node.args[0]), ctx.value_of(node.args[1])
    ctx.result(node, emit_binary(ctx, kind, a, b, mask_type(ctx, node), {}, node.name))


@_register(_aten_overloads(("clamp_min", "clamp_max")))
def _clamp_one_side(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    bound = node.args[1]
    if isinstance(bound, fx.Node):
        raise ctx.fail(f"{node.target}: the bound must be a constant, not a tensor")
    side = "min" if "clamp_min" in str(node.target) else "max"
    ctx.result(node, ctx.emit(Kind.CLAMP.value, [x], _out(node), {side: float(bound)}))


@_register(_aten_overloads(("full_like", "zeros_like", "ones_like", "new_zeros", "new_ones", "new_full")))
def _full_like(ctx: Ctx, node: fx.Node) -> None:
    """A constant of a (static) shape: a buffer made once, here."""
    out = _out(node)
    name = str(node.target)
    fill = node.args[2] if "new_full" in name else node.args[1] if "full_like" in name else None
    value = 0.0 if "zeros" in name else 1.0 if "ones" in name else float(fill)
    tensor = torch.full(out.shape, value, dtype=torch.float32)
    ctx.result(node, ctx.new_param(node.name + "_const", tensor, out, f"<{name.split('.')[0]} {value:g}>"))
