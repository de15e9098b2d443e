"""Which corpus models (tests/corpus) compile for the simulated chip and match eager PyTorch, and what blocks
the others.

    PYTHONPATH=src python scripts/corpus_status.py [--group public|heldout] [--only NAME ...] [--json]

For every model: `mtiasim.compile(model, inputs, mode="functional", precision=...)` at fp16 and int8, one
call, `CompiledModel.check()` (the error bounds of docs/numerics.md against fp32). One line per model, then
counts per group, the tally of what blocks compilation (the first unsupported op of each failing model) and
an estimate of every missing operator (all ops of the exported model with no device converter). The output is
the same from run to run (seeded models, no timings).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.corpus.check import (  # noqa: E402
    FAILS,
    OK,
    PRECISIONS,
    Outcome,
    check_model,
    load_fbgemm_ops,
    missing_operators,
)

load_fbgemm_ops()  # before anything imports mtiasim's front end

from tests.corpus import GROUPS, CorpusModel, select  # noqa: E402


@dataclass
class ModelStatus:
    model: CorpusModel
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def blockers(self) -> set[str]:
        return {o.blocker for o in self.outcomes.values() if o.status == FAILS and o.blocker}

    def to_json(self) -> dict:
        return {
            "name": self.model.name,
            "group": self.model.group,
            "provenance": self.model.provenance,
            **{p: o.to_json() for p, o in self.outcomes.items()},
            "missing_operators": self.missing,
        }


def measure(entry: CorpusModel) -> ModelStatus:
    status = ModelStatus(entry)
    try:
        model, inputs = entry.build()
        model(*inputs)  # eager must run: a failure here is the corpus's bug, not mtiasim's
    except Exception as err:  # noqa: BLE001 - reported, and the next model runs
        failed = Outcome(FAILS, error_type=type(err).__name__, error=f"eager: {err}".splitlines()[0][:240])
        status.outcomes = dict.fromkeys(PRECISIONS, failed)
        return status
    for precision in PRECISIONS:
        status.outcomes[precision] = check_model(model, inputs, precision)
    status.missing = missing_operators(model, inputs)
    return status


def summary(statuses: list[ModelStatus]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for group in GROUPS:
        members = [s for s in statuses if s.model.group == group]
        if not members:
            continue
        counts = {"models": len(members)}
        for p in PRECISIONS:
            counts[f"{p}_ok"] = sum(s.outcomes[p].status == OK for s in members)
        counts["all_ok"] = sum(all(o.status == OK for o in s.outcomes.values()) for s in members)
        out[group] = counts
    return out


def ranked(counter: Counter) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def report(statuses: list[ModelStatus]) -> dict:
    first = Counter(b for s in statuses for b in s.blockers())
    anywhere = Counter(op for s in statuses for op in s.missing)
    return {
        "models": [s.to_json() for s in statuses],
        "summary": summary(statuses),
        "blockers": dict(ranked(first)),
        "missing_operators": dict(ranked(anywhere)),
    }


def print_text(statuses: list[ModelStatus], doc: dict) -> None:
    width = max(len(s.model.name) for s in statuses)
    for s in statuses:
        print(f"{s.model.name:<{width}}  {s.model.group:<7}")
        for p in PRECISIONS:
            print(f"    {p}: {s.outcomes[p].describe()}")
    print()
    for group, counts in doc["summary"].items():
        per = ", ".join(f"{p} ok {counts[f'{p}_ok']}" for p in PRECISIONS)
        print(f"{group}: {counts['models']} models, {per}, all precisions ok {counts['all_ok']}")
    print("\nblocking (first failure of each model; models blocked):")
    for what, n in doc["blockers"].items():
        print(f"  {n:3d}  {what}")
    print("\nmissing operators anywhere in the exported models (estimate; models needing each):")
    for op, n in doc["missing_operators"].items():
        print(f"  {n:3d}  {op}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", choices=GROUPS, help="only this group")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these models")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # torchrec logs a warning on every KeyedJaggedTensor export
    try:
        chosen = select(args.group, args.only)
    except KeyError as err:
        print(f"corpus_status: {err.args[0]}", file=sys.stderr)
        return 2
    statuses = []
    for entry in chosen:
        statuses.append(measure(entry))
        if not args.json:
            print(f"measured {entry.name}", file=sys.stderr, flush=True)
    doc = report(statuses)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print_text(statuses, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
