"""The Chrome/Perfetto trace writer (`mtiasim.report.trace`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict

import numpy as np
import pytest
from tests.oracles.spans import union_length

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.engine import NodeTable, execute
from mtiasim.errors import UsageError
from mtiasim.power.model import power_report, power_timeline
from mtiasim.report import trace as tr
from mtiasim.report.activity import UNITS, bandwidth_timeline, unit_spans
from mtiasim.report.trace import chrome_trace, write_trace

THREAD_NAMES = ["core 0", "core 1", "DMA", "DPE", "RE", "SE", "MLU"]
NS = 1e-3  # one nanosecond in the trace's microseconds


def _run(prep):
    return prep.chip, execute(
        prep.program, prep.chip, mode="timing", fidelity="event", inputs=prep.inputs
    ).timing


@pytest.fixture(scope="module")
def gemm():
    return _run(prepare_gemm(512, 1024, 1024, "int8", "sram"))


@pytest.fixture(scope="module")
def tbe():
    return _run(prepare_tbe(256, 20, 100000, 64, in_flight=1))


def _tile(timing, k):
    """`timing` run k times back to back: a synthetic run with k times the nodes and jobs."""
    n, T = timing.nodes, timing.seconds

    def shifted(a):
        return np.concatenate([a + i * T for i in range(k)])

    nodes = NodeTable(
        pe=n.pe * k,
        core=np.tile(n.core, k),
        job=np.concatenate([n.job + i * len(timing.jobs) for i in range(k)]),
        unit=n.unit * k,
        command=n.command * k,
        issue_s=shifted(n.issue_s),
        issue_busy_s=np.tile(n.issue_busy_s, k),
        start_s=shifted(n.start_s),
        end_s=shifted(n.end_s),
        busy_s=np.tile(n.busy_s, k),
        re_s=np.tile(n.re_s, k),
        counters=[dict(c) for c in n.counters] * k,
    )
    jobs = [
        dataclasses.replace(j, name=f"{j.name}/{i}", start_s=j.start_s + i * T, end_s=j.end_s + i * T)
        for i in range(k)
        for j in timing.jobs
    ]
    return dataclasses.replace(timing, seconds=T * k, jobs=jobs, nodes=nodes)


@pytest.fixture(scope="module")
def big(tbe):
    chip, t = tbe
    return chip, _tile(t, 14)  # 21,504 nodes


def _names(trace):
    """{pid: process name}, {(pid, tid): thread name}"""
    procs, threads = {}, {}
    for e in trace["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e["ph"] == "M" and e["name"] == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return procs, threads


def _slices(trace):
    """{(pid, thread name): [X events]}"""
    _, threads = _names(trace)
    out = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            out[(e["pid"], threads[(e["pid"], e["tid"])])].append(e)
    return out


def _expected_busy(chip, timing):
    """{(pid, thread name): (union busy s, spans)} from activity.unit_spans."""
    cols = chip.grid.cols
    pe = timing.nodes.pe
    per = defaultdict(list)
    for k, u in enumerate(UNITS):
        ids, s, e = unit_spans(timing.nodes)[u]
        for i, a, b in zip(ids.tolist(), s.tolist(), e.tolist(), strict=True):
            r, c = pe[i]
            per[(1 + r * cols + c, THREAD_NAMES[k])].append((a, b))
    return {key: (union_length(v), len(v)) for key, v in per.items()}


# --- schema -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gemm", "tbe"])
@pytest.mark.parametrize("aggregate", ["none", "bins"])
def test_schema(case, aggregate, request):
    chip, t = request.getfixturevalue(case)
    trace = chrome_trace(
        chip, t, name=case, aggregate=aggregate, offset_s=2e-6, host_spans=[("host", 0, 2e-6)]
    )
    assert set(trace) == {"traceEvents", "displayTimeUnit", "metadata"}
    assert trace["displayTimeUnit"] == "ns"
    assert trace["metadata"]["aggregate"] == aggregate and trace["metadata"]["name"] == case
    for e in trace["traceEvents"]:
        assert e["ph"] in {"X", "C", "M"}
        for key in ("ph", "pid", "tid", "ts", "name"):
            assert key in e, (key, e)
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int) and e["tid"] > 0
        assert math.isfinite(e["ts"]) and e["ts"] >= 0
        if e["ph"] == "X":
            assert math.isfinite(e["dur"]) and e["dur"] >= 0
        if e["ph"] == "C":
            assert isinstance(e["args"], dict) and len(e["args"]) == 1
    json.dumps(trace, allow_nan=False)


@pytest.mark.parametrize("aggregate", ["none", "bins"])
def test_slices_lie_in_the_run(tbe, aggregate):
    chip, t = tbe
    offset = 3.5e-6
    trace = chrome_trace(chip, t, aggregate=aggregate, offset_s=offset, host_spans=[("host", 0.0, offset)])
    lo, hi = offset * 1e6, (offset + t.seconds) * 1e6
    _, threads = _names(trace)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X" and threads[(e["pid"], e["tid"])] != "host"]
    assert xs
    for e in xs:
        assert lo - NS <= e["ts"] and e["ts"] + e["dur"] <= hi + NS, e


@pytest.mark.parametrize("aggregate", ["none", "bins"])
def test_threads_hold_disjoint_slices(tbe, aggregate):
    """Slices of a thread never cross, in the whole nanoseconds Perfetto rounds them to (a crossing pair is
    truncated by its importer)."""
    chip, t = tbe
    trace = chrome_trace(chip, t, aggregate=aggregate, offset_s=1.2345e-6)
    for key, xs in _slices(trace).items():
        spans = sorted((round(e["ts"] * 1000), round(e["ts"] * 1000) + round(e["dur"] * 1000)) for e in xs)
        for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
            assert e0 <= s1, key


def test_a_process_per_pe_with_its_seven_threads(gemm):
    chip, t = gemm
    trace = chrome_trace(chip, t)
    procs, threads = _names(trace)
    rows, cols = chip.grid.rows, chip.grid.cols
    pe_procs = {pid: n for pid, n in procs.items() if n.startswith("PE ")}
    assert len(pe_procs) == rows * cols
    for r in range(rows):
        for c in range(cols):
            pid = 1 + r * cols + c
            assert pe_procs[pid] == f"PE ({r},{c})"
            assert sorted(n for (p, _), n in threads.items() if p == pid) == sorted(THREAD_NAMES)
    assert procs[0] == "ops"
    sort = {
        e["pid"]: e["args"]["sort_index"] for e in trace["traceEvents"] if e["name"] == "process_sort_index"
    }
    assert min(sort, key=sort.get) == 0 and sorted(sort.values()) == [sort[p] for p in sorted(sort)]
    # tids are unique over the trace (Perfetto keys threads by tid)
    tid_pids = defaultdict(set)
    for e in trace["traceEvents"]:
        tid_pids[e["tid"]].add(e["pid"])
    assert all(len(p) == 1 for p in tid_pids.values())


def test_idle_pes_still_have_tracks(gemm):
    chip, t = gemm
    only = dataclasses.replace(t, nodes=None)  # no schedule at all (e.g. roofline)
    trace = chrome_trace(chip, only)
    procs, threads = _names(trace)
    assert sum(n.startswith("PE ") for n in procs.values()) == 64
    assert sum(pid > 0 for pid, _ in threads) == 64 * 7
    counters = {f"{e['name']} {k}" for e in trace["traceEvents"] if e["ph"] == "C" for k in e["args"]}
    assert counters == set(tr.COUNTER_TRACKS)


# --- the ops track ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gemm", "tbe"])
def test_ops_track_has_one_slice_per_job(case, request):
    chip, t = request.getfixturevalue(case)
    offset = 1e-6
    trace = chrome_trace(chip, t, offset_s=offset)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 0]
    assert len(xs) == len(t.jobs)
    by_name = {e["name"]: e for e in xs}
    for j in t.jobs:
        e = by_name[j.name]
        assert e["ts"] == pytest.approx((offset + j.start_s) * 1e6, abs=NS)
        assert e["ts"] + e["dur"] == pytest.approx((offset + j.end_s) * 1e6, abs=NS)
        assert e["args"]["kind"] == j.kind and e["args"]["pes"] == j.pes
        assert set(e["args"]["attribution_us"]) == set(j.attribution)


def test_overlapping_ops_of_a_lane_get_their_own_threads(tbe):
    chip, t = tbe  # its 8 jobs overlap in time
    trace = chrome_trace(chip, t)
    _, threads = _names(trace)
    lanes = sorted(n for (pid, _), n in threads.items() if pid == 0)
    assert "tbe" in lanes and len(lanes) > 1 and all(n.startswith("tbe") for n in lanes)


def test_op_rows_and_host_spans(gemm):
    chip, t = gemm
    ops = [
        {"name": "emb", "kind": "tbe", "lane": "sparse", "start_us": 0.0, "end_us": 5.0, "module": "m.emb"},
        {"name": "mlp", "kind": "gemm", "lane": "dense", "start_us": 0.0, "end_us": 16.0, "module": "m.mlp"},
        {"name": "cat", "kind": "concat", "lane": "joint", "start_us": 5.0, "end_us": 6.0, "module": "m"},
    ]
    host = [("host", 0.0, 4e-6), ("h2d", 4e-6, 5e-6), ("d2h", 5e-6 + t.seconds, 6e-6 + t.seconds)]
    trace = chrome_trace(chip, t, ops=ops, offset_s=5e-6, host_spans=host)
    sl = _slices(trace)
    assert [e["name"] for e in sl[(0, "sparse")]] == ["emb"]
    assert sl[(0, "dense")][0]["args"]["module"] == "m.mlp"
    assert sl[(0, "joint")][0]["ts"] == pytest.approx(10.0)
    assert [(e["name"], e["ts"], e["dur"]) for e in sl[(0, "host")]] == [
        ("host", 0.0, 4.0),
        ("h2d", 4.0, 1.0),
        ("d2h", pytest.approx(5 + t.seconds * 1e6, abs=NS), pytest.approx(1.0, abs=NS)),
    ]
    order = {
        e["tid"]: e["args"]["sort_index"] for e in trace["traceEvents"] if e["name"] == "thread_sort_index"
    }
    _, threads = _names(trace)
    ops_order = sorted((order[tid], n) for (pid, tid), n in threads.items() if pid == 0)
    assert [n for _, n in ops_order] == ["host", "sparse", "dense", "joint"]


# --- busy time ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gemm", "tbe"])
def test_thread_busy_time_is_the_unit_busy_time(case, request):
    chip, t = request.getfixturevalue(case)
    trace = chrome_trace(chip, t, aggregate="none", offset_s=7.77e-7)
    got = {k: sum(e["dur"] for e in xs) for k, xs in _slices(trace).items() if k[0] > 0}
    want = _expected_busy(chip, t)
    assert set(got) == {k for k, (busy, _) in want.items() if busy > 0}
    for key, (busy, n) in want.items():
        # times are whole ns: each span's ends move by at most half a ns
        assert got.get(key, 0.0) == pytest.approx(busy * 1e6, abs=n * NS + 1e-9), key
    assert trace["metadata"]["clipped_spans"] > 0  # concurrent DMA commands
    assert any("overlap_us" in e["args"] for xs in _slices(trace).values() for e in xs if e["pid"] > 0)


def test_gemm_dpe_time_is_the_nodes_busy_time(gemm):
    chip, t = gemm
    trace = chrome_trace(chip, t, aggregate="none")
    dpe = [e for (pid, n), xs in _slices(trace).items() if n == "DPE" for e in xs]
    ids = [i for i, u in enumerate(t.nodes.unit) if u == "dpe"]
    assert len(dpe) == len(ids) == 64
    assert sum(e["dur"] for e in dpe) == pytest.approx(
        float(t.nodes.busy_s[ids].sum()) * 1e6, abs=len(ids) * NS
    )
    assert sum(e["dur"] for e in dpe) == pytest.approx(float(t.nodes.busy_s[ids].sum()) * 1e6, rel=1e-5)
    assert all(e["name"] == "gemm" and e["args"]["command"] == "MatMul" for e in dpe)
    assert all(e["args"]["dpe_macs_int8"] > 0 for e in dpe)


def test_bins_keep_the_busy_time(tbe):
    chip, t = tbe
    none = _slices(chrome_trace(chip, t, aggregate="none"))
    for max_bytes in (100_000_000, 300_000):
        trace = chrome_trace(chip, t, aggregate="bins", max_bytes=max_bytes)
        assert 1 <= trace["metadata"]["bins"] <= tr.MAX_BINS
        binned = _slices(trace)
        for key, xs in binned.items():
            if key[0] == 0:
                continue
            busy_ns = sum(round(e["dur"] * 1000) for e in xs)
            assert busy_ns == sum(round(e["dur"] * 1000) for e in none[key]), key
            assert busy_ns <= round(t.seconds * 1e9) + 1
            assert all(0 < e["args"]["busy_fraction"] <= 1 for e in xs)
            assert all(e["args"]["commands"] >= 1 for e in xs)
    assert trace["metadata"]["bins"] < tr.MAX_BINS


def test_auto_bins_a_big_run_within_max_bytes(big):
    chip, t = big
    full = chrome_trace(chip, t)
    assert full["metadata"]["aggregate"] == "none"
    size_full = len(json.dumps(full, separators=(",", ":")))
    max_bytes = 1_500_000
    assert size_full > 2 * max_bytes
    small = chrome_trace(chip, t, max_bytes=max_bytes)
    assert small["metadata"]["aggregate"] == "bins"
    assert len(json.dumps(small, separators=(",", ":"))) < max_bytes
    # aggregation keeps every PE's tracks, the ops and the counters
    procs, threads = _names(small)
    assert len(threads) == len(_names(full)[1])
    assert sum(e["ph"] == "X" and e["pid"] == 0 for e in small["traceEvents"]) == len(t.jobs)
    assert sum(e["ph"] == "C" for e in small["traceEvents"]) == sum(
        e["ph"] == "C" for e in full["traceEvents"]
    )


# --- counters ---------------------------------------------------------------------------------------------------


def _counters(trace):
    out = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "C":
            ((key, v),) = e["args"].items()
            out[f"{e['name']} {key}"].append((e["ts"], v))
    return out


def test_counter_tracks(gemm):
    chip, t = gemm
    offset = 1e-6
    trace = chrome_trace(chip, t, offset_s=offset)
    c = _counters(trace)
    assert set(c) == set(tr.COUNTER_TRACKS) == set(trace["metadata"]["counters"])
    assert set(tr.COUNTER_TRACKS) == {"SRAM GB/s", "LPDDR5 GB/s", "NoC GB/s", "chip power W"}
    end = (offset + t.seconds) * 1e6
    for samples in c.values():
        assert len(samples) == tr.COUNTER_BINS + 1
        assert samples[-1] == (pytest.approx(end, abs=NS), 0)
        assert [ts for ts, _ in samples] == sorted(ts for ts, _ in samples)
    edges, bw = bandwidth_timeline(t.nodes, t.seconds, tr.COUNTER_BINS)
    for track, level in (("SRAM GB/s", "sram"), ("LPDDR5 GB/s", "dram"), ("NoC GB/s", "noc")):
        got = np.array([v for _, v in c[track][:-1]])
        assert got == pytest.approx(bw[level] / 1e9, abs=1e-4)
        assert c[track][0][0] == pytest.approx(offset * 1e6)
    _, watts = power_timeline(chip, t.nodes, t.seconds, tr.COUNTER_BINS)
    assert np.array([v for _, v in c["chip power W"][:-1]]) == pytest.approx(watts, abs=1e-4)
    assert max(v for _, v in c["SRAM GB/s"]) > 0


def test_power_report_timeline_is_used(gemm):
    chip, t = gemm
    offset = 2e-6
    power = power_report(chip, t.counters, t.seconds + offset, nodes=t.nodes, device_offset_s=offset)
    c = _counters(chrome_trace(chip, t, power=power, offset_s=offset))["chip power W"]
    assert [ts for ts, _ in c[:-1]] == pytest.approx(list(power.timeline_edges_s[:-1] * 1e6), abs=NS)
    assert [v for _, v in c[:-1]] == pytest.approx(list(power.timeline_w), abs=1e-4)


# --- output -----------------------------------------------------------------------------------------------------


def test_write_trace_round_trips(tmp_path, tbe):
    chip, t = tbe
    trace = chrome_trace(chip, t, name="tbe", offset_s=1e-6, host_spans=[("host", 0.0, 1e-6)])
    path = tmp_path / "trace.json"
    n = write_trace(path, trace)
    assert n == path.stat().st_size > 0
    assert json.loads(path.read_text()) == trace
    assert b"\n" not in path.read_bytes() and b", " not in path.read_bytes()[:1000]
    # deterministic: the same run gives the same bytes
    assert (
        write_trace(
            tmp_path / "again.json",
            chrome_trace(chip, t, name="tbe", offset_s=1e-6, host_spans=[("host", 0.0, 1e-6)]),
        )
        == n
    )
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    # and the trace's events come sorted: metadata, then slices by (pid, tid, ts), then counters
    phs = [e["ph"] for e in trace["traceEvents"]]
    assert phs == sorted(phs, key="MXC".index)
    xs = [(e["pid"], e["tid"], e["ts"]) for e in trace["traceEvents"] if e["ph"] == "X"]
    assert xs == sorted(xs)


def test_write_trace_to_a_missing_directory(tmp_path, gemm):
    chip, t = gemm
    path = tmp_path / "no" / "such" / "dir" / "trace.json"
    with pytest.raises(UsageError) as err:
        write_trace(path, chrome_trace(chip, t))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_bad_arguments(gemm):
    chip, t = gemm
    with pytest.raises(UsageError, match="aggregate"):
        chrome_trace(chip, t, aggregate="sometimes")
    with pytest.raises(UsageError, match="offset"):
        chrome_trace(chip, t, offset_s=-1.0)
    with pytest.raises(UsageError, match="max_bytes"):
        chrome_trace(chip, t, max_bytes=0)
    with pytest.raises(UsageError, match="start_us"):
        chrome_trace(chip, t, ops=[{"name": "x"}])
