"""Speed and scale of the PyTorch path (issue #3): prints figures, asserts nothing.

    .venv/bin/python benchmarks/pytorch_path.py [--quick]

- slowdown = wall time of one simulated call / wall time of one PyTorch CPU eager call of the same model and
  batch, in one process, compile excluded (both after one warm-up call). Goals: dlrm-v2-mlperf (rows capped)
  at batch 2048 <= 1x in timing mode, <= 10x in functional mode; dlrm-kaggle at batch 512 reported.
- full-size dlrm-v2-mlperf at batch 2048 in timing mode (tables virtual): wall time of build + compile + one call
  (goal <= 10 s) and the process's peak RSS (goal <= 1 GB), measured in a fresh subprocess.
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


def median_wall_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def slowdown(name: str, batch: int, mode: str, repeats: int) -> dict[str, float]:
    w = workloads.build(name, batch=batch, seed=0, max_rows=ROWS_CAP, materialize=True)
    with torch.no_grad():
        w.model(*w.example_inputs)  # warm-up
        eager_s = median_wall_s(lambda: w.model(*w.example_inputs), repeats)
    t0 = time.perf_counter()
    cm = mtia_compile(w.model, w.example_inputs, mode=mode, precision="int8", name=name)
    compile_s = time.perf_counter() - t0
    cm(*w.example_inputs)  # warm-up (also warms the SRAM cache as a previous batch would)
    sim_s = median_wall_s(lambda: cm(*w.example_inputs), repeats)
    return {"eager_s": eager_s, "sim_s": sim_s, "slowdown": sim_s / eager_s, "compile_s": compile_s}


FULL_SIZE_CHILD = """
import json, resource, time
t0 = time.perf_counter()
from mtiasim import compile as mtia_compile, workloads
w = workloads.build("dlrm-v2-mlperf", batch=2048, seed=0)
t_build = time.perf_counter()
cm = mtia_compile(w.model, w.example_inputs, mode="timing", precision="int8", name="dlrm-v2-mlperf")
t_compile = time.perf_counter()
cm(*w.example_inputs)
t_call = time.perf_counter()
rep = cm.report
print(json.dumps({
    "import_build_s": t_build - t0, "compile_s": t_compile - t_build, "call_s": t_call - t_compile,
    "total_s": t_call - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "latency_us": rep.latency_s * 1e6, "samples_per_s": rep.samples_per_s,
}))
"""


def full_size() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", FULL_SIZE_CHILD], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    fs = full_size()
    print(
        f"full-size dlrm-v2-mlperf B2048 timing: {fs['total_s']:.2f} s wall (import+build {fs['import_build_s']:.2f}, "
        f"compile {fs['compile_s']:.2f}, call {fs['call_s']:.2f})   goal <= 10 s"
    )
    print(f"  peak RSS {fs['peak_rss_mb']:.0f} MB   goal <= 1024 MB")
    print(f"  simulated latency {fs['latency_us']:.0f} us, {fs['samples_per_s']:,.0f} samples/s")
    cases = [
        ("dlrm-v2-mlperf", 2048, "timing", "goal <= 1x"),
        ("dlrm-kaggle", 512, "timing", "reported"),
        ("dlrm-kaggle", 512, "functional", "reported"),
    ]
    if not args.quick:
        cases.insert(1, ("dlrm-v2-mlperf", 2048, "functional", "goal <= 10x"))
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
