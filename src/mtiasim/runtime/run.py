"""`mtiasim run WORKLOAD`: build a zoo model, compile it, run one batch (after warm-up batches), report.

In timing mode the tables are full size and virtual unless `max_rows` caps them. `check` runs the model
functionally on tables capped at `max_rows` (default `CHECK_MAX_ROWS`), runs the same model in PyTorch on the
CPU and compares: the error must stay within the precision's tolerance (`TOLERANCE`, absolute, on the model's
outputs, which the zoo's models squash into (0, 1) with a sigmoid).
"""

from __future__ import annotations

import time
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
) -> dict[str, Any]:
    from mtiasim import workloads

    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if check:
        mode = "both" if mode == "timing" else mode
        max_rows = max_rows or CHECK_MAX_ROWS
    functional = mode in ("functional", "both")
    if functional and max_rows is None:
        max_rows = CHECK_MAX_ROWS
    t0 = time.perf_counter()
    w = workloads.build(
        name, batch=batch, seed=seed, max_rows=max_rows, materialize=functional, distribution=distribution
    )
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    cm = compile(
        w.model, w.example_inputs, chip=chip, mode=mode, precision=precision, fidelity=fidelity, name=name
    )
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup):
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
    return res
