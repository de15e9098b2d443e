"""A timed run as a Chrome Trace Event Format file (JSON object form) for ui.perfetto.dev or chrome://tracing.

Layout:

- pid 0, process "ops" (on top): a thread per lane (sparse, dense, joint, or the op kind) with one slice per
  op; ops of a lane that overlap in time go to extra threads ("dense (2)"), since slices of one thread must
  nest. A thread "host" holds the host and PCIe phases. The counter tracks live here too: "SRAM GB/s",
  "LPDDR5 GB/s", "NoC GB/s" (from `activity.bandwidth_timeline`) and "chip power W" (from the power timeline),
  each ending with a zero sample at the end of the run.
- pid 1 + row * cols + col, process "PE (r,c)": threads "core 0", "core 1", "DMA", "DPE", "RE", "SE", "MLU"
  (tid = pid * 100 + 1..7, unique over the trace: Perfetto keys threads by tid) with one slice per busy span
  of the unit (`activity.unit_spans`), named after the op (job) it belongs to.

Times are microseconds from the start of the run (the device program starts at `offset_s`), quantised to
whole nanoseconds, the resolution Perfetto keeps: ts and ts + dur are each the rounded instant, so
back-to-back slices stay disjoint in the viewer. The spans of one unit that overlap (a PE's concurrent DMA
commands) are clipped so a thread's slices never overlap: a span starts where the one before it ended
(args `overlap_us` says by how much it was cut), and a span wholly inside another is dropped (counted in the
metadata). So a thread's summed slice time is the unit's busy time.

With many nodes the slices can be aggregated (`aggregate="bins"`): the run is cut into at most 2000 bins (fewer
where `max_bytes` asks for it) and each (PE, unit) thread gets one slice per bin it was busy in, starting at its
first busy instant in the bin and as long as its busy time there (slices of consecutive bins that touch are
one), which bounds the file whatever the node count. `aggregate="auto"` does so when the every-span trace is
estimated (150 bytes a slice) to exceed `max_bytes`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtiasim.engine import NodeTable, TimingResult
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.power.model import PowerReport, power_timeline
from mtiasim.report.activity import UNITS, bandwidth_timeline, unit_spans
from mtiasim.report.atomic import atomic_write_bytes

UNIT_THREADS = {
    "core0": "core 0",
    "core1": "core 1",
    "dma": "DMA",
    "dpe": "DPE",
    "re": "RE",
    "se": "SE",
    "mlu": "MLU",
}
LANES = ("sparse", "dense", "joint")  # the known lanes, in this order, ahead of any other
AGGREGATES = ("auto", "none", "bins")
OPS_PID = 0
HOST_TID = 1  # in the ops process; its counters are bound to this thread too
TID_STRIDE = 100  # a PE's unit k has tid pid * TID_STRIDE + 1 + k; the ops process uses tids below TID_STRIDE
BYTES_PER_EVENT = 150  # the estimate of one slice's JSON size, for `aggregate="auto"`
BYTES_PER_META = 100
MAX_BINS = 2000  # per (PE, unit) thread
COUNTER_BINS = 200
# counter tracks: (event name, arg key, bandwidth level or None for power); Perfetto names a track
# "<event name> <arg key>", chrome://tracing shows the arg key as the series of the event name's track
COUNTERS = (
    ("SRAM", "GB/s", "sram"),
    ("LPDDR5", "GB/s", "dram"),
    ("NoC", "GB/s", "noc"),
    ("chip power", "W", None),
)
COUNTER_TRACKS = tuple(f"{name} {key}" for name, key, _ in COUNTERS)
# which of a node's counters its slice shows, per unit (cores: none)
RE_COUNTERS = ("epilogue_ops", "reduction_bytes")
VECTOR_COUNTERS = ("se_ops",)


def chrome_trace(
    chip: Chip,
    timing: TimingResult,
    *,
    name: str = "",
    ops: list[dict] | None = None,
    power: PowerReport | None = None,
    offset_s: float = 0.0,
    host_spans: Sequence[tuple[str, float, float]] = (),
    aggregate: str = "auto",
    max_bytes: int = 100_000_000,
) -> dict[str, Any]:
    """The trace of `timing` as a dict ready for `json.dumps` (see the module doc for the layout).

    `ops` rows ({"name", "kind", "lane", "start_us", "end_us", "module"}, optional "pes", "attribution_us",
    "bound"; times relative to the device program) replace the default one row per job. `power` gives the
    chip power track (its timeline already shifted by the offset); without it the timeline is computed.
    `host_spans` are (label, start s, end s) in run time. `aggregate`: "none" emits every busy span, "bins"
    merges each (PE, unit)'s spans into time bins, "auto" bins when "none" would exceed `max_bytes`.
    """
    if aggregate not in AGGREGATES:
        raise UsageError(f"trace aggregate: unknown mode {aggregate!r} (known: {', '.join(AGGREGATES)})")
    if not math.isfinite(offset_s) or offset_s < 0:
        raise UsageError(f"trace offset: {offset_s!r} s is not a finite time >= 0")
    if max_bytes <= 0:
        raise UsageError(f"trace max_bytes: {max_bytes!r} is not a positive size")
    rows, cols = chip.grid.rows, chip.grid.cols
    n_pes = rows * cols
    seconds = max(float(timing.seconds), 0.0)
    offset_ns = _ns(offset_s)
    run_end_ns = _ns(offset_s + seconds)
    job_names = [j.name for j in timing.jobs]

    events_meta: list[dict[str, Any]] = []
    events_x: list[dict[str, Any]] = []
    events_c: list[dict[str, Any]] = []

    # the ops process: lanes of ops, the host phases
    op_rows = _default_ops(timing) if ops is None else [_op_row(o) for o in ops]
    op_threads = _ops_events(op_rows, offset_ns, host_spans, n_pes, events_x)
    events_meta += _meta(OPS_PID, None, "process_name", {"name": "ops"})
    events_meta += _meta(OPS_PID, None, "process_sort_index", {"sort_index": -1})
    for order, (tid, tname) in enumerate(op_threads):
        events_meta += _meta(OPS_PID, tid, "thread_name", {"name": tname})
        events_meta += _meta(OPS_PID, tid, "thread_sort_index", {"sort_index": order})

    # one process per PE, every unit's thread named even when idle
    for r in range(rows):
        for c in range(cols):
            pid = 1 + r * cols + c
            events_meta += _meta(pid, None, "process_name", {"name": f"PE ({r},{c})"})
            events_meta += _meta(pid, None, "process_sort_index", {"sort_index": pid})
            for k, u in enumerate(UNITS):
                tid = pid * TID_STRIDE + 1 + k
                events_meta += _meta(pid, tid, "thread_name", {"name": UNIT_THREADS[u]})
                events_meta += _meta(pid, tid, "thread_sort_index", {"sort_index": k})

    # busy spans per (PE, unit)
    nodes = timing.nodes
    spans = _Spans.build(nodes, cols, offset_s) if nodes is not None else _Spans.empty()
    estimate = (spans.raw_count + len(events_x)) * BYTES_PER_EVENT + (
        len(events_meta) + 2 * COUNTER_BINS * len(COUNTERS)
    ) * BYTES_PER_META
    mode = aggregate
    if mode == "auto":
        mode = "bins" if estimate > max_bytes else "none"
    bins = 0
    if mode == "none":
        events_x += _span_events(spans, nodes, job_names)
    else:
        tracks = len(np.unique(spans.track))
        fixed = estimate - spans.raw_count * BYTES_PER_EVENT
        budget = max(0, int(0.9 * max_bytes) - fixed)
        bins = int(min(MAX_BINS, max(1, budget // (BYTES_PER_EVENT * max(1, tracks)))))
        events_x += _bin_events(spans, job_names, offset_ns, run_end_ns, bins)

    # counters
    events_c += _counter_events(chip, nodes, seconds, offset_s, power)

    events_meta.sort(key=lambda e: (e["pid"], e.get("tid", -1), e["name"]))
    events_x.sort(key=lambda e: (e["pid"], e["tid"], e["ts"], e["dur"], e["name"]))
    metadata = {
        "generator": "mtiasim",
        "name": name,
        "chip": chip.name,
        "grid": [rows, cols],
        "fidelity": timing.fidelity,
        "device_s": seconds,
        "offset_s": float(offset_s),
        "nodes": len(nodes) if nodes is not None else 0,
        "aggregate": mode,
        "bins": bins,
        "estimated_bytes": int(estimate),
        "time_resolution_ns": 1,
        "clipped_spans": spans.clipped,
        "hidden_spans": spans.hidden,
        "counters": list(COUNTER_TRACKS),
        "units": {u: UNIT_THREADS[u] for u in UNITS},
    }
    return {"traceEvents": events_meta + events_x + events_c, "displayTimeUnit": "ns", "metadata": metadata}


def write_trace(path: str | Path, trace: dict[str, Any]) -> int:
    """Write `trace` as compact JSON to `path`; the number of bytes written."""
    data = json.dumps(trace, separators=(",", ":"), allow_nan=False).encode()
    return atomic_write_bytes(path, data)  # all or nothing: never a truncated trace


# --- helpers -------------------------------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _us(ns: int) -> float:
    return ns / 1000


def _num(v: float) -> float | int:
    """A counter value for JSON: an int when whole, else rounded to 4 decimals."""
    v = float(v)
    return int(v) if v.is_integer() and abs(v) < 2**53 else round(v, 4)


def _meta(pid: int, tid: int | None, what: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    # Perfetto makes a thread of every event's (pid, tid), metadata included, and keys threads by tid: a
    # process's metadata goes on one of its own threads (never tid 0, nor a tid = pid that another uses)
    if tid is None:
        tid = pid * TID_STRIDE + 1 if pid else HOST_TID
    return [{"name": what, "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": args}]


def _default_ops(timing: TimingResult) -> list[dict[str, Any]]:
    return [
        {
            "name": j.name,
            "kind": j.kind,
            "lane": j.kind,
            "start_us": j.start_s * 1e6,
            "end_us": j.end_s * 1e6,
            "module": "",
            "pes": j.pes,
            "attribution_us": {k: float(v) * 1e6 for k, v in j.attribution.items()},
            "bound": j.bound,
        }
        for j in timing.jobs
    ]


def _op_row(op: Any) -> dict[str, Any]:
    if isinstance(op, Mapping):
        row = dict(op)
    elif hasattr(op, "to_json"):  # a runtime OpRow
        row = op.to_json()
    else:
        raise UsageError(
            f"trace ops: {type(op).__name__} is not an op row (a dict with name, start_us, end_us)"
        )
    if "start_us" not in row or "end_us" not in row:
        raise UsageError(f"trace ops: op {row.get('name', '?')!r} has no start_us/end_us")
    return row


def _lane_key(lane: str) -> tuple[int, str]:
    return (LANES.index(lane), "") if lane in LANES else (len(LANES), lane)


def _pack(items: list[tuple[int, int, Any]]) -> list[list[tuple[int, int, Any]]]:
    """Spread (start ns, end ns, item) over the fewest sub-lanes whose spans never overlap (greedy, by start)."""
    lanes: list[list[tuple[int, int, Any]]] = []
    for s, e, item in sorted(items, key=lambda t: (t[0], -t[1])):
        for lane in lanes:
            if lane[-1][1] <= s:
                lane.append((s, e, item))
                break
        else:
            lanes.append([(s, e, item)])
    return lanes


def _ops_events(
    op_rows: list[dict[str, Any]],
    offset_ns: int,
    host_spans: Iterable[tuple[str, float, float]],
    n_pes: int,
    out: list[dict[str, Any]],
) -> list[tuple[int, str]]:
    """Append the X events of the ops process to `out`; its threads as (tid, name), in display order."""
    threads: list[tuple[int, str]] = []
    next_tid = HOST_TID + 1

    def tid_for() -> int:
        nonlocal next_tid
        tid = next_tid if next_tid < TID_STRIDE else (n_pes + 1) * TID_STRIDE + next_tid
        next_tid += 1
        return tid

    host = []
    for label, start_s, end_s in host_spans:
        s, e = _ns(float(start_s)), _ns(float(end_s))
        host.append((s, max(s, e), str(label)))
    for i, lane in enumerate(_pack(host)):
        tid = HOST_TID if i == 0 else tid_for()
        threads.append((tid, "host" if i == 0 else f"host ({i + 1})"))
        for s, e, label in lane:
            out.append(
                {"name": label, "ph": "X", "pid": OPS_PID, "tid": tid, "ts": _us(s), "dur": _us(e - s)}
            )

    by_lane: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for op in op_rows:
        lane = str(op.get("lane") or op.get("kind") or "ops")
        s = offset_ns + int(round(float(op["start_us"]) * 1000))
        e = max(s, offset_ns + int(round(float(op["end_us"]) * 1000)))
        by_lane.setdefault(lane, []).append((s, e, op))
    for lane in sorted(by_lane, key=_lane_key):
        for i, sub in enumerate(_pack(by_lane[lane])):
            tid = tid_for()
            threads.append((tid, lane if i == 0 else f"{lane} ({i + 1})"))
            for s, e, op in sub:
                args: dict[str, Any] = {"kind": op.get("kind", ""), "module": op.get("module", "")}
                if "pes" in op:
                    args["pes"] = op["pes"]
                att = op.get("attribution_us", op.get("attribution"))
                if att:
                    args["attribution_us"] = {k: round(float(v), 4) for k, v in sorted(att.items())}
                if op.get("bound"):
                    args["bound"] = op["bound"]
                out.append(
                    {
                        "name": str(op.get("name", "")),
                        "ph": "X",
                        "pid": OPS_PID,
                        "tid": tid,
                        "ts": _us(s),
                        "dur": _us(e - s),
                        "args": args,
                    }
                )
    return threads


class _Spans:
    """Every (PE, unit) thread's busy spans in whole ns of run time, clipped so that a thread's spans are
    disjoint; sorted by (track, start). track = pe * len(UNITS) + unit index."""

    def __init__(
        self,
        track: np.ndarray,
        node: np.ndarray,
        job: np.ndarray,
        unit: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        cut: np.ndarray,
        raw_count: int,
        clipped: int,
        hidden: int,
    ) -> None:
        self.track, self.node, self.job, self.unit = track, node, job, unit
        self.start, self.end, self.cut = start, end, cut
        self.raw_count, self.clipped, self.hidden = raw_count, clipped, hidden

    @classmethod
    def empty(cls) -> _Spans:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, z, z, z, 0, 0, 0)

    @classmethod
    def build(cls, nodes: NodeTable, cols: int, offset_s: float) -> _Spans:
        if not len(nodes):
            return cls.empty()
        pe = np.array(nodes.pe, dtype=np.int64).reshape(-1, 2)
        pe_index = pe[:, 0] * cols + pe[:, 1]
        parts = []
        per_unit = unit_spans(nodes)
        for k, (ids, s, e) in enumerate(per_unit[u] for u in UNITS):
            s_ns = np.rint((s + offset_s) * 1e9).astype(np.int64)
            e_ns = np.rint((e + offset_s) * 1e9).astype(np.int64)
            parts.append(
                (pe_index[ids] * len(UNITS) + k, ids, np.full(len(ids), k, dtype=np.int64), s_ns, e_ns)
            )
        track, node, unit, start, end = (np.concatenate([p[i] for p in parts]) for i in range(5))
        keep = end > start
        raw_count = int(keep.sum())
        if not raw_count:
            return cls.empty()
        track, node, unit, start, end = track[keep], node[keep], unit[keep], start[keep], end[keep]
        order = np.lexsort((node, start, track))
        track, node, unit, start, end = track[order], node[order], unit[order], start[order], end[order]
        # the end of the spans before each one on its track: a running max of end + track * big is per track
        # (every earlier track's values are below this track's), exact in int64
        big = int(end.max()) + 1
        keyed = np.maximum.accumulate(end + track * big)
        before = np.concatenate(([-1], keyed[:-1])) - track * big  # negative at a track's first span
        new_start = np.maximum(start, before)
        visible = end > new_start
        cut = new_start - start
        clipped = int(((cut > 0) & visible).sum())
        hidden = int((~visible).sum())
        return cls(
            track[visible],
            node[visible],
            np.asarray(nodes.job, dtype=np.int64)[node[visible]],
            unit[visible],
            new_start[visible],
            end[visible],
            cut[visible],
            raw_count,
            clipped,
            hidden,
        )


def _shown_counter(key: str) -> bool:
    """Whether a DMA/DPE/SE/MLU slice shows counter `key`: bytes, MACs and SE ops (the RE's own go to its slice)."""
    return key not in RE_COUNTERS and (
        key.endswith("_bytes") or key.startswith("dpe_macs_") or key in VECTOR_COUNTERS
    )


def _node_args(counters: dict[str, float], unit: str, shown: dict[str, bool]) -> dict[str, Any]:
    if unit in ("core0", "core1"):
        return {}
    if unit == "re":
        return {k: _num(counters[k]) for k in RE_COUNTERS if counters.get(k)}
    out = {}
    for k in sorted(counters):
        keep = shown.get(k)
        if keep is None:
            keep = shown[k] = _shown_counter(k)
        if keep and counters[k]:
            out[k] = _num(counters[k])
    return out


def _span_events(spans: _Spans, nodes: NodeTable | None, job_names: list[str]) -> list[dict[str, Any]]:
    if nodes is None or not len(spans.track):
        return []
    out = []
    command, counters, job = nodes.command, nodes.counters, nodes.job.tolist()
    unit_names = UNITS
    shown: dict[str, bool] = {}
    for track, node, unit, s, e, cut in zip(
        spans.track.tolist(),
        spans.node.tolist(),
        spans.unit.tolist(),
        spans.start.tolist(),
        spans.end.tolist(),
        spans.cut.tolist(),
        strict=True,
    ):
        pid = 1 + track // len(UNITS)
        args = {"command": command[node]}
        args.update(_node_args(counters[node], unit_names[unit], shown))
        if cut:
            args["overlap_us"] = cut / 1000
        out.append(
            {
                "name": job_names[job[node]],
                "ph": "X",
                "pid": pid,
                "tid": pid * TID_STRIDE + 1 + unit,
                "ts": s / 1000,
                "dur": (e - s) / 1000,
                "args": args,
            }
        )
    return out


def _bin_events(
    spans: _Spans, job_names: list[str], start_ns: int, end_ns: int, bins: int
) -> list[dict[str, Any]]:
    """One slice per (track, bin) with busy time: dur = the busy time in the bin, from its first busy instant;
    the slices of consecutive bins that touch (the unit busy across the edge) are one slice."""
    if not len(spans.track) or end_ns <= start_ns:
        return []
    edges = np.unique(np.rint(np.linspace(start_ns, end_ns, bins + 1)).astype(np.int64))
    tracks, first = np.unique(spans.track, return_index=True)
    big = int(max(end_ns, int(spans.end.max()))) + 1
    ks = spans.start + spans.track * big
    ke = spans.end + spans.track * big
    length = spans.end - spans.start
    cum = np.cumsum(length)
    group_of = np.searchsorted(tracks, spans.track)
    base = (cum - length)[first]  # cumulative length before each track's first span
    cum_before = cum - length - base[group_of]  # within-track busy time before each span
    # busy time of each track up to each edge: C(t) = before[j] + min(t - start[j], len[j]), j = last span
    # starting at or before t on the track
    q = (edges[None, :] + (tracks * big)[:, None]).ravel()
    qtrack = np.repeat(tracks, len(edges))
    j = np.searchsorted(ks, q, side="right") - 1
    valid = (j >= 0) & (spans.track[np.maximum(j, 0)] == qtrack)
    jj = np.maximum(j, 0)
    upto = np.where(valid, cum_before[jj] + np.minimum(q - ks[jj], length[jj]), 0).reshape(len(tracks), -1)
    busy = np.diff(upto, axis=1)
    # the spans that overlap each bin: from the first ending after its start to the last starting before its end
    lo = np.searchsorted(ke, q, side="right").reshape(len(tracks), -1)[:, :-1]
    hi = np.searchsorted(ks, q, side="left").reshape(len(tracks), -1)[:, 1:]
    ti, bi = np.nonzero(busy > 0)  # by track, then bin
    lo_i, hi_i, dur = lo[ti, bi], hi[ti, bi], busy[ti, bi]
    ts = np.maximum(spans.start[lo_i], edges[bi])
    # a bin's slice that ends where the next bin's starts (the unit busy across the edge) merges with it
    cont = np.zeros(len(ti), dtype=bool)
    cont[1:] = (ti[1:] == ti[:-1]) & (bi[1:] == bi[:-1] + 1) & (ts[1:] == ts[:-1] + dur[:-1])
    head = np.flatnonzero(~cont)
    tail = np.append(head[1:] - 1, len(ti) - 1)
    dur = np.add.reduceat(dur, head) if len(head) else dur
    width = edges[bi[tail] + 1] - edges[bi[head]]
    jobs = spans.job
    changes = np.concatenate(([0], np.cumsum(jobs[1:] != jobs[:-1])))
    out = []
    for t, lo_k, hi_k, s, d, w in zip(
        tracks[ti[head]].tolist(),
        lo_i[head].tolist(),
        hi_i[tail].tolist(),
        ts[head].tolist(),
        dur.tolist(),
        width.tolist(),
        strict=True,
    ):
        pid = 1 + t // len(UNITS)
        uniform = changes[hi_k - 1] == changes[lo_k]
        out.append(
            {
                "name": job_names[jobs[lo_k]] if uniform else "(several ops)",
                "ph": "X",
                "pid": pid,
                "tid": pid * TID_STRIDE + 1 + t % len(UNITS),
                "ts": s / 1000,
                "dur": d / 1000,
                "args": {"busy_fraction": round(d / w, 4), "commands": hi_k - lo_k},
            }
        )
    return out


def _counter_events(
    chip: Chip, nodes: NodeTable | None, seconds: float, offset_s: float, power: PowerReport | None
) -> list[dict[str, Any]]:
    end_ns = _ns(offset_s + seconds)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    have_nodes = nodes is not None and len(nodes) > 0 and seconds > 0
    cols = nodes.counter_columns() if have_nodes and nodes is not None else {}
    if have_nodes:
        assert nodes is not None
        edges, bw = bandwidth_timeline(nodes, seconds, COUNTER_BINS, cols)
        for _, _, level in COUNTERS[:3]:
            series[level] = (edges[:-1] + offset_s, bw[level] / 1e9)
    if power is not None and power.timeline_edges_s is not None and power.timeline_w is not None:
        series["power"] = (np.asarray(power.timeline_edges_s)[:-1], np.asarray(power.timeline_w))
    elif have_nodes:
        assert nodes is not None
        edges, watts = power_timeline(chip, nodes, seconds, COUNTER_BINS, cols)
        series["power"] = (edges[:-1] + offset_s, watts)
    out = []
    for name, key, level in COUNTERS:
        ts, values = series.get(level or "power", (np.array([offset_s]), np.array([0.0])))
        ts_ns = np.rint(ts * 1e9).astype(np.int64)
        for t, v in zip(ts_ns.tolist(), values.tolist(), strict=True):
            out.append(
                {
                    "name": name,
                    "ph": "C",
                    "pid": OPS_PID,
                    "tid": HOST_TID,
                    "ts": t / 1000,
                    "args": {key: round(v, 4)},
                }
            )
        last = max(end_ns, int(ts_ns[-1]) if len(ts_ns) else end_ns)
        out.append(
            {"name": name, "ph": "C", "pid": OPS_PID, "tid": HOST_TID, "ts": last / 1000, "args": {key: 0}}
        )
    return out
