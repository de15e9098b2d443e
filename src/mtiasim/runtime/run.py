"""`mtiasim run WORKLOAD`: build a zoo model, compile it, run one batch (after warm-up batches), report.

In timing mode the tables are full size and virtual unless `max_rows` caps them. `check` runs the model
functionally on tables capped at `max_rows` (default `CHECK_MAX_ROWS`), runs the same model in PyTorch on the
CPU and compares: the error must stay within the precision's tolerance (`TOLERANCE`, absolute, on the model's
outputs, which the zoo's models squash into (0, 1) with a sigmoid).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtiasim.errors import UsageError
from mtiasim.runtime.api import compile

CHECK_MAX_ROWS = 100_000
# absolute error allowed on outputs in (0, 1): int8 FC activations carry ~1/254 of their range in rounding
# per layer; fp16 about 2^-11 relative per op; bf16 2^-8
TOLERANCE = {"int8": 2e-2, "fp16": 2e-3, "bf16": 2e-2}


def run_workload(
    name: str,
    *,
    batch: int,
    chip: str = "mtia-v1",
    precision: str = "int8",
    mode: str = "timing",
    fidelity: str = "event",
    check: bool = False,
    max_rows: int | None = None,
    seed: int = 0,
    warmup: int = 1,
    distribution: str = "uniform",
    trace: str | None = None,
    trace_aggregate: str = "auto",
    report_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build, compile and run `name`; the run's JSON. `trace` writes a Perfetto trace (Chrome JSON) of the
    measured batch, `report_dir` an HTML report; `progress(step)` is told each step as it starts."""
    from mtiasim import workloads

    def step(what: str) -> None:
        if progress is not None:
            progress(what)

    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if check:
        mode = "both" if mode == "timing" else mode
        max_rows = max_rows or CHECK_MAX_ROWS
    functional = mode in ("functional", "both")
    if functional and max_rows is None:
        max_rows = CHECK_MAX_ROWS
    if (trace or report_dir) and mode == "functional":
        raise UsageError("--trace and --report need a timed run: use --mode timing or both")
    # output arguments are checked before minutes of simulation, not after
    if report_dir:
        try:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--report {report_dir}: cannot create the folder ({err.strerror})") from None
    if trace:
        from mtiasim.report.trace import AGGREGATES

        if trace_aggregate not in AGGREGATES:
            raise UsageError(
                f"--trace-aggregate: unknown mode {trace_aggregate!r} (known: {', '.join(AGGREGATES)})"
            )
        folder = Path(trace).resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--trace {trace}: folder {str(folder)!r} does not exist")
    step(f"building {name}")
    t0 = time.perf_counter()
    w = workloads.build(
        name, batch=batch, seed=seed, max_rows=max_rows, materialize=functional, distribution=distribution
    )
    t_build = time.perf_counter() - t0
    step("compiling")
    t0 = time.perf_counter()
    cm = compile(
        w.model, w.example_inputs, chip=chip, mode=mode, precision=precision, fidelity=fidelity, name=name
    )
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup):
        step(f"warm-up batch {i + 1}/{warmup}")
        # fresh requests (other indices) warm the SRAM cache, as a serving system's previous batches would
        wi = workloads.build(
            name,
            batch=batch,
            seed=seed + 1 + i,
            max_rows=max_rows,
            materialize=False,
            distribution=distribution,
        )
        cm(*wi.example_inputs)
    t_warm = time.perf_counter() - t0
    step("running the batch")
    t0 = time.perf_counter()
    out = cm(*w.example_inputs)
    t_run = time.perf_counter() - t0
    report = cm.report
    assert report is not None
    res: dict[str, Any] = {"workload": name, **report.to_json()}
    res["table_rows"] = "full (virtual)" if max_rows is None else f"capped at {max_rows}"
    res["warmup_batches"] = warmup
    res["simulator_s"] = {
        "build": round(t_build, 3),
        "compile": round(t_compile, 3),
        "warmup": round(t_warm, 3),
        "run": round(t_run, 3),
    }
    if check:
        step("checking against PyTorch on the CPU")
        with torch.no_grad():
            ref = w.model(*w.example_inputs)
        err = (out.to(torch.float64) - ref.to(torch.float64)).abs()
        rel = err / ref.to(torch.float64).abs().clamp_min(1e-6)
        tol = TOLERANCE[precision]
        res["check"] = {
            "max_abs_err": float(err.max()),
            "max_rel_err": float(rel.max()),
            "tolerance": tol,
            "passed": bool(float(err.max()) <= tol),
        }
    if report_dir:
        step("writing the HTML report")
        from mtiasim.report.html import write_report

        res["report"] = str(write_report(res, report_dir))
    if trace:
        step("writing the trace")
        res["trace"] = _write_trace(report, trace, trace_aggregate, res)
    return res


def _write_trace(report: Any, path: str, aggregate: str, res: dict[str, Any]) -> dict[str, Any]:
    from mtiasim.hw import load_chip
    from mtiasim.report.trace import chrome_trace, write_trace

    chip = report.power.chip if report.power is not None else load_chip(report.chip)
    host_s, h2d_s, device_s = report.host_s, report.h2d_s, report.device_s
    phases = [
        ("host prologue", 0.0, host_s),
        ("PCIe in", host_s, host_s + h2d_s),
        ("PCIe out", host_s + h2d_s + device_s, report.latency_s),
    ]
    trace = chrome_trace(
        chip,
        report.timing,
        name=res["workload"],
        ops=res["ops"],
        power=report.power,
        offset_s=host_s + h2d_s,
        host_spans=[p for p in phases if p[2] > p[1]],
        aggregate=aggregate,
    )
    nbytes = write_trace(path, trace)
    return {"path": path, "bytes": nbytes, "aggregate": trace.get("metadata", {}).get("aggregate", aggregate)}
