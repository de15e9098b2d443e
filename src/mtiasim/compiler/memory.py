"""Device memory planning: which buffers go to SRAM and which to LPDDR5, at which addresses.

Activations are allocated first-fit by lifetime (a buffer's bytes are reused once its last reader is done),
in SRAM; if their peak does not fit, the largest go to LPDDR5. Weights and tables stay for the model's life:
weights in SRAM while they fit, then tables smallest first; what is left goes to LPDDR5, reached through the
SRAM in cache mode (whose capacity is the SRAM the scratchpad does not use). A reserve is kept for the per-call
index tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtiasim.errors import CapacityError
from mtiasim.isa import Level

ALIGN_BYTES = 128


def _align(n: int) -> int:
    return -(-n // ALIGN_BYTES) * ALIGN_BYTES


@dataclass
class Placement:
    level: Level
    address: int
    cached: bool


@dataclass
class MemoryPlan:
    placements: dict[str, Placement]
    sram_static_bytes: int
    sram_activation_bytes: int
    sram_index_reserve_bytes: int
    dram_bytes: int
    rows: list[tuple[str, str, str, int]] = field(default_factory=list)  # (buffer, role, level, bytes)

    def table(self) -> str:
        """The printed memory plan."""
        lines = [f"{'buffer':44s} {'role':10s} {'where':10s} {'MiB':>10s}"]
        for name, role, where, nbytes in self.rows:
            lines.append(f"{name[:44]:44s} {role:10s} {where:10s} {nbytes / 2**20:10.3f}")
        lines.append(
            f"SRAM: {self.sram_static_bytes / 2**20:.1f} MiB resident + {self.sram_activation_bytes / 2**20:.1f} MiB "
            f"activations (peak) + {self.sram_index_reserve_bytes / 2**20:.1f} MiB indices; "
            f"LPDDR5: {self.dram_bytes / 2**20:.1f} MiB"
        )
        return "\n".join(lines)


def first_fit(sizes: dict[str, int], lifetimes: dict[str, tuple[int, int]]) -> tuple[dict[str, int], int]:
    """Offsets such that buffers alive at the same time do not overlap; returns (offsets, peak bytes)."""
    order = sorted(sizes, key=lambda b: (lifetimes[b][0], -sizes[b]))
    live: list[tuple[int, int, int]] = []  # (offset, end, last use)
    offsets: dict[str, int] = {}
    peak = 0
    for b in order:
        start, end = lifetimes[b]
        live = [x for x in live if x[2] >= start]
        size = _align(sizes[b])
        pos = 0
        for off, stop, _ in sorted(live):
            if pos + size <= off:
                break
            pos = max(pos, stop)
        offsets[b] = pos
        live.append((pos, pos + size, end))
        peak = max(peak, pos + size)
    return offsets, peak


def plan_memory(
    *,
    sram_bytes: int,
    dram_bytes: int,
    activations: dict[str, int],
    lifetimes: dict[str, tuple[int, int]],
    weights: dict[str, int],
    tables: dict[str, int],
    index_reserve: int,
    roles: dict[str, str],
) -> MemoryPlan:
    placements: dict[str, Placement] = {}
    rows: list[tuple[str, str, str, int]] = []
    index_reserve = _align(index_reserve)
    act_sram = dict(activations)
    act_dram: dict[str, int] = {}
    offsets, peak = first_fit(act_sram, lifetimes)
    while peak + index_reserve > sram_bytes and act_sram:
        big = max(act_sram, key=lambda b: act_sram[b])
        act_dram[big] = act_sram.pop(big)
        offsets, peak = first_fit(act_sram, lifetimes)
    sram_used = peak + index_reserve
    for b, off in offsets.items():
        placements[b] = Placement(Level.SRAM, off, False)
    static_at = sram_used
    dram_at = 0

    def to_dram(b: str, size: int) -> None:
        nonlocal dram_at
        placements[b] = Placement(Level.DRAM, dram_at, True)
        dram_at = _align(dram_at + size)
        if dram_at > dram_bytes:
            raise CapacityError(
                f"buffer {b!r} ({size / 2**20:.1f} MiB) does not fit LPDDR5 ({dram_bytes / 2**20:.0f} MiB, "
                f"{(dram_at - size) / 2**20:.1f} MiB in use by weights, tables and spilled activations)"
            )

    # LPDDR5 activations (spilled) are reached through the SRAM cache
    for b, size in act_dram.items():
        to_dram(b, size)
    for group in (
        sorted(weights.items(), key=lambda kv: kv[1]),
        sorted(tables.items(), key=lambda kv: kv[1]),
    ):
        for b, size in group:
            if static_at + _align(size) <= sram_bytes:
                placements[b] = Placement(Level.SRAM, static_at, False)
                static_at = _align(static_at + size)
            else:
                to_dram(b, size)
    for b, p in placements.items():
        size = activations.get(b) or weights.get(b) or tables.get(b) or 0
        where = p.level.value + (" (cache)" if p.cached else "")
        rows.append((b, roles.get(b, "?"), where, size))
    rows.sort(key=lambda r: (r[2], r[1], -r[3]))
    return MemoryPlan(placements, static_at - sram_used, peak, index_reserve, dram_at, rows)
