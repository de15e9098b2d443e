"""Fit the `calibrated` constants of the mtia-v1 preset to the public validation set, and write them back.

    .venv/bin/python scripts/calibrate.py [--dry-run] [--iterations N] [--processes P] [--family F ...]

`--family` fits on some families' cases only (e.g. `--family tbe`, a few minutes): a scan of what those cases
want, reported and never written back (the constants are shared by every family).

Only values the preset marks `calibrated` move, each within the physical range the preset gives it (with the
range's source); everything else is published, derived or assumed and stays. The fit itself (objective,
steps, prior) is `mtiasim.validate.fit`: the mean over families (FC SRAM, FC LPDDR5, TBE, other ops) of each
family's mean absolute log error, with a weak pull to the middle of each range. Values that are whole numbers
in hardware (`INTEGER`) are fitted continuously, rounded, and the others re-fitted around them. The script fails
if a fitted value ends on an edge of its range: the range (or a mechanism) would then be wrong.

The model itself never reads a published number: only this script (and `mtiasim validate`) does.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from mtiasim.hw import Chip, load_chip
from mtiasim.validate import FAMILIES, cases
from mtiasim.validate.fit import Evaluator, Fitter, Space, family_stats, on_edge, prepare

PRESET = Path(__file__).resolve().parents[1] / "src" / "mtiasim" / "hw" / "presets" / "mtia-v1.toml"
INTEGER = ("dram.queue_entries",)  # whole numbers in hardware


def write_back(values: dict[str, float]) -> None:
    text = PRESET.read_text()
    for k, value in values.items():
        section, name = k.split(".")
        pattern = re.compile(
            r"(\n\["
            + re.escape(section)
            + r"\](?:(?!\n\[)[\s\S])*?\n"
            + re.escape(name)
            + r" = \{ value = )([-0-9.eE+]+)"
        )
        formatted = f"{value:.4g}"
        if "." not in formatted and "e" not in formatted:
            formatted += ".0"
        text, n = pattern.subn(lambda m, f=formatted: m.group(1) + f, text)
        if n != 1:
            sys.exit(f"calibrate.py: could not find {k} in {PRESET}")
    PRESET.write_text(text)


def report(tag: str, fitter: Fitter, pred: np.ndarray) -> None:
    stats = family_stats(fitter.published, pred, fitter.families)
    print(
        f"{tag}: "
        + ", ".join(f"{f} {stats[f][0]:.2f}% (r {stats[f][1]:.3f})" for f in FAMILIES if f in stats),
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="fit and report, do not write the preset")
    ap.add_argument("--iterations", type=int, default=10, help="most Levenberg-Marquardt steps per fit")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--family",
        action="append",
        choices=FAMILIES,
        help="fit on this family's cases only (implies --dry-run)",
    )
    args = ap.parse_args()
    if args.family:
        args.dry_run = True
    t0 = time.time()
    base: Chip = load_chip("mtia-v1")
    space = Space.of(base)
    preps = prepare(base, [c for c in cases() if c.family in args.family] if args.family else None)
    print(
        f"prepared {len(preps)} cases in {time.time() - t0:.1f} s; fitting {', '.join(space.keys)}",
        flush=True,
    )
    with Evaluator(base, preps, args.processes) as ev:
        fitter = Fitter(ev, space, progress=lambda m: print("  " + m, flush=True))
        start = {k: float(base.value(k)) for k in space.keys}
        u0 = space.unit(start)
        pred0 = fitter.evaluate(u0)
        report("start", fitter, pred0)
        train = range(len(preps))
        res = fitter.fit(train, u0, pred0, max_iter=args.iterations, refresh_jacobian=False)
        values = dict(res.values)
        final = res.predictions
        ints = [k for k in INTEGER if k in values]
        if ints:
            fixed = {k: float(max(1, round(values[k]))) for k in ints}
            values.update(fixed)
            rest = Space.of(base, [k for k in space.keys if k not in ints])
            print(
                "rounded " + ", ".join(f"{k} = {v:g}" for k, v in fixed.items()) + "; re-fitting the others"
            )
            refit = Fitter(ev, rest, progress=lambda m: print("  " + m, flush=True), fixed=fixed)
            # warm start: the other constants' columns of the first fit's (Broyden-updated) Jacobian
            keep = [space.keys.index(k) for k in rest.keys]
            u1 = rest.unit(values)
            res2 = refit.fit(
                train,
                u1,
                refit.evaluate(u1),
                res.final_jacobian[:, keep],
                max_iter=max(2, args.iterations // 2),
                refresh_jacobian=False,
            )
            values.update(res2.values)
            final = res2.predictions
    print(f"{ev.evaluations} evaluations in {time.time() - t0:.0f} s")
    for k in space.keys:
        print(f"  {k:32s} {start[k]:10.4g} -> {values[k]:10.4g}")
    report("end", fitter, final)
    fitted = base.with_values(values, provenance_kind="calibrated")
    edge = on_edge(fitted)
    if not args.dry_run:
        write_back(values)
        print(f"wrote {PRESET}")
    if edge:
        print(f"calibrate.py: fitted value(s) on the edge of their physical range: {', '.join(edge)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
