"""A study's outputs: its summary (the Pareto front), the trial table as CSV, parameter importance, and one
self-contained HTML page (inline CSS and SVG, no network) with the front, every trial and the importances."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mtiasim.errors import UsageError
from mtiasim.explore.space import value_text
from mtiasim.explore.study import Study, TrialRecord, record
from mtiasim.report.atomic import AtomicFiles
from mtiasim.report.html import _CSS, _svg_open, esc, json_for_script, num_text


def summary(study: Study) -> dict[str, Any]:
    """What the study holds: counts, and its Pareto front (trial, values, objectives)."""
    finished = study.finished()
    objectives = study.objectives
    return {
        "study": study.name,
        "storage": study.storage,
        "spec": study.spec.to_json(),
        "complete": sum(t.state == TrialState.COMPLETE for t in finished),
        "failed": sum(t.state == TrialState.FAIL for t in finished),
        "pareto_front": [
            {k: v for k, v in record(t).to_json(objectives).items() if k != "metrics"} for t in study.pareto()
        ],
    }


def importances(study: Study) -> dict[str, dict[str, float] | str]:
    """Per objective, each parameter's importance (Optuna's fANOVA on a seeded random forest: the share of the
    objective's variance each parameter explains, normalised to sum to 1), or why there is none (too few
    complete trials)."""
    out: dict[str, dict[str, float] | str] = {}
    complete = [t for t in study.finished() if t.state == TrialState.COMPLETE]
    for i, o in enumerate(study.objectives):
        if len(study.spec.params) < 2:
            out[o.metric] = {study.spec.params[0].key: 1.0}
            continue
        if len(complete) < 4:
            out[o.metric] = f"needs at least 4 complete trials (has {len(complete)})"
            continue
        try:
            imp = optuna.importance.get_param_importances(
                study.optuna_study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i],
            )
        except (RuntimeError, ValueError, ZeroDivisionError) as err:
            out[o.metric] = f"not computed: {err}"
            continue
        out[o.metric] = {k: round(float(v), 4) for k, v in imp.items()}
    return out


def _columns(study: Study, records: list[TrialRecord]) -> tuple[list[str], list[str]]:
    params = [p.key for p in study.spec.params]
    metrics: list[str] = []
    for r in records:
        metrics += [m for m in r.metrics if m not in metrics]
    return params, metrics


def csv_text(study: Study) -> str:
    """The trial table: trial, state, pareto (1/0), the parameters, every metric, error."""
    records = [record(t) for t in study.finished()]
    front = {t.number for t in study.pareto()}
    params, metrics = _columns(study, records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "state", "pareto", *params, *metrics, "error"])
    for r in records:
        row: list[Any] = [r.number, r.state, int(r.number in front)]
        row += [r.params.get(k, "") for k in params]
        row += ["" if r.metrics.get(m) is None else repr(r.metrics[m]) for m in metrics]
        w.writerow([*row, r.error or ""])
    return buf.getvalue()


def write_csv(study: Study, path: str) -> None:
    try:
        Path(path).write_text(csv_text(study))
    except OSError as err:
        raise UsageError(f"--csv {path}: cannot write: {err.strerror or err}") from None


# ------------------------------------------------------------------------------------------------ the page


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def front_svg(study: Study) -> str:
    """The first two objectives of every complete trial (the Pareto front in a darker colour, joined by a
    line); with one objective, its value by trial number."""
    complete = [t for t in study.finished() if t.state == TrialState.COMPLETE]
    front = {t.number for t in study.pareto()}
    objs = study.objectives
    if len(objs) >= 2:
        pts = [(t.values[0], t.values[1], t.number) for t in complete]
        xl, yl = objs[0].text, objs[1].text
    else:
        pts = [(float(t.number), t.values[0], t.number) for t in complete]
        xl, yl = "trial", objs[0].text
    w, h, left, right, top, bottom = 640, 380, 80, 20, 20, 50
    svg = [_svg_open(w, h, "pareto", f"{yl} against {xl}; Pareto front highlighted")]
    if not pts:
        return svg[0] + '<text x="20" y="40">no complete trial</text></svg>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

    def X(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (w - left - right)

    def Y(v: float) -> float:
        return h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)

    svg.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#444"/>')
    svg.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#444"/>')
    for v in _ticks(x0, x1):
        svg.append(
            f'<text x="{X(v):.1f}" y="{h - bottom + 16}" text-anchor="middle">{esc(num_text(v, 3))}</text>'
        )
    for v in _ticks(y0, y1):
        svg.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{esc(num_text(v, 3))}</text>')
    svg.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">{esc(xl)}</text>')
    svg.append(
        f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + h - bottom) / 2})">{esc(yl)}</text>'
    )
    line = sorted((p for p in pts if p[2] in front), key=lambda p: (p[0], p[1]))
    if len(objs) >= 2 and len(line) > 1:
        path = " ".join(f"{X(p[0]):.1f},{Y(p[1]):.1f}" for p in line)
        svg.append(f'<polyline points="{path}" fill="none" stroke="#c0392b" stroke-width="1.5"/>')
    for x, y, n in pts:
        on = n in front
        svg.append(
            f'<circle class="{"front" if on else "trial"}" data-trial="{n}" cx="{X(x):.1f}" cy="{Y(y):.1f}" '
            f'r="{5 if on else 3.5}" fill="{"#c0392b" if on else "#7f8c8d"}"><title>trial {n}: {esc(xl)} '
            f"{esc(num_text(x))}, {esc(yl)} {esc(num_text(y))}</title></circle>"
        )
    svg.append("</svg>")
    return "".join(svg)


def _table(study: Study) -> str:
    records = [record(t) for t in study.finished()]
    front = {t.number for t in study.pareto()}
    params, metrics = _columns(study, records)
    head = "".join(f"<th>{esc(c)}</th>" for c in ["trial", "state", "Pareto", *params, *metrics, "error"])
    rows = []
    for r in records:
        cells = [str(r.number), r.state, "yes" if r.number in front else ""]
        cells += [value_text(k, r.params[k]) if k in r.params else "" for k in params]
        cells += [num_text(r.metrics.get(m)) for m in metrics]
        cells.append(r.error or "")
        cls = ' class="front"' if r.number in front else ""
        rows.append(
            f'<tr id="trial-{r.number}"{cls}>' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
        )
    return f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _importance_html(imp: dict[str, dict[str, float] | str]) -> str:
    parts = []
    for metric, v in imp.items():
        if isinstance(v, str):
            parts.append(f"<p>{esc(metric)}: {esc(v)}</p>")
            continue
        rows = "".join(
            f'<tr><td>{esc(k)}</td><td class="num">{x:.3f}</td>'
            f'<td><div style="background:#2980b9;height:10px;width:{200 * x:.0f}px"></div></td></tr>'
            for k, x in v.items()
        )
        parts.append(
            f'<h3>{esc(metric)}</h3><table class="importance" data-metric="{esc(metric)}">'
            f"<tr><th>parameter</th><th>importance</th><th></th></tr>{rows}</table>"
        )
    return "".join(parts)


def render_page(study: Study) -> str:
    doc = summary(study)
    imp = importances(study)
    spec = study.spec.to_json()
    title = f"mtiasim {spec['kind']}: {spec['run']['workload']} ({study.name})"
    space = ", ".join(
        f"{p['key']} in {p['choices']}" if "choices" in p else f"{p['key']} in [{p['low']:g}, {p['high']:g}]"
        for p in spec["params"]
    )
    seed = f" (seed {spec['seed']}, population {spec['population']})" if "seed" in spec else ""
    body = (
        f"<p>{doc['complete']} complete trials, {doc['failed']} failed; storage {esc(study.storage)}; "
        f"over {esc(spec['over'])} on {esc(spec['run']['chip'])}; space {esc(space)}; objectives "
        f"{esc(', '.join(spec['objectives']))}; sampler {esc(spec['sampler'])}{seed}.</p>"
        f'<h2 id="front">Pareto front</h2>{front_svg(study)}'
        f'<h2 id="importance">Parameter importance</h2>{_importance_html(imp)}'
        f'<h2 id="table">Trials</h2>{_table(study)}'
    )
    data = {
        "summary": doc,
        "importance": imp,
        "trials": [record(t).to_json(study.objectives) for t in study.finished()],
    }
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS} tr.front td {{ font-weight: bold; }}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n{body}\n"
        f'<script type="application/json" id="study-data">{json_for_script(data)}</script>\n</body>\n</html>\n'
    )


def write_page(study: Study, out_dir: str) -> Path:
    """Write `out_dir/index.html` (all or nothing); its path."""
    page = render_page(study)
    with AtomicFiles(Path(out_dir)) as files:
        files.write_text("index.html", page)
    return Path(out_dir) / "index.html"
