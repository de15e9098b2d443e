"""The programs of a model sharded over a server's cards, costed by the engine.

Per batch (bucket size B) a sharded model runs:
- on every card holding shards, the card's sparse program: an `nn.EmbeddingBag` (sum) per shard, its table the
  shard (a column-wise shard: the shard's columns, all rows; a row-wise shard: its rows, all columns), full
  size and virtual like the zoo's tables, looking up the whole batch: per sample floor(p) or ceil(p) uniform ids
  where p is the shard's lookups per sample (a row-wise shard gets its share of the table's lookups), with mean p;
  its output, [B, sum of its shards' dims], is the card's pooled embeddings;
- the pooled embeddings all-to-all (torchrec's): every card sends each other card the fp16 pooled values of
  that card's slice of the batch, over the PCIe switch tree, card to card;
- the dense part data parallel: every card runs the model's `dense_part()` (bottom MLP, interaction, top MLP)
  on its slice of the batch (B / cards samples, rounded up), with the dense features from the host and the
  pooled embeddings of every table; the dense weights are replicated on every card. (The dense part on one
  card per batch instead would funnel 11/12 of every batch's pooled embeddings down that one card's link:
  for meta-lc1 at B = 2048, 123 MB per batch through one x8 link, 8 ms, more than any card's lookups.)

Each program is compiled by mtiasim and run by the timing engine (one warm-up batch of other ids, then the
measured one) per bucket, on first use; cards whose shards have identical shapes share one program.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.serve.costs import BatchCost, BucketCosts, batch_cost
from mtiasim.serve.sharding import POOLED_OUTPUT_BYTES, ShardingPlan, TableShard


class ShardLookups(nn.Module):
    """One card's shards as embedding bags: forward(indices, offsets) -> [B, sum of dims] pooled."""

    def __init__(self, shards: Sequence[TableShard]) -> None:
        from mtiasim.workloads.tables import table_weight

        super().__init__()
        bags = []
        for s in shards:
            eb = nn.EmbeddingBag(s.rows, s.dim, mode="sum", device="meta")
            eb.weight = table_weight(s.rows, s.dim, materialize=False, generator=None)
            bags.append(eb)
        self.bags = nn.ModuleList(bags)

    def forward(self, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([eb(i, o) for eb, i, o in zip(self.bags, indices, offsets, strict=True)], dim=1)


def shard_bags(
    shards: Sequence[TableShard], batch: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per shard the (indices, offsets) of one batch: per sample floor(p) ids, one more with probability
    p - floor(p) (p: the shard's lookups per sample), uniform over the shard's rows; seeded."""
    from mtiasim.workloads.inputs import numpy_rng

    indices, offsets = [], []
    for k, s in enumerate(shards):
        rng = numpy_rng(seed, "shard-bags", k)
        p = s.lookups_per_sample
        lengths = math.floor(p) + (rng.random(batch) < p - math.floor(p)).astype(np.int64)
        ids = rng.integers(0, s.rows, int(lengths.sum()), dtype=np.int64)
        offsets.append(torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)))
        indices.append(torch.from_numpy(ids))
    return indices, offsets


def shape_key(shards: Sequence[TableShard]) -> tuple[tuple[int, int, float], ...]:
    """What a card's sparse program depends on: its shards' rows, dims and lookups, in order."""
    return tuple((s.rows, s.dim, s.lookups_per_sample) for s in shards)


@dataclass(frozen=True)
class ShardedCost:
    """One bucket of a sharded model: per card its sparse program (None: a card without shards), the dense
    program of one slice (`slice` samples, run by every card), the bytes of dense features the host sends to a
    card for its slice, and per card the pooled bytes its lookups give for the whole batch."""

    batch: int
    sparse: tuple[BatchCost | None, ...]
    dense: BatchCost
    dense_h2d_bytes: int
    pooled_bytes: tuple[int, ...]
    slice: int = 0

    @property
    def simulator_s(self) -> float:
        return self.dense.simulator_s + sum(c.simulator_s for c in self.sparse if c is not None)


class ShardedCosts(BucketCosts[ShardedCost]):
    """The engine's cost of each bucket of a sharded model, computed on first use and kept (the per-card sparse
    programs cached by shape, so cards with identical shards compile once)."""

    def __init__(
        self,
        workload: str,
        model: nn.Module,
        dense_features: int,
        plan: ShardingPlan,
        chip: Chip,
        *,
        precision: str,
        fidelity: str,
        seed: int,
        max_batch: int,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        dense_part = getattr(model, "dense_part", None)
        if dense_part is None:
            raise UsageError(
                f"{workload}: serving it sharded needs its dense layers as a program of their own, which "
                f"{type(model).__name__} does not give (the meta-* and dot-DLRM workloads do)"
            )
        super().__init__(
            workload, chip, precision=precision, fidelity=fidelity, seed=seed, max_batch=max_batch,
            progress=progress,
        )  # fmt: skip
        self.dense_module = dense_part()
        self.dense_features = dense_features
        self.plan = plan
        self.pooled_width = sum(s.dim for s in plan.shards)
        self._programs: dict[tuple[Any, int], BatchCost] = {}

    def _engine(self, module: nn.Module, args: tuple, warm: tuple, batch: int, name: str) -> BatchCost:
        from mtiasim.runtime.api import compile

        t0 = time.perf_counter()
        cm = compile(
            module, args, chip=self.chip, mode="timing", precision=self.precision, fidelity=self.fidelity,
            name=name,
        )  # fmt: skip
        cm(*warm)
        cm(*args)
        assert cm.report is not None
        return batch_cost(batch, cm.report.to_json(), self.idle_card_w, time.perf_counter() - t0)

    def _sparse(self, card: int, batch: int) -> BatchCost | None:
        shards = self.plan.shards_on(card)
        if not shards:
            return None
        key = (shape_key(shards), batch)
        if key not in self._programs:
            if self.progress is not None:
                self.progress(f"engine: card {card} lookups, batch {batch}")
            self._programs[key] = self._engine(
                ShardLookups(shards).eval(),
                shard_bags(shards, batch, self.seed),
                shard_bags(shards, batch, self.seed + 1),
                batch,
                f"{self.workload}-card{card}",
            )
        return self._programs[key]

    def _run(self, batch: int) -> ShardedCost:
        from mtiasim.workloads.inputs import dense_features, torch_generator

        sparse = tuple(self._sparse(c, batch) for c in range(self.plan.cards))
        part = -(-batch // self.plan.cards)
        if ("dense", part) not in self._programs:
            if self.progress is not None:
                self.progress(f"engine: dense part, slice {part} of batch {batch}")

            def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
                gen = torch_generator(seed, "pooled")
                pooled = torch.rand(part, self.pooled_width, generator=gen)
                return dense_features(part, self.dense_features, seed), pooled

            self._programs[("dense", part)] = self._engine(
                self.dense_module, inputs(self.seed), inputs(self.seed + 1), part, f"{self.workload}-dense"
            )
        dense = self._programs[("dense", part)]
        # both inputs cross PCIe in one format: the dense features' share of the program's inputs comes from
        # the host, the rest is the all-to-all's
        share = self.dense_features / (self.dense_features + self.pooled_width)
        return ShardedCost(
            batch=batch,
            sparse=sparse,
            dense=dense,
            dense_h2d_bytes=round(dense.h2d_bytes * share),
            pooled_bytes=tuple(
                batch * sum(s.dim for s in self.plan.shards_on(c)) * POOLED_OUTPUT_BYTES
                for c in range(self.plan.cards)
            ),
            slice=part,
        )
