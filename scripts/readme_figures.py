"""Print the README's example outputs and validation table, freshly computed (paste them into README.md).

.venv/bin/python scripts/readme_figures.py
"""

from __future__ import annotations

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


def main() -> int:
    print("## examples\n```console")
    for args in EXAMPLES:
        print("$ mtiasim " + " ".join(args))
        print(run(args).rstrip())
    print("```\n\n## peaks\n```console\n$ mtiasim chip show mtia-v1 | tail -13")
    print("\n".join(run(["chip", "show", "mtia-v1"]).rstrip().splitlines()[-13:]))
    print("```\n\n## validation\n```console\n$ mtiasim validate | tail -5")
    print("\n".join(run(["validate"]).rstrip().splitlines()[-5:]))
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
