"""Sharding across cards with torchrec's planner (serve/sharding.py): conservation of every table's rows and
columns, per-card capacity, the one-line capacity error, and the estimators."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtiasim import workloads
from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw.chip import load_chip
from mtiasim.serve import sharding
from mtiasim.serve.sharding import (
    UNPLACED,
    CardSet,
    TableShard,
    TableSpec,
    bytes_estimator,
    dense_bytes,
    plan_sharding,
    shard_bytes,
    tables_of,
    tbe_estimator,
)

GIB = 2**30
YOSEMITE_V3 = CardSet(cards=12, card_memory_bytes=32 * GIB, card_sram_bytes=128 * 2**20)  # ISCA23 Table II


def check_plan(plan: sharding.ShardingPlan, tables: list[TableSpec], server: CardSet, dense: int = 0) -> None:
    """Every table's [rows x dim] is tiled exactly once by its shards; every card holds at most its memory."""
    by_table: dict[str, list[TableShard]] = {}
    for s in plan.shards:
        assert 0 <= s.card < server.cards
        assert s.bytes == shard_bytes(s.rows, s.dim, plan.precision)
        by_table.setdefault(s.table, []).append(s)
    assert set(by_table) == {t.name for t in tables}
    for t in tables:
        shards = by_table[t.name]
        assert len({s.kind for s in shards}) == 1
        assert sum(s.rows * s.dim for s in shards) == t.rows * t.dim  # area conserved
        for s in shards:  # inside the table
            assert s.row_offset >= 0 and s.row_offset + s.rows <= t.rows
            assert s.col_offset >= 0 and s.col_offset + s.dim <= t.dim
        for i, a in enumerate(shards):  # pairwise disjoint, so area equality means an exact tiling
            for b in shards[i + 1 :]:
                rows_apart = a.row_offset + a.rows <= b.row_offset or b.row_offset + b.rows <= a.row_offset
                cols_apart = a.col_offset + a.dim <= b.col_offset or b.col_offset + b.dim <= a.col_offset
                assert rows_apart or cols_apart
        # lookups: a row-wise table's shards share its pooling by rows, other shards see all of it
        total = sum(s.lookups_per_sample for s in shards)
        expect = t.pooling if shards[0].kind == "row_wise" else t.pooling * len(shards)
        assert total == pytest.approx(expect)
    for c in range(server.cards):
        assert plan.bytes_on(c) + dense <= server.card_memory_bytes
    j = plan.to_json()
    assert j["bytes_per_card"] == [plan.bytes_on(c) for c in range(server.cards)]
    assert sorted(j["tables"]) == sorted(t.name for t in tables)


@pytest.mark.parametrize("name", ["dlrm-v2-mlperf", "meta-lc1", "meta-lc2", "meta-mc1", "meta-mc2"])
def test_zoo_plans_on_yosemite_v3(name):
    w = workloads.build(name, batch=64)
    tables = list(tables_of(w))
    dense = dense_bytes(w, "int8")
    plan = plan_sharding(tables, YOSEMITE_V3, 64, "int8", dense_bytes_per_card=dense, model=name)
    check_plan(plan, tables, YOSEMITE_V3, dense)
    assert plan.dense == "replicated" and plan.dense_bytes_per_card == dense


def test_meta_hc_fails_with_the_one_line_capacity_error():
    w = workloads.build("meta-hc", batch=64)
    tables = tables_of(w)
    dense = dense_bytes(w, "int8")
    need = sum(t.rows * (t.dim + 4) for t in tables)
    assert need > 12 * 32 * GIB
    with pytest.raises(CapacityError) as e:
        plan_sharding(tables, YOSEMITE_V3, 64, "int8", dense_bytes_per_card=dense, model="meta-hc")
    hold = 12 * (32 * GIB - dense)
    assert str(e.value) == (
        f"meta-hc: 856 int8 tables need {need:,} B ({need / 1e9:.1f} GB) but 12 cards x 34,359,738,368 B "
        f"(34.4 GB), less {dense:,} B of replicated dense weights per card, hold {hold:,} B ({hold / 1e9:.1f} GB): "
        "the tables exceed the cards' memory"
    )
    assert "\n" not in str(e.value)


def test_a_table_larger_than_a_card_is_split():
    server = CardSet(cards=4, card_memory_bytes=10**9, card_sram_bytes=2**20)
    tables = [TableSpec("big", 20_000_000, 128, 8.0), TableSpec("small", 1000, 64, 2.0)]  # big: 2.64 GB
    plan = plan_sharding(tables, server, 32, "int8")
    check_plan(plan, tables, server)
    big = [s for s in plan.shards if s.table == "big"]
    assert len({s.card for s in big}) >= 3 and big[0].kind in ("row_wise", "column_wise")


def test_tables_no_card_can_hold_whole_are_split_when_the_total_fits():
    server = CardSet(cards=2, card_memory_bytes=10**9, card_sram_bytes=2**20)
    tables = [TableSpec(f"t{i}", 4_500_000, 128, 1.0) for i in range(3)]  # 594 MB each: two fill a card
    plan = plan_sharding(tables, server, 8, "int8")
    check_plan(plan, tables, server)
    assert any(s.kind != "table_wise" for s in plan.shards)


def test_no_placement_names_the_largest_table():
    # 150 B of tables, 2 x 100 B free: the total fits, but a 1-row table of 146 columns (not a multiple of the
    # 32-column shards) can be split neither way
    server = CardSet(cards=2, card_memory_bytes=1000, card_sram_bytes=2**20)
    with pytest.raises(CapacityError) as e:
        plan_sharding([TableSpec("x", 1, 146, 1.0)], server, 8, "int8", dense_bytes_per_card=900, model="m")
    assert str(e.value) == (
        "m: 1 int8 tables need 150 B (0.0 GB) but 2 cards x 1,000 B (0.0 GB), less 900 B of replicated dense "
        "weights per card, hold 200 B (0.0 GB): torchrec's planner found no placement (largest table x: 150 B; "
        "a card holds 100 B)"
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(
        st.tuples(
            st.integers(1, 50_000_000), st.sampled_from([4, 16, 32, 64, 96, 128, 256]), st.floats(0, 40)
        ),
        min_size=1,
        max_size=12,
    ),
    cards=st.integers(1, 6),
    card_gb=st.integers(1, 16),
    precision=st.sampled_from(["int8", "fp32"]),
)
def test_random_table_sets_plan_or_fail_in_one_line(specs, cards, card_gb, precision):
    tables = [TableSpec(f"t{i}", r, d, p) for i, (r, d, p) in enumerate(specs)]
    server = CardSet(cards, card_gb * 10**9, 2**27)
    need = sum(shard_bytes(t.rows, t.dim, precision) for t in tables)
    try:
        plan = plan_sharding(tables, server, 16, precision, model="rand")
    except CapacityError as e:
        msg = str(e)
        assert msg.startswith(f"rand: {len(tables)} {precision} tables need {need:,} B") and "\n" not in msg
        if need > cards * card_gb * 10**9:
            assert msg.endswith("the tables exceed the cards' memory")
        return
    assert need <= cards * card_gb * 10**9
    check_plan(plan, tables, server)


def test_bad_arguments_are_usage_errors():
    t = [TableSpec("a", 10, 4, 1.0)]
    with pytest.raises(UsageError, match="unknown table precision 'fp8'"):
        plan_sharding(t, YOSEMITE_V3, 4, "fp8")
    with pytest.raises(UsageError, match="table names must be unique"):
        plan_sharding(t * 2, YOSEMITE_V3, 4, "int8")
    with pytest.raises(UsageError, match="batch must be a positive integer"):
        plan_sharding(t, YOSEMITE_V3, 0, "int8")


def test_bytes_estimator_is_the_dram_roofline():
    chip = load_chip("mtia-v1")
    bw = 16 * 16 / 8 * 5500e6  # 16 LPDDR5 channels x 16 bit x 5500 MT/s = 176 GB/s
    s = TableShard("t", "row_wise", UNPLACED, 1000, 64, shard_bytes(1000, 64, "int8"), 2.5)
    assert bytes_estimator(chip)(s, 128) == pytest.approx(128 * 2.5 * 68 / bw)


def test_tbe_estimator_runs_the_bench_model_once_per_bucket(monkeypatch):
    import mtiasim.bench.tbe as tbe

    calls = []
    real = tbe.bench_tbe

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(tbe, "bench_tbe", counting)
    est = tbe_estimator("mtia-v1")
    s4 = TableShard("t", "table_wise", UNPLACED, 1000, 64, shard_bytes(1000, 64, "int8"), 4.0)
    s3 = TableShard("t", "row_wise", UNPLACED, 900, 64, shard_bytes(900, 64, "int8"), 3.0)
    t4 = est(s4, 32)
    t3 = est(s3, 32)  # same bucket (1024 rows, pooling 4): scaled by 3/4, no second bench run
    assert len(calls) == 1 and calls[0][0][:4] == (32, 4, 1024, 64)
    assert t4 > 0 and t3 == pytest.approx(t4 * 3 / 4)
