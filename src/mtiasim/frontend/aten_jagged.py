"""FBGEMM's jagged ops (what HSTU runs between its jagged and padded forms) -> `jagged_to_dense` and
`dense_to_jagged` device ops: row copies by the offsets (`mtiasim.jagged`).

- `fbgemm.jagged_to_padded_dense(values, [offsets], [S], padding_value)` (and its `_forward`,
  `jagged_2d_to_dense(values, offsets, S)`, `jagged_1d_to_dense(values, offsets, S, padding_value)`);
- `fbgemm.dense_to_jagged(dense, [offsets], total_L)` (and its `_forward`).

Values of any rank are seen as rows [T, D] (D the product of the trailing dims). The offsets are index data:
usually the host's (an input, or computed from lengths), read on every call; a constant tensor (a buffer) is
checked here. One jagged dimension only. fbgemm_gpu may load after mtiasim: the converters are registered
again when it has (`aten.register_library_ops`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

from mtiasim.frontend.aten import Ctx, _arg, _op_name, _register_library, tensor_type
from mtiasim.ir import DYNAMIC, TensorType
from mtiasim.jagged import check_offsets
from mtiasim.opset import Kind


def _fbgemm_ops(*names: str) -> list[Any]:
    fb = getattr(torch.ops, "fbgemm", None)
    out = []
    for name in names:
        try:
            out.append(getattr(fb, name).default)
        except (AttributeError, RuntimeError):
            continue
    return out


def _to_dense_ops() -> list[Any]:
    return _fbgemm_ops("jagged_to_padded_dense", "jagged_to_padded_dense_forward", "jagged_2d_to_dense",
                       "jagged_1d_to_dense")  # fmt: skip


def _to_jagged_ops() -> list[Any]:
    return _fbgemm_ops("dense_to_jagged", "dense_to_jagged_forward")


def _one(ctx: Ctx, what: str, value: Any) -> Any:
    """The single entry of a list argument (one jagged dimension), or the argument itself."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ctx.fail(f"{what}: only one jagged dimension is supported, got {len(value)}")
        return value[0]
    return value


def _offsets(ctx: Ctx, what: str, arg: Any, sequences: int, rows: int, whole: bool = False) -> str:
    """The offsets' value; a constant one is checked now (a model's buffer: it is the same every call)."""
    node = _one(ctx, what, arg)
    name = ctx.value_of(node)
    tt = ctx.type(name)
    if tt.dtype.is_float or len(tt.shape) != 1:
        raise ctx.fail(f"{what}: offsets must be a 1-D integer tensor, got {tt}")
    if name in ctx.params:
        where = f"model {ctx.model}: {what} ({ctx._where()})"
        const = ctx.const_tensor(node)
        rows = rows if rows != DYNAMIC else int(const.reshape(-1)[-1]) if const.size else 0  # rows per call
        check_offsets(const, sequences=sequences, rows=rows, where=where, whole=whole)
    elif tt.shape[0] not in (sequences + 1, DYNAMIC):
        raise ctx.fail(f"{what}: offsets must have {sequences + 1} entries (sequences + 1), got {tt}")
    return name


def _rows(ctx: Ctx, what: str, name: str, lead: int) -> tuple[tuple[int, ...], int]:
    """A float value's leading dims (`lead` of them) and the product of the rest (the row width); jagged rows
    [?, D] known per call only (an EmbeddingCollection's) have `DYNAMIC` rows."""
    tt = ctx.type(name)
    if not tt.dtype.is_float:
        raise ctx.fail(f"{what}: {tt.dtype.value} values are not supported (float values only)")
    per_call = name in ctx.call_rows and len(tt.shape) == 2 and tt.shape[1] != DYNAMIC
    if DYNAMIC in tt.shape and not per_call:
        raise ctx.fail(f"{what}: values of a data-dependent shape {tt.shape_text} are not supported")
    return tt.shape[:lead], tt.shape[-1] if per_call else math.prod(tt.shape[lead:])


def _result(ctx: Ctx, node: fx.Node, what: str, rows_per_call: bool = False) -> TensorType:
    """The op's result type; with `rows_per_call` its rows may be known per call only (`DYNAMIC`)."""
    val = node.meta.get("val")  # dense_to_jagged's is (values, [offsets])
    tt = tensor_type(val[0] if isinstance(val, (tuple, list)) else val)
    if tt is None or DYNAMIC in (tt.shape[1:] if rows_per_call else tt.shape):
        shape = "?" if tt is None else tt.shape_text
        why = "the sequences are counted by the offsets' length, static when they end at the values' rows"
        raise ctx.fail(f"{what}: its result {shape} has a data-dependent size ({why})")
    return tt


@_register_library(_to_dense_ops)
def _jagged_to_dense(ctx: Ctx, node: fx.Node) -> None:
    what = _op_name(node.target)
    values = ctx.value_of(node.args[0])
    (t,), d = _rows(ctx, what, values, 1)
    _one(ctx, what, node.args[1])
    out = _result(ctx, node, what)
    b, s = out.shape[0], out.shape[1]
    if math.prod(out.shape[2:]) != d:
        raise ctx.fail(f"{what}: values {ctx.type(values)} do not give {out}")
    offsets = _offsets(ctx, what, node.args[1], b, t)
    if "jagged_1d" in what:
        padding = float(_arg(node, 3, "padding_value", 0))
    elif "jagged_2d" in what:
        padding = 0.0
    else:
        padding = float(_arg(node, 3, "padding_value", 0.0))
        s_arg = _one(ctx, what, _arg(node, 2, "max_lengths"))
        if isinstance(s_arg, fx.Node) or int(s_arg) != s:
            raise ctx.fail(f"{what}: max_lengths must be a constant, got {s_arg}")
    rows = ctx.reshape(values, (t, d), node.name + "_rows")
    dense = ctx.emit(Kind.JAGGED_TO_DENSE.value, [rows, offsets], TensorType((b, s, d), out.dtype),
                     {"max_len": s, "padding": padding, "aten": what}, name=node.name + "_dense")  # fmt: skip
    ctx.result(node, ctx.reshape(dense, out.shape, node.name))


@_register_library(_to_jagged_ops)
def _dense_to_jagged(ctx: Ctx, node: fx.Node) -> None:
    what = _op_name(node.target)
    dense = ctx.value_of(node.args[0])
    (b, s), d = _rows(ctx, what, dense, 2)
    _one(ctx, what, node.args[1])
    out = _result(ctx, node, what, rows_per_call=True)
    t = out.shape[0]
    # without total_L the result has offsets[-1] rows: when export found them to be t, so must every call's;
    # when it did not, the rows are known per call only (offsets[-1] of them), as an EmbeddingCollection's
    whole = _arg(node, 2, "total_L") is None
    offsets = _offsets(ctx, what, node.args[1], b, t, whole)
    grid = ctx.reshape(dense, (b, s, d), node.name + "_grid")
    attrs = {"max_len": s, "rows": t, "aten": what, "whole": whole}
    rows = ctx.emit(Kind.DENSE_TO_JAGGED.value, [grid, offsets], TensorType((t, d), out.dtype), attrs,
                    name=node.name + "_jagged")  # fmt: skip
    if t == DYNAMIC:
        ctx.call_rows.add(rows)
    value = ctx.reshape(rows, out.shape, node.name + "_values")
    if isinstance(node.meta.get("val"), (tuple, list)):  # (values, [offsets]): the offsets pass through
        ctx.tuples[node.name] = [value, node.name + "_offsets"]
        ctx.tuples[node.name + "_offsets"] = [offsets]
    else:
        ctx.result(node, value)
