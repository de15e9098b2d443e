"""`mtiasim run WORKLOAD`: build a zoo model (or load a user's, `sources`), compile it, run one batch (after
warm-up batches), report.

In timing mode the tables are full size and virtual unless `max_rows` caps them. `check` runs the model
functionally on tables capped at `max_rows` (default `CHECK_MAX_ROWS`), runs the same model in PyTorch on the
CPU and compares: every output element must be within the error bound that follows from the numerics
specification (docs/numerics.md, `CompiledModel.check`). Every functional run reports that comparison
(`numerics`: per output the error against fp32 and its bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtiasim.compiler import Quantization
from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw import Chip
from mtiasim.report.atomic import make_dirs, remove_if_empty
from mtiasim.run.config import DEFAULT_BATCH, DEFAULT_DISTRIBUTION, DEFAULT_SEED, RunConfig
from mtiasim.run.limits import MAX_BATCH, MAX_WARMUP, check_host_memory, int_arg
from mtiasim.run.sources import is_user_model, load_user_model
from mtiasim.runtime.api import compile

CHECK_MAX_ROWS = 100_000


@dataclass
class _Source:
    """What runs: the model, the inputs of the measured batch, those of each warm-up batch, the reference."""

    model: Any
    args: tuple
    kwargs: dict
    name: str | None  # the compiled graph's name (None: the model's class name)
    table_rows: str
    warmup_inputs: Callable[[int], tuple[tuple, dict]]  # warm-up batch i -> (args, kwargs)
    eager: Callable[[], Any]  # the model's outputs in PyTorch on the CPU
    extra: dict[str, Any] = field(default_factory=dict)  # what the JSON says of where the model came from


def run_workload(
    config: RunConfig | str,
    /,
    *,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build (or load), compile and run a workload; the run's JSON. `config` is a `RunConfig` or the workload's
    name, `options` its fields (`run_workload("dlrm-kaggle", batch=64)` is `run_workload(RunConfig("dlrm-kaggle",
    batch=64))`). The workload is a zoo workload or a user's model (`FILE.pt2`, `FILE.py:FUNCTION`, see
    `sources`; `inputs` a file of inputs for the archive). `trace` writes a Perfetto trace (Chrome JSON) of the
    measured batch, `report_dir` an HTML report; `progress(step)` is told each step as it starts. Every option
    applies to every model source, except those that shape a zoo workload (`batch`, `max_rows`, `seed`,
    `distribution`): given with a user's model they are a UsageError.

    Arguments, the chip, the output paths and the host memory the run would need (`limits.check_host_memory`)
    are checked before anything is built: a run that cannot finish fails in a second, with a UsageError."""
    config = RunConfig(config, **options) if isinstance(config, str) else config.replace(**options)
    name, batch, mode, check = config.workload, config.batch, config.mode, config.check
    max_rows, seed, warmup, distribution = config.max_rows, config.seed, config.warmup, config.distribution
    trace, trace_aggregate, report_dir, inputs = (
        config.trace,
        config.trace_aggregate,
        config.report_dir,
        config.inputs,
    )

    def step(what: str) -> None:
        if progress is not None:
            progress(what)

    user = is_user_model(name)
    if user:
        _refuse_zoo_options(name, batch=batch, max_rows=max_rows, seed=seed, distribution=distribution)
    elif inputs is not None:
        raise UsageError(f"--inputs applies to a model file (FILE.pt2); {name} is a zoo workload")
    batch = int_arg("--batch", DEFAULT_BATCH if batch is None else batch, 1, MAX_BATCH)
    seed = int_arg("--seed", DEFAULT_SEED if seed is None else seed, 0)
    distribution = distribution or DEFAULT_DISTRIBUTION
    warmup = int_arg("--warmup", warmup, 0, MAX_WARMUP)
    if max_rows is not None:
        max_rows = int_arg("--max-rows", max_rows, 1)
    chip_ = config.chip_model()
    quant = Quantization.parse(config.quantization)
    if check:
        mode = "both" if mode == "timing" else mode
        max_rows = max_rows or (None if user else CHECK_MAX_ROWS)
    functional = mode in ("functional", "both")
    if functional and max_rows is None and not user:
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
        if not user:
            check_host_memory(
                name,
                batch=batch,
                seed=seed,
                max_rows=max_rows,
                functional=functional,
                distribution=distribution,
            )
        step(f"{'loading' if user else 'building'} {name}")
        t0 = time.perf_counter()
        if user:
            source = _user_source(name, inputs)
        else:
            source = _zoo_source(name, batch, seed, max_rows, distribution, functional, chip_.dram.bytes)
        return _run(
            name, source, build_s=time.perf_counter() - t0, chip=chip_, precision=config.precision, mode=mode, fidelity=config.fidelity, check=check,
            functional=functional, warmup=warmup, trace=trace, trace_aggregate=trace_aggregate,
            report_dir=report_dir, step=step, quantization=quant, fallback=config.fallback,
        )  # fmt: skip
    except BaseException:
        remove_if_empty(created)  # a failed run leaves no empty report folder behind
        raise


def _refuse_zoo_options(name: str, **given: Any) -> None:
    """The options that shape a zoo workload have no meaning for a user's model: one line if any is given."""
    for key, value in given.items():
        if value is not None:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} applies to zoo workloads; {name} runs on its own example inputs")


def _zoo_source(
    name: str,
    batch: int,
    seed: int,
    max_rows: int | None,
    distribution: str,
    functional: bool,
    dram_bytes: int,
) -> _Source:
    from mtiasim import workloads

    def build(dense_weights: bool) -> workloads.Workload:
        return workloads.build(
            name, batch=batch, seed=seed, max_rows=max_rows, materialize=functional, distribution=distribution,
            dense_weights=dense_weights,
        )  # fmt: skip

    # timing reads no weight values: a timing run compiles the model of shapes only (no dense weights drawn,
    # none quantized) unless a buffer of the model carries data (DLRM's interaction indices)
    w = build(dense_weights=functional)
    if not functional and not workloads.shape_only(w.model):
        w = build(dense_weights=True)
    if w.table_bytes_int8 > dram_bytes:  # before minutes of export and compilation
        raise CapacityError(
            f"{name}: its tables need {w.table_bytes_int8:,} B ({w.table_bytes_int8 / 1e9:.1f} GB) even as int8 rows, "
            f"over the chip's LPDDR5 ({dram_bytes:,} B, {dram_bytes / 1e9:.1f} GB): cap them with --max-rows or "
            f"shard them across cards (mtiasim shard {name})"
        )

    def warmup_inputs(i: int) -> tuple[tuple, dict]:
        # fresh requests (other indices) warm the SRAM cache, as a serving system's previous batches would
        return w.inputs(seed + 1 + i), {}

    def eager() -> Any:
        with torch.no_grad():
            return w.model(*w.example_inputs)

    rows = "full (virtual)" if max_rows is None else f"capped at {max_rows}"
    return _Source(w.model, w.example_inputs, {}, name, rows, warmup_inputs, eager)


def _user_source(spec: str, inputs: str | None) -> _Source:
    um = load_user_model(spec, inputs)
    # no generator of other requests: the warm-up batches repeat the example inputs
    return _Source(
        um.model, um.args, um.kwargs, None, "as in the model", lambda i: (um.args, um.kwargs), um.eager,
        {"source": um.kind, "inputs": um.inputs_from},
    )  # fmt: skip


def _run(
    name: str,
    source: _Source,
    *,
    build_s: float,
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
    fallback: str | None = None,
) -> dict[str, Any]:
    step("compiling")
    t0 = time.perf_counter()
    cm = compile(
        source.model,
        source.args,
        kwargs=source.kwargs,
        chip=chip,
        mode=mode,
        precision=precision,
        fidelity=fidelity,
        name=source.name,
        quantization=quantization,
        fallback=fallback,
    )
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup):
        step(f"warm-up batch {i + 1}/{warmup}")
        args, kwargs = source.warmup_inputs(i)
        cm.warm(*args, **kwargs)  # it moves the SRAM cache's state; nothing else carries to the next call
    t_warm = time.perf_counter() - t0
    step("running the batch")
    t0 = time.perf_counter()
    out = cm(*source.args, **source.kwargs)
    t_run = time.perf_counter() - t0
    report = cm.report
    assert report is not None
    res: dict[str, Any] = {"workload": name, **source.extra, **report.to_json()}
    res["table_rows"] = source.table_rows
    res["warmup_batches"] = warmup
    res["simulator_s"] = {
        "build": round(build_s, 3),
        "compile": round(t_compile, 3),
        "warmup": round(t_warm, 3),
        "run": round(t_run, 3),
    }
    if functional:
        step("checking against PyTorch on the CPU")
        numerics = cm.check()
        # the graph's fp32 meaning is the model's: the same numbers as eager PyTorch
        eager_err, numerics["max_rel_err"] = _errors(out, source.eager())
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


def _errors(out: Any, ref: Any) -> tuple[float, float]:
    """The largest absolute and relative difference between the floating-point tensors of two outputs (any
    nesting of tuples, lists and dicts)."""
    pairs = zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref), strict=True)
    abs_err, rel_err = 0.0, 0.0
    for got, want in pairs:
        if not (isinstance(got, torch.Tensor) and got.is_floating_point() and got.numel()):
            continue
        diff = (got.to(torch.float64) - want.to(torch.float64)).abs()
        abs_err = max(abs_err, float(diff.max()))
        rel_err = max(rel_err, float((diff / want.to(torch.float64).abs().clamp_min(1e-6)).max()))
    return abs_err, rel_err


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
        offset_s=0.0,  # the device's nodes are on the call's timeline, after the host side's
        host_spans=[p for p in phases if p[2] > p[1]],
        aggregate=aggregate,
    )
    nbytes = write_trace(path, trace)
    return {"path": path, "bytes": nbytes, "aggregate": trace.get("metadata", {}).get("aggregate", aggregate)}
