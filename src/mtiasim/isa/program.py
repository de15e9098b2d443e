"""Programs: the tensors resident in global memory and the jobs that run on sub-grids of PEs.

A job is one kernel invocation on a set of PEs (a sub-grid); the control core launches it once the jobs it
depends on have finished. Jobs on disjoint sub-grids may run at the same time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    `host`: the job is the host's (its CPU's work, DMA over the host link, `HostTransfer`): it starts as soon as
    its dependencies are done, without the chip's control core (no launch, PE signalling or end cost).
    """

    name: str
    kind: str
    pes: dict[PeId, PeProgram]
    deps: tuple[str, ...] = ()
    groups: dict[str, tuple[PeId, ...]] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)
    host: bool = False


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

    def _next_address(self, level: Level) -> int:
        return -(-self.used[level] // TENSOR_ALIGN_BYTES) * TENSOR_ALIGN_BYTES

    def fits(self, level: Level, nbytes: int) -> bool:
        """Whether a tensor of `nbytes` would fit `level` if it were added now."""
        return self._next_address(level) + nbytes <= self.capacity[level]

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
        decl = TensorDecl(
            name, tuple(shape), dtype, level, self._next_address(level), cached, row_pitch_bytes
        )
        if decl.end > self.capacity[level]:
            resident = ", ".join(
                f"{t.name} {t.nbytes / 2**20:.1f} MiB"
                for t in self.tensors.values()
                if t.level == level and t.base is None
            )
            raise CapacityError(
                f"tensor {name!r} ({decl.nbytes / 2**20:.1f} MiB) does not fit {level.value.upper()} "
                f"({self.capacity[level] / 2**20:.0f} MiB, {self.used[level] / 2**20:.1f} MiB in use"
                + (f": {resident})" if resident else ")")
            )
        self.used[level] = decl.end
        self.tensors[name] = decl
        return decl

    def alias(
        self, name: str, base: TensorDecl | str, shape: Sequence[int], *, col_offset: int = 0
    ) -> TensorDecl:
        """A second view of `base`'s bytes, without a copy.

        - reshape: `shape` holds as many elements as `base` (and ``col_offset == 0``); same address. `base` must
          be contiguous unless the last dim stays the same;
        - column window: `shape` = (rows, width) over `base` viewed 2-D [rows, cols], from column `col_offset`:
          address ``base.address + col_offset * itemsize``, row pitch ``base.pitch``.

        The alias's `base` is the underlying buffer (aliases of aliases resolve to it); it takes no memory.
        """
        if name in self.tensors:
            raise UsageError(f"tensor {name!r} is declared twice")
        key = base.name if isinstance(base, TensorDecl) else base
        b = self.tensors.get(key)
        if b is None:
            raise UsageError(f"alias {name!r}: unknown base tensor {key!r}")
        shape = tuple(int(d) for d in shape)
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"alias {name!r}: shape {shape} has a non-positive dimension")
        item = b.dtype.itemsize
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        cols = shape[-1]
        if col_offset == 0 and rows * cols == b.rows * b.cols:
            if cols == b.cols:
                pitch = b.row_pitch_bytes
            elif b.contiguous:
                pitch = None
            else:
                raise UsageError(
                    f"alias {name!r}: a reshape of {b.name!r} to {shape} needs a contiguous base "
                    f"(row pitch {b.pitch} B for {b.cols} {b.dtype.value} columns)"
                )
            address = b.address
        else:
            if len(shape) != 2 or shape[0] != b.rows or col_offset < 0 or col_offset + cols > b.cols:
                raise UsageError(
                    f"alias {name!r}: {list(shape)} at column {col_offset} is neither a reshape nor a column "
                    f"window of {b.name!r} (viewed [{b.rows}, {b.cols}])"
                )
            pitch = b.pitch
            address = b.address + col_offset * item
        decl = TensorDecl(name, shape, b.dtype, b.level, address, b.cached, pitch, b.root)
        self.tensors[name] = decl
        return decl

    def free_bytes(self, level: Level) -> int:
        return self.capacity[level] - self.used[level]
