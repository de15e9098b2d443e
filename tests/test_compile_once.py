"""Compile once, run many: what a compiled model keeps between calls changes no result.

A model called with different inputs one after the other must give, call for call, what fresh models give when
each is handed the same inputs and the SRAM cache state the previous call left (`CompiledModel.cache_state`,
the one state carried on purpose). The lookups here have bags of varying size, so the per-call jobs change
shape from call to call and a stale reused resolution would show.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from tests.test_runtime import MlpEmb, _inputs

import mtiasim
from mtiasim.hw import load_chip

TABLES = [4000, 4000, 4000]
# a small SRAM puts the tables in LPDDR5 behind the SRAM cache: the cache state matters
resolve_mod = importlib.import_module("mtiasim.engine.resolve")  # the package exports the function
CHIP = load_chip("mtia-v1").with_values({"sram.bytes": "1MiB"})


def _model() -> MlpEmb:
    return MlpEmb(13, [32, 16], TABLES, 64, "sum", 1, "sigmoid", 0).eval()


def _batch(seed: int) -> tuple:
    return _inputs(64, TABLES, 20, 13, seed)


def _compile(model: MlpEmb):
    return mtiasim.compile(model, _batch(0), mode="timing", precision="int8", chip=CHIP)


def _result(cm) -> tuple[dict, np.ndarray, np.ndarray]:
    rep = cm.report
    return rep.to_json(), rep.timing.node_start, rep.timing.node_end


def _same(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def _calls_match_fresh_models() -> bool:
    """Calls 2 and 3 of one model against fresh models given the carried cache state, call for call."""
    model = _model()
    kept = _compile(model)
    state = kept.cache_state.copy()  # cold
    same = True
    for seed in (1, 2, 3):
        kept(*_batch(seed))
        fresh = _compile(model)
        fresh.cache_state = state
        fresh(*_batch(seed))
        same &= _same(_result(kept), _result(fresh))
        state = fresh.cache_state.copy()
    return same


def test_calls_with_new_inputs_equal_fresh_models_with_the_carried_cache_state():
    assert _calls_match_fresh_models()


def test_a_stale_reused_resolution_is_caught(monkeypatch):
    # planted bug: a job's stored resolution is reused whenever the name matches (the per-call lookup jobs too)
    monkeypatch.setattr(resolve_mod.Fragment, "fits", lambda self, job, chip, program: True)
    assert not _calls_match_fresh_models()


def test_the_cache_state_is_explicit_and_resettable():
    model = _model()
    cm = _compile(model)
    cm(*_batch(1))
    assert cm.cache_state.history and all(len(h) == 1 for h in cm.cache_state.history.values())
    cm(*_batch(2))
    warm = _result(cm)
    cm.reset_cache_state()
    assert not cm.cache_state.history
    cm(*_batch(2))
    cold = _result(cm)
    fresh = _compile(model)
    fresh(*_batch(2))
    assert _same(cold, _result(fresh))  # reset: as a fresh (cold) model
    assert warm[0]["latency_us"] != pytest.approx(cold[0]["latency_us"], rel=1e-9)  # the state matters here
    cm(*_batch(3))
    cm(*_batch(4))
    cm(*_batch(5))
    assert all(len(h) == cm.cache_state.calls for h in cm.cache_state.history.values())


def test_reused_resolution_equals_a_fresh_one():
    """The resolver's fragments: a second run of the same program reuses every job's nodes unchanged; a run with a
    job added in front renumbers the rest, node for node as a fresh resolution numbers them."""
    from mtiasim.bench.gemm import prepare_gemm

    b = prepare_gemm(256, 512, 256, "int8", "sram", load_chip("mtia-v1"))
    program, chip = b.program, b.chip
    fragments: dict = {}
    first = resolve_mod.resolve(program, chip, fragments=fragments)
    again = resolve_mod.resolve(program, chip, fragments=fragments)
    assert [id(n) for n in again.nodes] == [id(n) for n in first.nodes]
    # the same jobs behind a renamed copy of the first one: every later node moves
    from dataclasses import replace

    extra = replace(program.jobs[0], name=program.jobs[0].name + "_again")
    shifted = replace(program, jobs=[extra, *program.jobs])
    got = resolve_mod.resolve(shifted, chip, fragments=fragments)
    want = resolve_mod.resolve(shifted, chip)
    assert (
        got.nodes == want.nodes and got.mcast_groups == want.mcast_groups and got.job_nodes == want.job_nodes
    )


timing_mod = importlib.import_module("mtiasim.engine.timing")
engine_mod = importlib.import_module("mtiasim.engine")
# what a timing model derives from its nodes and works: the constraint graph, the bundles and their rates, the
# counter columns
GRAPH_FIELDS = (
    "core_prev",
    "core_next",
    "unit_prev",
    "reduce_from",
    "job_of",
    "unit_next",
    "producers",
    "consumers",
    "stream_consumers",
    "barrier_before",
    "first_nodes",
    "pe_rank",
    "bundles",
    "bundle_of",
    "b_bytes",
    "b_usage",
    "b_extra",
    "b_streams",
    "b_latency",
    "b_cap",
    "b_cap_kind",
    "b_kind0",
    "b_rate0",
    "b_rate_ahead",
    "item_s",
    "tail_s",
    "first_item_s",
    "stall_s",
)


def _graph(m) -> dict:
    out = {}
    for name in GRAPH_FIELDS:
        v = getattr(m, name)
        out[name] = v.tolist() if isinstance(v, np.ndarray) else dict(v) if isinstance(v, dict) else v
    out["columns"] = {k: v.tolist() for k, v in m.counter_columns().items()}
    return out


def _kept_models_match_fresh_construction(monkeypatch) -> bool:
    """Every call's timing model (built with the compiled model's memo: job graphs, flows and counter columns kept
    from earlier calls) against one built from scratch for the same program and inputs, for calls whose
    lookup jobs change shape."""
    built: list = []

    class Recorded(timing_mod.TimingModel):
        def __init__(self, program, resolved, chip, data, memo=None):
            super().__init__(program, resolved, chip, data, memo)
            built.append((self, program, chip, data))

    monkeypatch.setattr(engine_mod, "TimingModel", Recorded)
    cm = _compile(_model())
    same = True
    for seed in (1, 2, 3, 4):
        cm(*_batch(seed))
        kept, program, chip, data = built[-1]
        fresh = timing_mod.TimingModel(program, resolve_mod.resolve(program, chip), chip, data)
        same &= _graph(kept) == _graph(fresh)
    return same


def test_kept_job_graphs_flows_and_counter_columns_equal_fresh_construction(monkeypatch):
    assert _kept_models_match_fresh_construction(monkeypatch)


def _shifted_graphs_match_fresh_construction() -> bool:
    """Timing models (graphs, flows, counter columns) of a program and of the same program with a job added in
    front (every later node renumbered), both built with one memo, against models built from scratch."""
    from dataclasses import replace

    from mtiasim.bench.gemm import prepare_gemm
    from mtiasim.engine.work import Memo

    b = prepare_gemm(256, 512, 256, "int8", "sram", load_chip("mtia-v1"))
    program, chip = b.program, b.chip
    extra = replace(program.jobs[0], name=program.jobs[0].name + "_again")
    memo = Memo()
    same = True
    for prog in (program, replace(program, jobs=[extra, *program.jobs])):
        kept = timing_mod.TimingModel(
            prog, resolve_mod.resolve(prog, chip, fragments=memo.fragments), chip, {}, memo
        )
        fresh = timing_mod.TimingModel(prog, resolve_mod.resolve(prog, chip), chip, {})
        same &= _graph(kept) == _graph(fresh)
    return same


def test_moved_job_graphs_equal_fresh_construction():
    assert _shifted_graphs_match_fresh_construction()


def test_a_stale_job_graph_is_caught(monkeypatch):
    # planted bug: a job's stored graph is reused whenever its node count matches (a moved job's too)
    monkeypatch.setattr(
        timing_mod.JobGraph, "fits", lambda self, nodes, units, slots: len(nodes) == len(self.nodes)
    )
    assert not _shifted_graphs_match_fresh_construction()


def test_a_stale_counter_block_is_caught(monkeypatch):
    # planted bug: a job's stored counter columns are reused whenever its node count matches
    monkeypatch.setattr(timing_mod.ColumnBlock, "fits", lambda self, works: len(works) == len(self.works))
    assert not _kept_models_match_fresh_construction(monkeypatch)


def test_stale_job_flows_are_caught(monkeypatch):
    # planted bug: a job's stored bundles and rates are reused whenever its node count matches (a moved job's
    # too)
    monkeypatch.setattr(
        timing_mod.JobFlows, "fits", lambda self, graph, works, chip: len(works) == len(self.works)
    )
    assert not _shifted_graphs_match_fresh_construction()


def test_a_warm_up_batch_moves_the_cache_as_a_call_does():
    """`warm` (a warm-up batch, not simulated) leaves what a full call leaves: the next call's report and
    every node's times are those after a full call; and it does warm the cache (not a cold call)."""
    model = _model()
    called, warmed, cold = _compile(model), _compile(model), _compile(model)
    for seed in (1, 2):
        called(*_batch(seed))
        warmed.warm(*_batch(seed))
    called(*_batch(3))
    warmed(*_batch(3))
    cold(*_batch(3))
    assert _same(_result(warmed), _result(called))
    assert {t: len(h) for t, h in warmed.cache_state.history.items()} == {
        t: len(h) for t, h in called.cache_state.history.items()
    }
    assert not _same(_result(warmed), _result(cold))
