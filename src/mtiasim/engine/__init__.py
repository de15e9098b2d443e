"""The engine: executes command programs on a chip model, functionally, in time, or both.

    result = execute(program, chip, mode="both", fidelity="event", inputs={"A": a, "B": b})
    result.outputs["C"]          # numbers (functional / both)
    result.timing.seconds        # time (timing / both)

Timing mode needs no tensor data except index tensors (their values drive the SRAM cache model), so tables of
tens of GB can stay virtual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtiasim.engine.resolve import Resolved, resolve
from mtiasim.engine.timing import FIDELITIES, JobTiming, TimingModel, TimingResult, simulate
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import Program

MODES = ("functional", "timing", "both")

__all__ = ["FIDELITIES", "MODES", "ExecutionResult", "JobTiming", "TimingResult", "execute"]


@dataclass
class ExecutionResult:
    mode: str
    fidelity: str
    outputs: dict[str, np.ndarray] | None
    timing: TimingResult | None
    resolved: Resolved


def _memory(program: Program, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mem: dict[str, np.ndarray] = {}
    for name, decl in program.tensors.items():
        if name in inputs:
            arr = np.asarray(inputs[name])
            if tuple(arr.shape) != tuple(decl.shape):
                raise UsageError(
                    f"input {name!r}: shape {tuple(arr.shape)} does not match the tensor's {decl.shape}"
                )
            if arr.dtype != decl.dtype.numpy:
                raise UsageError(
                    f"input {name!r}: dtype {arr.dtype} does not match the tensor's {decl.dtype.value}"
                )
            mem[name] = np.array(arr, copy=True).reshape(decl.rows, decl.cols)
        else:
            mem[name] = np.zeros((decl.rows, decl.cols), dtype=decl.dtype.numpy)
    return mem


def execute(
    program: Program,
    chip: Chip,
    *,
    mode: str = "timing",
    fidelity: str = "event",
    inputs: dict[str, np.ndarray] | None = None,
) -> ExecutionResult:
    """Run `program` on `chip`. Functional modes need every input tensor; tensors not given start as zeros."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if fidelity not in FIDELITIES:
        raise UsageError(f"unknown fidelity {fidelity!r} (known: {', '.join(FIDELITIES)})")
    inputs = dict(inputs or {})
    for name in inputs:
        if name not in program.tensors:
            raise UsageError(f"input {name!r} is not a tensor of program {program.name!r}")
    memory = _memory(program, inputs) if mode in ("functional", "both") else None
    resolved = resolve(program, chip, memory)
    timing = None
    if mode in ("timing", "both"):
        data = memory if memory is not None else {k: np.asarray(v) for k, v in inputs.items()}
        timing = simulate(TimingModel(program, resolved, chip, data), fidelity)
    outputs = None
    if memory is not None:
        outputs = {name: memory[name].reshape(decl.shape) for name, decl in program.tensors.items()}
    return ExecutionResult(mode, fidelity, outputs, timing, resolved)
