"""Speed of the simulator itself (not a test): prints wall times and simulation rates.

    .venv/bin/python benchmarks/run_all.py

Goals (issue #2): `bench gemm 2048x4096x4096 int8` <= 0.5 s in timing mode and <= 20 s in functional mode.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.engine import execute
from mtiasim.report.trace import chrome_trace

REPEATS = 3


def best_of(fn, repeats: int = REPEATS):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    print(
        f"mtiasim simulator benchmarks on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    rows = []

    # 1. the headline GEMM, timing mode (whole bench call: mapping choice, program build, resolve, timing)
    t, res = best_of(lambda: prepare_gemm(2048, 4096, 4096, "int8", "sram").run())
    rows.append(("bench gemm 2048x4096x4096 int8, timing (event)", t, "goal <= 0.5 s"))

    # engine rates on the same program
    prep = prepare_gemm(2048, 4096, 4096, "int8", "sram")
    t_exec, result = best_of(lambda: execute(prep.program, prep.chip, mode="timing", fidelity="event"))
    commands = len(result.resolved.nodes)
    events = result.timing.events
    rows.append(
        (
            f"  engine: {commands} commands, {events} events",
            t_exec,
            f"{commands / t_exec:,.0f} commands/s, {events / t_exec:,.0f} events/s",
        )
    )

    # 2. functional mode (numbers computed, bit-exact int8)
    t, res = best_of(
        lambda: prepare_gemm(2048, 4096, 4096, "int8", "sram", mode="functional").run(), repeats=1
    )
    rows.append(("bench gemm 2048x4096x4096 int8, functional", t, "goal <= 20 s"))

    # 3. a large TBE in timing mode (1M-row table, batch 2048, pooling 50)
    tbe = prepare_tbe(2048, 50, 1_000_000, 128)
    t, (res, result) = best_of(tbe.run_with_result, repeats=1)
    rows.append(
        ("bench tbe B2048 L50 1M rows dim 128, timing (8 batches)", t, f"{res['gbps']:.0f} GB/s simulated")
    )
    # its Perfetto trace, every command as a slice
    t, trace = best_of(lambda: chrome_trace(tbe.chip, result.timing, aggregate="none"))
    rows.append(
        (
            f"  trace of it: {len(result.timing.nodes):,} commands",
            t,
            f"{len(json.dumps(trace)) / 1e6:.1f} MB of JSON",
        )
    )

    # 4. the CLI end to end (includes interpreter start-up and imports)
    script = Path(sys.executable).parent / "mtiasim"
    cmd = [str(script), "bench", "gemm", "--m", "2048", "--k", "4096", "--n", "4096", "--json"]
    t, _ = best_of(lambda: subprocess.run(cmd, check=True, capture_output=True))
    rows.append(("`mtiasim bench gemm ... --json` process, end to end", t, "includes Python start-up"))

    width = max(len(r[0]) for r in rows)
    for name, secs, note in rows:
        print(f"{name:<{width}}  {secs:8.3f} s   {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
