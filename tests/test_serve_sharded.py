"""Serving a model sharded over a server's cards: the card-to-card paths, the event simulation's conservation
laws on the sharded path, one small model sharded and served end to end on the engine, and the one-line
capacity error."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mtiasim.cli import main
from mtiasim.errors import CapacityError
from mtiasim.hw import load_server
from mtiasim.serve.costs import BatchCost, buckets
from mtiasim.serve.queries import draw_queries
from mtiasim.serve.run import serve_workload
from mtiasim.serve.sharded import ShardedCost, ShardedCosts, shard_bags
from mtiasim.serve.sharding import ShardingPlan, TableShard
from mtiasim.serve.system import ServingSystem


def server_file(tmp_path: Path, *, cards: int = 4, switches: int = 2, card_bytes: int = 300_000_000) -> str:
    """A small server: `cards` mtia-v1 cards of `card_bytes` each, Yosemite V3's links and host."""
    v = lambda x: f"{{value = {x}, provenance = 'user'}}"  # noqa: E731
    text = f"""name = "small"
description = "test server"
[card]
chip = {v('"mtia-v1"')}
dram_bytes = {v(card_bytes)}
power_w = {v(35.0)}
[topology]
cards = {v(cards)}
sockets = {v(1)}
switches = {v(switches)}
host_link_gbps = {v(23.63)}
switch_uplink_gbps = {v(31.5)}
peer_gbps = {v(12.8)}
[host]
cores = {v(8)}
memory_bytes = {v(10**11)}
memory_gbps = {v(76.0)}
preprocess_us_per_query = {v(50.0)}
postprocess_us_per_query = {v(10.0)}
network_gbps = {v(100.0)}
[power]
server_power_w = {v(35.0 * cards + 100)}
"""
    path = tmp_path / f"small-{cards}-{switches}-{card_bytes}.toml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ card to card


def test_the_all_to_all_puts_each_byte_on_each_link_it_crosses():
    s = load_server("yosemite-v3")  # 12 cards, 6 on each of two switches
    system = ServingSystem(s, _linear(s, _plan(s.cards, [1] * s.cards)), window_s=0.0)
    pooled = [
        1200 * (c + 1) for c in range(12)
    ]  # card c holds 1200 (c + 1) B, sends 100 (c + 1) B to each card
    load = {}
    for path, nbytes in system.exchange(pooled):
        for link in path:
            load[system.link_names[link]] = load.get(system.link_names[link], 0) + nbytes
    share = [p / 12 for p in pooled]
    for c in range(12):
        assert load[f"peer[{c}]"] == load[f"card_up[{c}]"] == pytest.approx(11 * share[c])
        assert load[f"card_down[{c}]"] == pytest.approx(sum(share) - share[c])
    assert load["switch_up[0]"] == load["switch_down[1]"] == pytest.approx(6 * sum(share[:6]))
    assert load["switch_up[1]"] == load["switch_down[0]"] == pytest.approx(6 * sum(share[6:]))
    assert not any(name.startswith(("root", "host")) for name in load)  # one socket: no root link crossed
    assert system.link_caps[system.link_names.index("peer[3]")] == s.topology.peer_gbps * 1e9
    # two sockets, a switch each: what crosses goes up one socket's root link and down the other's
    gt = load_server("grand-teton-2i")
    system = ServingSystem(gt, _linear(gt, _plan(gt.cards, [1] * gt.cards)), window_s=0.0)
    crossing = {
        tuple(system.link_names[i] for i in path): nbytes
        for path, nbytes in system.exchange([2400] * 24)
        if len(path) > 2
    }
    assert crossing == {
        ("switch_up[0]", "root_up[0]", "root_down[1]", "switch_down[1]"): 12 * 12 * 100,
        ("switch_up[1]", "root_up[1]", "root_down[0]", "switch_down[0]"): 12 * 12 * 100,
    }


# ------------------------------------------------------------------------------------ the event simulation


def _plan(cards: int, tables_per_card: list[int]) -> ShardingPlan:
    shards = tuple(
        TableShard(f"t{c}_{k}", "table_wise", c, 1000, 16 * (k + 1), 1000 * 16, 2.0)
        for c in range(cards)
        for k in range(tables_per_card[c])
    )
    return ShardingPlan(cards=cards, shards=shards, dense="replicated")


class LinearShardedCosts(ShardedCosts):
    """A stand-in for the engine: every program's cost a line in the bucket size, a card's lookups in its
    shards' widths."""

    def __init__(self, server, plan, max_batch=2048):  # no model, no engine
        self.chip = server.chip()
        self.plan = plan
        self.buckets = buckets(max_batch)
        self.idle_card_w = 10.0
        self._cache = {}

    def _run(self, b):
        sparse = []
        for c in range(self.plan.cards):
            width = sum(s.dim for s in self.plan.shards_on(c))
            sparse.append(
                BatchCost(b, 2e-5, 5e-5 + b * width * 2e-9, b * 40, b * width * 2, 1e-6 * b, 0.0)
                if width
                else None
            )
        part = -(-b // self.plan.cards)
        dense = BatchCost(part, 3e-5, 1e-4 + part * 5e-7, part * 2000, part * 4, 2e-6 * part, 0.0)
        pooled = tuple(b * sum(s.dim for s in self.plan.shards_on(c)) * 2 for c in range(self.plan.cards))
        return ShardedCost(b, tuple(sparse), dense, part * 1000, pooled, part)


def _linear(server, plan):
    return LinearShardedCosts(server, plan)


# no shrinking: each example is two simulations
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(
    st.integers(100, 1200),
    st.integers(0, 2**16),
    st.sampled_from([None, 0.3, 0.9, 1.5]),
    st.sampled_from([0.0, 1e-3]),
    st.sampled_from([(4, 2), (4, 1), (12, 2)]),
    st.data(),
)
def test_sharded_conservation(tmp_path_factory, count, seed, rate_fraction, window_s, shape, data):
    cards, switches = shape
    s = load_server(server_file(tmp_path_factory.mktemp("s"), cards=cards, switches=switches))
    tables = data.draw(st.lists(st.integers(0, 3), min_size=cards, max_size=cards).filter(any))
    costs = _linear(s, _plan(cards, tables))
    system = ServingSystem(s, costs, window_s=window_s)
    q = draw_queries(count, seed)
    rate = None if rate_fraction is None else rate_fraction * count / system.run(q, None).wall_s
    run = system.run(q, rate)
    # every query's samples are served once, in exactly one batch, whole; each card answers its slice of each
    seen = np.concatenate([b.queries for b in run.batches])
    assert np.array_equal(np.sort(seen), np.arange(q.count))
    assert all(b.samples == q.sizes[b.queries].sum() <= b.bucket for b in run.batches)
    assert sum(c.samples for c in run.cards) == q.samples
    assert all(c.batches == len(run.batches) for c in run.cards)
    assert max(c.samples for c in run.cards) - min(c.samples for c in run.cards) <= len(run.batches)
    # each card ran every batch's lookups of its shards and its dense slice of every batch, one at a time
    for card, c in enumerate(run.cards):
        sparse = sum(costs.cost(b.bucket).sparse[card].device_s for b in run.batches if tables[card])
        dense = sum(costs.cost(b.bucket).dense.device_s for b in run.batches)
        assert c.sparse_s == pytest.approx(sparse, rel=1e-9) and c.dense_s == pytest.approx(dense, rel=1e-9)
        assert c.busy_s == pytest.approx(c.sparse_s + c.dense_s, rel=1e-9)
        assert c.busy_s <= run.wall_s * (1 + 1e-9)
    assert run.host_busy_s <= s.host.cores * run.wall_s * (1 + 1e-9)
    # the all-to-all: each card sends the other cards' slices of its pooled embeddings of every batch
    names = run.link_names
    for card in range(cards):
        sent = sum(costs.cost(b.bucket).pooled_bytes[card] * (cards - 1) / cards for b in run.batches)
        assert run.link_bytes[names.index(f"peer[{card}]")] == pytest.approx(sent, rel=1e-9)
    host = sum(
        sum(sc.h2d_bytes for sc in costs.cost(b.bucket).sparse if sc is not None)
        + cards * (costs.cost(b.bucket).dense_h2d_bytes + costs.cost(b.bucket).dense.d2h_bytes)
        for b in run.batches
    )
    assert run.link_bytes[names.index("host_memory")] == pytest.approx(host, rel=1e-9)
    # no query is answered before its batch's slowest lookups and its dense part could have run
    pre, post = s.host.preprocess_us_per_query * 1e-6, s.host.postprocess_us_per_query * 1e-6
    cost = [costs.cost(b.bucket) for b in run.batches]
    floor = np.array(
        [
            pre + post + max(sc.device_s for sc in cost[k].sparse if sc is not None) + cost[k].dense.device_s
            for k in run.batch_of
        ]
    )
    assert np.all(run.latency_s >= floor * (1 - 1e-9))


# ------------------------------------------------------------------------------------------ the engine


def test_shard_bags_have_the_shards_mean_lookups():
    shard = TableShard("t", "row_wise", 0, 500, 8, 500 * 12, 2.25)
    (ids,), (offsets,) = shard_bags([shard], 4000, seed=1)
    lengths = np.diff(np.append(offsets.numpy(), ids.numel()))
    assert set(lengths.tolist()) == {2, 3} and abs(lengths.mean() - 2.25) < 0.03  # 4 sigma of 4000 draws
    assert int(ids.min()) >= 0 and int(ids.max()) < 500


@pytest.mark.parametrize("name", ["dlrm-kaggle", "meta-lc2"])
def test_the_dense_part_on_the_pooled_embeddings_is_the_model(name):
    import torch

    from mtiasim import workloads

    w = workloads.build(name, batch=8, max_rows=50, materialize=True)
    dense, sparse = w.example_inputs[0], w.example_inputs[1:]
    with torch.no_grad():
        if name == "dlrm-kaggle":
            pooled = torch.cat([eb(i, o) for eb, i, o in zip(w.model.emb_l, *sparse, strict=True)], dim=1)
        else:
            pooled = w.model.ebc(sparse[0]).values()
        assert pooled.shape == (8, sum(w.embedding_dims))
        assert torch.equal(w.model.dense_part()(dense, pooled), w.model(*w.example_inputs))


def test_cards_with_identical_shards_share_one_program():
    from mtiasim import workloads

    w = workloads.build("dlrm-kaggle", batch=1)
    shards = tuple(TableShard(f"t{t}", "table_wise", t % 2, 1000, 16, 1000 * 20, 1.0) for t in range(26))
    plan = ShardingPlan(cards=2, shards=shards, dense="replicated")
    steps = []
    costs = ShardedCosts(
        "dlrm-kaggle", w.model, 13, plan, load_server("yosemite-v3").chip(), precision="int8", fidelity="event",
        seed=0, max_batch=1024, progress=steps.append,
    )  # fmt: skip
    cost = costs.cost(256)
    assert steps == ["engine: card 0 lookups, batch 256", "engine: dense part, slice 128 of batch 256"]
    assert cost.sparse[0] is cost.sparse[1] and cost.sparse[0].device_s > 0
    assert cost.pooled_bytes == (256 * 13 * 16 * 2,) * 2 == (cost.sparse[0].d2h_bytes,) * 2
    assert (cost.slice, cost.dense.batch) == (128, 128)
    assert cost.dense.device_s > 0 and 0 < cost.dense_h2d_bytes < cost.dense.h2d_bytes


def test_a_model_that_fits_no_card_is_sharded_and_served(tmp_path, capsys):
    """dlrm-kaggle (675 MB of int8 tables) on 4 cards of 300 MB: torchrec's plan, the engine's programs."""
    code = main(
        ["serve", "dlrm-kaggle", "--server", server_file(tmp_path), "--scenario", "offline", "--queries", "200",
         "--max-batch", "1024", "--json", "--report", str(tmp_path / "rep")]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    res = json.loads(out)
    sharding = res["sharding"]
    assert len(sharding["tables"]) == 26 and sharding["dense"] == "replicated"
    assert max(sharding["bytes_per_card"]) + sharding["dense_bytes_per_card"] <= 300_000_000
    used = {c for t in sharding["tables"].values() for c in t["cards"]}
    assert len(used) > 1 and all(len(t["cards"]) < 4 for t in sharding["tables"].values())
    for cost in res["batch_costs"]:
        assert cost["dense"]["device_us"] > 0 and cost["dense_slice"] == cost["batch"] // 4
        widths = [sum(s["dim"] for s in sharding["shards"] if s["card"] == c) for c in range(4)]
        assert cost["alltoall_bytes"] == [cost["batch"] * w * 2 for w in widths]
        # a card's lookup program outputs what it sends in the all-to-all
        assert [s and s["d2h_bytes"] for s in cost["sparse"]] == [b or None for b in cost["alltoall_bytes"]]
    assert sum(c["samples"] for c in res["per_card"]) == res["samples"]
    assert len({c["batches"] for c in res["per_card"]}) == 1
    for c in res["per_card"]:
        assert c["busy_s"] == pytest.approx(c["sparse_busy_s"] + c["dense_busy_s"], abs=2e-6)
        assert c["busy_s"] <= res["wall_s"]
    assert res["link_utilization"]["peer[0]"] > 0
    assert "<th>dense_busy_s</th>" in (tmp_path / "rep" / "index.html").read_text()
    from mtiasim.cli import _print_serve

    _print_serve(res)
    lines = capsys.readouterr().out.splitlines()
    per_card = sharding["bytes_per_card"]
    assert lines[5] == (
        f"  sharded     26 tables (26 table-wise), {min(per_card) / 1e9:.2f}..{max(per_card) / 1e9:.2f} GB per card; "
        "dense data parallel after the all-to-all"
    )


def test_a_model_that_fits_no_card_set_is_one_line(tmp_path, capsys):
    path = server_file(tmp_path, card_bytes=100_000_000)
    assert main(["serve", "dlrm-kaggle", "--server", path, "--scenario", "offline"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # Criteo Kaggle's 33,762,577 rows x (16 + 4) B; 475,985 int8 dense weights on each card
    assert err == (
        "mtiasim: error: dlrm-kaggle: 26 int8 tables need 675,251,540 B (0.7 GB) but 4 cards x 100,000,000 B "
        "(0.1 GB), less 475,985 B of replicated dense weights per card, hold 398,096,060 B (0.4 GB): the tables "
        "exceed the cards' memory\n"
    )
    with pytest.raises(CapacityError):
        serve_workload("dlrm-kaggle", server=path, scenario="offline")


def test_shard_cli_takes_a_server(tmp_path, capsys):
    assert main(["shard", "dlrm-kaggle", "--server", server_file(tmp_path), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert (j["server"], j["cards"], len(j["tables"]), j["card_memory_bytes"]) == (
        "small",
        4,
        26,
        300_000_000,
    )
    assert main(["shard", "dlrm-kaggle", "--server", "zion"]) == 2
    assert capsys.readouterr().err == (
        "mtiasim: error: unknown server 'zion' (known: grand-teton-2i, yosemite-v3; or give a .toml file)\n"
    )
