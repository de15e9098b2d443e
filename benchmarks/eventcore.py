"""Speed of the event core (not a test): prints figures.

    .venv/bin/python benchmarks/eventcore.py [--quick]

1. Events per second of the event loop alone (`Sim(...).run()`, the model built once), compiled core vs the
   Python core, on the same programs in one process (medians of several runs). Goal (issue 11): >= 1 M/s.
   `--against FILE.so` adds another compiled core (e.g. an earlier eventloop.py built under another module
   name) and the ratio of this one to it, runs interleaved.
2. `bench suite` of 50 distinct GEMMs around 512x1024x1024 (timing mode, event fidelity): in-process time per
   GEMM with the default core (the compiled one when built). Goal: <= 80 ms per GEMM.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.ops import prepare_op
from mtiasim.bench.suite import read_rows, run_row
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.engine import eventcore
from mtiasim.engine.resolve import resolve
from mtiasim.engine.timing import TimingModel
from mtiasim.errors import MtiasimError

PROGRAMS = {
    "gemm 512x1024x1024 int8 sram": lambda: prepare_gemm(512, 1024, 1024, "int8", "sram"),
    "gemm 2048x4096x4096 int8 sram": lambda: prepare_gemm(2048, 4096, 4096, "int8", "sram"),
    "gemm 300x700x260 bf16 dram": lambda: prepare_gemm(300, 700, 260, "bf16", "dram"),
    "tbe B64 L20 50k rows dim 128": lambda: prepare_tbe(64, 20, 50000, 128),
    "batchmatmul 64x128x64 sram": lambda: prepare_op("batchmatmul", 64, 128, 64, "sram"),
}
SUITE_GEMMS = 50
SUITE_SEED = 11


def loop_seconds(module, m: TimingModel, repeats: int) -> tuple[float, int]:
    """Median wall time of the event loop (construction excluded), and its event count."""
    times, events = [], 0
    for _ in range(repeats):
        sim = module.Sim(m, True)
        t0 = time.perf_counter()
        sim.run()
        times.append(time.perf_counter() - t0)
        events = sim.result().events
    return statistics.median(times), events


def load_core(path: Path):
    """A compiled event core from its extension file (module name: the file name up to the first dot)."""
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def event_rates(repeats: int, against: Path | None, rounds: int) -> None:
    compiled, why = eventcore.compiled_core()
    cores = [("python", eventcore.python_core())] + ([("compiled", compiled)] if compiled else [])
    if compiled is None:
        print(f"(compiled core unavailable: {why})")
    if against is not None:
        cores.append(("against", load_core(against)))
    head = " ".join(f"{c + ' ev/s':>15}" for c, _ in cores)
    print(
        f"{'program':<32} {'events':>7} {head}   compiled/python" + ("  compiled/against" if against else "")
    )
    for name, make in PROGRAMS.items():
        prep = make()
        data = {k: np.asarray(v) for k, v in (prep.inputs or {}).items()}
        m = TimingModel(prep.program, resolve(prep.program, prep.chip, None), prep.chip, data)
        rates: list[list[float]] = [[] for _ in cores]
        events = 0
        for _ in range(rounds):  # interleaved, so that a change in the machine's load hits every core alike
            for c, (_core, mod) in enumerate(cores):
                secs, events = loop_seconds(mod, m, repeats)
                rates[c].append(events / secs)
        med = [statistics.median(r) for r in rates]
        ratios = f"x{med[1] / med[0]:.0f}" if compiled else ""
        if against is not None and compiled:
            ratios += f"  x{med[1] / med[2]:.2f}"
        print(f"{name:<32} {events:>7} " + " ".join(f"{r:>15,.0f}" for r in med) + f"   {ratios}")


def suite_csv(path: Path, count: int) -> None:
    """`count` distinct GEMMs around 512x1024x1024 (int8, SRAM), seeded."""
    rng = np.random.default_rng(SUITE_SEED)
    shapes: set[tuple[int, int, int]] = set()
    while len(shapes) < count:
        m, k, n = (int(v) for v in rng.integers((448, 896, 896), (577, 1153, 1153)))
        shapes.add((m, k, n))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "m", "k", "n", "dtype", "placement", "mode"])
        for m, k, n in sorted(shapes):
            w.writerow(["gemm", m, k, n, "int8", "sram", "timing"])


def suite_time(count: int) -> None:
    """Runs the suite's rows in order until `count` have run; rows the GEMM kernel rejects (a ProgramError,
    see the note printed) are counted and skipped."""
    rejected: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemms.csv"
        suite_csv(path, 2 * count)
        per = []
        for line, row in read_rows(path):
            if len(per) == count:
                break
            t0 = time.perf_counter()
            try:
                run_row(row, f"{path}:{line}")
            except MtiasimError:
                rejected.append(f"{row['m']}x{row['k']}x{row['n']}")
                continue
            per.append(time.perf_counter() - t0)
    print(
        f"bench suite, {len(per)} GEMMs around 512x1024x1024 (core: {eventcore.selected()}): "
        f"median {statistics.median(per) * 1e3:.1f} ms, mean {statistics.mean(per) * 1e3:.1f} ms per GEMM "
        "(goal <= 80 ms)"
    )
    if rejected:
        print(
            f"  skipped {len(rejected)} shapes the GEMM kernel rejects (ProgramError): {', '.join(rejected)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and GEMMs")
    ap.add_argument("--against", type=Path, help="another compiled event core (.so) to compare with")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of repeats per core")
    args = ap.parse_args()
    gc.disable()  # as the engine runs (engine.execute): no cyclic-collector pauses in the figures
    event_rates(3 if args.quick else 7, args.against, args.rounds)
    suite_time(10 if args.quick else SUITE_GEMMS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
