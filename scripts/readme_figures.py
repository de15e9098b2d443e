"""Print the README's example outputs and validation table, freshly computed (paste them into README.md).

.venv/bin/python scripts/readme_figures.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MTIASIM = str(Path(sys.executable).parent / "mtiasim")

EXAMPLES = [
    ["bench", "gemm", "--m", "2048", "--k", "4096", "--n", "4096", "--dtype", "int8", "--placement", "sram"],
    ["bench", "tbe", "--batch", "256", "--pooling", "50", "--rows", "1000000", "--dim", "256"],
    ["bench", "op", "quantize", "--placement", "dram"],
]


def run(args: list[str]) -> str:
    return subprocess.run([MTIASIM, *args], check=True, capture_output=True, text=True).stdout


ENERGY_CASES = [
    (
        "GEMM 2048x4096x4096 int8, SRAM",
        ["bench", "gemm", "--m", "2048", "--k", "4096", "--n", "4096", "--json"],
    ),
    (
        "TBE B256 L50 1M rows D256",
        ["bench", "tbe", "--batch", "256", "--pooling", "50", "--rows", "1000000", "--dim", "256", "--json"],
    ),  # fmt: skip
    ("dlrm-kaggle B256", ["run", "dlrm-kaggle", "--batch", "256", "--json"]),
    ("dlrm-v2-mlperf B2048", ["run", "dlrm-v2-mlperf", "--batch", "2048", "--json"]),
]


def energy_table() -> None:
    rows = [(name, json.loads(run(args))) for name, args in ENERGY_CASES]
    comps = sorted({k for _, r in rows for k in r["energy_breakdown_j"] if not k.startswith("card_")})
    comps = sorted(comps, key=lambda k: -max(r["energy_breakdown_j"].get(k, 0) for _, r in rows))
    print("| | " + " | ".join(name for name, _ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for label, key in (
        ("chip W avg (peak)", None),
        ("card W", "card_power_w"),
        ("platform W", "platform_power_w"),
    ):
        cells = []
        for _, r in rows:
            cells.append(
                f"{r['avg_power_w']:.2f} ({r['peak_power_w']:.2f})" if key is None else f"{r[key]:.2f}"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| chip energy | " + " | ".join(f"{r['energy_j'] * 1e6:,.1f} uJ" for _, r in rows) + " |")
    for k in comps:
        cells = []
        for _, r in rows:
            total = sum(v for c, v in r["energy_breakdown_j"].items() if not c.startswith("card_"))
            cells.append(f"{100 * r['energy_breakdown_j'].get(k, 0.0) / total:.1f} %")
        print(f"| {k} | " + " | ".join(cells) + " |")
    per_w = []
    for _, r in rows:
        pw = r.get("tops_per_w") or r.get("gbps_per_w") or r.get("samples_per_s_per_w")
        unit = "TOPS/W" if "tops_per_w" in r else ("GB/s/W" if "gbps_per_w" in r else "samples/s/W")
        per_w.append(f"{pw['chip']:,.3g} / {pw['card']:,.3g} / {pw['platform']:,.3g} {unit}")
    print("| per W chip / card / platform | " + " | ".join(per_w) + " |")


def main() -> int:
    print("## examples\n```console")
    for args in EXAMPLES:
        print("$ mtiasim " + " ".join(args))
        print(run(args).rstrip())
    print("```\n\n## peaks\n```console\n$ mtiasim chip show mtia-v1 | grep -A12 'derived peaks'")
    lines = run(["chip", "show", "mtia-v1"]).rstrip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("derived peaks"))
    print("\n".join(lines[start : start + 13]))
    print("```\n\n## area\n```console\n$ mtiasim chip show mtia-v1 | tail -15")
    print("\n".join(lines[-15:]))
    print("```\n\n## validation\n```console\n$ mtiasim validate | tail -11")
    print("\n".join(run(["validate"]).rstrip().splitlines()[-11:]))
    print("```\n\n## energy")
    energy_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
