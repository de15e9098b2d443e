"""The on-chip SRAM used as a memory-side cache of LPDDR5 (cache mode), with LRU replacement.

The cache is driven by the actual line addresses a run touches. Its state at the start of the run comes from
the history of earlier accesses (the program's `cache_history`): LRU keeps the most recently used distinct
lines, so the warm state is the last `capacity` distinct lines of that history. The run itself is then
simulated access by access with exact LRU.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class LruCache:
    """A fully associative LRU cache of `capacity_lines` lines (addresses partitioned by controller in
    hardware; with fine interleaving each partition sees the same mix, so one LRU models them)."""

    def __init__(self, capacity_lines: int) -> None:
        self.capacity = max(0, int(capacity_lines))
        self.warm_lines = np.zeros(0, dtype=np.int64)  # resident lines, oldest first

    def warm(self, history: np.ndarray) -> None:
        """Set the state LRU reaches after `history` (line ids, oldest first)."""
        if self.capacity == 0 or history.size == 0:
            self.warm_lines = np.zeros(0, dtype=np.int64)
            return
        rev = history[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        recency = np.argsort(first_in_rev)  # most recent first
        keep = uniq[recency[: self.capacity]]
        self.warm_lines = keep[::-1].copy()  # oldest first

    def run(self, lines: np.ndarray) -> np.ndarray:
        """Simulate the accesses in order; return a boolean hit mask. The cache state advances."""
        lines = np.asarray(lines, dtype=np.int64)
        if self.capacity == 0:
            return np.zeros(lines.size, dtype=bool)
        distinct_new = np.unique(lines).size
        if distinct_new > self.capacity // 2:
            return self._run_general(lines)
        return self._run_small_batch(lines)

    def _run_small_batch(self, lines: np.ndarray) -> np.ndarray:
        # Fewer new lines than the capacity: evictions only ever take warm lines, oldest untouched first.
        warm = self.warm_lines
        if warm.size:
            order = np.argsort(warm, kind="stable")
            sorted_warm = warm[order]
            pos = np.clip(np.searchsorted(sorted_warm, lines), 0, warm.size - 1)
            rank = np.where(sorted_warm[pos] == lines, order[pos], -1)
        else:
            rank = np.full(lines.size, -1, dtype=np.int64)
        free = self.capacity - warm.size
        gone = np.zeros(warm.size, dtype=bool)  # evicted or moved to the MRU side
        evicted = np.zeros(warm.size, dtype=bool)
        ptr = 0
        touched: set[int] = set()
        hits = np.zeros(lines.size, dtype=bool)
        rank_list = rank.tolist()
        line_list = lines.tolist()
        for i, line in enumerate(line_list):
            if line in touched:
                hits[i] = True
                continue
            rk = rank_list[i]
            if rk >= 0 and not evicted[rk]:
                hits[i] = True
                gone[rk] = True
                touched.add(line)
                continue
            touched.add(line)
            if free > 0:
                free -= 1
                continue
            while ptr < gone.size and gone[ptr]:
                ptr += 1
            if ptr < gone.size:
                gone[ptr] = True
                evicted[ptr] = True
                ptr += 1
        keep = warm[~gone]
        new_order = [x for x in dict.fromkeys(line_list[::-1])][::-1]
        self.warm_lines = np.concatenate([keep, np.asarray(new_order, dtype=np.int64)])[-self.capacity :]
        return hits

    def _run_general(self, lines: np.ndarray) -> np.ndarray:
        od: OrderedDict[int, None] = OrderedDict((int(x), None) for x in self.warm_lines)
        hits = np.zeros(lines.size, dtype=bool)
        for i, line in enumerate(lines.tolist()):
            if line in od:
                od.move_to_end(line)
                hits[i] = True
            else:
                od[line] = None
                if len(od) > self.capacity:
                    od.popitem(last=False)
        self.warm_lines = np.fromiter(od.keys(), dtype=np.int64, count=len(od))
        return hits
