"""The on-chip SRAM used as a memory-side cache of LPDDR5 (cache mode).

Organisation (ISCA'23 §3.4: in cache mode, 4 cache slices per memory controller, each caching that controller's
addresses; associativity, line size and replacement are not published and are the preset's assumptions):
every line belongs to one slice of its controller (`memmodel.cache_slice`) and, within it, to one set of
`cache_ways` lines, indexed by the address bits above the slice selection; each set replaces its least recently
used line. The cache's capacity is what the SRAM's resident (scratchpad) tensors leave, shared by everything
that goes through it.

The cache is driven by the actual line addresses a run touches. Its state at the start of the run comes from
the history of earlier accesses (the program's `cache_history`, or a steady-state resident list): each set
keeps the most recently used of its lines. The run itself is then simulated access by access.
"""

from __future__ import annotations

import numpy as np

from mtiasim.engine.memmodel import cache_slice
from mtiasim.hw import Chip


def cache_sets(chip: Chip, capacity_lines: int) -> tuple[int, int]:
    """(sets per slice, ways) of a cache of `capacity_lines` lines spread over the slices."""
    s = chip.sram
    per_slice = max(0, int(capacity_lines)) // s.slices
    if per_slice <= 0:
        return 0, 0
    ways = min(s.cache_ways, per_slice)
    return per_slice // ways, ways


def set_index(chip: Chip, lines: np.ndarray, sets_per_slice: int) -> np.ndarray:
    """Global set id (slice x sets_per_slice + set in the slice) of each line id."""
    s, d = chip.sram, chip.dram
    line = s.cache_line_bytes
    addr = np.asarray(lines, dtype=np.int64) * line
    slc = cache_slice(chip, addr)
    local = addr // d.interleave_bytes // d.channels  # channel-local interleave granule
    per_granule = max(1, d.interleave_bytes // line)
    within = (
        (local // s.cache_slices_per_controller) * per_granule + (addr % d.interleave_bytes) // line
    ) % max(1, sets_per_slice)
    return slc * max(1, sets_per_slice) + within


class SetAssociativeCache:
    """`n_sets` sets of `ways` lines, LRU within each set. `set_of` maps line ids to set ids."""

    def __init__(self, chip: Chip, capacity_lines: int) -> None:
        self.chip = chip
        self.sets_per_slice, self.ways = cache_sets(chip, capacity_lines)
        self.n_sets = self.sets_per_slice * chip.sram.slices
        self.capacity = self.n_sets * self.ways
        self.table = np.full((self.n_sets, max(self.ways, 1)), -1, dtype=np.int64)  # LRU first, -1 empty

    def set_of(self, lines: np.ndarray) -> np.ndarray:
        return set_index(self.chip, lines, self.sets_per_slice)

    def warm(self, history: np.ndarray) -> None:
        """Set the state LRU reaches after `history` (line ids, oldest first): each set keeps its most recently
        used `ways` lines."""
        self.table[:] = -1
        history = np.asarray(history, dtype=np.int64)
        if self.capacity == 0 or history.size == 0:
            return
        rev = history[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        lines = uniq[np.argsort(-first_in_rev)]  # distinct lines, oldest last use first
        sets = self.set_of(lines)
        order = np.argsort(sets, kind="stable")
        sets, lines = sets[order], lines[order]
        start = np.searchsorted(sets, sets, side="left")
        end = np.searchsorted(sets, sets, side="right")
        keep = end - np.arange(sets.size) <= self.ways  # the last `ways` (most recent) of each set
        col = np.arange(sets.size) - np.maximum(start, end - self.ways)
        self.table[sets[keep], col[keep]] = lines[keep]

    @property
    def resident(self) -> np.ndarray:
        return self.table[self.table >= 0]

    def run(self, lines: np.ndarray) -> np.ndarray:
        """Simulate the accesses in order; return a boolean hit mask. The cache state advances."""
        lines = np.asarray(lines, dtype=np.int64)
        hits = np.zeros(lines.size, dtype=bool)
        if self.capacity == 0 or lines.size == 0:
            return hits
        ways = self.ways
        table = self.table
        rows: dict[int, list[int]] = {}
        for i, (line, s) in enumerate(zip(lines.tolist(), self.set_of(lines).tolist(), strict=True)):
            lst = rows.get(s)
            if lst is None:
                lst = [x for x in table[s].tolist() if x >= 0]
                rows[s] = lst
            if line in lst:
                hits[i] = True
                if lst[-1] != line:
                    lst.remove(line)
                    lst.append(line)
            else:
                lst.append(line)
                if len(lst) > ways:
                    del lst[0]
        for s, lst in rows.items():
            table[s, :] = -1
            table[s, : len(lst)] = lst
        return hits
