"""`mtiasim.compile`: a PyTorch model and example inputs -> a `CompiledModel` that runs on the simulated chip."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.export import ExportedProgram

from mtiasim.compiler import Precision, Quantization, compile_graph
from mtiasim.engine import FIDELITIES, MODES
from mtiasim.errors import NumericsWarning, UsageError
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
    model: torch.nn.Module | ExportedProgram,
    example_inputs: Any,
    *,
    chip: str | Chip = "mtia-v1",
    mode: str = "timing",
    precision: str = "int8",
    fidelity: str = "event",
    kwargs: dict | None = None,
    name: str | None = None,
    quantization: Quantization | str | dict | None = None,
    calibration: list | None = None,
    fallback: str | None = None,
) -> CompiledModel:
    """Compile `model` (a module, or an ExportedProgram such as `torch.export.load` returns, compiled as it is)
    for the simulated chip.

    `example_inputs` (a tuple of the forward's positional arguments) fix the shapes, calibrate the int8
    scales and size the per-call index space. `mode`: `timing` (no numbers; outputs are zeros of the right
    shape), `functional` (numbers, no time) or `both`. Calling the result runs one batch; its `.report` holds
    the run's latency, per-op rows and memory plan.

    int8 (docs/numerics.md): `quantization` chooses the scheme (``"static"``: per-tensor activation scales
    calibrated on `calibration`, a list of input tuples like `example_inputs`, default the example inputs
    alone; ``"dynamic"``: per-row scales on the chip at run time; ``"per-tensor"`` weights instead of
    per-channel, e.g. ``"dynamic,per-tensor"``). A model already quantized with PyTorch's PT2E flow keeps its
    own scales and int8 weights.

    `fallback="host"`: an operator the chip has no kernel for runs on the host CPU (timed as its PCIe round
    trip and the host's work, listed as `host_call` in the report) instead of raising
    `UnsupportedOperatorError`; what follows it is not bounded by the numerics specification.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if fidelity not in FIDELITIES:
        raise UsageError(f"unknown fidelity {fidelity!r} (known: {', '.join(FIDELITIES)})")
    prec = Precision.parse(precision)
    chip_ = resolve_chip(chip)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    captured = capture(model, example_inputs, kwargs, name or "", fallback=fallback)
    g = captured.graph
    virtual = [p.target for p in g.params.values() if p.virtual]
    if virtual and mode != "timing":
        raise UsageError(
            f"model {g.name}: {len(virtual)} virtual weight(s) (e.g. {virtual[0]!r}) hold no values; "
            "functional runs need materialized weights (cap the tables' rows)"
        )
    quant = Quantization.parse(quantization)
    flat = captured.flat_inputs(example_inputs, dict(kwargs or {}))
    values = captured.host(flat)
    batches = None
    if calibration is not None:
        if not isinstance(calibration, (list, tuple)) or not calibration:
            raise UsageError(f"model {g.name}: calibration must be a non-empty list of input tuples")
        batches = []
        for i, inputs in enumerate(calibration):
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            try:
                batches.append(captured.host(captured.flat_inputs(inputs, dict(kwargs or {}))))
            except UsageError as err:
                raise UsageError(f"calibration batch {i}: {err}") from None
    compiled = compile_graph(g, chip_, prec, values, quantization=quant, calibration=batches)
    for note in compiled.formats.notes:
        warnings.warn(NumericsWarning(f"model {g.name}: {note}"), stacklevel=2)
    out_node = next(n for n in captured.exported.graph.nodes if n.op == "output")
    out_dtypes = [
        a.meta["val"].dtype
        for a, (kind, _) in zip(out_node.args[0], captured.returns, strict=True)
        if kind == "device"
    ]
    return CompiledModel(captured, compiled, chip_, mode, fidelity, out_dtypes)
