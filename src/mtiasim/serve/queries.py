"""The queries of an MLPerf Inference recommendation run: sizes and arrival times, seeded.

A DLRM-v2 query ("sample" in MLPerf's words) is one user's request to score 100-700 user-item pairs. Its size is
drawn uniformly from the 20 entries of the reference harness's quantile table
(mlcommons/inference recommendation/dlrm_v2/pytorch/tools/dist_quantile.txt, as reproduced in
reference/workloads.md: 100, 100, 200 x 12, 300, 300, 400, 500, 600, 700; mean 270). In the `server` scenario
queries arrive as a Poisson process; in `offline` all of them are there at time 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_SIZE_QUANTILES: tuple[int, ...] = (100, 100, *([200] * 12), 300, 300, 400, 500, 600, 700)


@dataclass(frozen=True)
class Queries:
    """`sizes[i]` user-item pairs of query i; `unit_gaps` its exponential(1) gap after the query before it, so
    that arrivals at rate r are `cumsum(unit_gaps) / r` (the same draws at every rate: the p99 search compares
    rates on common random numbers)."""

    sizes: np.ndarray
    unit_gaps: np.ndarray

    @property
    def count(self) -> int:
        return int(self.sizes.size)

    @property
    def samples(self) -> int:
        return int(self.sizes.sum())

    def arrivals_s(self, queries_per_s: float | None) -> np.ndarray:
        """Arrival times: Poisson at `queries_per_s`, or all at 0 (offline) when it is None."""
        if queries_per_s is None:
            return np.zeros(self.count)
        return np.cumsum(self.unit_gaps) / queries_per_s


def draw_queries(count: int, seed: int) -> Queries:
    rng = np.random.default_rng([seed, 0x5E7E])
    sizes = np.asarray(QUERY_SIZE_QUANTILES, dtype=np.int64)[
        rng.integers(0, len(QUERY_SIZE_QUANTILES), count)
    ]
    return Queries(sizes, rng.exponential(1.0, count))
