"""`mtiasim.compile`: a PyTorch model and example inputs -> a `CompiledModel` that runs on the simulated chip."""

from __future__ import annotations

from typing import Any

import torch

from mtiasim.compiler import Precision, compile_graph
from mtiasim.engine import FIDELITIES, MODES
from mtiasim.errors import UsageError
from mtiasim.frontend import capture
from mtiasim.hw import Chip, load_chip, load_chip_file
from mtiasim.runtime.model import CompiledModel


def resolve_chip(chip: str | Chip) -> Chip:
    if isinstance(chip, Chip):
        return chip
    if isinstance(chip, str) and chip.endswith(".toml"):
        return load_chip_file(chip)
    return load_chip(chip)


def compile(  # noqa: A001 - the public name mirrors torch.compile
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    chip: str | Chip = "mtia-v1",
    mode: str = "timing",
    precision: str = "int8",
    fidelity: str = "event",
    kwargs: dict | None = None,
    name: str | None = None,
) -> CompiledModel:
    """Compile `model` for the simulated chip.

    `example_inputs` (a tuple of the forward's positional arguments) fix the shapes, calibrate the int8
    scales and size the per-call index space. `mode`: `timing` (no numbers; outputs are zeros of the right
    shape), `functional` (numbers, no time) or `both`. Calling the result runs one batch; its `.report` holds
    the run's latency, per-op rows and memory plan.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if fidelity not in FIDELITIES:
        raise UsageError(f"unknown fidelity {fidelity!r} (known: {', '.join(FIDELITIES)})")
    prec = Precision.parse(precision)
    chip_ = resolve_chip(chip)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    captured = capture(model, example_inputs, kwargs, name or type(model).__name__)
    g = captured.graph
    virtual = [p.target for p in g.params.values() if p.virtual]
    if virtual and mode != "timing":
        raise UsageError(
            f"model {g.name}: {len(virtual)} virtual weight(s) (e.g. {virtual[0]!r}) hold no values; "
            "functional runs need materialized weights (cap the tables' rows)"
        )
    flat = captured.flat_inputs(example_inputs, dict(kwargs or {}))
    values = captured.host(flat)
    compiled = compile_graph(g, chip_, prec, values)
    out_node = next(n for n in captured.exported.graph.nodes if n.op == "output")
    out_dtypes = [
        a.meta["val"].dtype
        for a, (kind, _) in zip(out_node.args[0], captured.returns, strict=True)
        if kind == "device"
    ]
    return CompiledModel(captured, compiled, chip_, mode, fidelity, out_dtypes)
