"""torch.export (non-strict) -> the compiler's graph.

Each node of the exported program is put on one side:

- `param`: a parameter, buffer or constant, or an op computed from those alone (folded here, once);
- `host`: index bookkeeping on integer data (see `host.py`), run in torch on every call;
- `device`: everything that touches activations, converted to the device vocabulary (`mtiasim.ir.OPS`) by
  the converters in `aten.py`. An op that touches activations and has no converter raises
  `UnsupportedOperatorError` naming the aten op, the module and the line, and listing what is supported.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from mtiasim.errors import MtiasimError, UnsupportedOperatorError, UsageError
from mtiasim.frontend import jagged
from mtiasim.frontend.aten import CONVERTERS, Ctx, register_library_ops, supported_ops, type_of
from mtiasim.frontend.dtypes import to_dtype
from mtiasim.frontend.host import HostPrologue, is_host_op
from mtiasim.frontend.quantized import exportable, register_4bit_lookup_meta
from mtiasim.frontend.source import node_source, recording_sources
from mtiasim.ir import DYNAMIC, Graph, Param, TensorType, ValueKind

PARAM, HOST, DEVICE, NONE = "param", "host", "device", "none"
PER_CALL = "per_call"  # the size of device rows known per call only (not the host's)
register_4bit_lookup_meta()


@dataclass
class Captured:
    """A captured model: the device graph, its host prologue and how to map a call's arguments onto it."""

    graph: Graph
    exported: ExportedProgram
    host: HostPrologue
    user_inputs: list[str]
    out_spec: Any
    returns: list[tuple[str, Any]]

    def flat_inputs(self, args: tuple, kwargs: dict) -> list[Any]:
        """The call's arguments flattened in the graph's placeholder order (parameters first)."""
        return flat_graph_inputs(
            self.exported,
            args,
            kwargs,
            f"model {self.graph.name}: the inputs do not match the compiled signature",
        )


def flat_graph_inputs(ep: ExportedProgram, args: tuple, kwargs: dict, what: str) -> list[Any]:
    """`(args, kwargs)` flattened in `ep`'s placeholder order (parameters first); a UsageError starting with
    `what` when they do not fit its signature (structure, count, shapes)."""
    try:
        args, kwargs = jagged.split_like((tuple(args), dict(kwargs)), ep.call_spec.in_spec)
        return list(ep._graph_module_flat_inputs(args, kwargs))
    except (ValueError, RuntimeError, TypeError, AssertionError) as exc:
        expected = ep.call_spec.in_spec
        got = torch.utils._pytree.tree_flatten((tuple(args), dict(kwargs)))[1]
        if expected is not None and got != expected:  # the structure differs: show both, `*` a leaf
            show = torch.utils._pytree.treespec_pprint
            why = f"expected (args, kwargs) {show(expected)}, got {show(got)} (* a tensor or value)"
        else:
            why = _first_line(exc)
        raise UsageError(f"{what}: {why}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:2])[:300] if text else type(exc).__name__


def _is_virtual(t: torch.Tensor) -> bool:
    if t.device.type == "meta":
        return True
    return t.numel() > 1 and any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape, strict=True))


def export(
    model: torch.nn.Module, example_inputs: tuple, kwargs: dict | None = None, static: tuple = ()
) -> ExportedProgram:
    """torch.export, non-strict; a model whose weights all live on the meta device is exported with meta inputs.
    torch.ao quantized EmbeddingBags are exported as the ATen lookups they run (`quantized.exportable`).
    Index tensors may change length from call to call (`_index_dims`) except those in `static`."""
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    kwargs = dict(kwargs or {})
    # KeyedJaggedTensors travel per key (`jagged`): each key's length is its own input size, dynamic
    example_inputs, kwargs = jagged.split_for_export((example_inputs, kwargs))
    tensors = list(model.parameters()) + list(model.buffers())
    devices = {t.device.type for t in tensors}
    if devices == {"meta"}:
        example_inputs, kwargs = torch.utils._pytree.tree_map_only(
            torch.Tensor, lambda t: t.to("meta"), (example_inputs, kwargs)
        )
    elif len(devices) > 1:
        raise UsageError(
            f"model {type(model).__name__}: weights on several devices ({', '.join(sorted(devices))}); "
            "keep them all on cpu (huge tables may be zero-stride views) or all on meta"
        )
    was_training = model.training
    _set_training(model, False)
    try:
        with (
            torch.no_grad(),
            exportable(model),
            jagged.quiet_to_dict((example_inputs, kwargs)),
            recording_sources(),
        ):
            dims = _index_dims(model, example_inputs, kwargs, static)  # a structure: it outlives the views
            example_inputs, kwargs = _own_storage((example_inputs, kwargs))
            return torch.export.export(model, example_inputs, kwargs, strict=False, dynamic_shapes=dims)
    except MtiasimError:
        raise
    except Exception as exc:  # torch raises many kinds; one line is what the user needs
        raise UsageError(
            f"torch.export could not capture {type(model).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        _set_training(model, was_training)


def _own_storage(tree: Any) -> Any:
    """`tree` with each tensor that is a view (a KeyedJaggedTensor's values split per key) replaced by a copy of
    its own. torch.export makes a fake tensor of every input; for a view it also fakes the base and rebuilds the
    view from it, with a symbol of its own for every size, stride and offset (~0.15 s of DLRM-v2's export, 26
    per-key views). The graph does not change: the copies keep the views' shapes, strides and dtypes."""
    return torch.utils._pytree.tree_map_only(
        torch.Tensor, lambda t: t.clone() if t._base is not None else t, tree
    )


def _row_indices(ep: ExportedProgram, args: tuple, kwargs: dict | None) -> tuple:
    """The model's integer inputs exported with a per-call length that a row gather or scatter reads as its
    indices (directly or through index bookkeeping)."""
    from mtiasim.frontend.aten_gather import ROW_INDEX_OPS

    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    flat = flat_graph_inputs(ep, args, dict(kwargs or {}), "export")
    out = []
    for node, tensor in zip(placeholders, flat, strict=True):
        if not (isinstance(tensor, torch.Tensor) and _is_index(node)) or all(
            is_concrete_int(d) for d in node.meta["val"].shape
        ):
            continue
        todo, seen, found = [node], {node}, False
        while todo and not found:
            for user in todo.pop().users:  # a row op on an activation (not the host's on index data)
                found |= user.target in ROW_INDEX_OPS and any(_is_float(i) for i in user.all_input_nodes)
                if _is_index(user) and user not in seen:
                    seen.add(user)
                    todo.append(user)
        if found:
            out.append(tensor)
    return tuple(out)


def _is_float(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _is_index(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not val.is_floating_point() and val.dtype != torch.bool


def _set_training(model: torch.nn.Module, training: bool) -> None:
    """`model.train(training)`; a module exported by torch.export (e.g. a PT2E-quantized one) has no modes
    and refuses the call, which is then a no-op."""
    if model.training == training:
        return
    with contextlib.suppress(NotImplementedError):
        model.train(training)


def _index_dims(model: torch.nn.Module, args: tuple, kwargs: dict, static: tuple = ()) -> Any:
    """Index tensors may change length from call to call (bags of random sizes): their length is exported as
    dynamic where the model allows. These are a KeyedJaggedTensor's values and weights, 1-D integer tensors
    other than per-bag offsets (whose length is the batch, or the batch + 1, the batch being the rows of the
    first dense input: it stays static) and the offsets of jagged rows (`_row_offsets`), and 1-D float tensors
    as long as such indices (per-sample weights)."""
    leaves = torch.utils._pytree.tree_leaves((args, kwargs), is_leaf=jagged.is_jagged)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    dense = [t for t in tensors if t.is_floating_point() and t.dim() >= 2]
    batch = dense[0].shape[0] if dense else None
    ids = [t for t in tensors if t.dim() == 1 and not t.is_floating_point()]
    if (
        batch is None
        and not any(jagged.is_jagged(x) for x in leaves)
        and len(ids) >= 2
        and len({len(t) for t in ids}) == 1
    ):
        batch = len(
            ids[0]
        )  # ids alone, one per sample each (a user's and an item's): their length is the batch
    dynamic: list[torch.Tensor] = jagged.per_key_tensors(leaves)
    for leaf in leaves:
        if jagged.is_jagged(leaf) and not jagged.is_per_key(leaf):
            dynamic += [t for t in (leaf.values(), leaf.weights_or_none()) if isinstance(t, torch.Tensor)]
    indices = [
        t
        for t in tensors
        if t.dim() == 1
        and not t.is_floating_point()
        and (batch is None or t.shape[0] not in (batch, batch + 1))
        and not _row_offsets(t, tensors)
    ]
    lengths = {t.shape[0] for t in indices}
    weights = [t for t in tensors if t.dim() == 1 and t.is_floating_point() and t.shape[0] in lengths]
    dynamic += indices + weights
    dynamic = [t for t in dynamic if not any(_same_view(t, s) for s in static)]
    if not dynamic:
        return None
    shapes = torch.export.ShapesCollection()
    for t in dynamic:
        shapes[t] = {0: torch.export.Dim.AUTO}
    return shapes.dynamic_shapes(model, args, kwargs)


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` and `b` are the same elements of the same storage (one KeyedJaggedTensor split twice gives
    two view objects of each key's values)."""
    if a is b:
        return True
    if a.device.type == "meta" or b.device.type == "meta":
        return False
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def _row_offsets(t: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    """Whether `t` splits the rows of a float input into sequences (fbgemm's jagged layout: never decreasing,
    from 0 up to that input's row count): its length is the number of sequences + 1, not data."""
    if t.device.type == "meta" or t.numel() < 2 or int(t[0]) != 0 or bool((t[1:] < t[:-1]).any()):
        return False
    return any(x.is_floating_point() and x.dim() >= 1 and x.shape[0] == int(t[-1]) for x in tensors)


def capture(
    model: torch.nn.Module | ExportedProgram,
    example_inputs: tuple,
    kwargs: dict | None = None,
    name: str = "",
    fallback: str | None = None,
) -> Captured:
    """`model` exported and converted; an ExportedProgram (e.g. from `torch.export.load`) is converted as it is,
    its module paths and source lines kept. `fallback="host"`: an op on activations the chip has no kernel
    for runs on the host CPU (`host_call`) instead of failing."""
    if fallback not in (None, "host"):
        raise UsageError(f"unknown fallback {fallback!r} (known: host)")
    if isinstance(model, ExportedProgram):
        name = name or exported_name(model)
        flat_graph_inputs(model, example_inputs, dict(kwargs or {}), f"model {name}: the inputs do not match")
        register_library_ops()
        return convert(to_core_aten(model), name, fallback)
    ep = export(model, example_inputs, kwargs)
    static = _row_indices(ep, example_inputs, kwargs)
    if static:  # the rows a gather or scatter makes are known when compiling: its indices keep their length
        ep = export(model, example_inputs, kwargs, static)
    register_library_ops()  # before asking which ops have converters
    return convert(to_core_aten(ep), name or type(model).__name__, fallback)


def _host_call(ctx: Ctx, node: fx.Node, side: dict[str, str]) -> None:
    """`node` as a `host_call`: its activations cross to the host, which runs the aten op in torch (weights and
    constants it reads are the host's own), and its one tensor result crosses back."""
    ctx.current = node
    tensors = [
        i for i in node.all_input_nodes if side.get(i.name) in (DEVICE, HOST) and type_of(i) is not None
    ]
    names = [ctx.value_of(i) for i in tensors]
    consts = {i.name: ctx.param_tensors[ctx.alias.get(i.name, i.name)] for i in node.all_input_nodes
              if side.get(i.name) == PARAM}  # fmt: skip
    if any(ctx.params[ctx.alias.get(k, k)].virtual for k in consts):
        raise ctx.fail(f"{node.target} on the host needs the values of its weights (virtual here)")
    target, args, kwargs = node.target, node.args, node.kwargs
    order = [i.name for i in tensors]

    def call(*xs: torch.Tensor) -> torch.Tensor:
        env = dict(zip(order, xs, strict=True)) | consts
        load = lambda a: env[a.name]  # noqa: E731
        with torch.no_grad():
            return target(*fx.node.map_arg(args, load), **fx.node.map_arg(kwargs, load))

    op_name = getattr(target, "name", lambda: str(target))()
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):  # one host call per tensor of the result (each a round trip)
        items: list[str | None] = []
        for k, v in enumerate(val):
            dtype = to_dtype(v.dtype) if isinstance(v, torch.Tensor) else None
            if dtype is None:
                items.append(None)
                continue
            tt = TensorType(tuple(int(d) for d in v.shape), dtype)
            pick = lambda *xs, k=k: call(*xs)[k]  # noqa: E731
            items.append(
                ctx.emit("host_call", names, tt, {"call": pick, "aten": op_name}, name=f"{node.name}_{k}")
            )
        ctx.tuples[node.name] = items
        return
    out = type_of(node)
    if out is None:
        raise ctx.fail(f"{node.target} cannot run on the host: its result is not a tensor of a device dtype")
    ctx.emit("host_call", names, out, {"call": call, "aten": op_name})


def to_core_aten(ep: ExportedProgram) -> ExportedProgram:
    """Decompose the ops that have no converter toward the Core ATen opset (`run_decompositions`), keeping
    every op the chip runs whole (linear, embedding_bag, layer_norm, softmax, attention... as composite
    kernels) and the host's index bookkeeping. An op whose converter does not take one of its uses (an
    attention with dropout, say) is decomposed everywhere in the program, with the ops it may decompose into
    that the same converter takes. A program whose ops all convert is returned as is (no re-trace)."""
    declined = {
        CONVERTERS[n.target].fn
        for n in ep.graph.nodes
        if n.op == "call_function"
        and n.target in CONVERTERS
        and CONVERTERS[n.target].accepts is not None
        and not CONVERTERS[n.target].accepts(n)
    }
    refused = {op for op, conv in CONVERTERS.items() if conv.fn in declined}
    missing = refused | {
        n.target
        for n in ep.graph.nodes
        if n.op == "call_function"
        and isinstance(n.target, torch._ops.OpOverload)
        and n.target not in CONVERTERS
        and not is_host_op(n.target)
        and not _factory(n.target)
    }
    if not missing:
        return ep
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if (op in CONVERTERS and op not in refused) or is_host_op(op) or _factory(op):
            table.pop(op)
    try:
        return ep.run_decompositions(table)
    except Exception:  # noqa: BLE001 - the unconverted op is then reported by name, as without decomposition
        return ep


def _factory(op: Any) -> bool:
    """Whether `op` makes a tensor from numbers alone (linspace, arange, full): it is folded, or run by the
    host, whole, as eager runs it (its decomposition may round differently)."""
    schema = getattr(op, "_schema", None)
    return schema is not None and not any("Tensor" in str(a.type) for a in schema.arguments)


def exported_name(ep: ExportedProgram) -> str:
    """The class name of the module `ep` was exported from (its nn_module_stack's root), if the graph says."""
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            _, root = next(iter(stack.values()))
            root = root if isinstance(root, str) else getattr(root, "__qualname__", str(root))
            return root.rsplit(".", 1)[-1]
    return "ExportedProgram"


def convert(ep: ExportedProgram, name: str, fallback: str | None = None) -> Captured:
    register_library_ops()
    specs = ep.graph_signature.input_specs
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(specs):
        raise UsageError(
            f"model {name}: unexpected export signature ({len(placeholders)} inputs, {len(specs)} specs)"
        )
    side: dict[str, str] = {}
    params: dict[str, Param] = {}
    tensors: dict[str, torch.Tensor] = {}
    user_inputs: list[str] = []
    weights: set[str] = set()  # the model's parameters (not its buffers: masks, offsets, constants)
    for node, spec in zip(placeholders, specs, strict=True):
        tt = type_of(node)
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(node.name)
            is_mask = getattr(node.meta.get("val"), "dtype", None) == torch.bool  # handed over as float32
            device = tt is not None and tt.dtype.is_float and not is_mask and not _lookup_weights(node)
            side[node.name] = NONE if tt is None else (DEVICE if device else HOST)
            continue
        tensor = _param_tensor(ep, spec, name, node.name)
        if tt is None:
            raise UnsupportedOperatorError(
                f"model {name}: {spec.target!r} has unsupported dtype {tensor.dtype}"
            )
        side[node.name] = PARAM
        if spec.kind == InputKind.PARAMETER:
            weights.add(node.name)
        tensors[node.name] = tensor
        params[node.name] = Param(node.name, str(spec.target), tt, _is_virtual(tensor), tensor)

    ctx = Ctx(name, params, tensors)
    host_nodes: list[fx.Node] = []
    host_constants: dict[str, torch.Tensor] = {}
    host_writes: set[str] = set()
    host_to_device: dict[str, None] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        ins = node.all_input_nodes
        sides = {side.get(i.name, NONE) for i in ins}
        conv = CONVERTERS.get(node.target)
        if not node.users and node.target is operator.getitem:
            continue  # an unused element of a tuple result
        # host values (from index data, or constants built in forward) with the model's own weights: the
        # device runs it, the host values cross as inputs
        weighted = any(i.name in weights for i in ins)
        out_type = type_of(node)
        host_and_weights = (
            HOST in sides
            and sides <= {HOST, PARAM, NONE}
            and weighted
            and conv is not None
            and out_type is not None
            and out_type.dtype.is_float
        )
        if node.target is operator.getitem and ins and side.get(ins[0].name) == DEVICE:
            side[node.name] = DEVICE
            ctx.current = node
            ctx.getitem(node)
        elif node.target is torch.ops.aten.sym_size.int and sides == {DEVICE}:
            size = _static_size(node)
            if size is None:
                # the size of rows known per call only: the host does not know it; the asserts export put on it
                # (a size is >= 0) go with it, the job that makes the rows checks the offsets deciding it
                side[node.name] = PER_CALL
            else:
                # the size of a device value that export resolved to a number (a data-dependent size it unified
                # with a static one, checked by the asserts that follow): the host knows it
                side[node.name] = HOST
                host_constants[node.name] = size
        elif PER_CALL in sides and DEVICE not in sides and is_host_op(node.target):
            side[node.name] = PER_CALL  # arithmetic and asserts on such a size
        elif DEVICE in sides or (conv is not None and conv.index_args) or host_and_weights:
            if conv is None:
                if node.target is torch.ops.aten._assert_tensor_metadata.default:
                    side[node.name] = NONE
                    continue
                if fallback != "host":
                    raise _unsupported(name, node)
            side[node.name] = DEVICE
            # host tensors it reads cross as inputs (a host size it reads is a number in its arguments)
            host_to_device.update(
                {i.name: None for i in ins if side.get(i.name) == HOST and type_of(i) is not None}
            )
            if conv is None:
                _host_call(ctx, node, side)
                continue
            emitted = len(ctx.nodes)
            try:
                conv(ctx, node)
            except UnsupportedOperatorError:
                # a converter that refuses this use (a shape, an argument): the host runs it, if allowed
                if fallback != "host" or len(ctx.nodes) != emitted or conv.index_args:
                    raise
                _host_call(ctx, node, side)
        elif PARAM in sides and _writes_a_placeholder(node):
            # a side effect on a model's buffer (a counter a forward bumps): done on the host on every call, on
            # the model's own tensor, as eager does
            side[node.name] = HOST
            host_nodes.append(node)
            host_writes.add(node.name)
        elif PARAM in sides and sides <= {PARAM, NONE} and (conv is not None or _foldable(node)):
            # an op on constants alone (weights, a torch.tensor built in forward): folded once, here
            side[node.name] = PARAM
            ctx.fold(node)
        elif not ins and _foldable(node) and type_of(node).dtype.is_float:  # type: ignore[union-attr]
            # a float tensor built from nothing (a recurrent layer's zero initial state): a constant, folded
            side[node.name] = PARAM
            ctx.fold(node)
        elif is_host_op(node.target) or (HOST in sides and sides <= {HOST, PARAM, NONE}):
            # index bookkeeping, or arithmetic on index data and constants built in forward (a mask's fill
            # value): the host's, as eager computes it
            side[node.name] = HOST
            host_nodes.append(node)
            # a folded constant the host reads (placeholders it gets from the call's inputs)
            host_constants.update(
                {
                    i.name: ctx.param_tensors[i.name]
                    for i in ins
                    if i.op != "placeholder" and i.name in ctx.param_tensors
                }
            )
        elif sides <= {HOST, NONE} and HOST in sides:
            # arithmetic on index data alone (a padding mask from the ids, a count of valid items): the host
            # computes it with the rest of the bookkeeping; what the device reads of it crosses as an input
            side[node.name] = HOST
            host_nodes.append(node)
        else:
            raise _unsupported(name, node)

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outputs: list[str] = []
    returns: list[tuple[str, Any]] = []  # per output: ("device", value), ("host", value) or ("const", object)
    for arg in out_node.args[0]:
        if isinstance(arg, fx.Node) and side.get(arg.name) == DEVICE:
            outputs.append(ctx.value_of(arg))
            returns.append(("device", outputs[-1]))
        elif (
            isinstance(arg, fx.Node)
            and side.get(arg.name) in (HOST, NONE)
            or (isinstance(arg, fx.Node) and arg.op == "placeholder")
        ):
            returns.append(("host", arg.name))  # index bookkeeping handed back (a Dynamo graph's output)
        elif isinstance(arg, fx.Node):
            raise UnsupportedOperatorError(
                f"model {name}: output {arg.name} is a weight; return a computed value"
            )
        else:
            returns.append(("const", arg))

    # host values a converter read beyond the node's own inputs (the index under a host-side expand), and
    # not those it looked through
    host_to_device.update({v: None for v in ctx.used if side.get(v) == HOST and v not in user_inputs})
    # device inputs: the user's tensors device ops read directly, then host values they read
    inputs = [v for v in user_inputs if v in ctx.used]
    inputs += [v for v in host_to_device if v not in user_inputs and v in ctx.used]
    kinds = {v: ValueKind.INPUT for v in inputs}
    graph_params = {k: p for k, p in ctx.params.items() if k in ctx.used}
    kinds.update({k: ValueKind.PARAM for k in graph_params})
    for n in ctx.nodes:
        kinds.update({o: ValueKind.NODE for o in n.outputs})
    position = {n.name: i for i, n in enumerate(placeholders)}
    host_returns = [v for kind, v in returns if kind == "host" and v not in inputs]
    prologue = HostPrologue(
        host_nodes, position, inputs + host_returns, host_constants, frozenset(host_writes)
    )
    values = {k: v for k, v in ctx.values.items() if k in kinds}
    graph = Graph(name, values, kinds, graph_params, inputs, outputs, ctx.nodes, prologue)
    graph.verify()
    return Captured(graph, ep, prologue, user_inputs, ep.call_spec.out_spec, returns)


def _lookup_weights(node: fx.Node) -> bool:
    """Whether a float input only reaches embedding lookups (as their per-sample weights), through host
    bookkeeping alone: a KeyedJaggedTensor's weights, split per key. It is index data, kept on the host with
    the indices, not an activation."""
    todo, seen, lookups = [node], {node}, 0
    while todo:
        for user in todo.pop().users:
            conv = CONVERTERS.get(user.target)
            if user.op == "output":
                continue
            if conv is not None and conv.index_args:
                lookups += 1
            elif user.op == "call_function" and is_host_op(user.target):
                if user not in seen:
                    seen.add(user)
                    todo.append(user)
            else:
                return False
    return lookups > 0


def _static_size(node: fx.Node) -> int | None:
    """`sym_size.int(x, dim)`'s value when x's size there is known when compiling."""
    tt = type_of(node.args[0])
    size = tt.shape[node.args[1]] if tt is not None and isinstance(node.args[1], int) else DYNAMIC
    return None if size == DYNAMIC else size


def _foldable(node: fx.Node) -> bool:
    """Whether an aten op without a converter may be folded when all its inputs are constants: it is not
    random and makes one tensor of a device dtype (an in-place one, e.g. `detach_`, runs on a copy)."""
    if node.target is operator.getitem:  # an element of a folded op's tensors
        return type_of(node) is not None
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):  # several tensors (unbind, split), each folded when read
        return all(isinstance(v, torch.Tensor) for v in val)
    return type_of(node) is not None


def _writes_a_placeholder(node: fx.Node) -> bool:
    """Whether an in-place op writes to one of the graph's inputs (a parameter or buffer of the model)."""
    if not isinstance(node.target, torch._ops.OpOverload) or not node.target._schema.is_mutable:
        return False
    for i, arg in enumerate(node.target._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node) and value.op == "placeholder":
            return True
    return False


def _param_tensor(ep: ExportedProgram, spec: Any, model: str, node_name: str) -> torch.Tensor:
    if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
        tensor = ep.state_dict.get(spec.target) if spec.persistent is not False else None
        if tensor is None:
            tensor = ep.constants.get(spec.target)
    elif spec.kind == InputKind.CONSTANT_TENSOR:
        tensor = ep.constants.get(spec.target)
    else:
        raise UnsupportedOperatorError(
            f"model {model}: input {node_name} of kind {spec.kind.name} (a TorchBind object) is not supported; "
            "keep weights as plain tensors"
        )
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"model {model}: no tensor for {spec.target!r}")
    return tensor


def _unsupported(model: str, node: fx.Node) -> UnsupportedOperatorError:
    target = node.target
    op = getattr(target, "name", lambda: str(target))()
    if target in CONVERTERS:  # it has a kernel, but not for what it reads
        return UnsupportedOperatorError(
            f"model {model}: operator {op} mixes weights with values the host computes from index data (a "
            f"tensor built from integer inputs or from nothing), which is not supported ({node_source(node).describe()})"
        )
    return UnsupportedOperatorError(
        f"model {model}: operator {op} has no MTIA kernel ({node_source(node).describe()}); "
        f"supported: {', '.join(supported_ops())}"
    )
