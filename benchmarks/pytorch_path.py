"""Speed and scale of the PyTorch path (issue #3): prints figures, asserts nothing.

    .venv/bin/python benchmarks/pytorch_path.py [--quick]

- slowdown = median wall time of a simulated call / median wall time of a PyTorch CPU eager call of the same
  model and batch, in one process, compile excluded. Every call (eager and simulated, warm-up included) gets
  fresh inputs, as a serving run has them: the workload's inputs drawn with seeds 1, 2, ... (the model's own
  weights are seed 0); both sides see the same sequence. The simulated calls carry the SRAM cache state from
  call to call, as a serving run would. Goals: dlrm-v2-mlperf (rows capped, int8) at batch 2048 <= 1x in
  timing mode, <= 5x in functional mode; dlrm-kaggle at batch 512 reported.
- `mtiasim run dlrm-v2-mlperf --batch 2048 --json` (full size, tables virtual) as a fresh process: its wall
  time (goal <= 5 s; median of 3) and peak RSS (goal <= 1 GB), and beside it the wall time of a process that only
  imports what the run imports (torch, torch.export, torchrec, mtiasim): the floor under any speed-up of the simulator.
- compile time of dlrm-v2-mlperf (goal <= 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from mtiasim import compile as mtia_compile
from mtiasim import workloads

ROWS_CAP = 100_000


def median_wall_s(fn, batches: list[tuple]) -> float:
    """Median wall time of `fn(*inputs)` over `batches` (one call each)."""
    times = []
    for inputs in batches:
        t0 = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def fresh_inputs(name: str, batch: int, calls: int) -> list[tuple]:
    """`calls` batches of inputs of `name`, drawn with seeds 1..calls (tables virtual: only the inputs are used)."""
    return [
        workloads.build(name, batch=batch, seed=s, max_rows=ROWS_CAP).example_inputs
        for s in range(1, calls + 1)
    ]


def slowdown(name: str, batch: int, mode: str, repeats: int) -> dict[str, float]:
    w = workloads.build(name, batch=batch, seed=0, max_rows=ROWS_CAP, materialize=True)
    warm, *measured = fresh_inputs(name, batch, repeats + 1)
    with torch.no_grad():
        w.model(*warm)
        eager_s = median_wall_s(w.model, measured)
    t0 = time.perf_counter()
    cm = mtia_compile(w.model, w.example_inputs, mode=mode, precision="int8", name=name)
    compile_s = time.perf_counter() - t0
    cm(*warm)  # the first call (it also leaves the SRAM cache as a previous batch would)
    sim_s = median_wall_s(cm, measured)
    return {"eager_s": eager_s, "sim_s": sim_s, "slowdown": sim_s / eager_s, "compile_s": compile_s}


RUN_COMMAND = ["-m", "mtiasim.cli", "run", "dlrm-v2-mlperf", "--batch", "2048", "--json"]


def full_size() -> dict[str, float]:
    """`mtiasim run dlrm-v2-mlperf --batch 2048 --json` as a fresh process: wall time, peak RSS, its figures.
    Run before any other child process (the peak RSS is the largest of this process's children)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *RUN_COMMAND], check=True, capture_output=True, text=True)
    wall_s = time.perf_counter() - t0
    rep = json.loads(out.stdout)
    return {
        "wall_s": wall_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "latency_us": rep["latency_us"],
        "samples_per_s": rep["samples_per_s"],
    }


# what any run of the model must import (torch.export._trace: what torch.export loads when it first runs, with
# torch._dynamo, AOTAutograd and networkx), under the command line's garbage-collection policy (`mtiasim.gcpolicy`),
# ending as the command line ends (`mtiasim.cli.end_process`)
IMPORTS_ONLY = (
    "import os\n"
    "from mtiasim.gcpolicy import deferred_collections\n"
    "with deferred_collections():\n"
    "    import torch, torch.export._trace, torchrec.models.dlrm, mtiasim.run.workload\n"
    "os._exit(0)"
)


def import_floor_s() -> float:
    """Wall time of a fresh process that only imports what `RUN_COMMAND` imports (torch, torch.export and the
    torch._dynamo and AOTAutograd it loads, torchrec, mtiasim): the part of the process no simulator speed-up can
    remove."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS_ONLY], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repeat, skip the functional dlrm-v2 slowdown")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"mtiasim PyTorch-path benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    runs = []  # full-size runs alternating with import-only processes: medians of 3 (1 with --quick)
    for _ in range(repeats):
        runs.append((full_size(), import_floor_s()))
    fs = sorted((r[0] for r in runs), key=lambda f: f["wall_s"])[len(runs) // 2]
    floor_s = sorted(r[1] for r in runs)[len(runs) // 2]
    print(
        f"`mtiasim run dlrm-v2-mlperf --batch 2048 --json` (full size): {fs['wall_s']:.2f} s wall   goal <= 5 s"
        f"   (median of {len(runs)} fresh processes)"
    )
    print(
        f"  of which imports alone (torch, torch.export, torchrec, mtiasim; a process that only imports them): {floor_s:.2f} s"
    )
    print(f"  peak RSS {fs['peak_rss_mb']:.0f} MB   goal <= 1024 MB")
    print(f"  simulated latency {fs['latency_us']:.0f} us, {fs['samples_per_s']:,.0f} samples/s")
    cases = [
        ("dlrm-v2-mlperf", 2048, "timing", "goal <= 1x"),
        ("dlrm-kaggle", 512, "timing", "reported"),
        ("dlrm-kaggle", 512, "functional", "reported"),
    ]
    if not args.quick:
        cases.insert(1, ("dlrm-v2-mlperf", 2048, "functional", "goal <= 5x"))
    for name, batch, mode, goal in cases:
        r = slowdown(name, batch, mode, repeats)
        print(
            f"slowdown {name} B{batch} {mode:<10} (rows capped {ROWS_CAP:,}): {r['slowdown']:6.2f}x   "
            f"(call {r['sim_s']:.3f} s / eager {r['eager_s']:.3f} s; compile {r['compile_s']:.2f} s)   {goal}"
        )
    print(f"benchmark process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
