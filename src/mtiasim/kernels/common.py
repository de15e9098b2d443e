"""Helpers shared by the kernels: PE regions, splits in hardware-friendly multiples, CB layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw import Chip
from mtiasim.isa import CbDecl, PeId, PeProgram


@dataclass(frozen=True)
class Region:
    """A rectangle of PEs a kernel may use: rows [r0, r0+rows), cols [c0, c0+cols)."""

    r0: int
    c0: int
    rows: int
    cols: int

    @staticmethod
    def whole(chip: Chip) -> Region:
        return Region(0, 0, chip.grid.rows, chip.grid.cols)

    def check(self, chip: Chip) -> None:
        if self.rows <= 0 or self.cols <= 0 or self.r0 < 0 or self.c0 < 0:
            raise UsageError(f"PE region {self} is empty")
        if self.r0 + self.rows > chip.grid.rows or self.c0 + self.cols > chip.grid.cols:
            raise UsageError(f"PE region {self} exceeds the {chip.grid.rows}x{chip.grid.cols} grid")

    def pe(self, r: int, c: int) -> PeId:
        return (self.r0 + r, self.c0 + c)

    @property
    def size(self) -> int:
        return self.rows * self.cols


def split(total: int, parts: int, quantum: int) -> list[tuple[int, int]]:
    """Split [0, total) into `parts` contiguous ranges whose sizes are multiples of `quantum` (the last may be
    ragged); trailing ranges can be empty when there is too little to share."""
    units = math.ceil(total / quantum)
    base, extra = divmod(units, parts)
    out = []
    start = 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        lo = min(start * quantum, total)
        hi = min((start + n) * quantum, total)
        out.append((lo, hi))
        start += n
    return out


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cb_layout(chip: Chip, pe: PeId, sizes: dict[int, int], what: str) -> tuple[CbDecl, ...]:
    """Lay CBs out one after another in the local store (64 B aligned); error if they do not fit."""
    out = []
    offset = 0
    for cb, size in sizes.items():
        size = cdiv(size, 64) * 64
        out.append(CbDecl(cb, offset, size))
        offset += size
    if offset > chip.local_memory.bytes:
        parts = ", ".join(f"CB {cb} {s / 1024:.1f} KiB" for cb, s in sizes.items())
        raise CapacityError(
            f"{what}: PE{pe} needs {offset / 1024:.1f} KiB of circular buffers ({parts}), the local store holds "
            f"{chip.local_memory.bytes / 1024:.0f} KiB"
        )
    return tuple(out)


def empty_program(pe: PeId, cbs: tuple[CbDecl, ...]) -> PeProgram:
    return PeProgram(pe, cbs, ([], []))
