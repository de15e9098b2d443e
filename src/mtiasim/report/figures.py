"""The data behind the HTML report's charts, and the same charts as matplotlib PNGs.

Everything here reads the JSON dict of a run (`mtiasim run WORKLOAD --json`, `run_workload`): the roofline
(points and ceilings), the timeline (host, PCIe and device rows), the energy breakdown and the PE heatmaps.
The
HTML report draws these as inline SVG; `write_pngs` draws them with matplotlib (Agg, no pyplot state, no dates
in the PNG metadata, so two writes give the same bytes). matplotlib is imported only when PNGs are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtiasim.dtypes import DType
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_ops_per_s, dram_bytes_per_s, sram_bytes_per_s
from mtiasim.report.atomic import AtomicFiles, atomic_write_bytes

PRECISION_DTYPES = {"int8": DType.INT8, "fp16": DType.FP16, "bf16": DType.BF16}
LANE_ORDER = ("sparse", "dense", "joint")
UNIT_ORDER = ("core0", "core1", "dma", "dpe", "re", "se", "mlu")
PNG_NAMES = ("roofline.png", "heatmap.png", "timeline.png", "energy.png")

# one colour per op kind (the first kinds met get the first colours), and for the host and PCIe phases
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
PHASE_COLOURS = {"host": "#8c8c8c", "pcie_in": "#c9a227", "pcie_out": "#c9a227"}
CHIP_COLOUR, CARD_COLOUR = "#4e79a7", "#e15759"
PNG_DPI = 100


def dtype_of(precision: str) -> DType:
    """The DPE datapath a run's precision uses (int8 -> INT8, fp16 -> FP16, bf16 -> BF16)."""
    return PRECISION_DTYPES.get(str(precision), DType.INT8)


def kind_colours(run: Mapping[str, Any]) -> dict[str, str]:
    kinds: list[str] = []
    for op in run.get("ops") or []:
        k = str(op.get("kind", ""))
        if k not in kinds:
            kinds.append(k)
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------ roofline


@dataclass(frozen=True)
class Ceilings:
    compute_ops_per_s: float  # the DPE's dense matmul peak at the run's precision (1 MAC = 2 ops)
    sram_bytes_per_s: float
    dram_bytes_per_s: float
    dtype: DType


def ceilings(chip: Chip, precision: str) -> Ceilings:
    dt = dtype_of(precision)
    return Ceilings(dpe_ops_per_s(chip, dt), sram_bytes_per_s(chip), dram_bytes_per_s(chip), dt)


@dataclass(frozen=True)
class RooflinePoint:
    name: str
    kind: str
    bound: str
    ops: float
    bytes: float  # bytes of the level the intensity is taken over
    level: str  # "sram+dram", "local_memory", or "none"
    seconds: float

    @property
    def intensity(self) -> float | None:
        """ops per byte, or None where the op moved no bytes or did no arithmetic (no place on log axes)."""
        return self.ops / self.bytes if self.bytes > 0 and self.ops > 0 else None

    @property
    def ops_per_s(self) -> float | None:
        return self.ops / self.seconds if self.seconds > 0 and self.ops > 0 else None


def roofline_points(run: Mapping[str, Any]) -> list[RooflinePoint]:
    """One point per op: x = ops / bytes of SRAM + LPDDR5 (local memory where the op touched neither)."""
    out = []
    for op in run.get("ops") or []:
        b = op.get("bytes") or {}
        shared = float(b.get("sram", 0.0)) + float(b.get("dram", 0.0))
        if shared > 0:
            nbytes, level = shared, "sram+dram"
        elif float(b.get("local_memory", 0.0)) > 0:
            nbytes, level = float(b["local_memory"]), "local_memory"
        else:
            nbytes, level = 0.0, "none"
        out.append(
            RooflinePoint(
                str(op.get("name", "")),
                str(op.get("kind", "")),
                str(op.get("bound", "")),
                float(op.get("ops", 0.0) or 0.0),
                nbytes,
                level,
                float(op.get("time_us", 0.0) or 0.0) * 1e-6,
            )
        )
    return out


@dataclass(frozen=True)
class LogAxes:
    """Decade bounds of the roofline's log-log axes."""

    x_lo: int
    x_hi: int
    y_lo: int
    y_hi: int


def roofline_axes(points: list[RooflinePoint], ceil: Ceilings) -> LogAxes:
    xs = [p.intensity for p in points if p.intensity is not None]
    ys = [p.ops_per_s for p in points if p.ops_per_s is not None]
    peak = ceil.compute_ops_per_s
    ridges = [peak / bw for bw in (ceil.sram_bytes_per_s, ceil.dram_bytes_per_s) if bw > 0]
    xv = xs + ridges or [1.0]
    yv = ys + [peak] if peak > 0 else ys or [1.0]
    x_lo = math.floor(math.log10(min(xv))) - 1
    x_hi = max(math.ceil(math.log10(max(xv))) + 1, x_lo + 2)
    y_lo = math.floor(math.log10(min(yv))) - 1
    y_hi = max(math.ceil(math.log10(max(yv) * 1.5)), y_lo + 2)
    return LogAxes(x_lo, x_hi, y_lo, y_hi)


# ------------------------------------------------------------------------------------------------ timeline


@dataclass(frozen=True)
class Bar:
    row: str  # row label
    start_us: float  # on the run's timeline (host work starts at 0)
    end_us: float
    label: str
    kind: str  # op kind, or "host" / "pcie_in" / "pcie_out"
    tip: str


def timeline_rows(run: Mapping[str, Any]) -> tuple[list[str], list[Bar], float]:
    """Rows (top to bottom), bars and the end of the run in us. Device ops are offset by host + PCIe in.

    Overlapping ops of one lane go on sub-rows (`dense`, `dense 2`, ...) so that no bar hides another.
    """
    host = float(run.get("host_us", 0.0) or 0.0)
    h2d = float(run.get("h2d_us", 0.0) or 0.0)
    dev = float(run.get("device_us", 0.0) or 0.0)
    d2h = float(run.get("d2h_us", 0.0) or 0.0)
    off = host + h2d
    rows: list[str] = ["host", "PCIe"]
    bars = [
        Bar("host", 0.0, host, "host", "host", f"host work: {host:.4g} us"),
        Bar("PCIe", host, off, "PCIe in", "pcie_in", f"PCIe in (host to device): {h2d:.4g} us"),
        Bar(
            "PCIe",
            off + dev,
            off + dev + d2h,
            "PCIe out",
            "pcie_out",
            f"PCIe out (device to host): {d2h:.4g} us",
        ),
    ]
    ops = list(run.get("ops") or [])
    lanes = [ln for ln in LANE_ORDER if any(o.get("lane") == ln for o in ops)]
    lanes += sorted({str(o.get("lane", "")) for o in ops} - set(lanes))
    for lane in lanes:
        ends: list[float] = []  # per sub-row, when its last bar ends
        for op in sorted(
            (o for o in ops if str(o.get("lane", "")) == lane), key=lambda o: o.get("start_us", 0)
        ):
            s, e = float(op.get("start_us", 0.0)), float(op.get("end_us", 0.0))
            i = next((i for i, t in enumerate(ends) if t <= s + 1e-9), len(ends))
            if i == len(ends):
                ends.append(e)
                rows.append(lane if i == 0 else f"{lane} {i + 1}")
            ends[i] = e
            name = str(op.get("name", ""))
            tip = (
                f"{name} ({op.get('kind', '')}, {lane}, {op.get('pes', '')} PEs): "
                f"{s:.4g} to {e:.4g} us on the device, {float(op.get('time_us', e - s)):.4g} us, "
                f"{op.get('bound', '')}-bound"
            )
            bars.append(
                Bar(lane if i == 0 else f"{lane} {i + 1}", off + s, off + e, name, str(op.get("kind")), tip)
            )
    return rows, bars, off + dev + d2h


# ------------------------------------------------------------------------------------------------ energy


def energy_items(run: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """(component, joules, "chip" or "card") in the JSON's order, chip components first."""
    items = [
        (str(k), float(v), "card" if str(k).startswith("card_") else "chip")
        for k, v in (run.get("energy_breakdown_j") or {}).items()
        if finite(v)
    ]
    return [i for i in items if i[2] == "chip"] + [i for i in items if i[2] == "card"]


# ------------------------------------------------------------------------------------------------ PNGs


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=PNG_DPI, layout="constrained")


def _save(fig, path: Path) -> None:
    import io

    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "mtiasim", "path.simplify": False}):
        # no Software (version) or date keys: the bytes depend only on the run
        fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())  # drawn in memory first: never a truncated PNG


def _title(run: Mapping[str, Any]) -> str:
    name = run.get("workload", run.get("model", ""))
    return f"{name} on {run.get('chip', '')}, {run.get('precision', '')}, batch {run.get('batch', '')}"


def roofline_png(run: Mapping[str, Any], chip: Chip, path: Path) -> None:
    ceil = ceilings(chip, str(run.get("precision", "int8")))
    pts = roofline_points(run)
    ax_ = roofline_axes(pts, ceil)
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    x0, x1 = 10.0**ax_.x_lo, 10.0**ax_.x_hi
    ax.set_xlim(x0, x1)
    ax.set_ylim(10.0**ax_.y_lo, 10.0**ax_.y_hi)
    peak = ceil.compute_ops_per_s
    ax.axhline(peak, color="black", lw=1.5, label=f"{ceil.dtype.value} DPE peak {peak / 1e12:.4g} Tops/s")
    for bw, name, style in ((ceil.sram_bytes_per_s, "SRAM", "--"), (ceil.dram_bytes_per_s, "LPDDR5", ":")):
        ridge = peak / bw
        ax.plot(
            [x0, ridge], [bw * x0, peak], style, color="black", lw=1.2, label=f"{name} {bw / 1e9:.4g} GB/s"
        )
    colours = kind_colours(run)
    seen: set[str] = set()
    for p in pts:
        if p.intensity is None or p.ops_per_s is None:
            continue
        lab = p.kind if p.kind not in seen else None
        seen.add(p.kind)
        ax.scatter(
            [p.intensity], [p.ops_per_s], color=colours.get(p.kind, "#333333"), s=28, zorder=3, label=lab
        )
    skipped = sum(1 for p in pts if p.intensity is None or p.ops_per_s is None)
    ax.set_xlabel("arithmetic intensity (ops per byte of SRAM + LPDDR5)")
    ax.set_ylabel("attained ops/s")
    ax.set_title(
        _title(run) + (f" ({skipped} ops without arithmetic not shown)" if skipped else ""), fontsize=9
    )
    ax.grid(True, which="major", lw=0.4, alpha=0.5)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def heatmap_png(run: Mapping[str, Any], path: Path) -> None:
    util = run.get("pe_utilization") or {}
    units = [u for u in UNIT_ORDER if u in util] + sorted(set(util) - set(UNIT_ORDER))
    n = max(len(units), 1)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig = _figure(2.2 * cols + 0.8, 2.3 * nrows + 0.4)
    im = None
    for i, u in enumerate(units):
        ax = fig.add_subplot(nrows, cols, i + 1)
        im = ax.imshow(util[u], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        flat = [v for row in util[u] for v in row]
        ax.set_title(f"{u} (mean {100 * sum(flat) / max(len(flat), 1):.1f}%)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="busy fraction")
    fig.suptitle("PE busy fraction per unit: " + _title(run), fontsize=9)
    _save(fig, path)


def timeline_png(run: Mapping[str, Any], path: Path) -> None:
    rows, bars, end = timeline_rows(run)
    colours = kind_colours(run) | PHASE_COLOURS
    fig = _figure(10.0, max(0.35 * len(rows) + 1.2, 2.6))
    ax = fig.add_subplot()
    y = {r: len(rows) - 1 - i for i, r in enumerate(rows)}
    for b in bars:
        if b.end_us > b.start_us:
            ax.broken_barh(
                [(b.start_us, b.end_us - b.start_us)],
                (y[b.row] - 0.4, 0.8),
                facecolors=colours.get(b.kind, "#333333"),
                edgecolor="white",
                linewidth=0.5,
            )
    ax.set_yticks([y[r] for r in rows], rows, fontsize=8)
    ax.set_xlim(0, end if end > 0 else 1)
    ax.set_xlabel("us from the start of the batch")
    ax.set_title("timeline: " + _title(run), fontsize=9)
    ax.grid(True, axis="x", lw=0.4, alpha=0.5)
    from matplotlib.patches import Patch

    kinds = kind_colours(run)
    handles = [Patch(color=c, label=k) for k, c in kinds.items()]
    handles += [
        Patch(color=PHASE_COLOURS["host"], label="host"),
        Patch(color=PHASE_COLOURS["pcie_in"], label="PCIe"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _save(fig, path)


def energy_png(run: Mapping[str, Any], path: Path) -> None:
    items = energy_items(run)
    fig = _figure(7.5, 0.28 * len(items) + 1.4)
    ax = fig.add_subplot()
    names = [k for k, _, _ in items][::-1]
    vals = [v * 1e6 for _, v, _ in items][::-1]
    cols = [CARD_COLOUR if g == "card" else CHIP_COLOUR for _, _, g in items][::-1]
    ax.barh(range(len(items)), vals, color=cols)
    ax.set_yticks(range(len(items)), names, fontsize=8)
    ax.set_xlabel("uJ per batch")
    chip_j = float(run.get("energy_j", 0.0) or 0.0)
    card_j = float(run.get("card_energy_j", 0.0) or 0.0)
    ax.set_title(
        f"energy per batch: chip {chip_j * 1e6:.4g} uJ, card {card_j * 1e6:.4g} uJ (blue chip, red card)",
        fontsize=9,
    )
    ax.grid(True, axis="x", lw=0.4, alpha=0.5)
    _save(fig, path)


def write_pngs(
    run: Mapping[str, Any], out_dir: Path, chip: Chip, files: AtomicFiles | None = None
) -> list[Path]:
    """roofline.png, heatmap.png, timeline.png and energy.png in `out_dir`; returns their paths.

    All four or none: they are drawn to temporaries and renamed into place together, with the other files of
    `files` (an open `AtomicFiles` group on `out_dir`) when it is given."""
    if files is None:
        with AtomicFiles(out_dir) as group:
            return write_pngs(run, out_dir, chip, group)
    draw = (
        lambda p: roofline_png(run, chip, p),
        lambda p: heatmap_png(run, p),
        lambda p: timeline_png(run, p),
        lambda p: energy_png(run, p),
    )
    for name, fn in zip(PNG_NAMES, draw, strict=True):
        with files.path(name) as tmp:
            fn(tmp)
    return [Path(out_dir) / n for n in PNG_NAMES]
