"""Sharding a model's embedding tables across the cards of a server with torchrec's own planner.

torchrec's `EmbeddingShardingPlanner` plans an `EmbeddingBagCollection` built on the meta device (no memory,
no process group) for a `Topology(world_size=cards, compute_device="mtia")`, choosing per table among
table-wise, row-wise and column-wise sharding. torchrec 1.8.0 accepts "mtia" as a compute device; its storage
model puts float tables on "HBM" (and, on MTIA, quantized tables on "DDR"). mtiasim gives torchrec its own
estimators instead, so the numbers are MTIA's:

- Storage: a shard's device bytes in the model's precision (int8: FBGEMM rows, D + 4 B per row, every column
  shard with its own scale and bias; fp32: 4 B per element), all of it in torchrec's "HBM", which on MTIA is
  the card's LPDDR5: the tables live in device DRAM, the on-chip SRAM caches them. `ddr_cap` (host memory for
  UVM tables) is 0: no table is left in the host. The dense weights are replicated on every card (data
  parallel) and reserved from each card's memory (`FixedAbsoluteStorageReservation`).
- Perf: a shard's TBE time comes from an `estimator(shard, batch) -> seconds` (`bytes_estimator`, the default,
  or `tbe_estimator`, mtiasim's TBE bench model); its comms are the pooled-embedding all-to-all over PCIe
  (every card sends the pooled rows of the other cards' samples, fp16) and the index distribution from the host.

A model that fits no plan raises `CapacityError` with one line: the table bytes, the cards x bytes per card,
and what did not fit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw.chip import Chip, load_chip

if TYPE_CHECKING:
    from mtiasim.workloads import Workload

SHARDING_KINDS = ("table_wise", "row_wise", "column_wise")
PRECISIONS = ("int8", "fp32")
INT8_ROW_OVERHEAD_BYTES = 4  # FBGEMM int8 rows: fp16 scale and bias
POOLED_OUTPUT_BYTES = 2  # TBE pools into fp16 (mtiasim.kernels.tbe)
INDEX_BYTES = 4  # int32 ids sent from the host
UNPLACED = -1
# torchrec's default proposers (grid search, two greedy, uniform) try ~1,000 proposals for 256 tables (minutes);
# one greedy proposer that stops after this many proposals in a row no better than its best, plus the uniform
# ones, plan hundreds of tables in seconds
GREEDY_PATIENCE = 2
# columns of a column-wise shard (torchrec's default, 128, would leave D=128 tables whole); assumed
COLUMN_SHARD_DIM = 32  # the card of a shard the planner is still estimating


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: name, rows, columns (embedding dimension) and mean lookups per sample."""

    name: str
    rows: int
    dim: int
    pooling: float


class ServerLike(Protocol):
    """What planning needs of a server (hw.server.Server gives these three)."""

    @property
    def cards(self) -> int: ...

    @property
    def card_memory_bytes(self) -> int: ...

    @property
    def card_sram_bytes(self) -> int: ...


@dataclass(frozen=True)
class CardSet:
    """A plain set of identical cards: count, device DRAM per card usable for tables, SRAM per card."""

    cards: int
    card_memory_bytes: int
    card_sram_bytes: int


@dataclass(frozen=True)
class TableShard:
    table: str  # table name as in the workload
    kind: str  # "table_wise" | "row_wise" | "column_wise"
    card: int  # card index 0..cards-1 (UNPLACED while the planner estimates it)
    rows: int  # rows of this shard
    dim: int  # columns of this shard
    bytes: int  # device bytes of this shard in the plan's precision
    lookups_per_sample: float  # mean lookups per sample that hit this shard
    row_offset: int = 0
    col_offset: int = 0


Estimator = Callable[[TableShard, int], float]


@dataclass(frozen=True)
class ShardingPlan:
    cards: int
    shards: tuple[TableShard, ...]
    dense: str  # "replicated"
    precision: str = "int8"
    batch: int = 0
    dense_bytes_per_card: int = 0
    tbe_seconds: tuple[float, ...] = ()  # per shard, from the estimator, in `shards` order
    link_bytes_per_s: float = 0.0
    card_memory_bytes: int = 0

    def shards_on(self, card: int) -> tuple[TableShard, ...]:
        return tuple(s for s in self.shards if s.card == card)

    def bytes_on(self, card: int) -> int:
        """Table bytes on `card` (the dense weights come on top: `dense_bytes_per_card`)."""
        return sum(s.bytes for s in self.shards_on(card))

    def tbe_seconds_on(self, card: int) -> float:
        return sum(t for s, t in zip(self.shards, self.tbe_seconds, strict=True) if s.card == card)

    def alltoall_bytes_from(self, card: int) -> int:
        """Bytes `card` sends per batch in the pooled-embedding all-to-all: each of its shards' pooled
        (fp16) rows for the samples whose dense part runs on another card (batch split evenly)."""
        other = self.batch * (self.cards - 1) // self.cards
        return sum(other * s.dim * POOLED_OUTPUT_BYTES for s in self.shards_on(card))

    def tables(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.shards:
            t = out.setdefault(s.table, {"kind": s.kind, "cards": []})
            t["cards"].append(s.card)
        return out

    def to_json(self) -> dict[str, Any]:
        cards = range(self.cards)
        return {
            "cards": self.cards,
            "dense": self.dense,
            "tables": self.tables(),
            "bytes_per_card": [self.bytes_on(c) for c in cards],
            "precision": self.precision,
            "batch": self.batch,
            "card_memory_bytes": self.card_memory_bytes,
            "dense_bytes_per_card": self.dense_bytes_per_card,
            "tbe_seconds_per_card": [self.tbe_seconds_on(c) for c in cards],
            "alltoall_bytes_per_card": [self.alltoall_bytes_from(c) for c in cards],
            "alltoall_seconds": max(self.alltoall_bytes_from(c) for c in cards) / self.link_bytes_per_s
            if self.link_bytes_per_s
            else None,
            "kinds": {k: sum(1 for t in self.tables().values() if t["kind"] == k) for k in SHARDING_KINDS},
            "shards": [
                {
                    "table": s.table,
                    "kind": s.kind,
                    "card": s.card,
                    "rows": s.rows,
                    "dim": s.dim,
                    "row_offset": s.row_offset,
                    "col_offset": s.col_offset,
                    "bytes": s.bytes,
                    "lookups_per_sample": s.lookups_per_sample,
                }
                for s in self.shards
            ],
        }

    def summary(self) -> str:
        """The plan as text: one line per card, then the tables sharded other than table-wise."""
        lines = [
            f"{self.cards} cards, dense {self.dense} ({self.dense_bytes_per_card:,} B per card), "
            f"tables {self.precision}, batch {self.batch}"
        ]
        for c in range(self.cards):
            n = len({s.table for s in self.shards_on(c)})
            lines.append(
                f"  card {c:2d}: {n:4d} tables/shards, {self.bytes_on(c) / 1e9:7.2f} GB of "
                f"{self.card_memory_bytes / 1e9:.2f} GB, TBE {self.tbe_seconds_on(c) * 1e6:9.1f} us, "
                f"all-to-all out {self.alltoall_bytes_from(c) / 1e6:7.2f} MB"
            )
        for name, t in self.tables().items():
            if t["kind"] != "table_wise":
                lines.append(f"  {name}: {t['kind']} on cards {','.join(map(str, t['cards']))}")
        return "\n".join(lines)


def shard_bytes(rows: int, dim: int, precision: str) -> int:
    if precision == "int8":
        return rows * (dim + INT8_ROW_OVERHEAD_BYTES)
    return rows * dim * 4


def dram_bytes_per_s(chip: Chip) -> float:
    return chip.dram.channels * chip.dram.channel_width_bits / 8 * chip.dram.transfer_rate_mts * 1e6


def bytes_estimator(chip: str | Chip = "mtia-v1") -> Estimator:
    """The default estimate: every lookup reads its whole row from LPDDR5 at the chip's peak DRAM bandwidth
    (no SRAM cache hits, no launch cost): batch x lookups x row bytes / bandwidth."""
    bw = dram_bytes_per_s(load_chip(chip) if isinstance(chip, str) else chip)

    def estimate(shard: TableShard, batch: int) -> float:
        return batch * shard.lookups_per_sample * (shard.bytes / max(shard.rows, 1)) / bw

    return estimate


def tbe_estimator(chip: str | Chip = "mtia-v1") -> Estimator:
    """mtiasim's TBE bench model (`mtiasim bench tbe`, int8 rows, SRAM in cache mode, uniform ids, analytic
    fidelity), cached per shape. To keep hundreds of tables fast, rows are rounded up to a power of two and the
    lookups per sample up to a power of two (the time then scaled down linearly to the shard's lookups); a
    table over 16x the SRAM starts cold (its uniform ids would hit the cache < 1/16 of the time) instead of in
    the steady state, whose warm-up dominates the bench's cost for big tables."""
    from mtiasim.bench.tbe import bench_tbe

    chip_ = load_chip(chip) if isinstance(chip, str) else chip
    cache: dict[tuple[int, int, int, int], float] = {}

    def estimate(shard: TableShard, batch: int) -> float:
        if shard.lookups_per_sample <= 0 or shard.rows == 0:
            return 0.0
        rows = 1 << max(0, math.ceil(math.log2(shard.rows)))
        pooling = 1 << max(0, math.ceil(math.log2(shard.lookups_per_sample)))
        key = (rows, shard.dim, pooling, batch)
        if key not in cache:
            cold = rows * (shard.dim + INT8_ROW_OVERHEAD_BYTES) > 16 * chip_.sram.bytes
            res = bench_tbe(
                batch,
                pooling,
                rows,
                shard.dim,
                chip=chip_,
                fidelity="analytic",
                warm="cold" if cold else "distribution",
            )
            cache[key] = float(res["seconds"])
        return cache[key] * shard.lookups_per_sample / pooling

    return estimate


ESTIMATORS: dict[str, Callable[[Chip], Estimator]] = {"bytes": bytes_estimator, "tbe": tbe_estimator}


def tables_of(workload: Workload) -> tuple[TableSpec, ...]:
    """A workload's tables at full size (published rows, not capped)."""
    rows = workload.full_table_rows or workload.table_rows
    return tuple(
        TableSpec(f"t{i}", int(r), int(d), float(p))
        for i, (r, d, p) in enumerate(zip(rows, workload.embedding_dims, workload.pooling, strict=True))
    )


def dense_bytes(workload: Workload, precision: str) -> int:
    return workload.dense_params * (1 if precision == "int8" else 4)


def _kind(sharding_type: str) -> str:
    return sharding_type if sharding_type in SHARDING_KINDS else "unsupported:" + sharding_type


def _lookups(spec: TableSpec, kind: str, rows: int) -> float:
    # uniform ids: a row-wise shard gets its share of the lookups, a table- or column-wise shard all of them
    return spec.pooling * rows / spec.rows if kind == "row_wise" else spec.pooling


@dataclass
class _Planning:
    specs: dict[str, TableSpec]
    precision: str
    estimator: Estimator
    batch: int
    cards: int
    link_bytes_per_s: float
    estimates: dict[tuple[str, str, int, int, int, int], float] = field(default_factory=dict)

    def shard_of(
        self, table: str, kind: str, size: Sequence[int], offset: Sequence[int], card: int
    ) -> TableShard:
        spec = self.specs[table]
        rows, dim = int(size[0]), int(size[1])
        return TableShard(
            table=table,
            kind=kind,
            card=card,
            rows=rows,
            dim=dim,
            bytes=shard_bytes(rows, dim, self.precision),
            lookups_per_sample=_lookups(spec, kind, rows),
            row_offset=int(offset[0]),
            col_offset=int(offset[1]),
        )

    def seconds(self, shard: TableShard) -> float:
        key = (shard.table, shard.kind, shard.rows, shard.dim, shard.row_offset, shard.col_offset)
        if key not in self.estimates:
            self.estimates[key] = float(self.estimator(shard, self.batch))
        return self.estimates[key]


def _estimators(planning: _Planning, topology: Any) -> list[Any]:
    from torchrec.distributed.planner.types import Perf, ShardEstimator, Storage

    class MtiaStorageEstimator(ShardEstimator):
        """Each shard's device bytes in the plan's precision, in torchrec's HBM (= the card's LPDDR5)."""

        def __init__(self, topology: Any, constraints: Any = None) -> None:
            self._topology = topology

        def estimate(self, sharding_options: Any, sharder_data_map: Any = None) -> None:
            for so in sharding_options:
                for sh in so.shards:
                    s = planning.shard_of(so.name, _kind(so.sharding_type), sh.size, sh.offset, UNPLACED)
                    sh.storage = Storage(hbm=s.bytes, ddr=0, ssd=0)

    class MtiaPerfEstimator(ShardEstimator):
        """Each shard's TBE seconds from mtiasim's estimator; comms: the pooled all-to-all and the ids over
        PCIe."""

        def __init__(self, topology: Any, constraints: Any = None) -> None:
            self._topology = topology

        def estimate(self, sharding_options: Any, sharder_data_map: Any = None) -> None:
            others = planning.batch * (planning.cards - 1) / planning.cards
            for so in sharding_options:
                for sh in so.shards:
                    s = planning.shard_of(so.name, _kind(so.sharding_type), sh.size, sh.offset, UNPLACED)
                    sh.perf = Perf(
                        fwd_compute=planning.seconds(s),
                        fwd_comms=others * s.dim * POOLED_OUTPUT_BYTES / planning.link_bytes_per_s,
                        bwd_compute=0.0,
                        bwd_comms=0.0,
                        input_dist_comms=planning.batch
                        * s.lookups_per_sample
                        * INDEX_BYTES
                        / planning.link_bytes_per_s,
                    )

    return [MtiaPerfEstimator(topology), MtiaStorageEstimator(topology)]


def _capacity_line(
    model: str, tables: Sequence[TableSpec], server: ServerLike, precision: str, dense: int, what: str
) -> str:
    need = sum(shard_bytes(t.rows, t.dim, precision) for t in tables)
    card = server.card_memory_bytes
    return (
        f"{model}: {len(tables)} {precision} tables need {need:,} B ({need / 1e9:.1f} GB) but {server.cards} cards x "
        f"{card:,} B ({card / 1e9:.1f} GB), less {dense:,} B of replicated dense weights per card, hold "
        f"{server.cards * (card - dense):,} B ({server.cards * (card - dense) / 1e9:.1f} GB): {what}"
    )


def plan_sharding(
    tables: Sequence[TableSpec],
    server: ServerLike,
    batch: int,
    precision: str,
    estimator: Estimator | None = None,
    *,
    dense_bytes_per_card: int = 0,
    chip: str | Chip = "mtia-v1",
    link_bytes_per_s: float | None = None,
    model: str = "model",
) -> ShardingPlan:
    """Plan `tables` over the server's cards with torchrec's `EmbeddingShardingPlanner` (see the module doc).

    `estimator(shard, batch) -> seconds` gives a shard's TBE time on one card (its `card` is UNPLACED while
    planning); None takes `bytes_estimator(chip)`. `dense_bytes_per_card` (the replicated dense weights) is
    reserved on every card. `link_bytes_per_s` is the card-to-card bandwidth of the all-to-all (default: the
    chip's host PCIe link). Raises CapacityError (one line) when no plan fits.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown table precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    if not tables:
        raise UsageError(f"{model}: no embedding tables to shard")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise UsageError(f"{model}: table names must be unique")
    for t in tables:
        if t.rows < 1 or t.dim < 1 or t.pooling < 0:
            raise UsageError(f"{model}: table {t.name} needs rows >= 1, dim >= 1, pooling >= 0, got {t}")
    if server.cards < 1 or server.card_memory_bytes < 1:
        raise UsageError(
            f"server needs at least one card with memory, got {server.cards} x {server.card_memory_bytes} B"
        )
    chip_ = load_chip(chip) if isinstance(chip, str) else chip
    link = float(link_bytes_per_s or chip_.host.bandwidth_gbps * 1e9)
    usable = server.card_memory_bytes - dense_bytes_per_card
    need = sum(shard_bytes(t.rows, t.dim, precision) for t in tables)
    if usable <= 0 or need > server.cards * usable:
        raise CapacityError(
            _capacity_line(
                model, tables, server, precision, dense_bytes_per_card, "the tables exceed the cards' memory"
            )
        )
    planning = _Planning(
        {t.name: t for t in tables}, precision, estimator or bytes_estimator(chip_), batch, server.cards, link
    )
    try:
        sharding = _run_planner(tables, server, planning, dram_bytes_per_s(chip_), dense_bytes_per_card)
    except _NoPlan:
        big = max(tables, key=lambda t: shard_bytes(t.rows, t.dim, precision))
        what = (
            f"torchrec's planner found no placement (largest table {big.name}: "
            f"{shard_bytes(big.rows, big.dim, precision):,} B; a card holds {usable:,} B)"
        )
        raise CapacityError(
            _capacity_line(model, tables, server, precision, dense_bytes_per_card, what)
        ) from None
    shards: list[TableShard] = []
    for spec in tables:
        ps = sharding[spec.name]
        # a table left in one piece (column-wise with one block, row-wise on one card) is table-wise
        kind = _kind(ps.sharding_type) if len(ps.sharding_spec.shards) > 1 else "table_wise"
        for sh in ps.sharding_spec.shards:
            shards.append(
                planning.shard_of(spec.name, kind, sh.shard_sizes, sh.shard_offsets, sh.placement.rank())
            )
    return ShardingPlan(
        cards=server.cards,
        shards=tuple(shards),
        dense="replicated",
        precision=precision,
        batch=batch,
        dense_bytes_per_card=dense_bytes_per_card,
        tbe_seconds=tuple(planning.seconds(s) for s in shards),
        link_bytes_per_s=link,
        card_memory_bytes=server.card_memory_bytes,
    )


class _NoPlan(Exception):
    pass


def _run_planner(
    tables: Sequence[TableSpec], server: ServerLike, planning: _Planning, dram_bw: float, dense: int
) -> dict[str, Any]:
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
    from torchrec.distributed.planner.proposers import GreedyProposer, UniformProposer
    from torchrec.distributed.planner.stats import NoopEmbeddingStats
    from torchrec.distributed.planner.storage_reservations import FixedAbsoluteStorageReservation
    from torchrec.distributed.planner.types import PlannerError

    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=t.name, embedding_dim=t.dim, num_embeddings=t.rows, feature_names=[f"{t.name}.f"]
            )
            for t in tables
        ],
        device=torch.device("meta"),
    )
    quiet = logging.getLogger("torchrec")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # torchrec warns about a Topology built without its factory
    try:
        topology = Topology(
            world_size=server.cards,
            compute_device="mtia",
            hbm_cap=server.card_memory_bytes,  # torchrec's HBM = the card's LPDDR5 (see the module doc)
            ddr_cap=0,
            hbm_mem_bw=dram_bw / 1000,  # torchrec's bandwidths are bytes per ms
            intra_host_bw=planning.link_bytes_per_s / 1000,
            inter_host_bw=planning.link_bytes_per_s / 1000,
        )
        constraints = {
            t.name: ParameterConstraints(
                sharding_types=list(SHARDING_KINDS),
                compute_kernels=["fused"],
                pooling_factors=[t.pooling],
                min_partition=COLUMN_SHARD_DIM,
            )
            for t in tables
        }
        enumerator = EmbeddingEnumerator(
            topology, planning.batch, constraints=constraints, estimator=_estimators(planning, topology)
        )
        planner = EmbeddingShardingPlanner(
            topology=topology,
            batch_size=planning.batch,
            enumerator=enumerator,
            proposer=[GreedyProposer(threshold=GREEDY_PATIENCE), UniformProposer()],
            storage_reservation=FixedAbsoluteStorageReservation(dense),
            constraints=constraints,
            stats=NoopEmbeddingStats(),
            debug=False,
        )
        try:
            plan = planner.plan(ebc, [EmbeddingBagCollectionSharder()])
        except PlannerError:
            raise _NoPlan() from None
    finally:
        quiet.setLevel(level)
    return dict(plan.plan[""])
