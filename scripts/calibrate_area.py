"""Fit `area.logic_overhead` of mtia-v1 so that the area model gives the published v1 die (373 mm^2).

    .venv/bin/python scripts/calibrate_area.py [--dry-run]

The model (mtiasim.hw.area) is linear in the overhead: total = overhead x logic + rest, where `logic` is the
cell-level estimate of the PE units, cores and NoC and `rest` the memories and IO. So the fit is one division,
on the v1 die alone. mtia-2i inherits the value; its published die (421 mm^2) is not read by the fit, and the
script prints the model's prediction of it as the out-of-sample check, with how much each coefficient moves it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mtiasim.hw import load_chip
from mtiasim.hw.area import area

PRESETS = Path(__file__).resolve().parents[1] / "src" / "mtiasim" / "hw" / "presets"


def fit(chip_name: str = "mtia-v1") -> float:
    """The logic overhead that makes the model's total equal the chip's published die."""
    chip = load_chip(chip_name).with_values({"area.logic_overhead": 1.0}, provenance_kind="calibrated")
    rep = area(chip)
    kinds = rep.by_kind()
    logic = kinds.get("logic", 0.0)
    rest = rep.total_mm2 - logic
    overhead = (chip.area.published_die_mm2 - rest) / logic
    if overhead < 1:
        sys.exit(
            "calibrate_area.py: the memories and IO alone exceed the die; lower their coefficients first"
        )
    return overhead


def sensitivity(chip_name: str, overhead: float) -> list[tuple[str, float]]:
    """(coefficient, change of the chip's predicted area in % when it is 20 % larger, refitting the overhead)."""
    out = []
    base = load_chip(chip_name).with_values({"area.logic_overhead": overhead}, provenance_kind="calibrated")
    v1 = load_chip("mtia-v1")
    total = area(base).total_mm2
    for key in type(v1.area).model_fields:
        if key in ("published_die_mm2", "logic_overhead") or key.startswith("node_"):
            continue
        bumped = {f"area.{key}": getattr(v1.area, key) * 1.2}
        v1b = v1.with_values({**bumped, "area.logic_overhead": 1.0}, provenance_kind="calibrated")
        rep = area(v1b)
        logic = rep.by_kind()["logic"]
        refit = (v1.area.published_die_mm2 - (rep.total_mm2 - logic)) / logic
        chip = load_chip(chip_name).with_values(
            {**bumped, "area.logic_overhead": refit}, provenance_kind="calibrated"
        )
        out.append((key, 100 * (area(chip).total_mm2 / total - 1)))
    return out


def write(path: Path, key: str, value: float) -> None:
    text = path.read_text()
    pattern = re.compile(r"(\n" + re.escape(key) + r" = \{ value = )([-0-9.eE+]+)")
    text, n = pattern.subn(lambda m: m.group(1) + f"{value:.4g}", text)
    if n != 1:
        sys.exit(f"calibrate_area.py: could not find {key} in {path}")
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the fit, do not rewrite the preset")
    args = ap.parse_args()
    overhead = fit()
    print(f"area.logic_overhead = {overhead:.4g} (fitted on mtia-v1's published die)")
    for name in ("mtia-v1", "mtia-2i"):
        chip = load_chip(name).with_values({"area.logic_overhead": overhead}, provenance_kind="calibrated")
        rep = area(chip)
        role = "fitted" if name == "mtia-v1" else "predicted, out of sample"
        print(
            f"{name}: model {rep.total_mm2:.1f} mm^2, published {rep.published_die_mm2:g} mm^2, "
            f"error {rep.error_pct:+.1f} % ({role})"
        )
    print("mtia-2i's prediction when one coefficient is 20 % larger (the overhead refitted on v1):")
    for key, pct in sensitivity("mtia-2i", overhead):
        print(f"  {key:30s} {pct:+.1f} %")
    if not args.dry_run:
        write(PRESETS / "mtia-v1.toml", "logic_overhead", overhead)
        print("rewrote mtia-v1.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
