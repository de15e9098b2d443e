"""Graph rewrites that keep the meaning and shape the graph for the kernels (checked against the reference).

- `matmul(x, W)` with a weight W [K, N] becomes `linear(x, W.T)`; `matmul(a, permute(b))` a matmul with
  `transpose_b` (DLRM's dot interaction `bmm(T, T^T)`).
- `linear` followed by `add` of a weight vector [N] takes it as its bias; followed by `relu`/`sigmoid`/`tanh`
  takes it as its epilogue (`activation`), when nothing else reads the intermediate value.
- `linear(dequantize(quantize(x)))` (a PT2E quantization point before an FC) reads x and records the
  quantization as its `x_quant` (scale, zero point): the int8 FC quantizes x with the model's own parameters.
- `cat` of consecutive slices that tile a value in order is that value (torchrec's KeyedTensor regrouping).
- reshape of a reshape is one reshape; unused ops are dropped.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from mtiasim.ir import Graph, Node, Param, TensorType, ValueKind
from mtiasim.opset import ELEMENTWISE, EPILOGUE_ACTIVATIONS, Kind

ACTIVATIONS = tuple(k.value for k in EPILOGUE_ACTIVATIONS)  # what a GEMM's epilogue can apply


def simplify(graph: Graph) -> Graph:
    g = copy.copy(graph)
    g.nodes = [replace(n, attrs=dict(n.attrs)) for n in graph.nodes]
    g.values = dict(graph.values)
    g.kinds = dict(graph.kinds)
    g.params = dict(graph.params)
    g.outputs = list(graph.outputs)
    for rewrite in (
        _matmul_to_linear,
        _fold_scale,
        _fold_bias,
        _fuse_activation,
        _take_fake_quant,
        _reassemble_cat,
        _fold_reshapes,
    ):
        rewrite(g)
        _dead_code(g)
    return g


def _rename(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        if old in n.inputs:
            n.inputs = tuple(new if v == old else v for v in n.inputs)
    g.outputs = [new if v == old else v for v in g.outputs]


def _dead_code(g: Graph) -> None:
    live = set(g.outputs)
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            keep.append(n)
            live.update(n.inputs)
    g.nodes = keep[::-1]
    for v in list(g.values):
        if v not in live and g.kinds.get(v) != ValueKind.INPUT:
            g.values.pop(v)
            g.kinds.pop(v, None)
            g.params.pop(v, None)


def _single_user(g: Graph, value: str) -> Node | None:
    users = [n for n in g.nodes if value in n.inputs]
    return users[0] if len(users) == 1 and value not in g.outputs else None


def _add_param(
    g: Graph, name: str, tensor: torch.Tensor | None, tt: TensorType, virtual: bool, target: str
) -> None:
    g.params[name] = Param(name, target, tt, virtual, tensor)
    g.values[name] = tt
    g.kinds[name] = ValueKind.PARAM


def _matmul_to_linear(g: Graph) -> None:
    producer = g.producer()
    for n in g.nodes:
        if n.op != "matmul":
            continue
        a, b = n.inputs
        tb = g.values[b]
        if g.kinds.get(b) == ValueKind.PARAM and len(tb.shape) == 2:
            p = g.params[b]
            name = f"{b}_t"
            if name not in g.params:
                t = None if p.virtual else p.tensor.detach().t().contiguous()
                _add_param(
                    g, name, t, TensorType((tb.shape[1], tb.shape[0]), tb.dtype), p.virtual, p.target + ".T"
                )
            n.op, n.inputs = "linear", (a, name)
            continue
        pb = producer.get(b)
        rank = len(tb.shape)
        swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
        if pb is not None and pb.op == "permute" and tuple(pb.attrs["dims"]) == swap:
            n.inputs = (a, pb.inputs[0])
            n.attrs["transpose_b"] = True


def _vector_user(g: Graph, n: Node, op: str) -> tuple[Node, str] | None:
    """The single user of a linear's output when it is `op` with a weight vector of the output's width (a
    per-output-channel constant, e.g. an eval batch norm's scale or shift): (user, that weight)."""
    user = _single_user(g, n.outputs[0])
    if user is None or user.op != op or "scalar" in user.attrs or user.attrs.get("alpha", 1.0) != 1.0:
        return None
    if user.inputs[0] == user.inputs[1]:
        return None
    other = user.inputs[1] if user.inputs[0] == n.outputs[0] else user.inputs[0]
    n_out = g.values[n.outputs[0]].shape[-1]
    if g.kinds.get(other) != ValueKind.PARAM or g.values[other].shape not in ((n_out,), (1, n_out)):
        return None
    return user, other


def _absorb(g: Graph, n: Node, user: Node) -> None:
    _rename(g, user.outputs[0], n.outputs[0])
    g.nodes.remove(user)
    if user.outputs[0] in g.values:
        g.values[n.outputs[0]] = g.values[user.outputs[0]]


def _fold_scale(g: Graph) -> None:
    """linear followed by a per-channel multiply: the weight's rows (and the bias) scaled, in fp32."""
    for n in list(g.nodes):
        if n.op != "linear" or n.attrs.get("activation") or n not in g.nodes:
            continue
        found = _vector_user(g, n, "mul")
        wp = g.params.get(n.inputs[1])
        if found is None or wp is None or wp.quant is not None:
            continue
        user, other = found
        sp = g.params[other]
        virtual = wp.virtual or sp.virtual
        s = None if virtual else sp.tensor.detach().to(torch.float32).reshape(-1)
        w = None if virtual else wp.tensor.detach().to(torch.float32) * s[:, None]
        name = f"{n.inputs[1]}*{other}"
        _add_param(g, name, w, wp.type, virtual, f"{wp.target} * {sp.target}")
        inputs = [n.inputs[0], name]
        if len(n.inputs) > 2:
            bp = g.params[n.inputs[2]]
            b = None if virtual or bp.virtual else bp.tensor.detach().to(torch.float32).reshape(-1) * s
            _add_param(g, f"{n.inputs[2]}*{other}", b, bp.type, b is None, f"{bp.target} * {sp.target}")
            inputs.append(f"{n.inputs[2]}*{other}")
        n.inputs = tuple(inputs)
        _absorb(g, n, user)


def _fold_bias(g: Graph) -> None:
    """linear followed by the add of a weight vector: it becomes (or adds to) the bias."""
    for n in list(g.nodes):
        if n.op != "linear" or n.attrs.get("activation") or n not in g.nodes:
            continue
        found = _vector_user(g, n, "add")
        if found is None:
            continue
        user, other = found
        if len(n.inputs) > 2:  # bias + shift, in fp32
            bp, sp = g.params[n.inputs[2]], g.params[other]
            virtual = bp.virtual or sp.virtual
            b = None
            if not virtual:
                b = bp.tensor.detach().to(torch.float32).reshape(-1) + sp.tensor.detach().to(
                    torch.float32
                ).reshape(-1)
            name = f"{n.inputs[2]}+{other}"
            _add_param(g, name, b, bp.type, virtual, f"{bp.target} + {sp.target}")
            other = name
            n.inputs = (*n.inputs[:2], other)
        else:
            n.inputs = (*n.inputs, other)
        _absorb(g, n, user)


def _fuse_activation(g: Graph) -> None:
    for n in g.nodes:
        if n.op != "linear" or n.attrs.get("activation"):
            continue
        user = _single_user(g, n.outputs[0])
        if user is None or user.op not in ACTIVATIONS:
            continue
        spec = ELEMENTWISE[Kind(user.op)]
        if (
            any(user.attrs.get(k, v) != v for k, v in spec.defaults)
            or set(user.attrs) - dict(spec.defaults).keys()
        ):
            continue  # the epilogue applies an activation with its default constants only
        n.attrs["activation"] = user.op
        _rename(g, user.outputs[0], n.outputs[0])
        g.nodes.remove(user)


def _take_fake_quant(g: Graph) -> None:
    producer = g.producer()
    for n in g.nodes:
        if n.op != "linear":
            continue
        d = producer.get(n.inputs[0])
        q = producer.get(d.inputs[0]) if d is not None and d.op == "dequantize" else None
        if q is None or q.op != "quantize":
            continue
        if (q.attrs["scale"], q.attrs["zero_point"]) != (d.attrs["scale"], d.attrs["zero_point"]):
            continue
        n.inputs = (q.inputs[0], *n.inputs[1:])
        n.attrs["x_quant"] = (q.attrs["scale"], q.attrs["zero_point"])


def _reassemble_cat(g: Graph) -> None:
    producer = g.producer()
    for n in g.nodes:
        if n.op != "cat":
            continue
        parts = [producer.get(v) for v in n.inputs]
        if any(p is None or p.op != "slice" or p.attrs["dim"] != n.attrs["dim"] for p in parts):
            continue
        src = parts[0].inputs[0]  # type: ignore[union-attr]
        pos = 0
        ok = True
        for p in parts:
            assert p is not None
            if p.inputs[0] != src or p.attrs["start"] != pos:
                ok = False
                break
            pos = p.attrs["end"]
        if (
            ok
            and g.values[src].shape == g.values[n.outputs[0]].shape
            and pos == g.values[src].shape[n.attrs["dim"]]
        ):
            n.op, n.inputs, n.attrs = "copy", (src,), {"alias": True}
    # an aliasing copy is just the value
    for n in list(g.nodes):
        if n.op == "copy" and n.attrs.get("alias"):
            _rename(g, n.outputs[0], n.inputs[0])
            g.nodes.remove(n)


def _fold_reshapes(g: Graph) -> None:
    producer = g.producer()
    for n in g.nodes:
        if n.op != "reshape":
            continue
        p = producer.get(n.inputs[0])
        if p is not None and p.op == "reshape":
            n.inputs = p.inputs
        if g.values[n.inputs[0]].shape == tuple(n.attrs["shape"]):
            _rename(g, n.outputs[0], n.inputs[0])
    _dead_code(g)
