"""Which corpus models (tests/corpus) `torch.compile(model, backend=mtiasim.backend(...))` captures whole.

    PYTHONPATH=src python scripts/corpus_dynamo.py [--only NAME ...]

For every model: Dynamo's graph breaks (`torch._dynamo.explain`), then whether the backend's fp16 numbers are
the export path's (`mtiasim.compile`), bit for bit. One line per model, then the counts. Deterministic (seeded
models, no timings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.corpus.check import load_fbgemm_ops  # noqa: E402

load_fbgemm_ops()  # before anything imports mtiasim's front end

import torch  # noqa: E402
import torch._dynamo as dynamo  # noqa: E402
from tests.corpus import select  # noqa: E402

import mtiasim  # noqa: E402


def _flat(tree) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "values") and not callable(x))
    out: list[torch.Tensor] = []
    for leaf in leaves:
        out += [leaf] if isinstance(leaf, torch.Tensor) else _flat(leaf.values())
    return out


def status(model, inputs) -> tuple[int | None, str]:
    """(graph breaks, what the backend gave): "same", "differs", or the first line of its error."""
    dynamo.reset()
    try:
        breaks = dynamo.explain(model)(*inputs).graph_break_count
    except Exception as e:  # noqa: BLE001 - Dynamo's refusal is this model's result
        return None, f"explain failed: {str(e).splitlines()[0][:120]}"
    dynamo.reset()
    try:
        compiled = torch.compile(model, backend=mtiasim.backend(mode="functional", precision="fp16"))
        exported = mtiasim.compile(model, inputs, mode="functional", precision="fp16")
        with torch.no_grad():
            got, want = _flat(compiled(*inputs)), _flat(exported(*inputs))
    except Exception as e:  # noqa: BLE001
        return breaks, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    finally:
        dynamo.reset()
    same = len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    return breaks, "same" if same else "differs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    models = [m for m in select() if args.only is None or m.name in args.only]
    whole = same = 0
    for m in models:
        model, inputs = m.build()
        breaks, result = status(model, inputs)
        whole += breaks == 0
        same += result == "same"
        print(f"{m.name:34s} breaks {breaks if breaks is not None else '-':>2}  {result}")
    print(f"\n{len(models)} models: {whole} captured in one graph, {same} give the export path's numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
