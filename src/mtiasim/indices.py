"""Seeded generators of embedding index streams (uniform, Zipf with heavy hitters) and bag lengths.

A stream is drawn per table; `rows` are the table's row count. Every generator takes an explicit seed, so the
same arguments always give the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtiasim.errors import UsageError

DISTRIBUTIONS = ("uniform", "zipf")


@dataclass(frozen=True)
class IndexDistribution:
    """How a table's rows are picked: `uniform`, or `zipf` with exponent `alpha` over a random permutation of
    the rows (so hot rows are scattered in memory, as in production tables)."""

    kind: str = "uniform"
    alpha: float = 1.05

    def __post_init__(self) -> None:
        if self.kind not in DISTRIBUTIONS:
            raise UsageError(f"unknown index distribution {self.kind!r} (known: {', '.join(DISTRIBUTIONS)})")
        if self.kind == "zipf" and not (self.alpha > 0 and self.alpha < float("inf")):
            raise UsageError(f"--alpha: the zipf exponent must be a finite number > 0, got {self.alpha}")

    def sample(self, rows: int, count: int, rng: np.random.Generator, table_seed: int) -> np.ndarray:
        if self.kind == "uniform":
            return rng.integers(0, rows, size=count, dtype=np.int64)
        # inverse-CDF sampling of a truncated Zipf over ranks 1..rows, then a fixed scatter of ranks to rows
        ranks = _zipf_ranks(rows, count, self.alpha, rng)
        return _scatter_rank(ranks, rows, table_seed)


def _zipf_ranks(rows: int, count: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    if rows <= 1_000_000:
        w = np.arange(1, rows + 1, dtype=np.float64) ** (-alpha)
        cdf = np.cumsum(w)
        cdf /= cdf[-1]
        return np.searchsorted(cdf, rng.random(count), side="right").clip(0, rows - 1)
    # large tables: continuous approximation of the truncated power law
    u = rng.random(count)
    if abs(alpha - 1.0) < 1e-9:
        r = np.exp(u * np.log(rows + 1.0)) - 1.0
    else:
        a = 1.0 - alpha
        r = ((u * ((rows + 1.0) ** a - 1.0)) + 1.0) ** (1.0 / a) - 1.0
    return np.clip(r.astype(np.int64), 0, rows - 1)


def _scatter_rank(ranks: np.ndarray, rows: int, table_seed: int) -> np.ndarray:
    # an affine bijection of [0, rows): hot ranks land on scattered rows without materialising a permutation
    mult = _coprime(rows, 2654435761 + 2 * table_seed)
    offset = (table_seed * 40503) % rows
    return (ranks * mult + offset) % rows


def _coprime(n: int, start: int) -> int:
    m = start % n if n > 1 else 1
    m = max(m, 1)
    while np.gcd(m, n) != 1:
        m = (m + 1) % n or 1
    return m


def fixed_lengths(tables: int, batch: int, pooling: int) -> np.ndarray:
    """Bag lengths [tables * batch] (table-major), all equal to `pooling`."""
    return np.full(tables * batch, pooling, dtype=np.int64)


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def draw_indices(
    rows_per_table: list[int],
    lengths: np.ndarray,
    batch: int,
    dist: IndexDistribution,
    seed: int | tuple[int, ...],
) -> np.ndarray:
    """Indices (per-table row numbers) for bags laid out table-major, as FBGEMM's TBE and torchrec's KJT."""
    rng = np.random.default_rng(seed)
    out = []
    for t, rows in enumerate(rows_per_table):
        n = int(lengths[t * batch : (t + 1) * batch].sum())
        out.append(dist.sample(rows, n, rng, t))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
