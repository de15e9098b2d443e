"""The HTML page of a serving run (`mtiasim serve ... --report DIR`): the summary, the latency distribution,
the QPS-vs-p99 curve of the server scenario's search and the per-card table; the two charts are matplotlib PNGs
embedded in the page (Agg, no dates in their metadata)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from mtiasim.errors import UsageError
from mtiasim.report.atomic import AtomicFiles, make_dirs
from mtiasim.report.html import esc

PNG_DPI = 100


def prepare_dir(folder: str) -> None:
    """Make the report folder now, before minutes of simulation, or fail with one line."""
    try:
        make_dirs(folder)
    except OSError as err:
        raise UsageError(f"--report {folder}: cannot create the folder ({err.strerror})") from None


def _png(fig) -> str:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"path.simplify": False}):
        fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def latency_png(res: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=PNG_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.hist(res["latencies_ms"], bins=80, color="#4e79a7")
    for key, colour in (("p50_ms", "#59a14f"), ("p99_ms", "#e15759")):
        ax.axvline(res[key], color=colour, label=f"{key[:3]} {res[key]:.2f} ms")
    if res.get("latency_bound_ms"):
        ax.axvline(res["latency_bound_ms"], color="black", linestyle="--", label="bound")
    ax.set_xlabel("query latency (ms)")
    ax.set_ylabel("queries")
    ax.set_title(
        f"{res['workload']} on {res['server']}, {res['scenario']} at {res['queries_per_s']:,.0f} queries/s"
    )
    ax.legend()
    return _png(fig)


def curve_png(res: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    points = sorted(res["search"], key=lambda p: p["queries_per_s"])
    fig = Figure(figsize=(7, 3.5), dpi=PNG_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        [p["queries_per_s"] for p in points],
        [p["p99_ms"] for p in points],
        "o-",
        color="#f28e2b",
        label="p99",
    )
    ax.plot(
        [p["queries_per_s"] for p in points],
        [p["p50_ms"] for p in points],
        "o-",
        color="#59a14f",
        label="p50",
    )
    if res.get("latency_bound_ms"):
        ax.axhline(res["latency_bound_ms"], color="black", linestyle="--", label="bound")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (queries/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("server scenario: the search's runs")
    ax.legend()
    return _png(fig)


SUMMARY_KEYS = (
    ("scenario", ""),
    ("server", ""),
    ("cards", ""),
    ("queries_per_s", "queries/s"),
    ("samples_per_s", "samples/s"),
    ("p50_ms", "ms"),
    ("p99_ms", "ms"),
    ("latency_bound_ms", "ms"),
    ("offline_queries_per_s", "queries/s"),
    ("platform_power_w", "W"),
    ("samples_per_s_per_w", "samples/s/W"),
    ("flops_per_s", "FLOP/s"),
)


def render(res: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(res.get(k))} {esc(unit)}</td></tr>" for k, unit in SUMMARY_KEYS
    )
    cols = ("card", "switch", "batches", "samples", "padded_samples", "busy_s", "utilization", "power_w")
    if "sparse_busy_s" in res["per_card"][0]:  # a sharded model: the lookups' and the dense parts' busy time
        cols = (*cols[:6], "sparse_busy_s", "dense_busy_s", *cols[6:])
    cards = "".join(
        "<tr>" + "".join(f"<td>{esc(c[k])}</td>" for k in cols) + "</tr>" for c in res["per_card"]
    )
    charts = f'<h2>Latency distribution</h2><img alt="latency histogram" src="data:image/png;base64,{latency_png(res)}">'
    if res["search"]:
        charts += f'<h2>QPS vs p99</h2><img alt="QPS vs p99" src="data:image/png;base64,{curve_png(res)}">'
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>mtiasim serve {esc(res['workload'])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}</style></head><body>"
        f"<h1>{esc(res['workload'])} served on {esc(res['server'])}</h1><table>{rows}</table>{charts}"
        "<h2>Cards</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + f"</tr>{cards}</table>"
        "</body></html>"
    )


def write_serve_report(res: dict[str, Any], folder: str) -> Path:
    with AtomicFiles(Path(folder)) as files:
        files.write_text("index.html", render(res))
    return Path(folder) / "index.html"
