"""The steady state of the SRAM cache under a stream of independent lookups (the state before a batch).

LRU under independent references keeps, in steady state, line i resident with probability
``1 - exp(-rate_i * T)``, where the characteristic time T fills the cache: ``sum_i (1 - exp(-rate_i T)) = C``
(Che's approximation; exact when everything fits). The resident set is drawn from those probabilities with a
seed, and ordered by a drawn time since last use (oldest first), which is what the engine's LRU starts from.
Tables too large to enumerate use the equivalent direct route: draw accesses until C distinct lines are seen.
"""

from __future__ import annotations

import numpy as np

from mtiasim.indices import IndexDistribution, _scatter_rank
from mtiasim.isa import TensorDecl

ENUMERABLE_LINES = 24_000_000


def _row_probabilities(rows: int, dist: IndexDistribution, table_seed: int) -> np.ndarray:
    if dist.kind == "uniform":
        return np.full(rows, 1.0 / rows)
    w = np.arange(1, rows + 1, dtype=np.float64) ** (-dist.alpha)
    w /= w.sum()
    p = np.empty(rows)
    p[_scatter_rank(np.arange(rows, dtype=np.int64), rows, table_seed)] = w
    return p


def steady_state_lines(
    table: TensorDecl,
    table_rows: list[int],
    dist: IndexDistribution,
    capacity_lines: int,
    line_bytes: int,
    seed: tuple[int, ...],
) -> np.ndarray:
    """Resident line ids (address // line_bytes) of the cache in steady state, oldest first.

    The unit of residency is the row: its lines are used together, so they are resident together.
    """
    rng = np.random.default_rng(seed)
    if capacity_lines <= 0:
        return np.zeros(0, dtype=np.int64)
    pitch = table.pitch
    row_bytes = table.cols * table.dtype.itemsize
    n_rows = sum(table_rows)
    span = row_bytes // line_bytes + 2
    if n_rows * span > ENUMERABLE_LINES:
        return _by_sampling(table, table_rows, dist, capacity_lines, line_bytes, rng)
    rate = np.concatenate(
        [_row_probabilities(rows, dist, t) / len(table_rows) for t, rows in enumerate(table_rows)]
    )
    r = np.arange(n_rows, dtype=np.int64)
    l0 = (table.address + r * pitch) // line_bytes
    l1 = (table.address + r * pitch + row_bytes - 1) // line_bytes
    # lines a row adds to the cache: neighbours share their boundary lines, so on average row_bytes / line
    size = (
        np.full(n_rows, max(row_bytes, 1) / line_bytes)
        if pitch == row_bytes
        else (l1 - l0 + 1).astype(np.float64)
    )
    touched = rate > 0
    if (size * touched).sum() <= capacity_lines:
        resident = np.flatnonzero(touched)
        age = rng.exponential(1.0 / rate[resident])
    else:

        def filled(t: float) -> float:
            return float((size * (1 - np.exp(-rate * t))).sum())

        lo, hi = 0.0, 1.0
        while filled(hi) < capacity_lines:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if filled(mid) < capacity_lines else (lo, mid)
        t_c = hi
        resident = np.flatnonzero(rng.random(n_rows) < 1 - np.exp(-rate * t_c))
        lam = rate[resident]
        # time since last use, given it is below T: an exponential truncated at T (inverse CDF)
        u = rng.random(resident.size)
        age = -np.log(1 - u * (1 - np.exp(-lam * t_c))) / lam
    # lines of the resident rows, each as recent as the most recent row that uses it
    counts = (l1[resident] - l0[resident] + 1).astype(np.int64)
    lines = np.repeat(l0[resident], counts) + (
        np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    line_age = np.repeat(age, counts)
    order = np.lexsort((-line_age, lines))  # per line, youngest last
    lines, line_age = lines[order], line_age[order]
    last = np.ones(lines.size, dtype=bool)
    last[:-1] = lines[1:] != lines[:-1]
    lines, line_age = lines[last], line_age[last]
    keep = np.argsort(-line_age, kind="stable")  # oldest first
    out = lines[keep]
    return out[-capacity_lines:].astype(np.int64)


def _by_sampling(table, table_rows, dist, capacity_lines, line_bytes, rng) -> np.ndarray:
    from mtiasim.engine.work import _row_lines

    starts = np.concatenate([[0], np.cumsum(table_rows)[:-1]]).astype(np.int64)
    seen: list[np.ndarray] = []
    total = 0
    draws = 0
    while total < capacity_lines and draws < 40:
        n = max(capacity_lines, 1 << 16)
        t = rng.integers(0, len(table_rows), size=n)
        rows = np.empty(n, dtype=np.int64)
        for i, count in enumerate(table_rows):
            sel = t == i
            rows[sel] = dist.sample(count, int(sel.sum()), rng, i) + starts[i]
        lines, _ = _row_lines(table, rows, line_bytes)
        seen.append(lines)
        total = np.unique(np.concatenate(seen)).size
        draws += 1
    history = np.concatenate(seen)
    rev = history[::-1]
    uniq, idx = np.unique(rev, return_index=True)
    keep = uniq[np.argsort(idx)[:capacity_lines]]
    return keep[::-1].copy()
