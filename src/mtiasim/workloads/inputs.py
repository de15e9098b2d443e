"""Seeded inputs of the workloads: dense features, bags of embedding ids, and MLPerf query sizes.

Bags are laid out table-major, then by sample (FBGEMM TBE's `indices`/`offsets`, torchrec's KJT). Every
generator draws from its own named stream of the workload seed, so changing one input (a table's row count, a
batch size) leaves the others' streams alone, and no global RNG state is read or written.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from mtiasim.errors import UsageError
from mtiasim.indices import IndexDistribution, draw_indices, fixed_lengths, offsets_from_lengths

MULTI_HOT_RULES = ("uniform", "pareto")

# MLPerf DLRM-v2 query sizes: user-item pairs per loadgen sample, drawn uniformly from this quantile table
# (mlcommons/inference recommendation/dlrm_v2/pytorch/tools/dist_quantile.txt; mean 270).
MLPERF_QUERY_SIZE_QUANTILES = (100, 100, *([200] * 12), 300, 300, 400, 500, 600, 700)

_PARETO_A = 0.25  # MLPerf DLRM-v2 multi-hot "pareto": np.random.pareto(a=0.25).astype(np.int32) % rows
_INT32_MIN = -(2**31)


def stream_entropy(seed: int, stream: str, *more: int) -> list[int]:
    return [int(seed), zlib.crc32(stream.encode()), *(int(m) for m in more)]


def numpy_rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    """A numpy Generator for one named stream of `seed`."""
    return np.random.default_rng(np.random.SeedSequence(stream_entropy(seed, stream, *more)))


def torch_generator(seed: int, stream: str, *more: int) -> torch.Generator:
    """A CPU torch.Generator for one named stream of `seed`."""
    state = np.random.SeedSequence(stream_entropy(seed, stream, *more)).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def dense_features(batch: int, features: int, seed: int) -> torch.Tensor:
    """Dense inputs [batch, features], float32 uniform in [0, 1) (DLRM's random data)."""
    rng = numpy_rng(seed, "dense-input")
    return torch.from_numpy(rng.random((batch, features), dtype=np.float32))


@dataclass(frozen=True)
class Bags:
    """Bags of one batch for `tables` tables: `lengths` [tables * batch] and `values` (row ids), both int64,
    table-major then by sample."""

    values: np.ndarray
    lengths: np.ndarray
    tables: int
    batch: int

    def __post_init__(self) -> None:
        assert self.lengths.shape == (self.tables * self.batch,)
        assert int(self.lengths.sum()) == self.values.shape[0]

    def per_table(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, offsets) per table, offsets being the `batch` bag starts (nn.EmbeddingBag's layout)."""
        out = []
        starts = offsets_from_lengths(self.lengths)
        for t in range(self.tables):
            lo, hi = starts[t * self.batch], starts[(t + 1) * self.batch]
            lens = self.lengths[t * self.batch : (t + 1) * self.batch]
            offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
            out.append((torch.from_numpy(self.values[lo:hi].copy()), torch.from_numpy(offs)))
        return out

    def mean_pooling(self) -> tuple[float, ...]:
        """Mean lookups per sample, per table."""
        return tuple(float(x) for x in self.lengths.reshape(self.tables, self.batch).mean(axis=1))

    def table_values(self, t: int) -> np.ndarray:
        starts = offsets_from_lengths(self.lengths)
        return self.values[starts[t * self.batch] : starts[(t + 1) * self.batch]]


def one_hot_bags(rows: tuple[int, ...], batch: int, dist: IndexDistribution, seed: int) -> Bags:
    """One id per sample and table (Criteo's categorical features), ids from `dist`."""
    lengths = fixed_lengths(len(rows), batch, 1)
    values = draw_indices(list(rows), lengths, batch, dist, tuple(stream_entropy(seed, "one-hot")))
    return Bags(values.astype(np.int64), lengths, len(rows), batch)


def mlperf_multi_hot_bags(
    rows: tuple[int, ...], sizes: tuple[int, ...], batch: int, dist: IndexDistribution, rule: str, seed: int
) -> Bags:
    """MLPerf DLRM-v2's multi-hot bags (facebookresearch/dlrm torchrec_dlrm/multi_hot.py `Multihot`).

    Table t's bag for a sample has the fixed size `sizes[t]`: the sample's one-hot id (drawn from `dist`)
    followed by `sizes[t] - 1` extra ids that are a fixed function of (table, id), as in MLPerf's per-row
    lookup tables. Extra ids are uniform in [0, rows) (`rule="uniform"`) or `int32(pareto(a=0.25)) % rows`
    (`rule="pareto"`, where values past int32 become INT32_MIN as numpy's cast gives on x86-64). The lookup
    tables are virtual: each entry is a counter-based hash of (seed, table, id, slot), so a 40M-row table needs
    no memory and the same id always expands to the same bag.
    """
    if rule not in MULTI_HOT_RULES:
        raise UsageError(f"unknown multi-hot rule {rule!r} (known: {', '.join(MULTI_HOT_RULES)})")
    if len(sizes) != len(rows) or min(sizes) < 1:
        raise UsageError(f"multi-hot sizes must be one positive size per table, got {sizes}")
    base = one_hot_bags(rows, batch, dist, seed).values
    lengths = np.repeat(np.asarray(sizes, dtype=np.int64), batch)
    chunks = []
    for t, (n, k) in enumerate(zip(rows, sizes, strict=True)):
        ids = base[t * batch : (t + 1) * batch]
        if k == 1:
            chunks.append(ids)
            continue
        key = np.random.SeedSequence(stream_entropy(seed, "multi-hot", t)).generate_state(1, np.uint64)[0]
        extra = _multi_hot_extras(ids, n, k - 1, rule, key)
        chunks.append(np.concatenate([ids[:, None], extra], axis=1).reshape(-1))
    return Bags(np.concatenate(chunks).astype(np.int64), lengths, len(rows), batch)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _multi_hot_extras(ids: np.ndarray, rows: int, extra: int, rule: str, key: np.uint64) -> np.ndarray:
    slot = np.arange(extra, dtype=np.uint64)
    with np.errstate(over="ignore"):
        counter = (ids.astype(np.uint64)[:, None] * np.uint64(128) + slot[None, :]) ^ np.uint64(key)
    u = (_splitmix64(counter) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform in [0, 1)
    if rule == "uniform":
        return np.minimum((u * rows).astype(np.int64), rows - 1)
    lomax = (1.0 - u) ** (-1.0 / _PARETO_A) - 1.0  # numpy's pareto(a) is the Lomax distribution
    as_int32 = np.where(lomax < 2.0**31, np.floor(lomax), _INT32_MIN).astype(np.int64)
    return as_int32 % rows


def random_bench_bags(
    rows: tuple[int, ...], batch: int, max_pooling: int, dist: IndexDistribution, seed: int
) -> Bags:
    """DLRM `--data-generation=random` bags (dlrm_data_pytorch.py `generate_uniform_input_batch`).

    Each bag's size is round(max(1, r * min(rows, max_pooling))) with r uniform in [0, 1); its ids are
    round(r * (rows - 1)) (or drawn from `dist` when it is not uniform), then deduplicated and sorted
    (`np.unique`), so bags can come out shorter.
    """
    rng = numpy_rng(seed, "random-bags")
    values, lengths = [], []
    for t, n in enumerate(rows):
        sizes = np.round(np.maximum(1.0, rng.random(batch) * min(n, max_pooling))).astype(np.int64)
        total = int(sizes.sum())
        if dist.kind == "uniform":
            ids = np.round(rng.random(total) * (n - 1)).astype(np.int64)
        else:
            ids = dist.sample(n, total, rng, t).astype(np.int64)
        bag = np.repeat(np.arange(batch, dtype=np.int64), sizes)
        order = np.lexsort((ids, bag))
        ids, bag = ids[order], bag[order]
        keep = np.ones(total, dtype=bool)
        keep[1:] = (ids[1:] != ids[:-1]) | (bag[1:] != bag[:-1])
        values.append(ids[keep])
        lengths.append(np.bincount(bag[keep], minlength=batch).astype(np.int64))
    return Bags(np.concatenate(values), np.concatenate(lengths), len(rows), batch)


def mlperf_query_sizes(n: int, seed: int = 0) -> np.ndarray:
    """`n` MLPerf DLRM-v2 query sizes (user-item pairs per loadgen sample), int64, drawn as the reference harness
    does: a uniform pick from the 20-entry quantile table `MLPERF_QUERY_SIZE_QUANTILES` (100..700, mean 270)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise UsageError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    q = np.asarray(MLPERF_QUERY_SIZE_QUANTILES, dtype=np.int64)
    return q[numpy_rng(int(seed), "mlperf-query-sizes").integers(0, len(q), size=int(n))]
