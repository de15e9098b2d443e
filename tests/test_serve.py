"""Serving: max-min link sharing, MLPerf query sizes, the event simulation's conservation laws, the serve
command's errors and one small end-to-end run on the engine."""

import json

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mtiasim.cli import main
from mtiasim.hw import load_server
from mtiasim.serve.costs import BatchCost, buckets
from mtiasim.serve.queries import QUERY_SIZE_QUANTILES, draw_queries
from mtiasim.serve.run import serve_workload
from mtiasim.serve.system import ServingSystem, maxmin_rates

# ------------------------------------------------------------------------------------------ max-min sharing


def test_maxmin_closed_forms():
    assert maxmin_rates([(0,), (0,)], [10.0]) == [5.0, 5.0]
    # B is held to 2 by its own link; A takes what B leaves of the shared one
    assert maxmin_rates([(0,), (0, 1)], [10.0, 2.0]) == [8.0, 2.0]
    assert maxmin_rates([], [1.0]) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=4, unique=True), min_size=1, max_size=8),
    st.lists(st.floats(1.0, 100.0), min_size=5, max_size=5),
)
def test_maxmin_is_feasible_and_every_flow_has_a_bottleneck(paths, caps):
    paths = [tuple(p) for p in paths]
    rates = maxmin_rates(paths, caps)
    load = [0.0] * 5
    for p, r in zip(paths, rates, strict=True):
        for link in p:
            load[link] += r
    assert all(load[i] <= caps[i] * (1 + 1e-9) for i in range(5))
    # max-min: each flow crosses a full link on which no flow gets more than it
    for p, r in zip(paths, rates, strict=True):
        assert any(
            load[link] >= caps[link] * (1 - 1e-9)
            and all(r2 <= r * (1 + 1e-9) for p2, r2 in zip(paths, rates, strict=True) if link in p2)
            for link in p
        )


# ---------------------------------------------------------------------------------------------- queries


def test_query_sizes_follow_the_mlperf_quantiles():
    q = draw_queries(40_000, seed=3)
    assert set(q.sizes.tolist()) <= set(QUERY_SIZE_QUANTILES)
    assert np.mean(QUERY_SIZE_QUANTILES) == 270
    assert abs(q.sizes.mean() - 270) < 3  # 4 sigma of the mean of 40k draws (sd 140)
    again = draw_queries(40_000, seed=3)
    assert np.array_equal(q.sizes, again.sizes) and np.array_equal(q.unit_gaps, again.unit_gaps)
    assert not np.array_equal(q.sizes, draw_queries(40_000, seed=4).sizes)
    assert np.all(np.diff(q.arrivals_s(1000.0)) >= 0) and not q.arrivals_s(None).any()


# ------------------------------------------------------------------------------------ the event simulation


class LinearCosts:
    """A stand-in for the engine: every cost a line in the bucket size."""

    def __init__(self, server, max_batch=2048):
        self.chip = server.chip()
        self.buckets = buckets(max_batch)
        self.idle_card_w = 10.0

    @property
    def max_batch(self):
        return self.buckets[-1]

    def bucket_for(self, n):
        return next(b for b in self.buckets if n <= b)

    def cost(self, b):
        return BatchCost(b, 5e-5 + b * 2e-7, 2e-4 + b * 1.5e-6, b * 1000, b * 4, 1e-5 * b, 0.0)


def _simulate(count, seed, rate_fraction, window_s, server="yosemite-v3"):
    s = load_server(server)
    costs = LinearCosts(s)
    system = ServingSystem(s, costs, window_s=window_s)
    q = draw_queries(count, seed)
    rate = None
    if rate_fraction is not None:
        rate = rate_fraction * count / system.run(q, None).wall_s
    return s, costs, system, q, system.run(q, rate)


# no shrinking: each example is two simulations, and shrinking a failure would take minutes
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(
    st.integers(100, 1500),
    st.integers(0, 2**16),
    st.sampled_from([None, 0.3, 0.9, 1.5]),
    st.sampled_from([0.0, 1e-3, 5e-3]),
    st.sampled_from(["yosemite-v3", "grand-teton-2i"]),
)
def test_conservation(count, seed, rate_fraction, window_s, server):
    s, costs, system, q, run = _simulate(count, seed, rate_fraction, window_s, server)
    # every query is served once, in exactly one batch, whole
    seen = np.concatenate([b.queries for b in run.batches])
    assert np.array_equal(np.sort(seen), np.arange(q.count))
    assert all(run.batch_of[i] == k for k, b in enumerate(run.batches) for i in b.queries)
    assert all(b.samples == q.sizes[b.queries].sum() <= b.bucket <= costs.max_batch for b in run.batches)
    assert sum(c.samples for c in run.cards) == q.samples
    assert sum(c.batches for c in run.cards) == len(run.batches)
    # a card runs one batch at a time: busy time within the wall time
    for c in run.cards:
        assert c.busy_s <= run.wall_s * (1 + 1e-9)
    assert run.host_busy_s <= s.host.cores * run.wall_s * (1 + 1e-9)
    # every byte crosses each link on its path once
    names = run.link_names
    for card in range(s.cards):
        sent = sum(costs.cost(b.bucket).h2d_bytes for b in run.batches if b.card == card)
        assert run.link_bytes[names.index(f"card_down[{card}]")] == pytest.approx(sent, rel=1e-9)
    total = sum(costs.cost(b.bucket).h2d_bytes + costs.cost(b.bucket).d2h_bytes for b in run.batches)
    assert run.link_bytes[names.index("host_memory")] == pytest.approx(total, rel=1e-9)
    # no query is answered before its own work could be done
    pcie = 2 * costs.chip.host.latency_ns * 1e-9
    pre, post = s.host.preprocess_us_per_query * 1e-6, s.host.postprocess_us_per_query * 1e-6
    floor = np.array([pre + post + pcie + costs.cost(run.batches[k].bucket).device_s for k in run.batch_of])
    assert np.all(run.latency_s >= floor * (1 - 1e-9))


def test_latency_grows_with_load():
    lat = [np.percentile(_simulate(3000, 1, f, 2e-3)[4].latency_s, 99) for f in (0.3, 1.5)]
    assert lat[1] > 2 * lat[0]


def test_cards_share_the_load():
    run = _simulate(3000, 2, 0.9, 2e-3)[4]
    util = [c.busy_s / run.wall_s for c in run.cards]
    assert min(util) > 0.5 * max(util)


# ------------------------------------------------------------------------------------------ the command


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "batch"}, "--scenario batch: unknown scenario (known: offline, server)"),
        ({"p99_ms": 0.0}, "--p99-ms 0.0: must be a number > 0 (milliseconds)"),
        ({"p99_ms": -5.0}, "--p99-ms -5.0: must be a number > 0 (milliseconds)"),
        (
            {"scenario": "offline", "p99_ms": 10.0},
            "--p99-ms applies to --scenario server (offline has no latency bound)",
        ),
        ({"queries": 10}, "--queries: must be from 100 to 1,000,000, got 10"),
        ({"max_batch": 1000}, "--max-batch 1000: must be a power of two >= 256"),
        (
            {"max_batch": 512},
            "--max-batch 512: below the largest query (700 samples), which must fit one batch",
        ),
        (
            {"server": "zion"},
            "unknown server 'zion' (known: grand-teton-2i, yosemite-v3; or give a .toml file)",
        ),
    ],
)
def test_serve_bad_input(kwargs, message):
    with pytest.raises(Exception) as err:
        serve_workload("dlrm-kaggle", **kwargs)
    assert str(err.value) == message


def test_serve_unknown_workload_cli(capsys):
    code = main(["serve", "dlrm-v9", "--json"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("mtiasim: error: unknown workload 'dlrm-v9' (known: dlrm-kaggle,")


def test_serve_end_to_end_on_the_engine(capsys, tmp_path):
    """dlrm-kaggle on yosemite-v3: the engine's batch costs drive the simulation."""
    code = main(
        ["serve", "dlrm-kaggle", "--queries", "400", "--max-batch", "1024", "--p99-ms", "20", "--json",
         "--report", str(tmp_path / "rep")]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    res = json.loads(out)
    assert res["scenario"] == "server" and res["server"] == "yosemite-v3" and res["cards"] == 12
    assert res["p99_ms"] <= res["latency_bound_ms"] == 20
    assert 0 < res["queries_per_s"] <= res["offline_queries_per_s"]
    assert res["samples_per_s"] == pytest.approx(
        res["queries_per_s"] * res["samples"] / res["queries"], rel=1e-6
    )
    assert res["samples_per_s_per_w"] == pytest.approx(
        res["samples_per_s"] / res["platform_power_w"], rel=1e-3
    )
    assert 360 < res["platform_power_w"] <= 780
    costs = res["batch_costs"]
    assert [c["batch"] for c in costs] == [256, 512, 1024][-len(costs) :]
    assert all(c["device_us"] > 0 for c in costs)
    assert len(res["sharding"]["tables"]) == 26
    assert all(
        t == {"kind": "replicated", "cards": list(range(12))} for t in res["sharding"]["tables"].values()
    )
    assert len(res["per_card"]) == 12 and all(c["busy_s"] <= res["wall_s"] for c in res["per_card"])
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2


def test_replication_needs_the_model_in_one_card():
    from mtiasim.compiler import Precision
    from mtiasim.errors import CapacityError
    from mtiasim.serve.placement import Table, replicate

    s = load_server("yosemite-v3")
    int8 = Precision.parse("int8")
    fits = [Table("a", 2**20, 124, 1.0)]  # 2^20 rows x (124 + 4) B = 128 MiB
    plan = replicate("m", fits, 1000, s, int8)
    assert plan.bytes_on(5) == 2**27 + 1000
    assert plan.to_json()["tables"] == {"a": {"kind": "replicated", "cards": list(range(12))}}
    big = [Table("a", 2**28, 124, 1.0)]  # 32 GiB of int8 rows, plus the dense layers
    with pytest.raises(CapacityError) as err:
        replicate("m", big, 2**20, s, int8)
    assert str(err.value) == (
        "m (int8): tables 32.00 GiB + dense 0.00 GiB do not fit one card of yosemite-v3 (32.00 GiB): shard the "
        "tables over the cards instead"
    )


def test_set_changes_every_cards_chip():
    """`serve --set` (and a study's trial values) put a what-if chip on every card: the batch costs come from
    that chip, and the JSON records the overrides and the chip's hash."""
    kw = {"scenario": "offline", "queries": 200, "max_batch": 1024, "fidelity": "roofline"}
    base = serve_workload("dlrm-kaggle", **kw)
    fast = serve_workload("dlrm-kaggle", sets=("clock.frequency_ghz=1.1",), **kw)
    wide = serve_workload("dlrm-kaggle", values={"clock.frequency_ghz": 1.1}, **kw)
    assert base["overrides"] == {} and fast["overrides"] == {"clock.frequency_ghz": 1.1}
    assert fast["chip_hash"] == wide["chip_hash"] != base["chip_hash"]
    assert [c["device_us"] for c in fast["batch_costs"]] == [c["device_us"] for c in wide["batch_costs"]]
    pairs = list(zip(base["batch_costs"], fast["batch_costs"], strict=True))
    assert pairs and all(f["device_us"] < b["device_us"] for b, f in pairs)
    assert fast["area_mm2"] == base["area_mm2"] > 0


def test_set_errors_name_the_key_before_any_work():
    with pytest.raises(Exception) as err:
        serve_workload("dlrm-kaggle", sets=("sram.bytes=0",))
    assert str(err.value).startswith(
        "--set sram.bytes=0: Input should be greater than 0 (valid: an integer > 0"
    )


def test_a_what_if_card_chip_sets_the_card_memory():
    server = load_server("yosemite-v3")
    chip = server.chip().with_values({"dram.bytes": "16GiB"})
    what_if = server.with_card_chip(chip)
    assert what_if.chip() is chip and what_if.card_memory_bytes == 16 * 2**30
    assert server.card_memory_bytes == server.chip().dram.bytes != what_if.card_memory_bytes
