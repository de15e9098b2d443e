"""Where a trial's metrics come from: an evaluator runs one design point and returns its metrics by name.

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


@dataclass(frozen=True)
class ServeConfig:
    """What a `--over serve` trial serves: `mtiasim serve WORKLOAD --server S --scenario X [--p99-ms B]
    [--queries N]`, the server's cards carrying the trial's chip values."""

    server: str = "yosemite-v3"
    scenario: str = "server"
    p99_ms: float | None = None
    queries: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "scenario": self.scenario,
            "p99_ms": self.p99_ms,
            "queries": self.queries,
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


@dataclass(frozen=True)
class RunConfig:
    """What every trial of a study runs: the workload and the `mtiasim run` options that are not searched."""

    workload: str
    chip: str = "mtia-v1"
    sets: tuple[tuple[str, str], ...] = ()  # fixed `--set` overrides, applied before the trial's values
    batch: int | None = None
    precision: str = "int8"
    fidelity: str = "event"
    seed: int | None = None
    # `--over serve` only (None otherwise): the server whose cards carry the trial's chip values, and the
    # scenario served on it (`mtiasim serve` options)
    serve: ServeConfig | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "workload": self.workload,
            "chip": self.chip,
            "sets": [list(kv) for kv in self.sets],
            "batch": self.batch,
            "precision": self.precision,
            "fidelity": self.fidelity,
            "seed": self.seed,
        }
        if self.serve is not None:  # a run study's identity is what it was before serve studies existed
            out["serve"] = self.serve.to_json()
        return out


def _run_metrics(config: RunConfig, values: dict[str, float]) -> dict[str, float | None]:
    from mtiasim.hw.chip import chip_with_sets
    from mtiasim.run.workload import run_workload

    chip = chip_with_sets(config.chip, dict(config.sets))
    chip = chip.with_values(values, where="trial: ")
    res = run_workload(
        config.workload,
        batch=config.batch,
        chip=chip,
        precision=config.precision,
        fidelity=config.fidelity,
        seed=config.seed,
    )
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

    sc = config.serve or ServeConfig()
    res = serve_workload(
        config.workload,
        server=sc.server,
        scenario=sc.scenario,
        p99_ms=sc.p99_ms,
        queries=sc.queries,
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
    sc = config.serve or ServeConfig()
    load_server(sc.server)
    if sc.scenario not in SCENARIOS:
        raise UsageError(f"--scenario {sc.scenario}: unknown scenario (known: {', '.join(SCENARIOS)})")
    if sc.p99_ms is not None and not (math.isfinite(sc.p99_ms) and sc.p99_ms > 0):
        raise UsageError(f"--p99-ms {sc.p99_ms}: must be a number > 0 (milliseconds)")


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
