"""One self-contained HTML page for a timed run: summary, per-op table, roofline, PE heatmaps, timeline and
energy.

The input is the JSON dict of a run (`mtiasim run WORKLOAD --json`, `mtiasim.run.workload.run_workload`). The
page has inline CSS, inline SVG charts drawn here, and a few lines of inline JS that only sort the op table
(click a header; or open the page with `?sort=time_us`, `?sort=-time_us` or `?sort=time_us&dir=desc`). It
loads nothing (no URLs, fonts or fetches), so it works from file://. Every number of the summary sits in an
element with a stable id and a `data-value` holding the JSON's number exactly. Every string from the run is
escaped; the run itself is embedded as JSON (`<script type="application/json" id="run-data">`, with `<`, `>`,
`&` escaped).

With `pngs`, the same roofline, heatmap, timeline and energy charts are written beside the page as PNGs
(`figures.write_pngs`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtiasim import jsonout
from mtiasim.hw import Chip, load_chip
from mtiasim.report import figures as fg
from mtiasim.report.atomic import AtomicFiles

_LEVEL_NAMES = {"sram+dram": "SRAM + LPDDR5", "local_memory": "local memory", "none": "no bytes"}


def write_report(run: dict, out_dir: str | Path, *, chip: Chip | None = None, pngs: bool = True) -> Path:
    """Write `out_dir/index.html` (and, with `pngs`, the charts as PNGs beside it); return the page's path.

    `chip` (for the roofline's ceilings) defaults to the run's chip preset: pass the Chip itself for a chip
    loaded from a file. All files or none: they are written to temporaries and renamed into place at the end,
    so a failure leaves nothing new in `out_dir` (nor `out_dir` itself, if this made it and it is empty). A
    directory or file that cannot be made or written raises a UsageError naming it.
    """
    out = Path(out_dir)
    if chip is None:
        chip = load_chip(str(run.get("chip", "mtia-v1")))
    page = render_html(run, chip, pngs=pngs)
    with AtomicFiles(out) as files:
        files.write_text("index.html", page)
        if pngs:
            fg.write_pngs(run, out, chip, files)
    return out / "index.html"


# ------------------------------------------------------------------------------------------------ helpers


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no `</script>`, `<!--` or `&` can end or change it; no NaN/Infinity."""
    text = jsonout.dumps(obj, sort_keys=False, ensure_ascii=False, separators=(",", ":"))
    for a, b in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(a, b)
    return text


def num_text(v: Any, digits: int = 4) -> str:
    """A readable number: thousands separators for large ones, `digits` significant digits otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "n/a" if v is None else str(v)
    if not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10**digits:
        return f"{v:,.0f}"
    if a < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def si(v: float, unit: str) -> str:
    for f, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= f:
            return f"{v / f:.3g} {p}{unit}"
    return f"{v:.3g} {unit}"


def _data_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (int, float, bool)) else str(v)


def val(id_: str, v: Any, unit: str = "", fmt: Callable[[Any], str] = num_text) -> str:
    """A value in an element with a stable id and its exact JSON value in data-value ("n/a" when absent)."""
    if v is None:
        return f'<span class="v na" id="{esc(id_)}">n/a</span>'
    u = f" {esc(unit)}" if unit else ""
    return f'<span class="v" id="{esc(id_)}" data-value="{esc(_data_value(v))}">{esc(fmt(v))}</span>{u}'


def _uj(v: Any) -> str:
    """Joules shown as uJ (the data-value stays in J, as in the JSON)."""
    return num_text(v * 1e6) if isinstance(v, (int, float)) else "n/a"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "n/a"


# ------------------------------------------------------------------------------------------------ sections


def summary_html(run: Mapping[str, Any]) -> str:
    g = run.get
    spw = g("samples_per_s_per_w") or {}
    rows: list[tuple[str, str]] = [
        ("workload", val("workload", g("workload"), fmt=str)),
        ("model", val("model", g("model"), fmt=str)),
        ("chip", val("chip", g("chip"), fmt=str)),
        (
            "precision / mode",
            f"{val('precision', g('precision'), fmt=str)} / {val('mode', g('mode'), fmt=str)}"
            f" ({val('fidelity', g('fidelity'), fmt=str)})",
        ),
        ("batch", val("batch", g("batch"))),
        ("latency", val("latency_us", g("latency_us"), "us")),
        (
            "latency breakdown",
            f"host {val('host_us', g('host_us'), 'us')} + PCIe in {val('h2d_us', g('h2d_us'), 'us')}"
            f" + device {val('device_us', g('device_us'), 'us')}"
            f" + PCIe out {val('d2h_us', g('d2h_us'), 'us')}",
        ),
        ("throughput", val("samples_per_s", g("samples_per_s"), "samples/s")),
        (
            "MAC utilisation",
            f"{val('mac_utilization', g('mac_utilization'), fmt=_pct)} of the DPE peak over the device time "
            f"({val('macs', g('macs'), 'MACs')})",
        ),
        ("bound", val("bound", g("bound"), fmt=str)),
        (
            "chip power",
            f"avg {val('avg_power_w', g('avg_power_w'), 'W')}, "
            f"peak {val('peak_power_w', g('peak_power_w'), 'W')}",
        ),
        (
            "card / platform power",
            f"card {val('card_power_w', g('card_power_w'), 'W')}, platform "
            f"{val('platform_power_w', g('platform_power_w'), 'W')}",
        ),
        (
            "energy per batch",
            f"chip {val('energy_j', g('energy_j'), 'uJ', _uj)}, "
            f"card {val('card_energy_j', g('card_energy_j'), 'uJ', _uj)}, "
            f"platform {val('platform_energy_j', g('platform_energy_j'), 'uJ', _uj)}",
        ),
        (
            "samples/s/W",
            f"chip {val('samples_per_s_per_w_chip', spw.get('chip'))}, "
            f"card {val('samples_per_s_per_w_card', spw.get('card'))}, "
            f"platform {val('samples_per_s_per_w_platform', spw.get('platform'))}, "
            f"paper's divisor {val('samples_per_s_per_w_paper', spw.get('paper'))}",
        ),
    ]
    chk = g("check")
    if isinstance(chk, Mapping):
        passed = bool(chk.get("passed"))
        rows.append(
            (
                "check vs PyTorch",
                f'<span class="v {"ok" if passed else "bad"}" id="check_passed" '
                f'data-value="{json.dumps(passed)}">'
                f"{'passed' if passed else 'FAILED'}</span>: max abs err "
                f"{val('check_max_abs_err', chk.get('max_abs_err'))}, max rel err "
                f"{val('check_max_rel_err', chk.get('max_rel_err'))}, largest error/bound "
                f"{val('check_max_err_over_bound', chk.get('max_err_over_bound'))} (docs/numerics.md); "
                f"elements unbounded (the worst-case bound exceeds the range: not checked) "
                f"{val('check_unbounded', chk.get('unbounded'))} of "
                f"{val('check_elements', chk.get('elements', 0) - chk.get('nonfinite_reference', 0))}",
            )
        )
    body = "\n".join(f"<tr><th scope='row'>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary" id="summary">\n{body}\n</table>'


OP_COLUMNS = (
    # key, header, numeric
    ("name", "name", False),
    ("kind", "kind", False),
    ("lane", "lane", False),
    ("module", "module", False),
    ("pes", "PEs", True),
    ("start_us", "start us", True),
    ("time_us", "time us", True),
    ("bound", "bound", False),
    ("macs", "MACs", True),
    ("energy_uj", "energy uJ", True),
    ("attribution", "top attribution", False),
)


def _top_attribution(att: Mapping[str, Any], n: int = 3) -> str:
    vals = {str(k): float(v) for k, v in (att or {}).items() if fg.finite(v) and v > 0}
    tot = sum(vals.values())
    if tot <= 0:
        return ""
    top = sorted(vals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in top)


def ops_table_html(run: Mapping[str, Any]) -> str:
    head = "".join(
        f'<th scope="col" tabindex="0" data-key="{k}" data-type="{"num" if isnum else "str"}">{esc(h)}</th>'
        for k, h, isnum in OP_COLUMNS
    )
    rows = []
    for i, op in enumerate(run.get("ops") or []):
        energy_uj = float(op.get("energy_j", 0.0) or 0.0) * 1e6
        vals: dict[str, Any] = {
            "name": op.get("name", ""),
            "kind": op.get("kind", ""),
            "lane": op.get("lane", ""),
            "module": op.get("module", ""),
            "pes": op.get("pes", 0),
            "start_us": op.get("start_us", 0.0),
            "time_us": op.get("time_us", 0.0),
            "bound": op.get("bound", ""),
            "macs": op.get("macs", 0.0),
            "energy_uj": energy_uj,
            "attribution": _top_attribution(
                op.get("attribution_detail_us") or op.get("attribution_us") or {}
            ),
        }
        cells = []
        for k, _, isnum in OP_COLUMNS:
            v = vals[k]
            if isnum:
                cells.append(f'<td class="n" data-v="{esc(_data_value(v))}">{esc(num_text(v))}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        rows.append(f'<tr data-i="{i}" data-op="{esc(vals["name"])}">{"".join(cells)}</tr>')
    body = "\n".join(rows)
    return (
        f'<table class="sortable ops" id="ops">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )


def _svg_open(w: int, h: int, id_: str, label: str) -> str:
    return (
        f'<svg id="{id_}" class="chart" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="{esc(label)}">'
    )


def roofline_svg(run: Mapping[str, Any], chip: Chip) -> str:
    ceil = fg.ceilings(chip, str(run.get("precision", "int8")))
    pts = fg.roofline_points(run)
    ax = fg.roofline_axes(pts, ceil)
    w, h, ml, mr, mt, mb = 720, 440, 70, 150, 16, 48
    pw, ph = w - ml - mr, h - mt - mb

    def X(v: float) -> float:
        return ml + (math.log10(v) - ax.x_lo) / (ax.x_hi - ax.x_lo) * pw

    def Y(v: float) -> float:
        return mt + ph - (math.log10(v) - ax.y_lo) / (ax.y_hi - ax.y_lo) * ph

    out = [_svg_open(w, h, "roofline", "roofline: attained ops/s against ops per byte, log-log")]
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot"/>')
    for d in range(ax.x_lo, ax.x_hi + 1):
        x = X(10.0**d)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">'
            f"{esc(f'{10.0**d:g}')}</text>"
        )
    for d in range(ax.y_lo, ax.y_hi + 1):
        y = Y(10.0**d)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{esc(si(10.0**d, ""))}</text>'
        )
    out.append(
        f'<text x="{ml + pw / 2:.1f}" y="{h - 8}" class="axis" text-anchor="middle">'
        "arithmetic intensity (ops per byte of SRAM + LPDDR5)</text>"
    )
    out.append(
        f'<text x="16" y="{mt + ph / 2:.1f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 16 {mt + ph / 2:.1f})">attained ops/s</text>'
    )
    x0 = 10.0**ax.x_lo
    peak = ceil.compute_ops_per_s
    out.append(f'<clipPath id="roofclip"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}"/></clipPath>')
    out.append('<g clip-path="url(#roofclip)">')
    out.append(
        f'<line id="ceiling-compute" x1="{ml}" y1="{Y(peak):.1f}" x2="{ml + pw}" y2="{Y(peak):.1f}" '
        f'class="roof" data-value="{json.dumps(peak)}">'
        f"<title>{esc(ceil.dtype.value)} DPE peak: {esc(si(peak, 'ops/s'))}</title>"
        "</line>"
    )
    for key, bw, name, dash in (
        ("sram", ceil.sram_bytes_per_s, "SRAM", "6 3"),
        ("dram", ceil.dram_bytes_per_s, "LPDDR5", "2 3"),
    ):
        if bw <= 0:
            continue
        ridge = peak / bw
        xa = x0
        ya = bw * xa
        out.append(
            f'<line id="ceiling-{key}" x1="{X(xa):.1f}" y1="{Y(ya):.1f}" '
            f'x2="{X(ridge):.1f}" y2="{Y(peak):.1f}" '
            f'class="roof" stroke-dasharray="{dash}" data-value="{json.dumps(bw)}">'
            f"<title>{name} bandwidth: {esc(si(bw, 'B/s'))} (ridge at {ridge:.3g} ops/B)</title></line>"
        )
    out.append("</g>")
    # legend right of the plot: the ceilings, then one colour per op kind
    ly = mt + 4
    for bw, name, dash in (
        (None, f"{ceil.dtype.value} peak {si(peak, 'ops/s')}", ""),
        (ceil.sram_bytes_per_s, "SRAM", "6 3"),
        (ceil.dram_bytes_per_s, "LPDDR5", "2 3"),
    ):
        ly += 16
        text = name if bw is None else f"{name} {si(bw, 'B/s')}"
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{ml + pw + 6}" y1="{ly - 4}" x2="{ml + pw + 26}" y2="{ly - 4}" '
            f'class="roof"{dash_attr}/>'
            f'<text x="{ml + pw + 30}" y="{ly}" class="lab">{esc(text)}</text>'
        )
    colours = fg.kind_colours(run)
    floor_y, right_x = mt + ph - 4, ml + pw - 4
    n_floor = 0
    for p in pts:
        col = colours.get(p.kind, "#333")
        placed = p.intensity is not None and p.ops_per_s is not None
        if placed:
            cx, cy = X(p.intensity), Y(p.ops_per_s)
            tip = (
                f"{p.name} ({p.kind}, {p.bound}-bound): {p.intensity:.3g} ops per byte of "
                f"{_LEVEL_NAMES[p.level]}, {si(p.ops_per_s, 'ops/s')}"
            )
            attrs = f'fill="{col}"'
        else:
            # no arithmetic (copies, gathers) or no bytes: on the axis floor, hollow
            n_floor += 1
            cx = X(p.intensity) if p.intensity is not None else right_x
            cy = floor_y
            cx = ml + 6 + 8 * (n_floor - 1) if p.ops <= 0 else cx
            tip = f"{p.name} ({p.kind}, {p.bound}-bound): no arithmetic ops, not on the roofline"
            attrs = f'fill="none" stroke="{col}" stroke-width="1.5"'
        out.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" {attrs} data-op="{esc(p.name)}">'
            f"<title>{esc(tip)}</title></circle>"
        )
    ly += 10
    for k, c in colours.items():
        ly += 15
        out.append(
            f'<circle cx="{ml + pw + 12}" cy="{ly - 4}" r="4.5" fill="{c}"/>'
            f'<text x="{ml + pw + 22}" y="{ly}" class="lab">{esc(k)}</text>'
        )
    out.append("</svg>")
    note = (
        f"<p class='note'>{n_floor} op(s) without arithmetic (copies, gathers) are drawn hollow on the "
        "axis floor."
        "</p>"
        if n_floor
        else ""
    )
    return "\n".join(out) + note


# viridis at 9 stops, for the heatmap (no matplotlib needed for the page)
_VIRIDIS = (
    (0.267, 0.005, 0.329),
    (0.283, 0.141, 0.458),
    (0.254, 0.265, 0.530),
    (0.207, 0.372, 0.553),
    (0.164, 0.471, 0.558),
    (0.128, 0.567, 0.551),
    (0.135, 0.659, 0.518),
    (0.267, 0.749, 0.441),
    (0.478, 0.821, 0.318),
    (0.741, 0.873, 0.150),
    (0.993, 0.906, 0.144),
)


def viridis(v: float) -> str:
    v = min(max(float(v) if fg.finite(v) else 0.0, 0.0), 1.0)
    t = v * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return "#" + "".join(f"{round(255 * (x + (y - x) * f)):02x}" for x, y in zip(a, b, strict=True))


def heatmap_svgs(run: Mapping[str, Any]) -> str:
    util = run.get("pe_utilization") or {}
    if not util:
        return "<p class='note'>No per-PE activity in this run (not a timed run).</p>"
    units = [u for u in fg.UNIT_ORDER if u in util] + sorted(set(util) - set(fg.UNIT_ORDER))
    cell = 16
    parts = []
    for u in units:
        grid = util[u]
        rows, cols = len(grid), max((len(r) for r in grid), default=0)
        flat = [float(v) for r in grid for v in r if fg.finite(v)]
        mean = sum(flat) / len(flat) if flat else 0.0
        w, h = cols * cell + 2, rows * cell + 2
        s = [
            f'<figure class="hm"><figcaption>{esc(u)} <span class="v" id="pe_mean_{esc(u)}" '
            f'data-value="{json.dumps(mean)}">{100 * mean:.1f}%</span></figcaption>',
            _svg_open(w, h, f"heatmap-{esc(u)}", f"{u}: busy fraction per PE"),
        ]
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                s.append(
                    f'<rect x="{1 + c * cell}" y="{1 + r * cell}" width="{cell - 1}" height="{cell - 1}" '
                    f'fill="{viridis(v)}" data-value="{esc(_data_value(v))}"><title>{esc(u)} PE ({r},{c}): '
                    f"{100 * float(v):.1f}% busy</title></rect>"
                )
        s.append("</svg></figure>")
        parts.append("".join(s))
    legend = "".join(
        f'<rect x="{i * 20}" y="0" width="20" height="10" fill="{viridis(i / 10)}"/>' for i in range(11)
    )
    legend = (
        f"{_svg_open(240, 26, 'heatmap-legend', 'colour scale: busy fraction 0 to 100%')}{legend}"
        '<text x="0" y="24" class="tick">0%</text>'
        '<text x="220" y="24" class="tick" text-anchor="end">100%</text>'
        "</svg>"
    )
    return f'<div class="hms">{"".join(parts)}</div><div class="legend">busy fraction {legend}</div>'


def _nice_step(span: float, n: int = 8) -> float:
    if span <= 0:
        return 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def timeline_svg(run: Mapping[str, Any]) -> str:
    rows, bars, end = fg.timeline_rows(run)
    colours = fg.kind_colours(run) | fg.PHASE_COLOURS
    rh, ml, mr, mt, mb, w = 20, 80, 16, 8, 36, 960
    pw = w - ml - mr
    h = mt + rh * len(rows) + mb
    end = end if end > 0 else 1.0

    def X(t: float) -> float:
        return ml + t / end * pw

    out = [_svg_open(w, h, "timeline", "timeline of the batch: host, PCIe and the device's ops per lane")]
    step = _nice_step(end)
    t = 0.0
    while t <= end + 1e-9:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + rh * len(rows)}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{mt + rh * len(rows) + 14}" class="tick" text-anchor="middle">{t:g}</text>'
        )
        t += step
    out.append(
        f'<text x="{ml + pw / 2:.1f}" y="{h - 6}" class="axis" text-anchor="middle">'
        "us from the start of the batch"
        "</text>"
    )
    ys = {r: mt + i * rh for i, r in enumerate(rows)}
    for r in rows:
        out.append(
            f'<text x="{ml - 6}" y="{ys[r] + rh / 2 + 4:.1f}" class="lab" text-anchor="end">{esc(r)}</text>'
        )
    for b in bars:
        if b.end_us <= b.start_us:
            continue
        x0, x1 = X(b.start_us), X(b.end_us)
        out.append(
            f'<rect class="bar" x="{x0:.2f}" y="{ys[b.row] + 2}" width="{max(x1 - x0, 0.5):.2f}" '
            f'height="{rh - 4}" fill="{colours.get(b.kind, "#333")}" data-op="{esc(b.label)}">'
            f"<title>{esc(b.tip)}</title></rect>"
        )
        if x1 - x0 > 7 * len(b.label) + 4:
            out.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{ys[b.row] + rh / 2 + 4:.1f}" class="barlab" '
                f'text-anchor="middle">{esc(b.label)}</text>'
            )
    out.append("</svg>")
    keys = [
        *fg.kind_colours(run).items(),
        ("host", fg.PHASE_COLOURS["host"]),
        ("PCIe", fg.PHASE_COLOURS["pcie_in"]),
    ]
    legend = " ".join(f"<span class='sw' style='background:{c}'></span>{esc(k)}" for k, c in keys)
    return "\n".join(out) + f"<p class='note'>{legend}. Hover a bar for the op, its times and its bound.</p>"


def energy_svg(run: Mapping[str, Any]) -> str:
    items = fg.energy_items(run)
    if not items:
        return "<p class='note'>No energy in this run (not a timed run).</p>"
    card_total = run.get("card_energy_j")
    denom = float(card_total) if fg.finite(card_total) and card_total > 0 else sum(v for _, v, _ in items)
    vmax = max((v for _, v, _ in items), default=0.0) or 1.0
    rh, ml, mr, w = 18, 190, 200, 760
    pw = w - ml - mr
    h = rh * len(items) + 8
    out = [_svg_open(w, h, "energy", "energy per batch by component, chip and card")]
    for i, (k, v, grp) in enumerate(items):
        y = 4 + i * rh
        bw = max(v / vmax * pw, 0.0)
        col = fg.CARD_COLOUR if grp == "card" else fg.CHIP_COLOUR
        share = v / denom if denom > 0 else 0.0
        out.append(
            f'<text x="{ml - 6}" y="{y + rh / 2 + 4:.1f}" class="lab" text-anchor="end">{esc(k)}</text>'
        )
        out.append(
            f'<rect class="ebar {grp}" x="{ml}" y="{y + 2}" width="{bw:.2f}" height="{rh - 4}" fill="{col}" '
            f'data-component="{esc(k)}" data-value="{json.dumps(v)}">'
            f"<title>{esc(k)} ({grp}): {v * 1e6:.4g} uJ, "
            f"{100 * share:.1f}% of the card's energy</title></rect>"
        )
        out.append(
            f'<text x="{ml + bw + 6:.1f}" y="{y + rh / 2 + 4:.1f}" class="lab">{v * 1e6:.4g} uJ '
            f"({100 * share:.1f}%)</text>"
        )
    out.append("</svg>")
    chip_sum = sum(v for _, v, g in items if g == "chip")
    card_sum = sum(v for _, v, g in items if g == "card")
    totals = (
        "<p class='totals'>"
        f"<span class='key chip'></span> chip components: {chip_sum * 1e6:.4g} uJ "
        f"(chip energy {val('energy_total_chip_j', run.get('energy_j'), 'uJ', _uj)}); "
        f"<span class='key card'></span> card components: {card_sum * 1e6:.4g} uJ "
        f"(card energy, chip included, {val('energy_total_card_j', run.get('card_energy_j'), 'uJ', _uj)}); "
        "platform (card plus host share) "
        f"{val('energy_total_platform_j', run.get('platform_energy_j'), 'uJ', _uj)}."
        " Shares are of the card's energy.</p>"
    )
    return "\n".join(out) + totals


def attribution_html(run: Mapping[str, Any]) -> str:
    shares = run.get("attribution_detail_us") or run.get("attribution_us") or {}  # compute split by unit
    att = {str(k): float(v) for k, v in shares.items() if fg.finite(v)}
    tot = sum(att.values())
    if tot <= 0:
        return "<p class='note'>No attribution in this run.</p>"
    items = sorted(att.items(), key=lambda kv: (-kv[1], kv[0]))
    palette = fg.PALETTE
    w, h = 720, 26
    out = [_svg_open(w, h, "attribution-bar", "bottleneck attribution of the latency, as shares")]
    x = 0.0
    for i, (k, v) in enumerate(items):
        bw = v / tot * w
        out.append(
            f'<rect x="{x:.2f}" y="0" width="{bw:.2f}" height="{h}" fill="{palette[i % len(palette)]}">'
            f"<title>{esc(k)}: {v:.4g} us ({100 * v / tot:.1f}%)</title></rect>"
        )
        x += bw
    out.append("</svg>")
    rows = "\n".join(
        f"<tr><td><span class='sw' style='background:{palette[i % len(palette)]}'></span>{esc(k)}</td>"
        f"<td class='n'>{val(f'attr_{k}', v)}</td><td class='n'>{100 * v / tot:.1f}%</td></tr>"
        for i, (k, v) in enumerate(items)
    )
    return (
        "".join(out)
        + '<table class="attr" id="attribution">'
        + "<thead><tr><th>class</th><th>us</th><th>share</th></tr></thead>"
        f"<tbody>\n{rows}\n</tbody></table>"
    )


def numerics_html(run: Mapping[str, Any]) -> str:
    """Per output, the error against the model in fp32 and the bound the numerics specification gives; per op,
    what its conversions lost (NaN/Inf made finite, saturation, overflow)."""
    num = run.get("numerics")
    if not isinstance(num, Mapping):
        return "<p class='note'>A timing-only run computes no numbers (run with --mode both or --check).</p>"
    rows = []
    for o in num.get("outputs") or []:
        ok = bool(o.get("passed"))
        rows.append(
            f"<tr><td>{esc(o.get('output'))}</td><td class='n'>{_fmt(o.get('max_abs_err'))}</td>"
            f"<td class='n'>{_fmt(o.get('max_bound'))}</td><td class='n'>{_fmt(o.get('max_err_over_bound'))}</td>"
            f"<td class='{'ok' if ok else 'bad'}'>{'within' if ok else 'OUTSIDE'}</td></tr>"
        )
    table = (
        "<table id='numerics-outputs'><thead><tr><th>output</th><th>max |error| vs fp32</th>"
        "<th>max bound</th><th>max error / bound</th><th>every element</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    conv = run.get("conversions") or {}
    lines = [
        f"<tr><td>{esc(name)}</td><td class='n'>{c.get('converted', 0)}</td><td class='n'>{c.get('nonfinite', 0)}"
        f"</td><td class='n'>{c.get('saturated', 0)}</td><td class='n'>{c.get('overflow', 0)}</td></tr>"
        for name, c in sorted(conv.items())
    ]
    events = (
        "<table id='numerics-conversions'><thead><tr><th>op</th><th>converted</th><th>NaN/Inf made finite</th>"
        "<th>saturated</th><th>overflowed</th></tr></thead><tbody>" + "".join(lines) + "</tbody></table>"
        if lines
        else "<p class='note'>No conversion lost information (no NaN/Inf made finite, no saturation, no "
        "overflow).</p>"
    )
    warn = "".join(f"<li>{esc(w)}</li>" for w in run.get("numerics_warnings") or [])
    return (
        "<p class='note'>The error of every output element against the model run in fp32 by PyTorch, and the "
        "bound that follows from the chip's numerics (docs/numerics.md): worst-case, element by element.</p>"
        + table
        + events
        + (f"<ul class='bad'>{warn}</ul>" if warn else "")
    )


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else esc(v)


def memory_plan_html(run: Mapping[str, Any]) -> str:
    plan = run.get("memory_plan") or []
    text = "\n".join(str(x) for x in plan) if isinstance(plan, list) else str(plan)
    return f'<pre id="memory-plan">{esc(text)}</pre>'


_CSS = """
:root{--fg:#1d1d1f;--mut:#666;--bd:#d0d0d6;--bg:#fff;--hd:#f3f4f7}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);
background:var(--bg);margin:0 auto;padding:16px 24px 48px;max-width:1200px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--bd);
padding-bottom:4px}
nav a{margin-right:12px;color:#2a5db0;text-decoration:none}nav a:hover{text-decoration:underline}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid var(--bd);text-align:left;
vertical-align:top}
table.summary th{color:var(--mut);font-weight:500;white-space:nowrap}
table.ops{font-size:12.5px;width:100%}table.ops th{background:var(--hd);cursor:pointer;user-select:none;
white-space:nowrap;position:sticky;top:0}
table.ops th[aria-sort=ascending]::after{content:" \\25B2"}
table.ops th[aria-sort=descending]::after{content:" \\25BC"}
table.ops tbody tr:hover{background:#f7f9fc}td.n{text-align:right;font-variant-numeric:tabular-nums}
.v{font-variant-numeric:tabular-nums;font-weight:600}.na{color:var(--mut)}
.ok{color:#1a7f37}.bad{color:#c0392b}
.wrap{overflow-x:auto}
svg.chart{max-width:100%;height:auto;font-size:11px}
svg .plot{fill:#fcfcfd;stroke:var(--bd)}svg .grid{stroke:#e4e4ea;stroke-width:1}
svg .roof{stroke:#111;stroke-width:1.6;fill:none}
svg .tick{fill:var(--mut);font-size:10px}svg .axis{fill:var(--fg);font-size:12px}
svg .lab{fill:var(--fg);font-size:11px}
svg .barlab{fill:#fff;font-size:10px;pointer-events:none}svg .pt{stroke-opacity:.9}
.hms{display:flex;flex-wrap:wrap;gap:14px}figure.hm{margin:0}
figure.hm figcaption{font-size:12px;color:var(--mut)}
.legend{font-size:12px;color:var(--mut);margin-top:6px;display:flex;align-items:center;gap:8px}
pre{background:var(--hd);padding:10px;overflow-x:auto;font-size:12px;line-height:1.3}
.note{color:var(--mut);font-size:12px}.totals{font-size:13px}
.key{display:inline-block;width:10px;height:10px}.key.chip{background:#4e79a7}.key.card{background:#e15759}
.sw{display:inline-block;width:10px;height:10px;margin-right:6px}
"""

# Only sorts the op table: click a header (ascending, then descending); `?sort=KEY` (`-KEY` or `&dir=desc`
# for descending) sorts on load. Sorting is stable: ties keep the page's order. Marks <body data-js="ok"> when
# done.
_JS = r"""
(function () {
  "use strict";
  function key(td, num) {
    var v = td.getAttribute("data-v");
    if (v === null) { v = td.textContent; }
    if (num) { var f = parseFloat(v); return isNaN(f) ? -Infinity : f; }
    return v.toLowerCase();
  }
  function sortTable(table, col, dir) {
    var ths = table.tHead.rows[0].cells;
    var num = ths[col].getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], num), y = key(b.cells[col], num);
      var c = x < y ? -1 : (x > y ? 1 : 0);
      if (c === 0) { return parseInt(a.getAttribute("data-i"), 10) - parseInt(b.getAttribute("data-i"), 10); }
      return c * dir;
    });
    for (var i = 0; i < rows.length; i++) { body.appendChild(rows[i]); }
    for (var j = 0; j < ths.length; j++) { ths[j].removeAttribute("aria-sort"); }
    ths[col].setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    table.setAttribute("data-sorted", ths[col].getAttribute("data-key") + ":" + (dir > 0 ? "asc" : "desc"));
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      function go() { sortTable(table, col, th.getAttribute("aria-sort") === "ascending" ? -1 : 1); }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
      });
    });
  });
  var params = new URLSearchParams(window.location.search);
  var s = params.get("sort");
  var ops = document.getElementById("ops");
  if (s && ops) {
    var dir = 1;
    if (s.charAt(0) === "-") { dir = -1; s = s.slice(1); }
    if (params.get("dir") === "desc") { dir = -1; }
    var ths = ops.tHead.rows[0].cells;
    for (var c = 0; c < ths.length; c++) {
      if (ths[c].getAttribute("data-key") === s) { sortTable(ops, c, dir); break; }
    }
  }
  document.body.setAttribute("data-js", "ok");
})();
"""


def render_html(run: Mapping[str, Any], chip: Chip, *, pngs: bool = False) -> str:
    """The page as a string (`write_report` writes it). `pngs` adds relative links to the PNG copies."""
    title = f"mtiasim: {run.get('workload', run.get('model', 'run'))} on {run.get('chip', '')}"
    n_ops = len(run.get("ops") or [])
    sections = [
        ("summary", "Summary", summary_html(run)),
        (
            "ops",
            f"Ops ({n_ops})",
            "<p class='note'>Click a header to sort (again to reverse). Times are on the device's timeline; "
            "attribution shares are of each op's own time.</p>"
            f"<div class='wrap'>{ops_table_html(run)}</div>",
        ),
        (
            "roofline",
            "Roofline",
            "<p class='note'>Each op at its ops per byte of SRAM + LPDDR5 (local memory where it touched "
            "neither) and its attained ops/s; the ceilings are the DPE peak at the run's precision and the "
            "SRAM and LPDDR5 bandwidths. Hover a point for its name.</p>"
            f"<div class='wrap'>{roofline_svg(run, chip)}</div>",
        ),
        ("heatmap", "PE activity (busy fraction per PE and unit)", heatmap_svgs(run)),
        ("timeline", "Timeline", f"<div class='wrap'>{timeline_svg(run)}</div>"),
        ("energy", "Energy per batch", f"<div class='wrap'>{energy_svg(run)}</div>"),
        ("attribution", "Bottleneck attribution of the latency", attribution_html(run)),
        ("numerics", "Numerics against fp32", numerics_html(run)),
        ("memory", "Memory plan", memory_plan_html(run)),
    ]
    nav = " ".join(f'<a href="#sec-{k}">{esc(t.split(" (")[0])}</a>' for k, t, _ in sections)
    body = "\n".join(f'<section id="sec-{k}">\n<h2>{esc(t)}</h2>\n{c}\n</section>' for k, t, c in sections)
    files = ""
    if pngs:
        links = ", ".join(f'<a href="{n}">{n}</a>' for n in fg.PNG_NAMES)
        files = f"<p class='note'>The charts as PNGs beside this page: {links}.</p>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<nav>{nav}</nav>\n{body}\n{files}\n"
        f'<script type="application/json" id="run-data">{json_for_script(run)}</script>\n'
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )
