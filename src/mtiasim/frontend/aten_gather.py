"""aten gathers and scatters whose indices are data (a model's integer inputs, what the host computes from them,
or a device op's result) -> `gather_rows` / `scatter_rows` over row views of the activation.

An activation x with the picked dim d is seen as rows ``[P * S_d, Q]`` (P the product of the dims before d, Q
of those after): picking along d is picking rows, in P groups of S_d rows.

- ``index_select(x, d, idx)``, ``x[..., idx, ...]`` (one index tensor): the same indices in every group.
- ``gather(x, d, index)``: with an index broadcast along the dims after d (``idx.unsqueeze(-1).expand(...)``,
  the usual way to gather rows with gather) whole rows; along the last dim, a row per element with each
  group's own indices; along another dim, the last two dims swapped around it (the MLU's transposes).
- ``scatter(x, d, index, src | value)``, ``scatter_add``, ``scatter_reduce(..., "sum")``, ``index_put(x,
  (idx,), values, accumulate)`` (and ``index_add``, which decomposes into it): the same shapes, written into a
  copy of x; added ones are summed in FP32 in index order (docs/numerics.md).

x[...] with several index tensors or a boolean mask (a data-dependent shape) is refused in one line.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

from mtiasim.frontend.aten import (
    Ctx,
    _arg,
    _aten_overloads,
    _index,
    _op_name,
    _out,
    _register,
    _slice_value,
    emit_expand,
    emit_permute,
)
from mtiasim.ir import DYNAMIC, TensorType

aten = torch.ops.aten
GATHERS = _aten_overloads(("index_select", "gather"))
SCATTERS = _aten_overloads(("scatter.src", "scatter.value", "scatter_add", "scatter_reduce.two"))
INDEX_PUTS = _aten_overloads(("index_put", "index_put_"))
# what reads index data as rows to pick or write (index_add and index_copy decompose into index_put)
ROW_INDEX_OPS = frozenset(
    GATHERS + SCATTERS + INDEX_PUTS + [aten.index.Tensor] + _aten_overloads(("index_add", "index_copy"))
)


def index_value(ctx: Ctx, arg: Any, op: str) -> str:
    """The IR value of an index argument: integer data known per call (its length fixed at compile time)."""
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dtype not in (torch.int64, torch.int32):
        if isinstance(val, torch.Tensor) and val.dtype == torch.bool:
            raise ctx.fail(f"{op} with a boolean mask (a data-dependent number of rows) is not supported")
        raise ctx.fail(f"{op}: the indices must be an integer tensor")
    v = ctx.value_of(arg)
    if DYNAMIC in ctx.type(v).shape:
        raise ctx.fail(f"{op}: indices whose length is known per call only are not supported")
    return v


def _flat(ctx: Ctx, v: str, name: str) -> str:
    return ctx.reshape(v, (math.prod(ctx.type(v).shape),), name)


def _rows(shape: tuple[int, ...], d: int) -> tuple[int, int, int]:
    """(P, S_d, Q): x seen as P groups of S_d rows of Q elements."""
    return math.prod(shape[:d]), shape[d], math.prod(shape[d + 1 :])


def emit_gather(
    ctx: Ctx, x: str, d: int, idx: str, count: int, index_step: int, out: tuple[int, ...], name: str
) -> str:
    """``out`` = rows of x (seen along dim d) picked by `count` indices per group."""
    tt = ctx.type(x)
    p, sd, q = _rows(tt.shape, d)
    x2 = ctx.reshape(x, (p * sd, q), name + "_rows")
    attrs = {"groups": p, "count": count, "index_step": index_step if p > 1 else 0, "row_step": sd}
    y2 = ctx.emit(
        "gather_rows", [x2, idx], TensorType((p * count, q), tt.dtype), attrs, name=name + "_picked"
    )
    return ctx.reshape(y2, out, name)


def emit_scatter(
    ctx: Ctx, dst: str, d: int, idx: str, src: str | None, attrs: dict[str, Any], name: str
) -> str:
    """A copy of dst (seen along dim d) with src's rows (or the constant attrs["value"]) written or added."""
    tt = ctx.type(dst)
    p, sd, q = _rows(tt.shape, d)
    dst2 = ctx.reshape(dst, (p * sd, q), name + "_dst")
    a = {"row_step": sd, "cols": q, **attrs}
    if a["groups"] <= 1:
        a["index_step"] = 0
    ins = [dst2, idx] + ([src] if src is not None else [])
    y2 = ctx.emit("scatter_rows", ins, TensorType((p * sd, q), tt.dtype), a, name=name + "_rows")
    return ctx.reshape(y2, tt.shape, name)


def _narrow(ctx: Ctx, node: fx.Node, x: str, extents: tuple[int, ...], skip: int | None, name: str) -> str:
    """x cut to `extents` in every dim but `skip` (a gather's output covers only the index's extents)."""
    shape = ctx.type(x).shape
    for k, (have, want) in enumerate(zip(shape, extents, strict=True)):
        if k == skip or have == want:
            continue
        if want > have:
            raise ctx.fail(
                f"{_op_name(node.target)}: index extent {want} exceeds the tensor's {have} in dim {k}"
            )
        x = _slice_value(ctx, node, x, k, 0, want, f"{name}_cut{k}")
    return x


def broadcast_base(index: Any, d: int) -> tuple[fx.Node, bool] | None:
    """(base, per group) when the index is ``base.expand(...)`` with base of size 1 in every dim after d (whole
    rows picked): per group when base's dims before d are the index's, else one index list for all groups."""
    if not isinstance(index, fx.Node) or index.target is not aten.expand.default:
        return None
    base = index.args[0]
    bval, ival = getattr(base, "meta", {}).get("val"), index.meta.get("val")
    if not isinstance(bval, torch.Tensor) or not isinstance(ival, torch.Tensor):
        return None
    shape = (1,) * (ival.dim() - bval.dim()) + tuple(bval.shape)
    full = tuple(ival.shape)
    if any(s != 1 for s in shape[d + 1 :]) or shape[d] != full[d]:
        return None
    if all(s == 1 for s in shape[:d]):
        return base, False
    return (base, True) if shape[:d] == full[:d] else None


def _swap_last(rank: int, d: int) -> tuple[int, ...]:
    dims = list(range(rank))
    dims[d], dims[-1] = dims[-1], dims[d]
    return tuple(dims)


def _permuted(ctx: Ctx, v: str, dims: tuple[int, ...], name: str) -> str:
    tt = ctx.type(v)
    return emit_permute(ctx, v, dims, TensorType(tuple(tt.shape[i] for i in dims), tt.dtype), name)


# ------------------------------------------------------------------------------------------------ gathers
@_register(GATHERS)
def _gather(ctx: Ctx, node: fx.Node) -> None:
    op = _op_name(node.target)
    x = ctx.value_of(node.args[0])
    rank = max(len(ctx.type(x).shape), 1)
    d = int(node.args[1]) % rank
    index = node.args[2]
    out = _out(node).shape
    if node.target is aten.index_select.default:
        idx = index_value(ctx, index, op)
        n = math.prod(ctx.type(idx).shape)
        ctx.result(node, emit_gather(ctx, x, d, _flat(ctx, idx, node.name + "_idx"), n, 0, out, node.name))
        return
    xs = _narrow(ctx, node, x, out, d, node.name)
    base = broadcast_base(index, d)
    if base is not None:  # whole rows
        idx = index_value(ctx, base[0], op)
        step = out[d] if base[1] else 0
        ctx.result(
            node, emit_gather(ctx, xs, d, _flat(ctx, idx, node.name + "_idx"), out[d], step, out, node.name)
        )
        return
    idx = index_value(ctx, index, op)
    if d == len(out) - 1:  # an element per index, each row its own indices
        flat = _flat(ctx, idx, node.name + "_idx")
        ctx.result(node, emit_gather(ctx, xs, d, flat, out[d], out[d], out, node.name))
        return
    dims = _swap_last(len(out), d)  # the dim swapped to the end and back (the MLU)
    xt, it = _permuted(ctx, xs, dims, node.name + "_xt"), _permuted(ctx, idx, dims, node.name + "_it")
    shape_t = tuple(out[i] for i in dims)
    yt = emit_gather(ctx, xt, len(out) - 1, _flat(ctx, it, node.name + "_idx"), shape_t[-1], shape_t[-1], shape_t,
                     node.name + "_t")  # fmt: skip
    ctx.result(node, _permuted(ctx, yt, dims, node.name))


@_register([aten.index.Tensor])
def _index_tensor(ctx: Ctx, node: fx.Node) -> None:
    """x[..., idx, ...] with one index tensor of data; constant index vectors keep the column gather of
    `aten._index` (DLRM's interaction triangle)."""
    x = ctx.value_of(node.args[0])
    indices = list(node.args[1])
    given = [(i, v) for i, v in enumerate(indices) if v is not None]
    constant = all(ctx.alias.get(v.name, v.name) in ctx.param_tensors for _i, v in given)
    if constant and (len(given) == 2 or (len(given) == 1 and given[0][0] == 1)):
        _index(ctx, node)
        return
    if len(given) != 1:
        raise ctx.fail(
            "x[...] with several index tensors (an element gather) is not supported; index one dim"
        )
    d, arg = given[0]
    idx = index_value(ctx, arg, "aten::index.Tensor")
    n = math.prod(ctx.type(idx).shape)
    ctx.result(
        node, emit_gather(ctx, x, d, _flat(ctx, idx, node.name + "_idx"), n, 0, _out(node).shape, node.name)
    )


# ----------------------------------------------------------------------------------------------- scatters
def _scatter_attrs(ctx: Ctx, node: fx.Node, op: str) -> dict[str, Any]:
    accumulate = node.target is aten.scatter_add.default
    if node.target is aten.scatter_reduce.two:
        reduce, include_self = node.args[4], _arg(node, 5, "include_self", True)
        if reduce != "sum" or not include_self:
            raise ctx.fail(f"{op} with reduce={reduce!r}, include_self={include_self} is not supported "
                           "(only a sum that includes the destination)")  # fmt: skip
        accumulate = True
    return {"accumulate": accumulate}


@_register(SCATTERS)
def _scatter(ctx: Ctx, node: fx.Node) -> None:
    op = _op_name(node.target)
    x = ctx.value_of(node.args[0])
    shape = ctx.type(x).shape
    rank = max(len(shape), 1)
    d = int(node.args[1]) % rank
    index, src = node.args[2], node.args[3]
    ext = tuple(int(s) for s in index.meta["val"].shape)
    attrs = _scatter_attrs(ctx, node, op)
    if len(ext) != len(shape):
        raise ctx.fail(f"{op}: index of rank {len(ext)} for a tensor of rank {len(shape)}")
    base = broadcast_base(index, d)
    if base is None and d != rank - 1:  # the dim swapped to the end and back (the MLU)
        dims = _swap_last(rank, d)
        xt = _permuted(ctx, x, dims, node.name + "_xt")
        it = _permuted(ctx, index_value(ctx, index, op), dims, node.name + "_it")
        st = _permuted(ctx, ctx.value_of(src), dims, node.name + "_st") if isinstance(src, fx.Node) else None
        ext_t = tuple(ext[i] for i in dims)
        yt = _scatter_rows(
            ctx, node, xt, rank - 1, it, st, src, ext_t, attrs, node.name + "_t", per_group=True
        )
        ctx.result(node, _permuted(ctx, yt, dims, node.name))
        return
    per_group = base is None or base[1]
    idx = index_value(ctx, base[0] if base is not None else index, op)
    srcv = ctx.value_of(src) if isinstance(src, fx.Node) else None
    ctx.result(node, _scatter_rows(ctx, node, x, d, idx, srcv, src, ext, attrs, node.name, per_group))


def _scatter_rows(
    ctx: Ctx,
    node: fx.Node,
    x: str,
    d: int,
    idx: str,
    src: str | None,
    value: Any,
    ext: tuple[int, ...],
    attrs: dict[str, Any],
    name: str,
    per_group: bool,
) -> str:
    """scatter along d with an index of extents `ext`: groups over the dims before d (the first may be cut
    short), the first columns of the rows (the first dim after d may be cut short)."""
    op = _op_name(node.target)
    shape = ctx.type(x).shape
    if ext[1:d] != shape[1:d] or (len(shape) > d + 2 and ext[d + 2 :] != shape[d + 2 :]):
        raise ctx.fail(f"{op}: an index of extents {list(ext)} does not cover whole groups of rows of "
                       f"{list(shape)} (only the first dim and the one after dim {d} may be shorter)")  # fmt: skip
    groups, count, cols = math.prod(ext[:d]), ext[d], math.prod(ext[d + 1 :])
    a = {**attrs, "groups": groups, "count": count, "index_step": count if per_group else 0, "cols": cols}
    srcv = None
    if src is not None:
        srcv = ctx.reshape(
            _narrow(ctx, node, src, ext, None, name + "_src"), (groups * count, cols), name + "_srcrows"
        )
    else:
        a["value"] = float(value)
    return emit_scatter(ctx, x, d, _flat(ctx, idx, name + "_idx"), srcv, a, name)


def _broadcasts(vshape: tuple[int, ...], shape: tuple[int, ...], trailing: int) -> bool:
    """Whether values of `vshape` are `shape`'s last `trailing` dims (leading dims of size 1 aside)."""
    lead = len(vshape) - trailing
    return (
        lead >= 0
        and all(s == 1 for s in vshape[:lead])
        and tuple(vshape[lead:]) == tuple(shape[len(shape) - trailing :])
    )


@_register(INDEX_PUTS)
def _index_put(ctx: Ctx, node: fx.Node) -> None:
    """x[..., idx, ...] = values (accumulate: +=), one index tensor; values of the indexed shape, or
    broadcast to it (a row, a scalar)."""
    op = _op_name(node.target)
    x = ctx.value_of(node.args[0])
    shape = ctx.type(x).shape
    given = [(i, v) for i, v in enumerate(node.args[1]) if v is not None]
    if len(given) != 1:
        raise ctx.fail(f"{op} with {len(given)} index tensors is not supported; index one dim")
    d, arg = given[0]
    idx = index_value(ctx, arg, op)
    n = math.prod(ctx.type(idx).shape)
    p, _sd, q = _rows(shape, d)
    vals = ctx.value_of(node.args[2])
    vshape = ctx.type(vals).shape
    value = 0.0
    indexed = shape[:d] + ctx.type(idx).shape + shape[d + 1 :]
    if _broadcasts(vshape, indexed, len(indexed)):  # values of the indexed shape
        src = ctx.reshape(vals, (p * n, q), node.name + "_src")
    elif q > 1 and _broadcasts(vshape, indexed, len(shape) - d - 1):  # one row, written at every index
        src = ctx.reshape(vals, (1, q), node.name + "_src")
    elif math.prod(vshape) == 1 and vals in ctx.params and not ctx.params[vals].virtual:  # a constant
        src, value = None, float(ctx.param_tensors[vals].reshape(-1)[0])
    elif math.prod(vshape) == 1:
        one = ctx.reshape(vals, (1, 1), node.name + "_one")
        src = one if q == 1 else emit_expand(ctx, one, (1, q), node.name + "_src")
    else:
        src = ctx.reshape(
            emit_expand(ctx, vals, indexed, node.name + "_full"), (p * n, q), node.name + "_src"
        )
    attrs = {"accumulate": bool(_arg(node, 3, "accumulate", False)), "groups": p, "count": n, "index_step": 0}
    if src is None:
        attrs["value"] = value
    ctx.result(node, emit_scatter(ctx, x, d, _flat(ctx, idx, node.name + "_idx"), src, attrs, node.name))
