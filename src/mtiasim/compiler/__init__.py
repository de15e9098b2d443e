"""The compiler: graph -> simplified graph -> numeric formats -> kernel ops -> device code (jobs, memory plan).

compiled = compile_graph(graph, chip, Precision.parse("int8"), example_inputs)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtiasim.compiler.codegen import Codegen, DeviceCode, TbeSpec, tbe_job_for
from mtiasim.compiler.lower import Lowered, lower
from mtiasim.compiler.precision import (
    PRECISIONS,
    Formats,
    Precision,
    Quantization,
    assign,
    ranges_of,
)
from mtiasim.compiler.simplify import simplify
from mtiasim.frontend.reference import run_graph
from mtiasim.hw import Chip
from mtiasim.ir import Graph

__all__ = [
    "PRECISIONS",
    "CompiledGraph",
    "DeviceCode",
    "Precision",
    "Quantization",
    "TbeSpec",
    "compile_graph",
    "tbe_job_for",
]


@dataclass
class CompiledGraph:
    source: Graph
    graph: Graph
    formats: Formats
    lowered: Lowered
    code: DeviceCode


def compile_graph(
    graph: Graph,
    chip: Chip,
    precision: Precision,
    example_inputs: dict[str, torch.Tensor],
    *,
    quantization: Quantization | None = None,
    calibration: list[dict[str, torch.Tensor]] | None = None,
) -> CompiledGraph:
    """Compile `graph` for `chip`. `example_inputs` (the device inputs of one call) size the per-call index
    space and the sub-grids, and calibrate the int8 activation scales unless `calibration` (the device inputs
    of several calls) is given."""
    g = simplify(graph)
    virtual = any(p.virtual for p in g.params.values())
    ranges = None
    notes: list[str] = []
    quant = quantization or Quantization()
    if precision.int8 and not virtual and quant.activations == "static":
        batches = calibration or [example_inputs]
        ranges, notes = ranges_of([run_graph(g, inputs, keep=True) for inputs in batches])
    formats = assign(g, precision, ranges, quant)
    formats.notes.extend(notes)
    low = lower(g, formats)
    index_bytes = 0
    lookups: dict[str, int] = {}
    kops = {op.name: op for op in low.kops}
    for name, tables in low.lookups.items():
        n = 0
        for t in tables:
            n += int(example_inputs[t.indices].numel()) if t.indices in example_inputs else 0
        lookups[name] = n
        index_bytes += n * (4 + (4 if any(t.weights for t in tables) else 0))
        if kops[name].attrs.get("call_rows"):  # its rows are placed per call too, after its indices
            index_bytes += n * kops[name].attrs["dim"] * 4
    for op in low.kops:  # jagged rows known per call only (dense_to_jagged): offsets[-1] of them
        given = example_inputs.get(op.attrs["offsets"]) if op.attrs.get("rows_per_call") else None
        if given is not None and given.numel():
            index_bytes += int(given.reshape(-1)[-1]) * low.buffers[op.writes[0]].cols * 4
    reserve = 2 * index_bytes + (1 << 20)
    code = Codegen(low, chip, list(g.inputs), list(g.outputs), reserve).build(lookups)
    return CompiledGraph(graph, g, formats, low, code)
