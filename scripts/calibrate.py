"""Fit the `calibrated` constants of the mtia-v1 preset to the public validation set, and write them back.

    .venv/bin/python scripts/calibrate.py [--dry-run] [--iterations N]

Only values the preset marks `calibrated` move (each within the bounds below); everything else is published,
derived or assumed and stays. The objective is the mean over families (FC SRAM, FC LPDDR5, TBE, other ops) of
each family's mean absolute percentage error, so that no family is traded away for another. The programs of
the cases are built once; each evaluation re-times them on a chip with the trial values.

The model itself never reads a published number: only this script (and `mtiasim validate`) does.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.ops import prepare_op
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.engine import ExecutionResult
from mtiasim.engine.resolve import resolve
from mtiasim.engine.timing import TimingModel, simulate
from mtiasim.engine.work import Memo
from mtiasim.hw import Chip, load_chip
from mtiasim.validate import FAMILIES, Case, cases

PRESET = Path(__file__).resolve().parents[1] / "src" / "mtiasim" / "hw" / "presets" / "mtia-v1.toml"

BOUNDS = {
    "core.cycles_per_command": (1.0, 40.0),
    "core.cycles_per_gather_row": (4.0, 300.0),
    "dram.activate_ns": (0.0, 30.0),
    "dram.stream_efficiency": (0.2, 1.0),
    "dma.outstanding_rows": (1.0, 64.0),
    "dispatch.job_launch_ns": (20.0, 12000.0),
    "host.launch_ns": (100.0, 20000.0),
    "sram.latency_cycles": (20.0, 600.0),
    "dram.latency_ns": (120.0, 1500.0),  # LPDDR5 tCL alone is ~20 ns; controller, cache and NoC add more
}
# calibrated values with a few discrete choices: tried one by one around the continuous fit
DISCRETE = {"sram.cache_line_bytes": (64, 128, 256)}


@dataclass
class Prepared:
    case: Case
    bench: object
    resolved: object
    memo: Memo


def prepare_all(chip: Chip) -> list[Prepared]:
    out = []
    for case in cases():
        if case.family.startswith("fc"):
            b = prepare_gemm(**case.args, chip=chip)
        elif case.family == "tbe":
            b = prepare_tbe(**case.args, chip=chip)
        else:
            b = prepare_op(**case.args, chip=chip)
        out.append(Prepared(case, b, resolve(b.program, chip), Memo()))
    return out


def predict(p: Prepared, chip: Chip) -> float:
    b = p.bench
    model = TimingModel(b.program, p.resolved, chip, b.inputs, p.memo)
    timing = simulate(model, "event")
    res = b.summarize(ExecutionResult("timing", "event", None, timing, p.resolved))
    return float(res[p.case.metric])


def _errors(preps: list[Prepared], chip: Chip) -> list[tuple[str, float]]:
    return [(p.case.family, abs(predict(p, chip) - p.case.published) / p.case.published * 100) for p in preps]


_WORKER: dict[str, list[Prepared]] = {}


def _worker_errors(args: tuple[int, int, dict]) -> list[tuple[str, float]]:
    part, parts, values = args
    base = load_chip("mtia-v1")
    chip = base.with_values(values, provenance_kind="calibrated") if values else base
    return _errors(_WORKER["preps"][part::parts], chip)


class Evaluator:
    """Family MAPEs of a chip, the cases shared out over processes (fork: the prepared cases are inherited)."""

    def __init__(self, preps: list[Prepared], processes: int) -> None:
        self.preps = preps
        self.processes = processes
        self.pool = None
        if processes > 1:
            _WORKER["preps"] = preps
            self.pool = mp.get_context("fork").Pool(processes)

    def family_mape(self, chip: Chip, values: dict | None = None) -> dict[str, float]:
        if self.pool is None:
            errs = _errors(self.preps, chip)
        else:
            chunks = self.pool.map(
                _worker_errors, [(i, self.processes, values or {}) for i in range(self.processes)]
            )
            errs = [e for chunk in chunks for e in chunk]
        out: dict[str, list[float]] = {}
        for fam, e in errs:
            out.setdefault(fam, []).append(e)
        return {f: float(np.mean(v)) for f, v in out.items()}


def family_mape(preps: list[Prepared], chip: Chip) -> dict[str, float]:
    return Evaluator(preps, 1).family_mape(chip)


def calibrated_keys(chip: Chip) -> list[str]:
    keys = [
        k
        for k, v in chip.provenance.items()
        if v.kind == "calibrated" and k not in DISCRETE and not k.startswith("energy.")  # calibrate_power.py
    ]
    missing = [k for k in keys if k not in BOUNDS]
    if missing:
        sys.exit(f"calibrate.py: no bounds for calibrated key(s) {missing}")
    return sorted(keys)


def to_chip(base: Chip, keys: list[str], x: np.ndarray) -> Chip:
    values = {}
    for k, u in zip(keys, x, strict=True):
        lo, hi = BOUNDS[k]
        # the search runs in [0, 1] per key, log-spaced where the range spans a decade or more
        u = min(1.0, max(0.0, float(u)))
        v = (
            math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            if lo > 0 and hi / lo >= 10
            else lo + u * (hi - lo)
        )
        values[k] = v
    return base.with_values(values, provenance_kind="calibrated")


def from_chip(chip: Chip, keys: list[str]) -> np.ndarray:
    out = []
    for k in keys:
        lo, hi = BOUNDS[k]
        v = float(chip.value(k))
        if lo > 0 and hi / lo >= 10:
            out.append((math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)))
        else:
            out.append((v - lo) / (hi - lo))
    return np.clip(np.array(out), 0, 1)


def write_back(chip: Chip, keys: list[str]) -> None:
    text = PRESET.read_text()
    for k in keys:
        section, name = k.split(".")
        value = chip.value(k)
        pattern = re.compile(
            r"(\[" + re.escape(section) + r"\][^\[]*?\n" + re.escape(name) + r" = \{ value = )([-0-9.eE+]+)"
        )
        formatted = f"{value:.4g}" if isinstance(value, float) else str(value)
        if "." not in formatted and "e" not in formatted and isinstance(value, float):
            formatted += ".0"
        text, n = pattern.subn(lambda m, f=formatted: m.group(1) + f, text)
        if n != 1:
            sys.exit(f"calibrate.py: could not find {k} in {PRESET}")
    PRESET.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="fit and report, do not write the preset")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    base = load_chip("mtia-v1")
    keys = calibrated_keys(base)
    t0 = time.time()
    for key, choices in DISCRETE.items():
        scores = {}
        for choice in choices:
            trial = base.with_values({key: choice}, provenance_kind="calibrated")
            scores[choice] = np.mean(list(family_mape(prepare_all(trial), trial).values()))
            print(f"{key} = {choice}: mean family MAPE {scores[choice]:.2f}%", flush=True)
        best_choice = min(scores, key=scores.get)
        base = base.with_values({key: best_choice}, provenance_kind="calibrated")
        if not args.dry_run:
            write_back(base, [key])
    preps = prepare_all(base)
    print(f"prepared {len(preps)} cases in {time.time() - t0:.1f} s; fitting {', '.join(keys)}")
    ev = Evaluator(preps, max(1, min(args.processes, os.cpu_count() or 1)))

    def values_of(x: np.ndarray) -> dict:
        chip = to_chip(base, keys, x)
        return {k: chip.value(k) for k in keys}

    start = ev.family_mape(base)
    print(
        "start: " + ", ".join(f"{f} {start[f]:.2f}%" for f in FAMILIES),
        f"(mean {np.mean(list(start.values())):.2f}%)",
    )
    evals = [0]

    def objective(x: np.ndarray) -> float:
        evals[0] += 1
        fam = ev.family_mape(to_chip(base, keys, x), values_of(x))
        score = float(np.mean(list(fam.values())) + 0.25 * max(fam.values()))
        if evals[0] % 10 == 0:
            print(
                f"  eval {evals[0]}: {score:.3f} " + ", ".join(f"{f} {v:.1f}%" for f, v in fam.items()),
                flush=True,
            )
        return score

    x0 = from_chip(base, keys)
    res = minimize(
        objective, x0, method="Nelder-Mead", options={"maxfev": args.iterations, "xatol": 1e-3, "fatol": 1e-3}
    )
    best = to_chip(base, keys, res.x)
    end = ev.family_mape(best, values_of(res.x))
    print(f"{evals[0]} evaluations in {time.time() - t0:.0f} s")
    for k in keys:
        print(f"  {k:30s} {base.value(k):10.4g} -> {best.value(k):10.4g}")
    print(
        "end:   " + ", ".join(f"{f} {end[f]:.2f}%" for f in FAMILIES),
        f"(mean {np.mean(list(end.values())):.2f}%)",
    )
    if not args.dry_run:
        write_back(best, keys)
        print(f"wrote {PRESET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
