"""The engine: executes command programs on a chip model, functionally, in time, or both.

    result = execute(program, chip, mode="both", fidelity="event", inputs={"A": a, "B": b})
    result.outputs["C"]          # numbers (functional / both)
    result.timing.seconds        # time (timing / both)

Timing mode needs no tensor data except index tensors (their values drive the SRAM cache model), so tables of
tens of GB can stay virtual. In functional mode an alias (`MemoryPlan.alias`) is a numpy view of its base
buffer: what a job writes through one name the next job reads through the other. Inputs go to base tensors.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mtiasim.engine import blas
from mtiasim.engine.resolve import Resolved, resolve
from mtiasim.engine.timing import FIDELITIES, JobTiming, NodeTable, TimingModel, TimingResult, simulate
from mtiasim.engine.work import Memo
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import DmaOut, DmaScatter, HostCall, Program, TensorDecl

MODES = ("functional", "timing", "both")

__all__ = [
    "FIDELITIES",
    "MODES",
    "ExecutionResult",
    "JobTiming",
    "Memo",
    "NodeTable",
    "TimingResult",
    "execute",
]


@dataclass
class ExecutionResult:
    mode: str
    fidelity: str
    outputs: dict[str, np.ndarray] | None
    timing: TimingResult | None
    resolved: Resolved


def _alias_view(root_array: np.ndarray, root: TensorDecl, decl: TensorDecl) -> np.ndarray:
    """The 2-D [rows, cols] numpy view of an alias into its base buffer's array (writes go through)."""
    item = root.dtype.itemsize
    row, rest = divmod(decl.address - root.address, root.pitch)
    stride, odd = divmod(decl.pitch * root.cols, root.pitch)
    start = row * root.cols + rest // item
    if odd or rest % item or start + (decl.rows - 1) * stride + decl.cols > root_array.size:
        raise UsageError(f"alias {decl.name!r}: its bytes do not lie inside {root.name!r} as a strided view")
    flat = root_array.reshape(-1)[start:]
    return np.lib.stride_tricks.as_strided(flat, (decl.rows, decl.cols), (stride * item, item))


def _written_roots(program: Program) -> set[str]:
    """The base tensors the program's commands may write (through any alias): what DMA writes out or scatters
    into and what a host call writes. A host call's inputs count too (its function may take them as writable)."""
    names: set[str] = set()
    for job in program.jobs:
        for prog in job.pes.values():
            for cmds in prog.cores:
                for cmd in cmds:
                    if isinstance(cmd, DmaOut):
                        names.add(cmd.stream.tensor)
                    elif isinstance(cmd, DmaScatter):
                        names.add(cmd.table)
                    elif isinstance(cmd, HostCall):
                        names.update(cmd.writes)
                        names.update(cmd.reads)
    roots = set()
    for name in names:
        decl = program.tensors.get(name)
        while decl is not None and decl.base is not None:
            name, decl = decl.base, program.tensors.get(decl.base)
        roots.add(name)
    return roots


def _memory(program: Program, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor's array: inputs the program writes are copied, the others (weights, tables, most inputs)
    are read-only views of the caller's arrays, whose copy was ~0.15 s of a DLRM-v2 B2048 call; the rest
    start as zeros."""
    written = _written_roots(program)
    mem: dict[str, np.ndarray] = {}
    for name, decl in program.tensors.items():
        if decl.base is not None:
            if name in inputs:
                raise UsageError(
                    f"input {name!r} is an alias of {decl.base!r}: give the data for {decl.base!r}"
                )
            continue
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
            if name in written:
                mem[name] = np.array(arr, copy=True).reshape(decl.rows, decl.cols)
            else:
                # a view of its own, flagged read-only: the caller's array stays writable
                view = arr.reshape(decl.rows, decl.cols).view()
                view.flags.writeable = False
                mem[name] = view
        else:
            mem[name] = np.zeros((decl.rows, decl.cols), dtype=decl.dtype.numpy)
    for name, decl in program.tensors.items():
        if decl.base is not None:
            root = program.tensors.get(decl.base)
            if root is None or root.base is not None or root.dtype != decl.dtype:
                raise UsageError(
                    f"alias {name!r}: base {decl.base!r} is not a {decl.dtype.value} buffer of the program"
                )
            mem[name] = _alias_view(mem[decl.base], root, decl)
    return mem


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """The engine allocates many small, acyclic objects: the cyclic collector's scans of the whole heap
    (full-size models hold large ones) cost ~13 % of a DLRM call and free nothing. Reference counting still frees."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _serial_blas(functional: bool) -> Iterator[None]:
    """Functional runs hold BLAS to one thread but for their large products (`engine.blas`)."""
    if not functional:
        yield
        return
    with blas.serial():
        yield


def execute(
    program: Program,
    chip: Chip,
    *,
    mode: str = "timing",
    fidelity: str = "event",
    inputs: dict[str, np.ndarray] | None = None,
    memo: Memo | None = None,
) -> ExecutionResult:
    """Run `program` on `chip`. Functional modes need every input tensor; tensors not given start as zeros.
    The caller's arrays are never written: an input the program writes is copied, the others are read through
    read-only views, which is also what `outputs` holds for them.

    `memo` carries work-model results between runs of programs that share jobs (a compiled model's calls).
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if fidelity not in FIDELITIES:
        raise UsageError(f"unknown fidelity {fidelity!r} (known: {', '.join(FIDELITIES)})")
    inputs = dict(inputs or {})
    for name in inputs:
        if name not in program.tensors:
            raise UsageError(f"input {name!r} is not a tensor of program {program.name!r}")
    functional = mode in ("functional", "both")
    with _no_gc_pauses(), _serial_blas(functional):
        memory = _memory(program, inputs) if functional else None
        resolved = resolve(program, chip, memory, memo.fragments if memo is not None else None)
        timing = None
        if mode in ("timing", "both"):
            data = memory if memory is not None else {k: np.asarray(v) for k, v in inputs.items()}
            timing = simulate(TimingModel(program, resolved, chip, data, memo), fidelity)
    outputs = None
    if memory is not None:
        outputs = {name: memory[name].reshape(decl.shape) for name, decl in program.tensors.items()}
    return ExecutionResult(mode, fidelity, outputs, timing, resolved)
