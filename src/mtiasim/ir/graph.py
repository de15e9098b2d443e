"""The graph the compiler works on: typed device ops over named tensor values, each op with its source.

A `Graph` is what the front end makes of a PyTorch program, split in two:

- the *host prologue*: the index bookkeeping torchrec and EmbeddingBag inputs need (lengths -> offsets,
  splitting a KeyedJaggedTensor's values per table, `item`, guards). It runs on the host CPU, in torch, on
  every call; its outputs are index tensors the device reads.
- the *device ops*: everything that computes on activations and weights, in a small vocabulary (`OPS`).

Values are named tensors (`TensorType`); a dimension that only the data decides (the number of indices of a
table) is `DYNAMIC`. Every op keeps the `Source` it came from (module path, module type, file:line), so any
error about it can say where it is in the user's model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mtiasim.dtypes import DType
from mtiasim.errors import ProgramError
from mtiasim.opset import SPECS

DYNAMIC = -1
"""A dimension known only when the model runs (e.g. the number of indices a table receives)."""


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: DType

    @property
    def numel(self) -> int:
        if any(d == DYNAMIC for d in self.shape):
            raise ProgramError(f"tensor of shape {self.shape_text} has a dynamic size")
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d == DYNAMIC else str(d) for d in self.shape) + "]"

    def __str__(self) -> str:
        return f"{self.dtype.value}{self.shape_text}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where an op comes from in the user's model."""

    module_path: str = ""
    module_type: str = ""
    location: str = ""
    code: str = ""

    def describe(self) -> str:
        parts = [
            f"module {self.module_path or '<top>'}" + (f" ({self.module_type})" if self.module_type else "")
        ]
        if self.location:
            parts.append(f"at {self.location}" + (f": {self.code}" if self.code else ""))
        return " ".join(parts)


class ValueKind(StrEnum):
    INPUT = (
        "input"  # a tensor the device receives from the host on every call (user input or prologue output)
    )
    PARAM = "param"  # a weight, bias, table or constant buffer: resident on the device
    NODE = "node"  # computed by a device op


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter or buffer of the model. `virtual`: its values are not held (a zero-stride or meta tensor,
    e.g. a full-size embedding table in timing mode); `tensor` is the torch tensor itself otherwise."""

    name: str
    target: str
    type: TensorType
    virtual: bool
    tensor: Any = field(repr=False, compare=False, default=None)
    # a weight a PT2E-quantized model holds as int8: (q [N, K] int8, scales [N] fp32); `tensor` is its
    # dequantized value
    quant: Any = field(repr=False, compare=False, default=None)


# The device vocabulary: op -> what it computes and its attributes (the operator set, `mtiasim.opset`)
OPS: dict[str, str] = {k.value: spec.doc for k, spec in SPECS.items()}


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: Source = field(default_factory=Source)

    def where(self) -> str:
        return f"op {self.name} ({self.op}) in {self.source.describe()}"


@dataclass
class Graph:
    """Device ops in execution order, the values they read and write, and the host prologue.

    `inputs` are the device inputs in call order of the prologue's outputs and the user's tensors;
    `host` is the host prologue (a callable taking the user's flat inputs and returning a dict of the
    device inputs it produces), opaque to the compiler.
    """

    name: str
    values: dict[str, TensorType]
    kinds: dict[str, ValueKind]
    params: dict[str, Param]
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    host: Any = field(default=None, repr=False)

    def producer(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def users(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {name: [] for name in self.values}
        for node in self.nodes:
            for v in dict.fromkeys(node.inputs):
                out.setdefault(v, []).append(node)
        return out

    def verify(self) -> None:
        """Every value has a type and one definition before its uses; ops are known."""
        defined = {v for v, k in self.kinds.items() if k in (ValueKind.INPUT, ValueKind.PARAM)}
        for name in defined:
            if name not in self.values:
                raise ProgramError(f"graph {self.name}: value {name!r} has no type")
        for node in self.nodes:
            if node.op not in OPS:
                raise ProgramError(f"graph {self.name}: unknown op {node.op!r} ({node.where()})")
            for v in node.inputs:
                if v not in defined:
                    raise ProgramError(f"graph {self.name}: {node.where()} reads {v!r} before it is defined")
            for v in node.outputs:
                if v in defined:
                    raise ProgramError(f"graph {self.name}: value {v!r} is defined twice ({node.where()})")
                if v not in self.values:
                    raise ProgramError(f"graph {self.name}: value {v!r} has no type ({node.where()})")
                defined.add(v)
        for v in self.outputs:
            if v not in defined:
                raise ProgramError(f"graph {self.name}: output {v!r} is never computed")

    def __str__(self) -> str:
        lines = [f"graph {self.name}"]
        for v in self.inputs:
            lines.append(f"  input  {v}: {self.values[v]}")
        for p in self.params.values():
            lines.append(f"  param  {p.name}: {p.type}" + (" (virtual)" if p.virtual else ""))
        for node in self.nodes:
            outs = ", ".join(f"{o}: {self.values[o]}" for o in node.outputs)
            attrs = ", ".join(f"{k}={_short(v)}" for k, v in node.attrs.items())
            lines.append(f"  {outs} = {node.op}({', '.join(node.inputs)}{'; ' + attrs if attrs else ''})")
        lines.append(f"  return {', '.join(self.outputs)}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
