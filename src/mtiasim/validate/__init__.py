"""Validation against published MTIA v1 silicon measurements (ISCA'23 Figs 10, 12, 13).

The published cases ship as package data (`data/*.csv`, with their source in `data/SOURCE.md`). Each case is
run through the same microbenchmark the CLI runs; only this comparison reads the published numbers, never the
model. Per family (FC in SRAM, FC in LPDDR5, TBE, other operators): MAPE and Pearson r.

Per watt: the paper's charts give TOPS/W and GB/s/W, dividing throughput by a fixed 65 W per card (780 W
platform / 12 cards). Where a case has a published per-watt value it is compared twice: with the model's
platform power (modelled card power plus the card's share of the rest of the server, which equals 65 W only at
full load), and with the paper's fixed divisor (which only re-expresses the throughput error).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from mtiasim.bench.gemm import bench_gemm
from mtiasim.bench.ops import bench_op
from mtiasim.bench.tbe import bench_tbe
from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import dpe_ops_per_s

FAMILIES = ("fc_sram", "fc_dram", "tbe", "ops")
GATE_MAPE_PCT = 10.0  # in-sample, per family (the gate of `make test`)
# Families still above the gate: their own, looser gate until the missing mechanism is found (none now: TBE
# reached 10 % with its bag-level row buffer and the benchmark's launches in flight, docs/memory.md §5).
GATE_EXCEPTIONS_PCT: dict[str, float] = {}


def gate_pct(family: str) -> float:
    """The in-sample MAPE gate of a family (`make test` fails above it)."""
    return GATE_EXCEPTIONS_PCT.get(family, GATE_MAPE_PCT)


CV_GATE_MAPE_PCT = 12.0  # out of sample (`mtiasim validate --cv`), per family


@dataclass(frozen=True)
class Case:
    family: str
    label: str
    args: dict[str, Any]
    published: float
    unit: str
    metric: str  # the benchmark's JSON key compared with `published`
    source: str
    published_per_w: float | None = None  # the published per-watt value (TOPS/W, GB/s/W), where there is one


@dataclass
class FamilyStats:
    mape_pct: float
    pearson_r: float
    cases: int
    per_w_mape_pct: float | None = None  # modelled platform power
    per_w_paper_mape_pct: float | None = None  # the paper's fixed 65 W divisor


@dataclass
class Report:
    fidelity: str
    chip: str
    cases: list[dict[str, Any]] = field(default_factory=list)
    families: dict[str, FamilyStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "chip": self.chip,
            "fidelity": self.fidelity,
            "gate_mape_pct": GATE_MAPE_PCT,
            "gate_exceptions_pct": dict(GATE_EXCEPTIONS_PCT),
            "families": {
                k: {
                    "mape_pct": round(v.mape_pct, 3),
                    "pearson_r": round(v.pearson_r, 4),
                    "cases": v.cases,
                    "per_w_mape_pct": None if v.per_w_mape_pct is None else round(v.per_w_mape_pct, 3),
                    "per_w_paper_mape_pct": None
                    if v.per_w_paper_mape_pct is None
                    else round(v.per_w_paper_mape_pct, 3),
                }
                for k, v in self.families.items()
            },
            "cases": self.cases,
        }

    def passed(self) -> bool:
        return all(f.mape_pct <= gate_pct(name) for name, f in self.families.items())


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("mtiasim.validate").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def cases() -> list[Case]:
    """Every published case, in file order."""
    out: list[Case] = []
    for r in _rows("fc.csv"):
        m, k, n = int(r["m"]), int(r["k"]), int(r["n"])
        fam = "fc_sram" if r["placement"] == "sram" else "fc_dram"
        out.append(
            Case(
                fam,
                f"fc {m}x{k}x{n} {r['dtype']} {r['placement']}",
                {"m": m, "k": k, "n": n, "dtype": r["dtype"], "placement": r["placement"]},
                float(r["target_tops"]),
                "TOPS",
                "tops",
                "ISCA23 Fig 10 (TOPS/W x 65 W)",
                float(r["published_tops_per_watt"]),
            )
        )
    for r in _rows("tbe.csv"):
        b, lp, rows, d = int(r["batch"]), int(r["pooling"]), int(r["rows"]), int(r["dim"])
        out.append(
            Case(
                "tbe",
                f"tbe B{b} L{lp} rows {rows} D{d}",
                {"batch": b, "pooling": lp, "rows": rows, "dim": d},
                float(r["target_gbps"]),
                "GB/s",
                "gbps",
                "ISCA23 Fig 12 (GB/s/W x 65 W)",
                float(r["published_gbps_per_watt"]),
            )
        )
    for r in _rows("ops.csv"):
        out.append(
            Case(
                "ops",
                f"{r['op']} {r['m']}x{r['k']}x{r['n']} {r['placement']}",
                {
                    "op": r["op"],
                    "m": int(r["m"]),
                    "k": int(r["k"]),
                    "n": int(r["n"]),
                    "placement": r["placement"],
                },
                float(r["published_gbps"]),
                "GB/s",
                "gbps",
                "ISCA23 Fig 13",
            )
        )
    return out


def predict(case: Case, chip: Any = "mtia-v1", fidelity: str = "event") -> dict[str, Any]:
    fn: Callable[..., dict[str, Any]] = {
        "fc_sram": bench_gemm,
        "fc_dram": bench_gemm,
        "tbe": bench_tbe,
        "ops": bench_op,
    }[case.family]
    return fn(**case.args, chip=chip, fidelity=fidelity)


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


UTILIZED = ("compute", "sram", "dram", "noc")  # resources whose busy fraction a prediction reports


def explain(res: dict[str, Any], peak_tops: float | None) -> dict[str, Any]:
    """Why a prediction is what it is: the class the time is charged to (and its share of the time), how busy
    each resource was, and the busiest resource that does not bind, with how much faster the binding one would
    have to be before that one binds (``headroom_x`` = 1 / its utilization)."""
    att = res.get("attribution_us") or {}
    total = sum(att.values())
    bound = res.get("bound")
    util = {k: float(v) for k, v in (res.get("resource_utilization") or {}).items() if k in UTILIZED}
    if peak_tops and res.get("tops") is not None:
        util["compute"] = float(res["tops"]) / peak_tops
    out: dict[str, Any] = {
        "bound": bound,
        "bound_share_pct": round(100.0 * att.get(bound, 0.0) / total, 1) if total > 0 and bound else None,
        "time_pct": {
            k: round(100.0 * v / total, 1) for k, v in sorted(att.items(), key=lambda kv: -kv[1]) if total > 0
        },
        "utilization_pct": {k: round(100.0 * v, 1) for k, v in sorted(util.items())},
    }
    others = {k: v for k, v in util.items() if k != bound and v > 0}
    if others:
        nxt = max(others, key=lambda k: others[k])
        out["next"] = nxt
        out["headroom_x"] = round(1.0 / others[nxt], 2)
    return out


def explain_line(e: dict[str, Any]) -> str:
    """One line of `explain`: ``compute 64%, dispatch 20%, latency 9% of the time; next sram 63% busy (binds
    at 1.6x)`` (the three largest shares of the time)."""
    shares = [f"{k} {v:.0f}%" for k, v in list(e.get("time_pct", {}).items())[:3] if v >= 1]
    line = ", ".join(shares) + " of the time" if shares else str(e.get("bound"))
    if "next" in e:
        busy = e["utilization_pct"][e["next"]]
        line += f"; next {e['next']} {busy:.0f}% busy (binds at {e['headroom_x']:.1f}x)"
    return line


def validate(
    chip: Any = "mtia-v1",
    fidelity: str = "event",
    families: Iterable[str] | None = None,
    progress: Callable[[int, int, Case], None] | None = None,
) -> Report:
    wanted = tuple(families) if families else FAMILIES
    for f in wanted:
        if f not in FAMILIES:
            raise UsageError(f"--family: unknown family {f!r} (known: {', '.join(FAMILIES)})")
    todo = [c for c in cases() if c.family in wanted]
    chip_name = chip if isinstance(chip, str) else chip.name
    report = Report(fidelity, chip_name)
    per: dict[str, list[tuple[float, float]]] = {}
    per_w: dict[str, list[tuple[float, float, float]]] = {}
    chip_obj = load_chip(chip) if isinstance(chip, str) else chip
    peak_tops = dpe_ops_per_s(chip_obj, DType.INT8) / 1e12
    for i, case in enumerate(todo):
        if progress:
            progress(i, len(todo), case)
        res = predict(case, chip, fidelity)
        pred = float(res[case.metric])
        err = (pred - case.published) / case.published * 100.0
        watts: dict[str, Any] = {}
        rates_per_w = res.get(f"{case.metric}_per_w")
        if case.published_per_w is not None and rates_per_w:
            platform, paper = float(rates_per_w["platform"]), float(rates_per_w["paper"])
            per_w.setdefault(case.family, []).append((case.published_per_w, platform, paper))
            watts = {
                "published_per_w": case.published_per_w,
                "predicted_per_w": round(platform, 5),
                "per_w_error_pct": round((platform - case.published_per_w) / case.published_per_w * 100, 3),
                "predicted_per_w_paper": round(paper, 5),
                "platform_power_w": res.get("platform_power_w"),
                "avg_power_w": res.get("avg_power_w"),
            }
        report.cases.append(
            {
                "family": case.family,
                "case": case.label,
                "unit": case.unit,
                "published": case.published,
                "predicted": round(pred, 4),
                "error_pct": round(err, 3),
                "bound": res.get("bound"),
                "explain": explain(res, peak_tops if case.family.startswith("fc") else None),
                "seconds": res.get("seconds"),
                "source": case.source,
                **watts,
            }
        )
        per.setdefault(case.family, []).append((case.published, pred))
    for fam, pairs in per.items():
        pub = [p for p, _ in pairs]
        pred = [q for _, q in pairs]
        mape = sum(abs(q - p) / p for p, q in pairs) / len(pairs) * 100.0
        report.families[fam] = FamilyStats(mape, pearson(pub, pred), len(pairs))
        if fam in per_w:
            trip = per_w[fam]
            report.families[fam].per_w_mape_pct = sum(abs(q - p) / p for p, q, _ in trip) / len(trip) * 100
            report.families[fam].per_w_paper_mape_pct = (
                sum(abs(q - p) / p for p, _, q in trip) / len(trip) * 100
            )
    return report
