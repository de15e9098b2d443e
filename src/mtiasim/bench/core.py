"""Shared pieces of the microbenchmarks: argument checks, running a program, the common JSON fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtiasim.engine import FIDELITIES, MODES, ExecutionResult, execute
from mtiasim.engine.timing import coarse
from mtiasim.errors import UsageError
from mtiasim.hw import Chip, load_chip
from mtiasim.isa import Level, MemoryPlan, Program
from mtiasim.power import power_report

MAX_DIM = 1 << 24
# launches Glow's benchmarks keep in flight (TBEBench's and GemmBench's numAsyncLaunches): not published for
# ISCA'23 Figs 10-12; assumed a few
LAUNCHES_IN_FLIGHT = 4
PLACEMENTS = ("sram", "dram", "dram-cached", "dram-direct")


def positive(name: str, value: int, limit: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UsageError(f"--{name}: expected an integer, got {value!r}")
    if value <= 0:
        raise UsageError(f"--{name}: must be positive, got {value}")
    if value > limit:
        raise UsageError(f"--{name}: {value} is absurdly large (limit {limit})")
    return int(value)


def check_seed(seed: int) -> int:
    """A seed: an integer >= 0 (numpy's generators take no negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"--seed: must be an integer >= 0, got {seed!r}")
    return int(seed)


def level(placement: str, dram_cached: bool, where: str = "--placement") -> tuple[Level, bool]:
    """(memory level, reached through the SRAM cache). `dram` is LPDDR5 as the benchmark's published set-up
    uses it (`dram_cached`: through the SRAM in cache mode, or not); `dram-cached` and `dram-direct` choose."""
    if placement not in PLACEMENTS:
        raise UsageError(f"{where}: unknown placement {placement!r} (known: {', '.join(PLACEMENTS)})")
    if placement == "sram":
        return Level.SRAM, False
    if placement == "dram":
        return Level.DRAM, dram_cached
    return Level.DRAM, placement == "dram-cached"


def resolve_chip(chip: str | Chip) -> Chip:
    return chip if isinstance(chip, Chip) else load_chip(chip)


def check_run(mode: str, fidelity: str) -> None:
    if mode not in MODES:
        raise UsageError(f"--mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    if fidelity not in FIDELITIES:
        raise UsageError(f"--fidelity: unknown fidelity {fidelity!r} (known: {', '.join(FIDELITIES)})")


def memory_plan(chip: Chip) -> MemoryPlan:
    return MemoryPlan(chip.sram.scratchpad_capacity_bytes, chip.dram.bytes)


def run(
    program: Program, chip: Chip, mode: str, fidelity: str, inputs: dict[str, np.ndarray]
) -> ExecutionResult:
    return execute(program, chip, mode=mode, fidelity=fidelity, inputs=inputs)


def job_spans_s(result: ExecutionResult) -> list[float]:
    """Each job's time in a run of jobs back to back: the spacing of its completion from the previous job's
    (from 0 for the first)."""
    ends = [j.end_s for j in result.timing.jobs] if result.timing is not None else []
    return [e - b for b, e in zip([0.0, *ends], ends, strict=False)]  # none in a functional run


def timing_fields(result: ExecutionResult, chip: Chip, launches: list[int] | None = None) -> dict[str, Any]:
    """seconds, bound, the time attribution, PEs, and what the engine counted.

    With several jobs of the same kernel back to back (a throughput measurement), `seconds` is the steady-state
    time per job: the spacing of their completions; the attribution is the last job's, without its wait for
    the previous one, and the counters are per job.

    `launches` (one count per job): each job stands for that many launches of a steady-state loop (launches
    placed alike take the same time). `seconds` is then the mean time per launch, each job's time being the
    spacing of its completion from the previous job's (from 0 for the first), and the attribution the mean of
    the jobs' attributions weighted alike; the counters stay per job simulated.
    """
    t = result.timing
    if t is None:
        return {"seconds": None, "bound": None}
    jobs = t.jobs
    if launches is not None and len(jobs) > 1:
        if len(launches) != len(jobs):
            raise ValueError(f"{len(launches)} launch counts for {len(jobs)} jobs")
        spans = job_spans_s(result)
        count = sum(launches)
        seconds = sum(c * s for c, s in zip(launches, spans, strict=True)) / count
        detail = {}
        for c, s, j in zip(launches, spans, jobs, strict=True):
            own = {k: v for k, v in j.detail.items() if k != "queue"}
            own_s = sum(own.values())
            for k, v in own.items():
                detail[k] = detail.get(k, 0.0) + (c * s * v / own_s / count if own_s else 0.0)
    elif len(jobs) > 1:
        ends = sorted(j.end_s for j in jobs)
        seconds = (ends[-1] - ends[0]) / (len(ends) - 1)
        last = max(jobs, key=lambda j: j.end_s)
        detail = {k: v for k, v in last.detail.items() if k != "queue"}
    else:
        seconds = t.seconds
        detail = t.detail
    total = sum(detail.values())
    if total > 0:
        detail = {k: v * seconds / total for k, v in detail.items()}
    att = coarse(detail)
    bound = max(att.items(), key=lambda kv: kv[1])[0] if att else "compute"
    return {
        "seconds": seconds,
        "bound": bound,
        "jobs": len(jobs),
        "attribution_us": {k: round(v * 1e6, 4) for k, v in sorted(att.items())},
        "attribution_detail_us": {k: round(v * 1e6, 4) for k, v in sorted(detail.items()) if v > 0},
        "pes": jobs[0].pes if jobs else 0,
        "resource_utilization": {k: round(v, 4) for k, v in sorted(t.resource_utilization.items())},
        "counters": {k: float(v) / max(1, len(jobs)) for k, v in sorted(t.counters.items())},
        "events": t.events,
    }


def power_fields(result: ExecutionResult, chip: Chip, fields: dict[str, Any]) -> dict[str, Any]:
    """Energy and power over the whole timed run (all its jobs), and the benchmark's rate per watt.

    `energy_j` is per steady-state job (`seconds`): the run's average power times `seconds`."""
    t = result.timing
    if t is None or not t.seconds or fields.get("seconds") is None:
        return {}
    rep = power_report(chip, t.counters, t.seconds, nodes=t.nodes)
    out = rep.to_json()
    scale = fields["seconds"] / t.seconds
    for key in ("energy_j", "card_energy_j", "platform_energy_j"):
        out[key] = out[key] * scale
    out["energy_breakdown_j"] = {k: v * scale for k, v in out["energy_breakdown_j"].items()}
    for rate_key in ("tops", "gbps"):
        if fields.get(rate_key):
            out[f"{rate_key}_per_w"] = {k: round(v, 5) for k, v in rep.per_watt(fields[rate_key]).items()}
    return out


def base_fields(chip: Chip, mode: str, fidelity: str) -> dict[str, Any]:
    """The chip (its name, the hash of its resolved values, the values overridden) and how it was run."""
    return {
        "chip": chip.name,
        "chip_hash": chip.values_hash(),
        "overrides": chip.overrides(),
        "mode": mode,
        "fidelity": fidelity,
    }


@dataclass
class Prepared:
    """A benchmark ready to run: its program and inputs, and how to turn a result into the JSON fields."""

    chip: Chip
    program: Program
    inputs: dict[str, np.ndarray]
    mode: str
    fidelity: str
    summarize: Callable[[ExecutionResult], dict[str, Any]]

    def run(self) -> dict[str, Any]:
        return self.run_with_result()[0]

    def run_with_result(self) -> tuple[dict[str, Any], ExecutionResult]:
        """The JSON fields and the engine's result (its schedule, for a trace)."""
        result = run(self.program, self.chip, self.mode, self.fidelity, self.inputs)
        fields = self.summarize(result)
        fields.update(power_fields(result, self.chip, fields))
        return fields, result
