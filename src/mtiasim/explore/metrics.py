"""Where a trial's metrics come from: an evaluator runs one design point and returns its metrics by name.

A study's trials all run one `RunConfig` (mtiasim.run.config, the configuration `mtiasim run` is built from).
`run` is `mtiasim run WORKLOAD` on the chip with the trial's values set: one batch, timed. `serve` is `mtiasim serve
WORKLOAD --server S` with the trial's values set on every card's chip: QPS under a p99 bound (server scenario) or
the throughput (offline), per W of platform power. Each is a name, its metric names, `evaluate(config, values)`
and a check of the fixed options.

`evaluate_point` is what a worker process or a Ray task runs: a plain function of plain data (the study's
configuration and one trial's values), so it pickles, and it returns plain data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtiasim.errors import MtiasimError, UsageError
from mtiasim.run.config import DEFAULT_SCENARIO, DEFAULT_SERVER, RunConfig

# name -> (path into the run's JSON, what it is)
RUN_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "samples_per_s": (("samples_per_s",), "throughput of one batch, samples/s"),
    "samples_per_s_per_w": (("samples_per_s_per_w", "chip"), "samples/s per W of average chip power"),
    "samples_per_s_per_w_card": (("samples_per_s_per_w", "card"), "samples/s per W of card power"),
    "samples_per_s_per_w_platform": (
        ("samples_per_s_per_w", "platform"),
        "samples/s per W of platform power",
    ),
    "latency_us": (("latency_us",), "host + PCIe + device time of one batch, us"),
    "device_us": (("device_us",), "device time of one batch, us"),
    "avg_power_w": (("avg_power_w",), "average chip power, W"),
    "peak_power_w": (("peak_power_w",), "peak chip power, W"),
    "card_power_w": (("card_power_w",), "card power, W"),
    "energy_j": (("energy_j",), "chip energy per batch, J"),
    "mac_utilization": (("mac_utilization",), "MACs over the DPE peak during the device time"),
    "area_mm2": (("area_mm2",), "modelled die area, mm^2 (mtiasim.hw.area)"),
}


# name -> (key in the serve JSON, what it is)
SERVE_METRICS: dict[str, tuple[str, str]] = {
    "queries_per_s": (
        "queries_per_s",
        "queries/s the server sustains (at the p99 bound in the server scenario)",
    ),
    "samples_per_s": ("samples_per_s", "user-item pairs/s the server sustains"),
    "samples_per_s_per_w": ("samples_per_s_per_w", "samples/s per W of platform power"),
    "p50_ms": ("p50_ms", "median query latency, ms"),
    "p99_ms": ("p99_ms", "99th-percentile query latency, ms"),
    "platform_power_w": ("platform_power_w", "server power while serving, W"),
    "flops_per_s": ("flops_per_s", "model FLOP/s the server sustains"),
    "area_mm2": ("area_mm2", "modelled die area of one card's chip, mm^2 (mtiasim.hw.area)"),
}


def _run_metrics(config: RunConfig, values: dict[str, float]) -> dict[str, float | None]:
    from mtiasim.run.workload import run_workload

    chip = config.chip_model().with_values(values, where="trial: ")
    res = run_workload(config.replace(chip=chip, sets=()))
    out: dict[str, float | None] = {}
    for name, (path, _) in RUN_METRICS.items():
        v: Any = res
        for part in path:
            v = v.get(part) if isinstance(v, dict) else None
        out[name] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return out


def _check_run(config: RunConfig) -> None:
    """What fails every trial alike (an unknown workload, fidelity or precision, a bad batch): a UsageError
    before the study starts, not N failed trials."""
    from mtiasim.compiler.precision import Precision
    from mtiasim.engine import FIDELITIES
    from mtiasim.run.limits import MAX_BATCH, int_arg
    from mtiasim.run.sources import is_user_model
    from mtiasim.workloads.registry import spec

    if not is_user_model(config.workload):
        spec(config.workload)
    elif config.batch is not None:
        raise UsageError(
            f"--batch applies to zoo workloads; {config.workload} runs on its own example inputs"
        )
    if config.batch is not None:
        int_arg("--batch", config.batch, 1, MAX_BATCH)
    if config.fidelity not in FIDELITIES:
        raise UsageError(f"--fidelity: unknown fidelity {config.fidelity!r} (known: {', '.join(FIDELITIES)})")
    Precision.parse(config.precision)


def _serve_metrics(config: RunConfig, values: dict[str, float]) -> dict[str, float | None]:
    from mtiasim.serve.run import serve_workload

    res = serve_workload(
        config.workload,
        server=config.server or DEFAULT_SERVER,
        scenario=config.scenario or DEFAULT_SCENARIO,
        p99_ms=config.p99_ms,
        queries=config.queries,
        seed=config.seed or 0,
        precision=config.precision,
        fidelity=config.fidelity,
        sets=dict(config.sets),
        values=values,
    )
    out: dict[str, float | None] = {}
    for name, (key, _) in SERVE_METRICS.items():
        v = res.get(key)
        out[name] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return out


def _check_serve(config: RunConfig) -> None:
    """A serve study's fixed options, checked as `mtiasim serve` checks them, before the study starts."""
    from mtiasim.hw import load_server
    from mtiasim.serve.run import SCENARIOS

    _check_run(config)
    if config.batch is not None:
        raise UsageError("--batch does not apply to --over serve (the server batches queries dynamically)")
    scenario = config.scenario or DEFAULT_SCENARIO
    load_server(config.server or DEFAULT_SERVER)
    if scenario not in SCENARIOS:
        raise UsageError(f"--scenario {scenario}: unknown scenario (known: {', '.join(SCENARIOS)})")
    if config.p99_ms is not None and not (math.isfinite(config.p99_ms) and config.p99_ms > 0):
        raise UsageError(f"--p99-ms {config.p99_ms}: must be a number > 0 (milliseconds)")


@dataclass(frozen=True)
class Evaluator:
    name: str
    metrics: dict[str, str]  # name -> what it is
    evaluate: Callable[[RunConfig, dict[str, float]], dict[str, float | None]]
    check: Callable[[RunConfig], None]  # refuses a configuration no trial could run


EVALUATORS: dict[str, Evaluator] = {
    "run": Evaluator("run", {k: what for k, (_, what) in RUN_METRICS.items()}, _run_metrics, _check_run),
    "serve": Evaluator(
        "serve", {k: what for k, (_, what) in SERVE_METRICS.items()}, _serve_metrics, _check_serve
    ),
}


def evaluator(name: str) -> Evaluator:
    if name in EVALUATORS:
        return EVALUATORS[name]
    raise UsageError(f"--over {name}: unknown (known: {', '.join(EVALUATORS)})")


def evaluate_point(over: str, config: RunConfig, values: dict[str, float]) -> dict[str, Any]:
    """Run one design point: {"metrics": {...}} or, when the simulator refuses the point (a chip that cannot
    hold the model, a value combination the chip refuses), {"error": its one-line message}; with "sim_s", the
    wall time it took. An internal error propagates: it is a bug, not a property of the point."""
    t0 = time.perf_counter()
    try:
        metrics = EVALUATORS[over].evaluate(config, values)
    except MtiasimError as err:
        return {"error": str(err), "sim_s": time.perf_counter() - t0}
    return {"metrics": metrics, "sim_s": time.perf_counter() - t0}


def objective_values(metrics: dict[str, float | None], names: list[str]) -> list[float] | None:
    """The objectives' values from `metrics`, None when one is missing or not finite."""
    out = []
    for n in names:
        v = metrics.get(n)
        if v is None or not math.isfinite(v):
            return None
        out.append(v)
    return out
