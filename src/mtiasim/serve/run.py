"""`mtiasim serve WORKLOAD --server NAME --scenario offline|server`: a model served on a server under MLPerf
Inference's rules for recommendation.

Placement: a model that fits one card's memory is replicated on every card (each batch runs whole on one
card); one that does not is sharded over the cards with torchrec's planner (`serve/sharding.py`, the bytes
estimator, planned for the largest batch) and served as per-card lookup programs, the pooled embeddings sent
card to card and the dense part on one card per batch (`serve/sharded.py`); one that fits no card set is the
plan's one-line CapacityError.

- `offline`: every query is there at time 0; the throughput is queries (and samples) over the time to answer
  them all.
- `server`: Poisson arrivals; the answer is the highest arrival rate whose p99 latency meets the bound, found
  by bisection between a rate that meets it (half the offline throughput, halved until one does) and the
  offline throughput (the server's capacity: no higher rate is sustainable), on the same query sizes and unit
  arrival gaps at every rate. The run reported is the last one that met the bound.

Power: each card draws its idle power (static chip power through its regulators, LPDDR5 background, board:
the chip's power model with nothing to do) over the whole run plus, per batch it ran, the engine's card energy
of that batch above idle; the rest of the platform (host CPU and memory, switches, NIC, fans) draws the server's
published budget less its cards' budgets, constant. `samples_per_s_per_w` = samples/s over that platform power.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mtiasim.compiler import Precision
from mtiasim.errors import UsageError
from mtiasim.hw import Server, load_server
from mtiasim.hw.area import area
from mtiasim.hw.chip import chip_with_sets
from mtiasim.run.config import DEFAULT_P99_MS, DEFAULT_QUERIES, DEFAULT_SCENARIO, DEFAULT_SERVER
from mtiasim.run.limits import int_arg
from mtiasim.run.sources import is_user_model
from mtiasim.serve.costs import BatchCost, BatchCosts, buckets
from mtiasim.serve.placement import Replicated, Table, fits_one_card, replicate, table_names
from mtiasim.serve.queries import QUERY_SIZE_QUANTILES, Queries, draw_queries
from mtiasim.serve.sharded import ShardedCost, ShardedCosts
from mtiasim.serve.sharding import ShardingPlan, dense_bytes, plan_sharding, tables_of
from mtiasim.serve.system import ServingSystem, SimResult

SCENARIOS = ("offline", "server")
DEFAULT_WINDOW_MS = 2.0
DEFAULT_MAX_BATCH = 2048
SEARCH_STEPS = 8  # bisection steps: the rate found is within 2^-8 of the span it starts from
LOWEST_RATE_FRACTION = 1e-3  # the lowest rate the search tries, a fraction of the offline throughput


def serve_workload(
    name: str,
    *,
    server: str | Server = DEFAULT_SERVER,
    scenario: str = DEFAULT_SCENARIO,
    p99_ms: float | None = None,
    queries: int | None = None,
    seed: int = 0,
    window_ms: float = DEFAULT_WINDOW_MS,
    max_batch: int = DEFAULT_MAX_BATCH,
    precision: str = "int8",
    fidelity: str = "event",
    report_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    sets: Any = None,
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Serve zoo workload `name` on `server`; the run's JSON (see the module doc). `sets` (`--set KEY=VALUE`
    texts or {key: text}) and then `values` ({key: value}, a study's trial) change the chip on every card."""
    if scenario not in SCENARIOS:
        raise UsageError(f"--scenario {scenario}: unknown scenario (known: {', '.join(SCENARIOS)})")
    if p99_ms is not None and scenario == "offline":
        raise UsageError("--p99-ms applies to --scenario server (offline has no latency bound)")
    bound_ms = DEFAULT_P99_MS if p99_ms is None else float(p99_ms)
    if not (math.isfinite(bound_ms) and bound_ms > 0):
        raise UsageError(f"--p99-ms {p99_ms}: must be a number > 0 (milliseconds)")
    if not (math.isfinite(window_ms) and window_ms >= 0):
        raise UsageError(f"--window-ms {window_ms}: must be a number >= 0 (milliseconds)")
    count = int_arg("--queries", DEFAULT_QUERIES if queries is None else queries, 100, 1_000_000)
    seed = int_arg("--seed", seed, 0)
    buckets(max_batch)  # a bad --max-batch fails now, not after the model is built
    if max_batch < max(QUERY_SIZE_QUANTILES):
        raise UsageError(
            f"--max-batch {max_batch}: below the largest query ({max(QUERY_SIZE_QUANTILES)} samples), "
            "which must fit one batch"
        )
    if is_user_model(name):
        raise UsageError(
            f"{name}: serve takes a zoo workload (it builds the model at each bucket batch size)"
        )
    from mtiasim import workloads

    server_ = server if isinstance(server, Server) else load_server(server)
    if sets or values:
        card_chip = chip_with_sets(server_.chip(), sets or ())
        if values:
            card_chip = card_chip.with_values(values, where="trial: ")
        server_ = server_.with_card_chip(card_chip)
    info = workloads.build(name, batch=1, seed=seed)
    prec = Precision.parse(precision)
    names = table_names(info.model, info.tables)
    tables = [
        Table(n, r, d, p)
        for n, r, d, p in zip(names, info.table_rows, info.embedding_dims, info.pooling, strict=True)
    ]
    chip = server_.chip()
    placement: Replicated | ShardingPlan
    if fits_one_card(tables, info.dense_params, server_, prec):
        placement = replicate(name, tables, info.dense_params, server_, prec)
    else:
        placement = _plan(name, info, server_, prec, max_batch)
    if report_dir:
        from mtiasim.serve.report import prepare_dir

        prepare_dir(report_dir)
    costs: BatchCosts | ShardedCosts
    if isinstance(placement, ShardingPlan):
        costs = ShardedCosts(
            name, info.model, int(info.example_inputs[0].shape[1]), placement, chip, precision=precision,
            fidelity=fidelity, seed=seed, max_batch=max_batch, progress=progress,
        )  # fmt: skip
    else:
        costs = BatchCosts(
            name,
            chip,
            precision=precision,
            fidelity=fidelity,
            seed=seed,
            max_batch=max_batch,
            progress=progress,
        )
    system = ServingSystem(server_, costs, window_s=window_ms * 1e-3)
    drawn = draw_queries(count, seed)
    t0 = time.perf_counter()
    offline = system.run(drawn, None)
    curve: list[dict[str, Any]] = []
    if scenario == "offline":
        rate, run = count / offline.wall_s, offline
    else:
        rate, run = _search(system, drawn, count / offline.wall_s, bound_ms * 1e-3, curve, progress)
    sim_s = time.perf_counter() - t0
    res = _result(name, scenario, server_, system, drawn, rate, run, info.flops_per_sample, prec.name)
    res["latency_bound_ms"] = bound_ms if scenario == "server" else None
    res["overrides"] = chip.overrides()
    res["chip_hash"] = chip.values_hash()
    res["area_mm2"] = area(chip).total_mm2
    res["offline_queries_per_s"] = round(count / offline.wall_s, 3)
    res["sharding"] = placement.to_json()
    res["search"] = curve
    res["batching"] = {"window_ms": window_ms, "max_batch": costs.max_batch, "buckets": list(costs.buckets)}
    res["batch_costs"] = [_cost_json(c) for c in costs.computed.values()]
    res["simulator_s"] = {
        "engine": round(sum(c.simulator_s for c in costs.computed.values()), 3),
        "serving": round(sim_s - sum(c.simulator_s for c in costs.computed.values()), 3),
    }
    res["latencies_ms"] = np.round(run.latency_s * 1e3, 4).tolist() if report_dir else None
    if report_dir:
        from mtiasim.serve.report import write_serve_report

        res["report"] = str(write_serve_report(res, report_dir))
    res.pop("latencies_ms")
    return res


def _plan(name: str, info: Any, server: Server, prec: Precision, max_batch: int) -> ShardingPlan:
    """torchrec's plan of the tables over the server's cards (bytes estimator, planned for the largest batch),
    the dense weights replicated; a model that fits no card set raises the plan's one-line CapacityError."""
    if prec.name not in ("int8", "fp32"):
        raise UsageError(
            f"--precision {prec.name}: {name} does not fit one card and must be sharded, which plans int8 or "
            "fp32 tables"
        )
    return plan_sharding(
        tables_of(info),
        server,
        max_batch,
        prec.name,
        dense_bytes_per_card=dense_bytes(info, prec.name),
        chip=server.chip(),
        link_bytes_per_s=server.topology.peer_gbps * 1e9,
        model=name,
    )


def _program_json(c: BatchCost) -> dict[str, Any]:
    return {
        "host_us": round(c.host_s * 1e6, 3),
        "device_us": round(c.device_s * 1e6, 3),
        "h2d_bytes": c.h2d_bytes,
        "d2h_bytes": c.d2h_bytes,
        "card_dynamic_j": c.card_dynamic_j,
    }


def _cost_json(c: BatchCost | ShardedCost) -> dict[str, Any]:
    if isinstance(c, BatchCost):
        return {"batch": c.batch, **_program_json(c)}
    return {
        "batch": c.batch,
        "sparse": [None if s is None else _program_json(s) for s in c.sparse],
        "dense_slice": c.slice,
        "dense": _program_json(c.dense),
        "dense_h2d_bytes": c.dense_h2d_bytes,
        "alltoall_bytes": list(c.pooled_bytes),
    }


def _p(run: SimResult, q: float) -> float:
    return float(np.percentile(run.latency_s, q))


def _search(
    system: ServingSystem,
    drawn: Queries,
    top: float,
    bound_s: float,
    curve: list[dict[str, Any]],
    progress: Callable[[str], None] | None,
) -> tuple[float, SimResult]:
    """The highest arrival rate (<= `top`) whose p99 meets `bound_s`, by bisection; its run."""

    def measure(rate: float) -> tuple[bool, SimResult]:
        if progress is not None:
            progress(f"server scenario at {rate:,.0f} queries/s")
        run = system.run(drawn, rate)
        p99 = _p(run, 99)
        curve.append(
            {
                "queries_per_s": round(rate, 3),
                "p50_ms": round(_p(run, 50) * 1e3, 4),
                "p99_ms": round(p99 * 1e3, 4),
                "meets": p99 <= bound_s,
            }
        )
        return p99 <= bound_s, run

    # the offline throughput is the server's capacity: an arrival rate at or above it is not sustainable (the
    # queue grows without bound however short a run hides it), so the search stays below it
    lo = top / 2
    ok, best = measure(lo)
    while not ok:
        lo /= 2
        if lo < top * LOWEST_RATE_FRACTION:
            raise UsageError(
                f"--p99-ms {bound_s * 1e3:g}: not met even at {lo * 2:,.1f} queries/s "
                f"(p99 {_p(best, 99) * 1e3:.2f} ms): one query takes longer than the bound on this server"
            )
        ok, best = measure(lo)
    hi = top
    for _ in range(SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        ok, run = measure(mid)
        if ok:
            lo, best = mid, run
        else:
            hi = mid
    return lo, best


def _result(
    name: str,
    scenario: str,
    server: Server,
    system: ServingSystem,
    drawn: Queries,
    rate: float,
    run: SimResult,
    flops_per_sample: float,
    precision: str,
) -> dict[str, Any]:
    wall = run.wall_s
    samples_per_s = rate * drawn.samples / drawn.count
    idle_w = system.costs.idle_card_w
    card_w = [idle_w + c.dynamic_j / wall for c in run.cards]
    platform_w = sum(card_w) + server.non_card_power_w
    per_card = [
        {
            "card": i,
            "switch": server.switch_of(i),
            "socket": server.socket_of(i),
            "batches": c.batches,
            "samples": c.samples,
            "padded_samples": c.padded_samples,
            "busy_s": round(c.busy_s, 6),
            **(
                {"sparse_busy_s": round(c.sparse_s, 6), "dense_busy_s": round(c.dense_s, 6)}
                if system.sharded
                else {}
            ),
            "utilization": round(c.busy_s / wall, 4),
            "power_w": round(card_w[i], 3),
        }
        for i, c in enumerate(run.cards)
    ]
    links = {
        n: round(float(b / (cap * wall)), 4)
        for n, b, cap in zip(run.link_names, run.link_bytes, run.link_capacity, strict=True)
    }
    return {
        "workload": name,
        "scenario": scenario,
        "server": server.name,
        "chip": system.costs.chip.name,
        "cards": server.cards,
        "precision": precision,
        "queries": drawn.count,
        "samples": drawn.samples,
        "queries_per_s": round(rate, 3),
        "samples_per_s": round(samples_per_s, 3),
        "p50_ms": round(_p(run, 50) * 1e3, 4),
        "p99_ms": round(_p(run, 99) * 1e3, 4),
        "wall_s": round(wall, 6),
        "platform_power_w": round(platform_w, 3),
        "cards_power_w": round(sum(card_w), 3),
        "non_card_power_w": server.non_card_power_w,
        "samples_per_s_per_w": round(samples_per_s / platform_w, 4),
        "flops_per_s": samples_per_s * flops_per_sample,
        "per_card": per_card,
        "host": {
            "cores": server.host.cores,
            "utilization": round(run.host_busy_s / (server.host.cores * wall), 4),
        },
        "link_utilization": links,
    }
