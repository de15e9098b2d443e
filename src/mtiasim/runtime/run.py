"""`mtiasim run WORKLOAD`: build a zoo model, compile it, run one batch (after warm-up batches), report.

In timing mode the tables are full size and virtual unless `max_rows` caps them. `check` runs the model
functionally on tables capped at `max_rows` (default `CHECK_MAX_ROWS`), runs the same model in PyTorch on the
CPU and compares: every output element must be within the error bound that follows from the numerics
specification (docs/numerics.md, `CompiledModel.check`). Every functional run reports that comparison
(`numerics`: per output the error against fp32 and its bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtiasim.compiler import Quantization
from mtiasim.errors import UsageError
from mtiasim.hw import Chip, load_chip
from mtiasim.report.atomic import make_dirs, remove_if_empty
from mtiasim.runtime.api import compile
from mtiasim.runtime.limits import MAX_BATCH, MAX_WARMUP, check_host_memory, int_arg

CHECK_MAX_ROWS = 100_000


def run_workload(
    name: str,
    *,
    batch: int,
    chip: str | Chip = "mtia-v1",
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
    quantization: str | None = None,
) -> dict[str, Any]:
    """Build, compile and run `name`; the run's JSON. `trace` writes a Perfetto trace (Chrome JSON) of the
    measured batch, `report_dir` an HTML report; `progress(step)` is told each step as it starts.

    Arguments, the chip, the output paths and the host memory the run would need (`limits.check_host_memory`)
    are checked before anything is built: a run that cannot finish fails in a second, with a UsageError."""

    def step(what: str) -> None:
        if progress is not None:
            progress(what)

    batch = int_arg("--batch", batch, 1, MAX_BATCH)
    warmup = int_arg("--warmup", warmup, 0, MAX_WARMUP)
    seed = int_arg("--seed", seed, 0)
    if max_rows is not None:
        max_rows = int_arg("--max-rows", max_rows, 1)
    chip_ = chip if isinstance(chip, Chip) else load_chip(chip)
    quant = Quantization.parse(quantization)
    if check:
        mode = "both" if mode == "timing" else mode
        max_rows = max_rows or CHECK_MAX_ROWS
    functional = mode in ("functional", "both")
    if functional and max_rows is None:
        max_rows = CHECK_MAX_ROWS
    if (trace or report_dir) and mode == "functional":
        raise UsageError("--trace and --report need a timed run: use --mode timing or both")
    # output arguments are checked before minutes of simulation, not after
    created: list[Path] = []
    if report_dir:
        try:
            created = make_dirs(report_dir)
        except OSError as err:
            raise UsageError(f"--report {report_dir}: cannot create the folder ({err.strerror})") from None
    try:
        if trace:
            from mtiasim.report.trace import AGGREGATES

            if trace_aggregate not in AGGREGATES:
                raise UsageError(
                    f"--trace-aggregate: unknown mode {trace_aggregate!r} (known: {', '.join(AGGREGATES)})"
                )
            folder = Path(trace).resolve().parent
            if not folder.is_dir():
                raise UsageError(f"--trace {trace}: folder {str(folder)!r} does not exist")
            if Path(trace).is_dir():
                raise UsageError(f"--trace {trace}: is a folder; give a file name (e.g. {trace}/trace.json)")
        check_host_memory(
            name, batch=batch, seed=seed, max_rows=max_rows, functional=functional, distribution=distribution
        )
        return _run(
            name, batch=batch, seed=seed, max_rows=max_rows, distribution=distribution, chip=chip_,
            precision=precision, mode=mode, fidelity=fidelity, check=check, functional=functional, warmup=warmup,
            trace=trace, trace_aggregate=trace_aggregate, report_dir=report_dir, step=step, quantization=quant,
        )  # fmt: skip
    except BaseException:
        remove_if_empty(created)  # a failed run leaves no empty report folder behind
        raise


def _run(
    name: str,
    *,
    batch: int,
    seed: int,
    max_rows: int | None,
    distribution: str,
    chip: Chip,
    precision: str,
    mode: str,
    fidelity: str,
    check: bool,
    functional: bool,
    warmup: int,
    trace: str | None,
    trace_aggregate: str,
    report_dir: str | None,
    step: Callable[[str], None],
    quantization: Quantization,
) -> dict[str, Any]:
    from mtiasim import workloads

    step(f"building {name}")
    t0 = time.perf_counter()
    w = workloads.build(
        name, batch=batch, seed=seed, max_rows=max_rows, materialize=functional, distribution=distribution
    )
    t_build = time.perf_counter() - t0
    step("compiling")
    t0 = time.perf_counter()
    cm = compile(
        w.model,
        w.example_inputs,
        chip=chip,
        mode=mode,
        precision=precision,
        fidelity=fidelity,
        name=name,
        quantization=quantization,
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
    if functional:
        step("checking against PyTorch on the CPU")
        numerics = cm.check()
        with torch.no_grad():
            ref = w.model(*w.example_inputs)
        # the graph's fp32 meaning is the model's: the same numbers as eager PyTorch
        eager_err = float((out.to(torch.float64) - ref.to(torch.float64)).abs().max())
        rel = (out.to(torch.float64) - ref.to(torch.float64)).abs() / ref.to(torch.float64).abs().clamp_min(
            1e-6
        )
        numerics["max_rel_err"] = float(rel.max())
        numerics["passed"] = numerics["passed"] and eager_err <= numerics["max_abs_err"] * (1 + 1e-9)
        res["numerics"] = numerics
        if check:
            res["check"] = {k: v for k, v in numerics.items() if k != "outputs"}
    if report_dir:
        step("writing the HTML report")
        from mtiasim.report.html import write_report

        res["report"] = str(write_report(res, report_dir, chip=chip))
    if trace:
        step("writing the trace")
        res["trace"] = _write_trace(report, chip, trace, trace_aggregate, res)
    return res


def _write_trace(report: Any, chip: Chip, path: str, aggregate: str, res: dict[str, Any]) -> dict[str, Any]:
    from mtiasim.report.trace import chrome_trace, write_trace

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
