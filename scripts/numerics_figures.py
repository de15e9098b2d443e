"""The README's numerics table: per zoo workload and precision, the largest error of the output against the
model in fp32, the largest expected error (sigma) and the largest bound docs/numerics.md gives for it (functional runs, batch 256, tables capped
at 100,000 rows, the example batch calibrating static int8 and a fresh batch measured).

.venv/bin/python scripts/numerics_figures.py
"""

from __future__ import annotations

import warnings

import torch

import mtiasim
from mtiasim import NumericsWarning, workloads

SCHEMES = [("int8", "static"), ("int8", "dynamic"), ("fp16", None), ("bf16", None)]


def main() -> None:
    warnings.simplefilter("ignore", NumericsWarning)
    print("| workload | " + " | ".join(f"{p} {s or ''}".strip() for p, s in SCHEMES) + " |")
    print("|---|" + "---:|" * len(SCHEMES))
    for name in workloads.names():
        cells = []
        for precision, scheme in SCHEMES:
            w = workloads.build(name, batch=256, seed=0, max_rows=100_000, materialize=True)
            fresh = workloads.build(name, batch=256, seed=1, max_rows=100_000, materialize=True)
            cm = mtiasim.compile(
                w.model, w.example_inputs, mode="functional", precision=precision, quantization=scheme
            )
            with torch.no_grad():
                cm(*fresh.example_inputs)
            res = cm.check()
            mark = "" if res["passed"] else " FAILED"
            cells.append(f"{res['max_abs_err']:.2g} / {res['max_sigma']:.2g} / {res['max_bound']:.2g}{mark}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
