"""Programs: the tensors resident in global memory and the jobs that run on sub-grids of PEs.

A job is one kernel invocation on a set of PEs (a sub-grid); the control core launches it once the jobs it
depends on have finished. Jobs on disjoint sub-grids may run at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.errors import CapacityError, ProgramError, UsageError
from mtiasim.isa.commands import PeId, PeProgram
from mtiasim.isa.memory import Level, TensorDecl

TENSOR_ALIGN_BYTES = 128


@dataclass
class Job:
    """One kernel invocation: a program per PE of its sub-grid, and named PE groups for group barriers.

    `work` holds what the kernel computes in the units the benchmarks report (``macs``, ``useful_bytes``).
    """

    name: str
    kind: str
    pes: dict[PeId, PeProgram]
    deps: tuple[str, ...] = ()
    groups: dict[str, tuple[PeId, ...]] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)


@dataclass
class Program:
    """Tensors in SRAM / LPDDR5 and the jobs that use them.

    `cache_state` is the SRAM cache's content at the start of the run, as line ids (address // line bytes),
    least recently used first; None is a cold cache. `cache_history` is the alternative: per cached table, the
    row indices of earlier accesses (oldest first), replayed to warm the cache.
    """

    name: str
    tensors: dict[str, TensorDecl]
    jobs: list[Job]
    cache_history: dict[str, np.ndarray] = field(default_factory=dict)
    cache_state: np.ndarray | None = None

    def tensor(self, name: str, where: str = "") -> TensorDecl:
        try:
            return self.tensors[name]
        except KeyError:
            raise ProgramError(f"{where or self.name}: unknown tensor {name!r}") from None


class MemoryPlan:
    """A bump allocator over the global memory levels, with capacity accounting per level."""

    def __init__(self, sram_bytes: int, dram_bytes: int) -> None:
        self.capacity = {Level.SRAM: sram_bytes, Level.DRAM: dram_bytes}
        self.used = {Level.SRAM: 0, Level.DRAM: 0}
        self.tensors: dict[str, TensorDecl] = {}

    def add(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: DType,
        level: Level,
        *,
        cached: bool = False,
        row_pitch_bytes: int | None = None,
    ) -> TensorDecl:
        if name in self.tensors:
            raise UsageError(f"tensor {name!r} is declared twice")
        if any(d <= 0 for d in shape):
            raise UsageError(f"tensor {name!r}: shape {shape} has a non-positive dimension")
        if cached and level != Level.DRAM:
            raise UsageError(f"tensor {name!r}: only LPDDR5 tensors can be reached through the SRAM cache")
        address = -(-self.used[level] // TENSOR_ALIGN_BYTES) * TENSOR_ALIGN_BYTES
        decl = TensorDecl(name, tuple(shape), dtype, level, address, cached, row_pitch_bytes)
        if decl.end > self.capacity[level]:
            resident = ", ".join(
                f"{t.name} {t.nbytes / 2**20:.1f} MiB" for t in self.tensors.values() if t.level == level
            )
            raise CapacityError(
                f"tensor {name!r} ({decl.nbytes / 2**20:.1f} MiB) does not fit {level.value.upper()} "
                f"({self.capacity[level] / 2**20:.0f} MiB, {self.used[level] / 2**20:.1f} MiB in use"
                + (f": {resident})" if resident else ")")
            )
        self.used[level] = decl.end
        self.tensors[name] = decl
        return decl

    def free_bytes(self, level: Level) -> int:
        return self.capacity[level] - self.used[level]
