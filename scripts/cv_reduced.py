"""Cross-validation of the calibrated constants with progress, on a subset of the groupings or steps.

    PYTHONPATH=src:. .venv/bin/python scripts/cv_reduced.py OUT.json [GROUPINGS] [MAX_ITER]

GROUPINGS: comma-separated, of family, dtype, placement, dimension, table_size (default: family); MAX_ITER: the most
Levenberg-Marquardt steps per fold (default 2). With all five groupings and 4 steps it computes what
`mtiasim validate --cv --json` does (`validate.fit.cv_report`), but prints each step as it goes, so a run cut short
still says how far it got. Only the validation package reads published numbers; this script only calls it.
"""

from __future__ import annotations

import json
import sys
import time

from mtiasim.hw import load_chip
from mtiasim.validate.fit import cv_report


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    t0 = time.time()
    groupings = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("family",)
    max_iter = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    doc = cv_report(
        load_chip("mtia-v1"),
        2,
        groupings=groupings,
        max_iter=max_iter,
        progress=lambda m: print(f"{time.time() - t0:7.1f}s {m}", flush=True),
    )
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
    print(f"total {time.time() - t0:.1f} s, {doc['evaluations']} evaluations")
    for fam, st in doc["families"].items():
        print(fam, st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
