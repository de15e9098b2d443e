"""aten (and quantized / fbgemm) ops -> the device vocabulary of `mtiasim.ir`.

One converter per family of ops; each reads the exported node's arguments and emits IR nodes with normalised
attributes. Views and no-op casts become `reshape` / `copy` / `cast` nodes the compiler folds.
"""

from __future__ import annotations

import math
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
from mtiasim.isa import RowFormat
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
    # rows known per call only (lookups over a data-dependent number of indices, dense_to_jagged without a
    # static total), which can only be returned or padded to dense
    call_rows: set[str] = field(default_factory=set)
    # folded ops with several tensors (an unbind of a constant), by name: whether their weights are virtual
    folded_tuples: dict[str, bool] = field(default_factory=dict)

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
        jagged = next((v for v in inputs if v in self.call_rows), None)
        stacked = op == "cat" and (attrs or {}).get("dim") == 0 and all(v in self.call_rows for v in inputs)
        if jagged is not None and op not in (Kind.CAST, Kind.JAGGED_TO_DENSE) and not stacked:
            raise self.fail(
                f"{_op_name(self.current.target)} of {jagged}, rows whose count is known per call only, is not "
                "supported (such rows can only be returned, concatenated, or padded to dense by "
                "fbgemm.jagged_to_padded_dense)"
            )
        out_name = name or self.current.name
        while out_name in self.values and name == "":
            out_name += "_"
        if jagged is not None and (op == Kind.CAST or stacked):  # a cast of such rows, or such rows one
            self.call_rows.add(out_name)  # after another: such rows too
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
        ins = [self.alias.get(i.name, i.name) for i in node.all_input_nodes]
        virtual = any(self.params[i].virtual if i in self.params else self.folded_tuples[i] for i in ins)
        tt = type_of(node)
        several = isinstance(node.meta.get("val"), (list, tuple))  # unbind, split: read by getitem
        if tt is None and not several:
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
            quant = None if several else pt2e_weight(node, args)
        if several or tt is None:
            self.folded_tuples[node.name] = virtual
            return
        self.params[node.name] = Param(node.name, f"<folded {node.target}>", tt, virtual, tensor, quant)

    def param_view(self, name: str, shape: tuple[int, ...]) -> str:
        """A parameter seen with another shape of the same elements (a new parameter, no op)."""
        if self.params[name].type.shape == shape:
            self.used.add(name)
            return name
        view = f"{name}@{'x'.join(str(d) for d in shape)}"
        if view not in self.params:
            p = self.params[name]
            tensor = None if p.virtual else self.param_tensors[name].reshape(shape)
            if tensor is not None:
                self.param_tensors[view] = tensor
            self.params[view] = Param(view, p.target, TensorType(shape, p.type.dtype), p.virtual, tensor)
        self.values.setdefault(view, self.params[view].type)
        self.used.add(view)
        return view

    def new_param(self, name: str, tensor: torch.Tensor | None, tt: TensorType, target: str) -> str:
        """A constant the front end computes from the model's weights (None: virtual weights)."""
        if tensor is not None:
            self.param_tensors[name] = tensor
        self.params[name] = Param(name, target, tt, tensor is None, tensor)
        self.values[name] = tt
        self.used.add(name)
        return name

    def reshape(self, x: str, shape: tuple[int, ...], name: str) -> str:
        """`x` with another shape: a view (a parameter becomes a parameter of that shape)."""
        tt = self.type(x)
        if tt.shape == tuple(shape):
            return x
        if x in self.params:
            return self.param_view(x, tuple(shape))
        return self.emit(
            "reshape", [x], TensorType(tuple(shape), tt.dtype), {"shape": tuple(shape)}, name=name
        )

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
    return tensor_type(node.meta.get("val"))


def tensor_type(val: Any) -> TensorType | None:
    """The IR type of an exported (fake) tensor; None for anything else."""
    if not isinstance(val, torch.Tensor):
        return None
    # a bool tensor is a mask: 1.0/0.0 on the device (the host hands it over as float32)
    dtype = DType.FP32 if val.dtype == torch.bool else to_dtype(val.dtype)
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
    # whether it takes this use of the op (None: every use); a use it does not take is decomposed first
    accepts: Callable[[fx.Node], bool] | None = None

    def __call__(self, ctx: Ctx, node: fx.Node) -> None:
        ctx.current = node
        self.fn(ctx, node)


CONVERTERS: dict[Any, Converter] = {}


def _register(
    targets: list[Any], index_args: bool = False, accepts: Callable[[fx.Node], bool] | None = None
) -> Callable:
    def wrap(fn: Callable[[Ctx, fx.Node], None]) -> Callable[[Ctx, fx.Node], None]:
        found = [t for t in targets if t is not None]
        names = tuple(sorted({_op_name(t) for t in found}))
        for t in found:
            CONVERTERS[t] = Converter(fn, index_args, names, accepts)
        return fn

    return wrap


# ops of libraries that may load after mtiasim does (fbgemm_gpu, imported by torchrec): found again by
# `register_library_ops` before each conversion
_LIBRARY_OPS: list[tuple[Callable[[], list[Any]], Callable[[Ctx, fx.Node], None], bool]] = []


def _register_library(targets: Callable[[], list[Any]], index_args: bool = False) -> Callable:
    def wrap(fn: Callable[[Ctx, fx.Node], None]) -> Callable[[Ctx, fx.Node], None]:
        _LIBRARY_OPS.append((targets, fn, index_args))
        return _register(targets(), index_args)(fn)

    return wrap


def register_library_ops() -> None:
    """Register the converters of library ops loaded since mtiasim was imported."""
    for targets, fn, index_args in _LIBRARY_OPS:
        _register(targets(), index_args)(fn)


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
    """embedding(weight, indices) = one-row bags, reshaped to indices.shape + [D]. Over 1-D indices of a
    data-dependent length (a KeyedJaggedTensor's values: torchrec's EmbeddingCollection) the rows are
    [?, D], their count known per call."""
    weight, indices = node.args[0], node.args[1]
    w = ctx.value_of(weight)
    idx = ctx.value_of(indices)
    fmt = {DType.FP32: "fp32", DType.FP16: "fp16"}.get(ctx.type(w).dtype)
    if fmt is None:
        raise ctx.fail("embedding tables must be fp32 or fp16")
    per_call = DYNAMIC in ctx.type(idx).shape
    if per_call and len(ctx.type(idx).shape) != 1:
        raise ctx.fail("embedding over indices of a data-dependent shape needs 1-D indices")
    n = DYNAMIC if per_call else int(np.prod(ctx.type(idx).shape))
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
    if per_call:
        ctx.call_rows.add(pooled)
        ctx.result(node, pooled)
        return
    ctx.emit("reshape", [pooled], _out(node), {"shape": _out(node).shape})


# ATen's quantized EmbeddingBag ops and the row format of their (prepacked) tables
_ATEN_QUANTIZED_BAGS = {
    "embedding_bag_byte_rowwise_offsets": "int8_aten",
    "embedding_bag_4bit_rowwise_offsets": "int4_aten",
}


def _quantized_ops() -> list[Any]:
    q = getattr(torch.ops, "quantized", None)
    try:
        return [getattr(q, name).default for name in _ATEN_QUANTIZED_BAGS] if q is not None else []
    except (AttributeError, RuntimeError):
        return []


@_register(_quantized_ops(), index_args=True)
def _embedding_bag_quantized(ctx: Ctx, node: fx.Node) -> None:
    """quantized::embedding_bag_{byte,4bit}_rowwise_offsets over the table their prepack op wrote."""
    # (weight, indices, offsets, scale_grad_by_freq, mode, pruned_weights, per_sample_weights,
    #  compressed_indices_mapping, include_last_offset)
    if _arg(node, 5, "pruned_weights", False):
        raise ctx.fail("pruned embedding tables are not supported")
    if _table_dtype(ctx, node.args[0]) != DType.UINT8:
        raise ctx.fail("quantized embedding tables must be the uint8 rows of the matching prepack op")
    _embedding_bag_common(
        ctx,
        node,
        node.args[0],
        _ATEN_QUANTIZED_BAGS[_op_name(node.target).split("::")[-1].split(".")[0]],
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


# FBGEMM SparseType codes (fbgemm_gpu.split_embedding_configs.SparseType): FP32 0, FP16 1, INT8 2, INT4 3
_FBGEMM_TY = {0: "fp32", 1: "fp16", 2: "int8_fbgemm", 3: "int4_fbgemm"}
_FBGEMM_OUT = {0: DType.FP32, 1: DType.FP16, 5: DType.BF16}


@_register_library(_fbgemm_tbe_ops, index_args=True)
def _fbgemm_tbe(ctx: Ctx, node: fx.Node) -> None:
    """fbgemm.int_nbit_split_embedding_codegen_lookup_function: torchrec's quantized EmbeddingBagCollection."""
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
            f"TBE weight types {sorted(set(tys.tolist()))} are not supported (one of fp32/fp16/int8/int4)"
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
        row_bytes = -(-RowFormat(fmt).row_bytes(d) // align) * align
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


def mask_type(ctx: Ctx, node: fx.Node) -> TensorType:
    """A comparison's result: PyTorch's bool, held as 1.0/0.0 in its first float operand's type."""
    floats = [ctx.type(ctx.value_of(a)).dtype for a in node.args if isinstance(a, fx.Node)]
    dtype = next((d for d in floats if d.is_float), DType.FP32)
    return TensorType(_out(node).shape, dtype)


def _constant_arg(ctx: Ctx, value: Any, what: str) -> Any:
    if isinstance(value, fx.Node):
        raise ctx.fail(f"{what} must be a constant, not a tensor")
    return value


def _elementwise_converter(kind: Kind, spec: Elementwise) -> Callable[[Ctx, fx.Node], None]:
    """The converter of an operator-set elementwise op: tensor operands, scalar operands as attr `scalar`
    (a binary op with one scalar), the op's constants as attrs; `sub` is `add` with alpha negated."""

    def conv(ctx: Ctx, node: fx.Node) -> None:
        out = mask_type(ctx, node) if spec.predicate else _out(node)
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
            yv = ctx.value_of(y)
            if kind == Kind.ADD and alpha != 1.0:  # c - y (rsub): (alpha * y) + c
                yv = ctx.emit("mul", [yv], ctx.type(yv), {"scalar": alpha}, name=node.name + "_scaled")
            op = kind
            if kind == Kind.DIV:  # c / y = c * y^-1
                yv = ctx.emit("pow", [yv], ctx.type(yv), {"exponent": -1.0}, name=node.name + "_recip")
                op = Kind.MUL
            elif kind not in (Kind.ADD, Kind.MUL, Kind.MAXIMUM, Kind.MINIMUM):
                raise ctx.fail(f"{_op_name(node.target)} of a scalar and a tensor is not supported")
            ctx.emit(op.value, [yv], out, {"scalar": float(x)})
            return
        attrs = {"alpha": alpha} if kind == Kind.ADD and alpha != 1.0 else {}
        ctx.result(node, emit_binary(ctx, kind, ctx.value_of(x), ctx.value_of(y), out, attrs, node.name))

    return conv


COMMUTATIVE = (Kind.ADD, Kind.MUL, Kind.MAXIMUM, Kind.MINIMUM)
MAX_EXPAND_COLUMNS = 1 << 16


def _natural_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return (math.prod(shape[:-1]) if len(shape) > 1 else 1), (shape[-1] if shape else 1)


def emit_expand(ctx: Ctx, x: str, shape: tuple[int, ...], name: str) -> str:
    """`x` broadcast to `shape` as a copy: the dims before the first broadcast one are rows, the rest a
    constant column gather (the MLU) from x seen as [rows, its remaining elements]."""
    tt = ctx.type(x)
    r = len(shape)
    ax = (1,) * (r - len(tt.shape)) + tt.shape
    if DYNAMIC in shape or any(a not in (1, d) for a, d in zip(ax, shape, strict=True)):
        raise ctx.fail(f"expand {tt.shape_text} -> {list(shape)} is not a broadcast")
    k = next(i for i in range(r) if ax[i] != shape[i])
    rows = math.prod(shape[:k])
    cols = np.broadcast_to(np.arange(math.prod(ax[k:])).reshape(ax[k:]), shape[k:]).reshape(-1)
    if cols.size > MAX_EXPAND_COLUMNS:
        raise ctx.fail(
            f"expand {tt.shape_text} -> {list(shape)}: {cols.size} columns per row is too wide a copy"
        )
    src = ctx.reshape(x, (rows, math.prod(ax[k:])), name + "_src")
    flat = ctx.emit("index", [src], TensorType((rows, cols.size), tt.dtype),
                    {"columns": tuple(int(c) for c in cols)}, name=name + "_expand")  # fmt: skip
    return ctx.reshape(flat, shape, name + "_expanded")


def emit_binary(
    ctx: Ctx, kind: Kind, x: str, y: str, out: TensorType, attrs: dict[str, Any], name: str
) -> str:
    """``out = kind(x, y)`` with PyTorch's broadcasting, as the SE does it: operands of one shape, or one of
    them broadcast along leading dims (a row [1, N] over [M, N]) or trailing dims (a column [M, 1]); the full
    operand and the result are seen as [M, N] (views). An operand broadcast both ways needs an expand."""
    so = out.shape
    r = len(so)
    sx, sy = ctx.type(x).shape, ctx.type(y).shape
    ax, ay = (1,) * (r - len(sx)) + sx, (1,) * (r - len(sy)) + sy
    if ax == so and ay == so:
        return ctx.emit(kind.value, [ctx.reshape(x, so, name + "_x"), ctx.reshape(y, so, name + "_y")], out,
                        attrs, name=name)  # fmt: skip
    if ax != so and ay != so:  # both broadcast: one becomes a copy of the full shape
        x = emit_expand(ctx, x, so, name + "_xfull")
        ax = so
    if ax == so:
        full, part, ap, swapped = x, y, ay, False
    else:
        full, part, ap, swapped = y, x, ax, True
    ones = lambda dims: all(d == 1 for d in dims)  # noqa: E731
    k_row = next((k for k in range(r) if ones(ap[:k]) and ap[k:] == so[k:]), None)
    k_col = next((k for k in range(r, 0, -1) if ones(ap[k:]) and ap[:k] == so[:k]), None)
    if ones(ap):  # a single value: a column of one row
        rows, cols, part_shape = 1, math.prod(so), (1, 1)
    elif k_row is not None:
        rows, cols = math.prod(so[:k_row]), math.prod(so[k_row:])
        part_shape = (1, cols)
    elif k_col is not None:
        rows, cols = math.prod(so[:k_col]), math.prod(so[k_col:])
        part_shape = (rows, 1)
    else:  # a broadcast along inner dims: the part becomes a copy of the full shape
        part = emit_expand(ctx, part, so, name + "_pfull")
        rows, cols = _natural_2d(so)
        part_shape = (rows, cols)
    dt = out.dtype
    full2 = ctx.reshape(full, (rows, cols), name + "_full")
    part2 = ctx.reshape(part, part_shape, name + "_part")
    flat = TensorType((rows, cols), dt)
    if (
        swapped
        and kind not in COMMUTATIVE
        or (kind == Kind.ADD and swapped and attrs.get("alpha", 1.0) != 1.0)
    ):
        if kind == Kind.ADD:  # part + alpha * full, full the broadcast-free one: (alpha * full) + part
            full2 = ctx.emit("mul", [full2], flat, {"scalar": float(attrs["alpha"])}, name=name + "_scaled")
            attrs = {}
        elif kind == Kind.DIV:  # part / full = part * full^-1
            full2 = ctx.emit("pow", [full2], flat, {"exponent": -1.0}, name=name + "_recip")
            kind, attrs = Kind.MUL, {}
        else:
            raise ctx.fail(f"{kind.value} with its first operand broadcast is not supported")
    res = ctx.emit(kind.value, [full2, part2], flat, attrs, name=name + ("_flat" if flat.shape != so else ""))
    return ctx.reshape(res, so, name)


# ops that broadcast their operands themselves: an `expand` read only by them stays a view
BROADCASTING: set[Any] = set()
for _kind, _spec in ELEMENTWISE.items():
    _register(_aten_overloads(_spec.aten))(_elementwise_converter(_kind, _spec))
    if _spec.arity == 2:
        BROADCASTING.update(_aten_overloads(_spec.aten))
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
        if node.users and all(u.target in BROADCASTING for u in node.users):
            ctx.result(node, x)  # its readers broadcast x themselves
            return
        ctx.result(node, emit_expand(ctx, x, out.shape, node.name))
        return
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
    ctx.result(node, emit_permute(ctx, x, dims, _out(node), node.name))


def emit_permute(ctx: Ctx, x: str, dims: tuple[int, ...], out: TensorType, name: str) -> str:
    """Any permutation as swaps of the last two dims (the MLU's transpose) of views: to bring dim p_k to
    place k, the dims from k up to it and the dims from it on trade places (a [P, Q, R] -> [P, R, Q] swap),
    at most rank - 1 swaps; moving a dim of size 1 is only a view."""
    shape = ctx.type(x).shape
    rank = len(shape)
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    if dims == swap and rank <= 3:
        return ctx.emit("permute", [x], out, {"dims": dims}, name=name)
    if [d for d in dims if shape[d] != 1] == [d for d in range(rank) if shape[d] != 1]:
        return ctx.reshape(x, out.shape, name)
    cur = list(range(rank))
    value = x
    for k in range(rank):
        i = cur.index(dims[k])
        if i == k:
            continue
        p, q, r = (math.prod(shape[d] for d in part) for part in (cur[:k], cur[k:i], cur[i:]))
        value = ctx.reshape(value, (p, q, r), f"{name}_v{k}")
        value = ctx.emit("permute", [value], TensorType((p, r, q), out.dtype), {"dims": (0, 2, 1)},
                         name=f"{name}_swap{k}")  # fmt: skip
        cur = cur[:k] + cur[i:] + cur[k:i]
    return ctx.reshape(value, out.shape, name)


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
    if len(idx) == 2 and idx[0] is None and idx[1] is not None and len(src.shape) >= 2:
        # x[:, i] of [B, F, ...]: the picked fields' elements, as columns of x seen as [B, F * inner]
        picked = ctx.const_tensor(idx[1]).astype(np.int64).reshape(-1) % src.shape[1]
        inner = math.prod(src.shape[2:])
        cols = (picked[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)
        b = src.shape[0]
        flat = ctx.emit("index", [ctx.reshape(x, (b, src.shape[1] * inner), node.name + "_rows")],
                        TensorType((b, cols.size), src.dtype), {"columns": tuple(int(c) for c in cols)},
                        name=node.name + "_picked")  # fmt: skip
        ctx.result(node, ctx.reshape(flat, _out(node).shape, node.name))
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


# attention, the reductions and the row-wise operators register their converters too (they build on the above)
from mtiasim.frontend import aten_attention as _aten_attention  # noqa: E402, F401
from mtiasim.frontend import aten_conv as _aten_conv  # noqa: E402, F401
from mtiasim.frontend import aten_gather as _aten_gather  # noqa: E402, F401
from mtiasim.frontend import aten_jagged as _aten_jagged  # noqa: E402, F401
from mtiasim.frontend import aten_rows as _aten_rows  # noqa: E402, F401
from mtiasim.frontend import aten_select as _aten_select  # noqa: E402, F401
