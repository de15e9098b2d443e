"""The host prologue: the exported program's index bookkeeping, run in torch on the host CPU on every call.

torchrec turns a KeyedJaggedTensor into per-table indices and offsets with `lengths.sum()`, `item()`,
`split_with_sizes`, `cumsum` and shape guards; EmbeddingBag on 2-D input makes its offsets with `arange`.
None of that touches activations, so mtiasim runs it where the real system does, on the host, and the device
receives the resulting index tensors. Its cost is modelled per op (`host_cost_s`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from mtiasim.errors import UsageError

aten = torch.ops.aten

# ops the host may run on index data (integer bookkeeping); anything else on index data is refused
HOST_OPS: frozenset[Any] = frozenset(
    {
        aten.item.default,
        aten._assert_scalar.default,
        aten._assert_tensor_metadata.default,
        aten.sym_constrain_range_for_size.default,
        aten.sym_size.int,
        aten.sym_numel.default,
        aten.sym_storage_offset.default,
        aten.sym_stride.int,
        aten.cumsum.default,
        aten.sum.default,
        aten.sum.dim_IntList,
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
        aten.flatten.using_ints,
        aten.unsqueeze.default,
        aten.squeeze.dim,
        aten.split_with_sizes.default,
        aten.split.Tensor,
        aten.split_with_sizes_copy.default,
        aten.unbind.int,
        aten.select.int,
        aten.slice.Tensor,
        aten.narrow.default,
        aten.cat.default,
        aten.stack.default,
        aten.index_select.default,
        aten.gather.default,
        aten.permute.default,
        aten.transpose.int,
        aten.t.default,
        aten.to.dtype,
        aten.to.dtype_layout,
        aten.to.device,
        aten.detach_.default,
        aten._to_copy.default,
        aten.clone.default,
        aten.contiguous.default,
        aten.alias.default,
        aten.detach.default,
        aten.new_zeros.default,
        aten.new_ones.default,
        aten.new_empty.default,
        aten.zeros.default,
        aten.ones.default,
        aten.empty.memory_format,
        aten.full.default,
        aten.arange.default,
        aten.arange.start,
        aten.arange.start_step,
        aten.repeat_interleave.self_int,
        aten.repeat_interleave.Tensor,
        aten.diff.default,
        aten.add.Tensor,
        aten.sub.Tensor,
        aten.mul.Tensor,
        aten.div.Tensor_mode,
        aten.floor_divide.default,
        aten.remainder.Scalar,
        aten.max.default,
        aten.min.default,
        aten.eq.Scalar,
        aten.ne.Scalar,
        aten.ge.Scalar,
        aten.le.Scalar,
        aten.lt.Scalar,
        aten.gt.Scalar,
        aten.clamp.default,
        aten.expand.default,
        aten.lift_fresh_copy.default,
        aten.scalar_tensor.default,
    }
)


def _fbgemm_host_ops() -> frozenset[Any]:
    ops: set[Any] = set()
    fbgemm = getattr(torch.ops, "fbgemm", None)
    for name in (
        "asynchronous_complete_cumsum",
        "asynchronous_exclusive_cumsum",
        "asynchronous_inclusive_cumsum",
        "bounds_check_indices",
        "permute_1D_sparse_data",
        "permute_2D_sparse_data",
        "permute_sparse_data",
        "offsets_range",
    ):
        packet = getattr(fbgemm, name, None) if fbgemm is not None else None
        if packet is not None:
            ops.update(getattr(packet, o) for o in packet.overloads())
    return frozenset(ops)


def is_host_op(target: Any) -> bool:
    if target in HOST_OPS or target in _fbgemm_host_ops():
        return True
    # python-level symbolic arithmetic and tuple access (operator.add on SymInts, getitem)
    return getattr(target, "__module__", None) in (
        "_operator",
        "operator",
        "math",
        "torch.fx.experimental.sym_node",
    )


@dataclass
class HostPrologue:
    """The host nodes of the exported graph, in order, and the values the device needs from them.

    `placeholders` maps each graph placeholder name to its position among the flat graph inputs (parameters and
    buffers first, then the user's flattened inputs, as torch.export orders them).
    """

    nodes: list[fx.Node]
    placeholders: dict[str, int]
    needed: list[str]
    constants: dict[str, torch.Tensor] = field(default_factory=dict)  # folded constants the host nodes read
    writes: frozenset[str] = frozenset()  # nodes that write to the model's own tensors (a side effect)
    ops_run: int = field(default=0)

    def __call__(self, flat_graph_inputs: list[Any], *, effects: bool = False) -> dict[str, Any]:
        """The values the device needs. The side effects on the model's tensors happen only with `effects`
        (a call of the compiled model, not its compilation or calibration): otherwise they act on copies."""
        env: dict[str, Any] = {name: flat_graph_inputs[i] for name, i in self.placeholders.items()}
        env.update(self.constants)

        def load(a: Any) -> Any:
            return env[a.name]

        for node in self.nodes:
            args = fx.node.map_arg(node.args, load)
            kwargs = _on_cpu(fx.node.map_arg(node.kwargs, load))
            if node.name in self.writes and not effects:
                args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, (args, kwargs))
            try:
                env[node.name] = _call(node.target, args, kwargs)
            except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(
                    f"host bookkeeping op {node.name} ({node.target}) failed on these inputs: {first}"
                ) from exc
        # a mask crosses to the device as 1.0/0.0 in float32 (its type there, `type_of`)
        return {name: _as_device(env[name]) for name in self.needed}


def _on_cpu(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model whose weights live on the meta device is exported with meta inputs, so its bookkeeping names
    `device=meta` (a metadata assert, a factory); the host runs it on the call's CPU tensors."""
    meta = [k for k, v in kwargs.items() if isinstance(v, torch.device) and v.type == "meta"]
    return kwargs if not meta else {**kwargs, **dict.fromkeys(meta, torch.device("cpu"))}


def _as_device(value: Any) -> Any:
    return value.to(torch.float32) if isinstance(value, torch.Tensor) and value.dtype == torch.bool else value


def _call(target: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    if target is operator.getitem:
        return args[0][args[1]]
    with torch.no_grad():
        return target(*args, **kwargs)


def tensor_ops(nodes: list[fx.Node]) -> int:
    """Host ops that do work on tensors: not shape arithmetic, guards or tuple access (free in a compiled
    runtime)."""
    free = ("_assert", "sym_", "scalar_tensor")
    return sum(
        1
        for n in nodes
        if isinstance(n.target, torch._ops.OpOverload) and not any(f in str(n.target) for f in free)
    )


def host_cost_s(ops: int, nbytes: int, op_ns: float, copy_gbps: float) -> float:
    """Host CPU time of the prologue: a fixed cost per tensor op plus one pass over the index bytes."""
    return ops * op_ns * 1e-9 + nbytes / (copy_gbps * 1e9)
