"""aten (and quantized / fbgemm) ops -> the device vocabulary of `mtiasim.ir`.

One converter per family of ops; each reads the exported node's arguments and emits IR nodes with normalised
attributes. Views and no-op casts become `reshape` / `copy` / `cast` nodes the compiler folds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from mtiasim.dtypes import DType
from mtiasim.errors import UnsupportedOperatorError, UsageError
from mtiasim.frontend.dtypes import to_dtype
from mtiasim.frontend.source import node_source
from mtiasim.ir import DYNAMIC, Node, Param, TensorType
from mtiasim.opset import ELEMENTWISE, Elementwise, Kind

aten = torch.ops.aten
EMBEDDING_MODES = {0: "sum", 1: "mean", 2: "max"}


@dataclass
class Ctx:
    """Conversion state: the IR being built and the map from exported nodes to IR values."""

    model: str
    params: dict[str, Param]
    param_tensors: dict[str, torch.Tensor]
    values: dict[str, TensorType] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    alias: dict[str, str] = field(default_factory=dict)
    tuples: dict[str, list[str | None]] = field(default_factory=dict)
    current: fx.Node | None = None

    # ---------------------------------------------------------------------------------------------- values
    def value_of(self, node: Any) -> str:
        if not isinstance(node, fx.Node):
            raise UsageError(
                f"model {self.model}: expected a tensor argument, got {node!r} ({self._where()})"
            )
        name = self.alias.get(node.name, node.name)
        if name in self.params:
            self.values.setdefault(name, self.params[name].type)
        elif name not in self.values:
            tt = type_of(node)
            if tt is None:
                raise UnsupportedOperatorError(
                    f"model {self.model}: value {node.name} has an unsupported type ({self._where()})"
                )
            self.values[name] = tt
        self.used.add(name)
        return name

    def type(self, name: str) -> TensorType:
        return self.values[name]

    def emit(
        self, op: str, inputs: list[str], out: TensorType, attrs: dict | None = None, name: str = ""
    ) -> str:
        assert self.current is not None
        out_name = name or self.current.name
        while out_name in self.values and name == "":
            out_name += "_"
        self.values[out_name] = out
        self.nodes.append(
            Node(out_name, op, tuple(inputs), (out_name,), dict(attrs or {}), node_source(self.current))
        )
        return out_name

    def result(self, node: fx.Node, value: str) -> None:
        if value != node.name:
            self.alias[node.name] = value

    def getitem(self, node: fx.Node) -> None:
        src, i = node.args
        assert isinstance(src, fx.Node)
        items = self.tuples.get(self.alias.get(src.name, src.name))
        if items is None or not isinstance(i, int) or i >= len(items) or items[i] is None:
            self.current = node
            raise UnsupportedOperatorError(
                f"model {self.model}: output {i} of {src.target} is not supported on the device ({self._where()})"
            )
        self.alias[node.name] = items[i]  # type: ignore[assignment]

    def fold(self, node: fx.Node) -> None:
        """An op on weights alone: computed once now (shape only for virtual weights)."""
        self.current = node
        ins = [i for i in node.all_input_nodes]
        virtual = any(self.params[self.alias.get(i.name, i.name)].virtual for i in ins)
        tt = type_of(node)
        if tt is None:
            raise UnsupportedOperatorError(f"model {self.model}: cannot fold {node.target} ({self._where()})")
        tensor = None
        quant = None
        if not virtual:

            def load(a: fx.Node) -> Any:
                return self.param_tensors[self.alias.get(a.name, a.name)]

            args = fx.node.map_arg(node.args, load)
            if isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable:
                # an in-place op (detach_ of an in-forward constant): on a copy, never on the model's weight
                args = torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, args)
            with torch.no_grad():
                tensor = node.target(*args, **fx.node.map_arg(node.kwargs, load))
            self.param_tensors[node.name] = tensor
            quant = pt2e_weight(node, args)
        self.params[node.name] = Param(node.name, f"<folded {node.target}>", tt, virtual, tensor, quant)

    def _where(self) -> str:
        return node_source(self.current).describe() if self.current is not None else "?"

    def fail(self, what: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(f"model {self.model}: {what} ({self._where()})")

    def const_tensor(self, node: Any) -> np.ndarray:
        """The values of a constant (parameter or buffer) tensor argument."""
        if not isinstance(node, fx.Node):
            raise self.fail(f"expected a constant tensor, got {node!r}")
        name = self.alias.get(node.name, node.name)
        t = self.param_tensors.get(name)
        if t is None or self.params[name].virtual:
            raise self.fail(f"{node.name} must be a constant tensor (a buffer), not data")
        return t.detach().cpu().numpy()


def type_of(node: fx.Node) -> TensorType | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    dtype = to_dtype(val.dtype)
    if dtype is None:
        return None
    # never int() a symbolic size: that would specialise it (a guard) in the exported program
    shape = tuple(int(d) if is_concrete_int(d) else DYNAMIC for d in val.shape)
    return TensorType(shape, dtype)


@dataclass(frozen=True)
class Converter:
    fn: Callable[[Ctx, fx.Node], None]
    index_args: bool = False  # reads index data computed on the host (embedding lookups)
    names: tuple[str, ...] = ()

    def __call__(self, ctx: Ctx, node: fx.Node) -> None:
        ctx.current = node
        self.fn(ctx, node)


CONVERTERS: dict[Any, Converter] = {}


def _register(targets: list[Any], index_args: bool = False) -> Callable:
    def wrap(fn: Callable[[Ctx, fx.Node], None]) -> Callable[[Ctx, fx.Node], None]:
        found = [t for t in targets if t is not None]
        names = tuple(sorted({_op_name(t) for t in found}))
        for t in found:
            CONVERTERS[t] = Converter(fn, index_args, names)
        return fn

    return wrap


def _op_name(target: Any) -> str:
    name = getattr(target, "name", None)
    return name() if callable(name) else str(target)


def supported_ops() -> list[str]:
    return sorted({_op_name(t) for t in CONVERTERS})


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _out(node: fx.Node) -> TensorType:
    tt = type_of(node)
    if tt is None:
        raise UnsupportedOperatorError(f"value {node.name} of {node.target} has an unsupported type")
    return tt


# ------------------------------------------------------------------------------------------------ matmuls
@_register([aten.linear.default])
def _linear(ctx: Ctx, node: fx.Node) -> None:
    x, w = ctx.value_of(node.args[0]), ctx.value_of(node.args[1])
    b = _arg(node, 2, "bias")
    ins = [x, w] + ([ctx.value_of(b)] if b is not None else [])
    ctx.emit("linear", ins, _out(node))


@_register([aten.mm.default, aten.bmm.default, aten.matmul.default])
def _matmul(ctx: Ctx, node: fx.Node) -> None:
    a, b = ctx.value_of(node.args[0]), ctx.value_of(node.args[1])
    ra, rb = len(ctx.type(a).shape), len(ctx.type(b).shape)
    if not ((ra == rb == 2) or (ra == rb == 3)):
        raise ctx.fail(f"matmul of rank {ra} by rank {rb} is not supported (2-D @ 2-D or 3-D @ 3-D)")
    ctx.emit("matmul", [a, b], _out(node))


@_register([aten.addmm.default])
def _addmm(ctx: Ctx, node: fx.Node) -> None:
    bias, a, b = (ctx.value_of(x) for x in node.args[:3])
    beta, alpha = _arg(node, 3, "beta", 1), _arg(node, 4, "alpha", 1)
    out = _out(node)
    prod = ctx.emit("matmul", [a, b], out, name=node.name + "_mm")
    if alpha != 1:
        prod = ctx.emit("mul", [prod], out, {"scalar": float(alpha)}, name=node.name + "_alpha")
    if beta == 0:
        ctx.result(node, prod)
        return
    if beta != 1:
        bias = ctx.emit("mul", [bias], ctx.type(bias), {"scalar": float(beta)}, name=node.name + "_beta")
    ctx.emit("add", [prod, bias], out, {"alpha": 1.0})


# ------------------------------------------------------------------------------------------ embeddings
def _embedding_bag_common(
    ctx: Ctx, node: fx.Node, weight: Any, row_format: str, args: dict[str, Any]
) -> None:
    w = ctx.value_of(weight)
    indices, offsets = args["indices"], args["offsets"]
    ins = [w, ctx.value_of(indices), ctx.value_of(offsets)]
    if args.get("per_sample_weights") is not None:
        ins.append(ctx.value_of(args["per_sample_weights"]))
    mode = EMBEDDING_MODES.get(int(args["mode"]))
    if mode is None:
        raise ctx.fail(f"embedding_bag mode {args['mode']} is unknown")
    if args.get("per_sample_weights") is not None and mode != "sum":
        raise ctx.fail("per_sample_weights only apply to mode sum (as in torch)")
    val = node.meta.get("val")
    pooled = val[0] if isinstance(val, (tuple, list)) else val
    dtype = to_dtype(pooled.dtype)
    if dtype is None:
        raise ctx.fail(f"embedding_bag output dtype {pooled.dtype} is not supported")
    out = TensorType((int(pooled.shape[0]), int(pooled.shape[1])), dtype)
    attrs = {
        "mode": mode,
        "include_last_offset": bool(args.get("include_last_offset", False)),
        "padding_idx": None if args.get("padding_idx") in (None, -1) else int(args["padding_idx"]),
        "row_format": row_format,
    }
    name = ctx.emit("embedding_bag", ins, out, attrs, name=node.name + "_pooled")
    if isinstance(val, (tuple, list)):
        ctx.tuples[node.name] = [name] + [None] * (len(val) - 1)
    else:
        ctx.result(node, name)


@_register(
    [aten.embedding_bag.padding_idx, aten.embedding_bag.default, aten._embedding_bag.default], index_args=True
)
def _embedding_bag(ctx: Ctx, node: fx.Node) -> None:
    a = node.args
    weight = a[0]
    fmt = {DType.FP32: "fp32", DType.FP16: "fp16"}.get(_table_dtype(ctx, weight))
    if fmt is None:
        raise ctx.fail("embedding_bag tables must be fp32 or fp16")
    _embedding_bag_common(
        ctx,
        node,
        weight,
        fmt,
        {
            "indices": a[1],
            "offsets": a[2],
            "mode": _arg(node, 4, "mode", 0),
            "per_sample_weights": _arg(node, 6, "per_sample_weights"),
            "include_last_offset": _arg(node, 7, "include_last_offset", False),
            "padding_idx": _arg(node, 8, "padding_idx"),
        },
    )


def _table_dtype(ctx: Ctx, weight: Any) -> DType:
    name = ctx.alias.get(weight.name, weight.name) if isinstance(weight, fx.Node) else ""
    if name not in ctx.params:
        raise ctx.fail("embedding tables must be parameters or buffers of the model")
    return ctx.params[name].type.dtype


@_register([aten.embedding.default], index_args=True)
def _embedding(ctx: Ctx, node: fx.Node) -> None:
    """embedding(weight, indices) = one-row bags, reshaped to indices.shape + [D]."""
    weight, indices = node.args[0], node.args[1]
    w = ctx.value_of(weight)
    idx = ctx.value_of(indices)
    fmt = {DType.FP32: "fp32", DType.FP16: "fp16"}.get(ctx.type(w).dtype)
    if fmt is None:
        raise ctx.fail("embedding tables must be fp32 or fp16")
    if any(d == DYNAMIC for d in ctx.type(idx).shape):
        raise ctx.fail("embedding over a data-dependent number of indices is not supported")
    n = int(np.prod(ctx.type(idx).shape))
    d = ctx.type(w).shape[1]
    pooled = ctx.emit(
        "embedding_bag",
        [w, idx],
        TensorType((n, d), ctx.type(w).dtype),
        {
            "mode": "sum",
            "include_last_offset": False,
            "padding_idx": _arg(node, 2, "padding_idx"),
            "row_format": fmt,
            "one_per_bag": True,
        },
        name=node.name + "_rows",
    )
    ctx.emit("reshape", [pooled], _out(node), {"shape": _out(node).shape})


def _quantized_ops() -> list[Any]:
    q = getattr(torch.ops, "quantized", None)
    try:
        return [q.embedding_bag_byte_rowwise_offsets.default] if q is not None else []
    except (AttributeError, RuntimeError):
        return []


@_register(_quantized_ops(), index_args=True)
def _embedding_bag_byte(ctx: Ctx, node: fx.Node) -> None:
    # (weight, indices, offsets, scale_grad_by_freq, mode, pruned_weights, per_sample_weights,
    #  compressed_indices_mapping, include_last_offset)
    if _arg(node, 5, "pruned_weights", False):
        raise ctx.fail("pruned embedding tables are not supported")
    _embedding_bag_common(
        ctx,
        node,
        node.args[0],
        "int8_aten",
        {
            "indices": node.args[1],
            "offsets": _arg(node, 2, "offsets"),
            "mode": _arg(node, 4, "mode", 0),
            "per_sample_weights": _arg(node, 6, "per_sample_weights"),
            "include_last_offset": _arg(node, 8, "include_last_offset", False),
            "padding_idx": None,
        },
    )


def _fbgemm_tbe_ops() -> list[Any]:
    fb = getattr(torch.ops, "fbgemm", None)
    try:
        packet = fb.int_nbit_split_embedding_codegen_lookup_function if fb is not None else None
    except (AttributeError, RuntimeError):
        return []
    return [getattr(packet, o) for o in packet.overloads()] if packet is not None else []


# FBGEMM SparseType codes (fbgemm_gpu.split_embedding_configs.SparseType): FP32 0, FP16 1, INT8 2
_FBGEMM_TY = {0: "fp32", 1: "fp16", 2: "int8_fbgemm"}
_FBGEMM_OUT = {0: DType.FP32, 1: DType.FP16, 5: DType.BF16}


@_register(_fbgemm_tbe_ops(), index_args=True)
def _fbgemm_tbe(ctx: Ctx, node: fx.Node) -> None:
    """fbgemm.int_nbit_split_embedding_codegen_lookup_function: torchrec's int8 EmbeddingBagCollection."""
    names = [
        "dev_weights", "uvm_weights", "weights_placements", "weights_offsets", "weights_tys", "D_offsets",
        "total_D", "max_int2_D", "max_int4_D", "max_int8_D", "max_float16_D", "max_float32_D", "indices",
        "offsets", "pooling_mode", "indice_weights", "output_dtype", "lxu_cache_weights", "lxu_cache_locations",
        "row_alignment",
    ]  # fmt: skip
    a = {k: _arg(node, i, k) for i, k in enumerate(names)}
    weights_offsets = ctx.const_tensor(a["weights_offsets"]).astype(np.int64)
    tys = ctx.const_tensor(a["weights_tys"]).astype(np.int64)
    d_offsets = ctx.const_tensor(a["D_offsets"]).astype(np.int64)
    placements = ctx.const_tensor(a["weights_placements"]).astype(np.int64)
    dev = ctx.value_of(a["dev_weights"])
    if (placements != placements[0]).any() or ctx.type(dev).shape[0] == 0:
        raise ctx.fail("TBE tables must all be in dev_weights (placement DEVICE or HOST)")
    fmts = {_FBGEMM_TY.get(int(t)) for t in tys}
    if None in fmts or len(fmts) != 1:
        raise ctx.fail(
            f"TBE weight types {sorted(set(tys.tolist()))} are not supported (one of fp32/fp16/int8)"
        )
    mode = {0: "sum", 1: "mean"}.get(int(a["pooling_mode"]))
    if mode is None:
        raise ctx.fail(f"TBE pooling mode {a['pooling_mode']} is not supported")
    out_dtype = _FBGEMM_OUT.get(int(a["output_dtype"]))
    if out_dtype is None:
        raise ctx.fail(f"TBE output dtype code {a['output_dtype']} is not supported")
    dims = np.diff(d_offsets)
    fmt = fmts.pop()
    align = int(a["row_alignment"] or 1)
    total = ctx.type(dev).shape[0]
    tables = []
    for t in range(len(dims)):
        d = int(dims[t])
        row_bytes = -(-(d + 4 if fmt == "int8_fbgemm" else d * (2 if fmt == "fp16" else 4)) // align) * align
        start = int(weights_offsets[t])
        end = int(weights_offsets[t + 1]) if t + 1 < len(dims) else total
        # tables start 128 B aligned, so the rows of a table are the whole rows before the next one starts
        tables.append((start, d, (end - start) // row_bytes, row_bytes))
    ins = [dev, ctx.value_of(a["indices"]), ctx.value_of(a["offsets"])]
    if a["indice_weights"] is not None:
        ins.append(ctx.value_of(a["indice_weights"]))
    ctx.emit("tbe", ins, _out(node), {"tables": tuple(tables), "mode": mode, "row_format": fmt})


# ------------------------------------------------------------------------------------------ elementwise
def _aten_overloads(names: tuple[str, ...]) -> list[Any]:
    """torch.ops.aten overloads from "name" (its default) or "name.overload"; unknown names are skipped."""
    out = []
    for n in names:
        base, _, overload = n.partition(".")
        packet = getattr(aten, base, None)
        op = getattr(packet, overload or "default", None) if packet is not None else None
        if op is not None:
            out.append(op)
    return out


def _constant_arg(ctx: Ctx, value: Any, what: str) -> Any:
    if isinstance(value, fx.Node):
        raise ctx.fail(f"{what} must be a constant, not a tensor")
    return value


def _elementwise_converter(kind: Kind, spec: Elementwise) -> Callable[[Ctx, fx.Node], None]:
    """The converter of an operator-set elementwise op: tensor operands, scalar operands as attr `scalar`
    (a binary op with one scalar), the op's constants as attrs; `sub` is `add` with alpha negated."""

    def conv(ctx: Ctx, node: fx.Node) -> None:
        out = _out(node)
        if spec.arity == 1:
            x = ctx.value_of(node.args[0])
            attrs = {}
            for i, name in enumerate(spec.attrs):
                value = _arg(node, i + 1, name, None)
                if value is not None:
                    attrs[name] = _constant_arg(ctx, value, f"{kind.value}'s {name}")
            ctx.emit(kind.value, [x], out, attrs)
            return
        x, y = node.args[0], node.args[1]
        sign = -1.0 if _op_name(node.target).startswith("aten::sub") else 1.0
        alpha = (
            float(_constant_arg(ctx, _arg(node, 2, "alpha", 1), "alpha")) * sign if kind == Kind.ADD else 1.0
        )
        if isinstance(y, (int, float)) and isinstance(x, fx.Node):
            scalar = float(y) * (alpha if kind == Kind.ADD else 1.0)
            ctx.emit(kind.value, [ctx.value_of(x)], out, {"scalar": scalar})
            return
        if isinstance(x, (int, float)) and isinstance(y, fx.Node):
            if kind not in (Kind.ADD, Kind.MUL, Kind.MAXIMUM, Kind.MINIMUM) or alpha != 1.0:
                raise ctx.fail(f"{_op_name(node.target)} of a scalar and a tensor is not supported")
            ctx.emit(kind.value, [ctx.value_of(y)], out, {"scalar": float(x)})
            return
        attrs = {"alpha": alpha} if kind == Kind.ADD and alpha != 1.0 else {}
        ctx.emit(kind.value, [ctx.value_of(x), ctx.value_of(y)], out, attrs)

    return conv


for _kind, _spec in ELEMENTWISE.items():
    _register(_aten_overloads(_spec.aten))(_elementwise_converter(_kind, _spec))
_register([aten.add.Scalar, aten.sub.Scalar])(_elementwise_converter(Kind.ADD, ELEMENTWISE[Kind.ADD]))
_register([aten.mul.Scalar])(_elementwise_converter(Kind.MUL, ELEMENTWISE[Kind.MUL]))


@_register([aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.type_as.default])
def _cast(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    out = _out(node)
    if out.dtype == ctx.type(x).dtype:
        ctx.result(node, x)
    else:
        ctx.emit("cast", [x], out, {"dtype": out.dtype})


@_register(
    [
        aten.clone.default,
        aten.contiguous.default,
        aten.alias.default,
        aten.detach.default,
        aten.lift_fresh_copy.default,
        aten.dropout.default,
        aten.feature_dropout.default,
    ]
)
def _identity(ctx: Ctx, node: fx.Node) -> None:
    ctx.result(node, ctx.value_of(node.args[0]))


# ---------------------------------------------------------------------------------------------- layout
@_register(
    [
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
        aten.flatten.using_ints,
        aten.unsqueeze.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.squeeze.default,
        aten.expand.default,
    ]
)
def _reshape(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    out = _out(node)
    src = ctx.type(x)
    if node.target is aten.expand.default and out.numel != src.numel:
        raise ctx.fail(f"expand {src.shape_text} -> {out.shape_text} (broadcast copies) is not supported")
    if out.shape == src.shape:
        ctx.result(node, x)
        return
    ctx.emit("reshape", [x], out, {"shape": out.shape})


@_register([aten.permute.default, aten.transpose.int, aten.t.default, aten.numpy_T.default])
def _permute(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    rank = len(ctx.type(x).shape)
    if node.target is aten.permute.default:
        dims = tuple(int(d) % rank for d in node.args[1])
    elif node.target is aten.transpose.int:
        d0, d1 = int(node.args[1]) % rank, int(node.args[2]) % rank
        order = list(range(rank))
        order[d0], order[d1] = order[d1], order[d0]
        dims = tuple(order)
    else:
        dims = tuple(reversed(range(rank)))
    if dims == tuple(range(rank)):
        ctx.result(node, x)
        return
    ctx.emit("permute", [x], _out(node), {"dims": dims})


@_register([aten.cat.default, aten.concat.default])
def _cat(ctx: Ctx, node: fx.Node) -> None:
    xs = [ctx.value_of(v) for v in node.args[0] if not (isinstance(v, fx.Node) and _empty(v))]
    out = _out(node)
    dim = int(_arg(node, 1, "dim", 0)) % len(out.shape)
    if len(xs) == 1:
        ctx.result(node, xs[0])
        return
    ctx.emit("cat", xs, out, {"dim": dim})


def _empty(v: fx.Node) -> bool:
    tt = type_of(v)
    return tt is not None and 0 in tt.shape


@_register([aten.stack.default])
def _stack(ctx: Ctx, node: fx.Node) -> None:
    out = _out(node)
    dim = int(_arg(node, 1, "dim", 0)) % len(out.shape)
    parts = []
    for i, v in enumerate(node.args[0]):
        x = ctx.value_of(v)
        shape = list(ctx.type(x).shape)
        shape.insert(dim, 1)
        parts.append(
            ctx.emit("reshape", [x], TensorType(tuple(shape), ctx.type(x).dtype), {"shape": tuple(shape)},
                     name=f"{node.name}_part{i}")
        )  # fmt: skip
    ctx.emit("cat", parts, out, {"dim": dim})


def _slice_value(ctx: Ctx, node: fx.Node, x: str, dim: int, start: int, end: int, name: str) -> str:
    src = ctx.type(x)
    shape = list(src.shape)
    shape[dim] = end - start
    return ctx.emit(
        "slice", [x], TensorType(tuple(shape), src.dtype), {"dim": dim, "start": start, "end": end}, name=name
    )


@_register([aten.slice.Tensor, aten.narrow.default])
def _slice(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    src = ctx.type(x)
    dim = int(_arg(node, 1, "dim", 0)) % len(src.shape)
    size = src.shape[dim]
    if node.target is aten.narrow.default:
        start, end, step = int(node.args[2]), int(node.args[2]) + int(node.args[3]), 1
    else:
        start = _arg(node, 2, "start", None)
        end = _arg(node, 3, "end", None)
        step = int(_arg(node, 4, "step", 1))
        start = 0 if start is None else int(start)
        end = size if end is None else int(end)
    start, end = _clip(start, size), _clip(end, size)
    if step != 1:
        raise ctx.fail("strided slices are not supported")
    if (start, end) == (0, size):
        ctx.result(node, x)
        return
    _slice_value(ctx, node, x, dim, start, end, node.name)


def _clip(i: int, size: int) -> int:
    if i < 0:
        i += size
    return max(0, min(i, size))


@_register(
    [aten.split_with_sizes.default, aten.split.Tensor, aten.unbind.int, aten.split_with_sizes_copy.default]
)
def _split(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    src = ctx.type(x)
    rank = len(src.shape)
    if node.target is aten.unbind.int:
        dim = int(_arg(node, 1, "dim", 0)) % rank
        sizes = [1] * src.shape[dim]
    elif node.target is aten.split.Tensor:
        dim = int(_arg(node, 2, "dim", 0)) % rank
        step = int(node.args[1])
        sizes = [min(step, src.shape[dim] - s) for s in range(0, src.shape[dim], step)]
    else:
        dim = int(_arg(node, 2, "dim", 0)) % rank
        sizes = [int(s) for s in node.args[1]]
    items: list[str | None] = []
    start = 0
    for i, n in enumerate(sizes):
        part = _slice_value(ctx, node, x, dim, start, start + n, f"{node.name}_{i}")
        if node.target is aten.unbind.int:
            shape = list(ctx.type(part).shape)
            del shape[dim]
            part = ctx.emit("reshape", [part], TensorType(tuple(shape), src.dtype), {"shape": tuple(shape)},
                            name=f"{node.name}_{i}_sel")  # fmt: skip
        items.append(part)
        start += n
    ctx.tuples[node.name] = items


@_register([aten.select.int])
def _select(ctx: Ctx, node: fx.Node) -> None:
    x = ctx.value_of(node.args[0])
    src = ctx.type(x)
    dim = int(node.args[1]) % len(src.shape)
    i = (
        _clip(int(node.args[2]), src.shape[dim])
        if int(node.args[2]) >= 0
        else int(node.args[2]) + src.shape[dim]
    )
    part = _slice_value(ctx, node, x, dim, i, i + 1, node.name + "_slice")
    ctx.emit("reshape", [part], _out(node), {"shape": _out(node).shape})


@_register([aten.index.Tensor])
def _index(ctx: Ctx, node: fx.Node) -> None:
    """x[:, rows, cols] with constant index vectors (buffers): DLRM's dot-interaction triangle."""
    x = ctx.value_of(node.args[0])
    src = ctx.type(x)
    idx = list(node.args[1])
    if len(src.shape) == 3 and len(idx) == 3 and idx[0] is None and idx[1] is not None and idx[2] is not None:
        rows = ctx.const_tensor(idx[1]).astype(np.int64).reshape(-1)
        cols = ctx.const_tensor(idx[2]).astype(np.int64).reshape(-1)
        if rows.shape != cols.shape:
            raise ctx.fail("index vectors of different lengths (broadcasting) are not supported")
        _, m, n = src.shape
        flat = (rows % m) * n + (cols % n)
        ctx.emit("index", [x], _out(node), {"columns": tuple(int(c) for c in flat)})
        return
    if len(idx) == 2 and idx[0] is None and idx[1] is not None and len(src.shape) == 2:
        cols = ctx.const_tensor(idx[1]).astype(np.int64).reshape(-1) % src.shape[1]
        ctx.emit("index", [x], _out(node), {"columns": tuple(int(c) for c in cols)})
        return
    raise ctx.fail("only x[:, rows, cols] and x[:, cols] with constant index vectors are supported")


# ------------------------------------------------------------------------------------ PT2E quantization
def _pt2e_ops(*names: str) -> list[Any]:
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)

        ns = torch.ops.quantized_decomposed
        return [getattr(getattr(ns, n.split(".")[0]), n.split(".")[1]) for n in names]
    except (ImportError, AttributeError):  # pragma: no cover - a torch without the PT2E ops
        return []


def _qparams(ctx: Ctx, node: fx.Node) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of a per-tensor (de)quantize node; the scale must be a constant."""
    scale, zp, qmin, qmax = node.args[1:5]
    if isinstance(scale, fx.Node) or isinstance(zp, fx.Node):
        scale = float(ctx.const_tensor(scale).reshape(-1)[0]) if isinstance(scale, fx.Node) else scale
        zp = int(ctx.const_tensor(zp).reshape(-1)[0]) if isinstance(zp, fx.Node) else zp
    if (int(qmin), int(qmax)) not in ((0, 255), (-128, 127)):
        raise ctx.fail(f"quantization range [{qmin}, {qmax}] is not int8 or uint8")
    return float(scale), int(zp), int(qmin), int(qmax)


@_register(_pt2e_ops("quantize_per_tensor.default", "quantize_per_tensor.tensor"))
def _pt2e_quantize(ctx: Ctx, node: fx.Node) -> None:
    """A PT2E quantization point: int8 with the model's own scale and zero point (uint8 is int8 with the
    zero point moved down by 128, the same values)."""
    x = ctx.value_of(node.args[0])
    scale, zp, qmin, _qmax = _qparams(ctx, node)
    shift = 128 if qmin == 0 else 0
    out = TensorType(ctx.type(x).shape, DType.INT8)
    ctx.emit("quantize", [x], out, {"scale": scale, "zero_point": zp - shift})


@_register(_pt2e_ops("dequantize_per_tensor.default", "dequantize_per_tensor.tensor"))
def _pt2e_dequantize(ctx: Ctx, node: fx.Node) -> None:
    q = ctx.value_of(node.args[0])
    scale, zp, qmin, _qmax = _qparams(ctx, node)
    shift = 128 if qmin == 0 else 0
    out_dtype = to_dtype(_arg(node, 6, "out_dtype", None) or torch.float32) or DType.FP32
    ctx.emit(
        "dequantize",
        [q],
        TensorType(ctx.type(q).shape, out_dtype),
        {"scale": scale, "zero_point": zp - shift},
    )


@_register(_pt2e_ops("dequantize_per_channel.default"))
def _pt2e_dequantize_channels(ctx: Ctx, node: fx.Node) -> None:
    """On weights it is folded (see `pt2e_weight`); on an activation it has no kernel."""
    raise ctx.fail("a per-channel dequantize of an activation is not supported (only of weights)")


def pt2e_weight(node: fx.Node, args: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 [N, K], scales [N] fp32) of a PT2E weight dequantized per output channel, symmetric; None for
    any other fold."""
    if _op_name(node.target) != "quantized_decomposed::dequantize_per_channel":
        return None
    q, scales, zps, axis = args[0], args[1], args[2], args[3]
    if q.dtype != torch.int8 or q.dim() != 2 or int(axis) % 2 != 0:
        return None
    if zps is not None and bool((torch.as_tensor(zps) != 0).any()):
        return None
    return q.detach().cpu().numpy().astype(np.int8), torch.as_tensor(scales).detach().to(
        torch.float32
    ).numpy()
