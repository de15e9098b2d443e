"""Timing: one constraint graph, three fidelities.

Every node (command instance) starts when (a) its core has issued it, (b) the unit it needs is free (DPE, SE
and MLU run one command at a time; the DMA engine a few), and (c) the first item of every stream it reads has
arrived. It ends after its own work, and no earlier than one item after the end of each producer it streams
from (or, for a reduction, after the upstream partial has crossed its link). Barriers release when every
participant's earlier commands have completed. The control core launches jobs one after another; a job's PEs
start one after another.

- `event`: a fluid discrete-event simulation. Data movement is a flow; flows of a multicast group move in
  lockstep as one bundle; the shared resources (SRAM slices, LPDDR5 channels, NoC lanes, Fabric Interfaces,
  host link) are divided among the active bundles by max-min fairness, with each bundle also capped by its
  memory latency (bytes in flight), its issue rate and its consumer's pace. Rates change only at events.
- `analytic`: the same graph with every flow at its uncontended rate, combined with the aggregate bound of
  each shared resource (total bytes / capacity). A lower bound of `event` by construction.
- `roofline`: per job, the larger of the per-PE average unit work and the raw bytes per memory level at peak
  bandwidth; jobs chained along their dependencies. No latency, no launch.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from mtiasim.engine.eventcore import sim_module
from mtiasim.engine.resolve import Node, Resolved, job_order
from mtiasim.engine.resources import ResourceMap, resource_map
from mtiasim.engine.work import BundleSums, Memo, Work, WorkModel, upstream_of
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dram_bytes_per_s, sram_bytes_per_s
from mtiasim.isa import Barrier, HostSide, Program

INF = float("inf")
EPS = 1e-15
FIDELITIES = ("roofline", "analytic", "event")

# attribution classes
DISPATCH = "dispatch"
QUEUE = "queue"  # waiting for the PEs to finish an earlier job
ISSUE = "issue"
LATENCY = "latency"
COMPUTE = "compute"


@dataclass
class JobTiming:
    name: str
    kind: str
    start_s: float
    end_s: float
    pes: int
    # where the job's time went: compute split by unit (compute.dpe, compute.se, compute.mlu, compute.core),
    # reduction-network waits (reduction), local_memory, sram, dram, noc, latency, issue, dispatch, queue, host;
    # adds up to the job's time. `attribution` folds the compute units into one class.
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    @property
    def attribution(self) -> dict[str, float]:
        return coarse(self.detail)

    @property
    def bound(self) -> str:
        if not self.attribution:
            return COMPUTE
        return max(self.attribution.items(), key=lambda kv: kv[1])[0]


REDUCTION = "reduction"


def summed(dicts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Key-wise sum of dicts of numbers."""
    total: dict[str, float] = defaultdict(float)
    for d in dicts:
        for k, v in d.items():
            total[k] += v
    return dict(total)


def coarse(detail: dict[str, float]) -> dict[str, float]:
    """Fold a detailed attribution into its classes (compute.dpe -> compute; reduction stays)."""
    out: dict[str, float] = defaultdict(float)
    for k, v in detail.items():
        out[k.split(".")[0]] += v
    return dict(out)


@dataclass
class NodeTable:
    """What every command instance did and when: the raw material of traces, power timelines and heatmaps.

    Times in seconds from the program's start (all zero at `roofline` fidelity, which has no schedule).
    `busy_s` is the unit's own busy time inside [start, end] (a DMA flow: the whole span);
    `re_s` the reduction engine's part of a MatMul; `counters` the engine's action counts for the node.
    """

    pe: list[tuple[int, int]]
    core: np.ndarray
    job: np.ndarray  # index into TimingResult.jobs
    unit: list[str]  # dma, dpe, se, mlu, core, none
    command: list[str]
    issue_s: np.ndarray  # when its core started issuing it
    issue_busy_s: np.ndarray  # how long its core spent issuing it
    start_s: np.ndarray
    end_s: np.ndarray
    busy_s: np.ndarray
    re_s: np.ndarray
    counters: list[dict[str, float]]
    columns: dict[str, np.ndarray] | None = None  # `counter_columns(counters)`, built when first asked for

    def __len__(self) -> int:
        return len(self.unit)

    def counter_columns(self) -> dict[str, np.ndarray]:
        """The nodes' counters as one array per counter (`counter_columns(self.counters)`)."""
        if self.columns is None:
            self.columns = counter_columns(self.counters)
        return self.columns


def counter_columns(counters: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Per-node counter dicts as one array per counter (0 where a node has none)."""
    keys = sorted(set().union(*counters)) if counters else []
    columns: dict[str, list[float]] = {k: [0.0] * len(counters) for k in keys}
    for i, c in enumerate(counters):
        for k, v in c.items():
            columns[k][i] = v
    return {k: np.array(columns[k], dtype=np.float64) for k in keys}


@dataclass
class ColumnBlock:
    """One job's nodes' `counter_columns`, with the works they were built from (kept to compare by identity)."""

    works: list[Work]
    columns: dict[str, np.ndarray]

    def fits(self, works: list[Work]) -> bool:
        """Whether these works (the same objects; works are not changed in place) give this block."""
        return len(works) == len(self.works) and all(map(operator.is_, works, self.works))


@dataclass
class TimingResult:
    fidelity: str
    seconds: float
    jobs: list[JobTiming]
    node_start: np.ndarray
    node_end: np.ndarray
    counters: dict[str, float]
    resource_bytes: dict[str, float]  # effective bytes put on each resource class
    resource_utilization: dict[str, float]  # busiest resource of each class: bytes / (capacity * span)
    events: int = 0
    nodes: NodeTable | None = None

    @property
    def detail(self) -> dict[str, float]:
        return summed(j.detail for j in self.jobs)

    @property
    def attribution(self) -> dict[str, float]:
        return coarse(self.detail)

    @property
    def bound(self) -> str:
        att = self.attribution
        return max(att.items(), key=lambda kv: kv[1])[0] if att else COMPUTE


@dataclass
class JobGraph:
    """One job's part of the constraint graph (node ids as numbered in the run it was built for), with what it
    was built from: the job's nodes (kept to compare by identity), their units, the DMA engine's slots."""

    nodes: list[Node]
    units: list[str]
    slots: int
    core_prev: list[int]
    core_next: list[int]
    unit_prev: list[int]
    unit_next: list[list[int]]
    producers: list[list[int]]
    consumers: list[list[int]]
    stream_consumers: list[list[int]]
    reduce_from: list[int]
    core_lists: dict[tuple, list[Node]]
    barrier_before: dict[int, list[int]]
    first_nodes: dict[tuple[int, tuple[int, int]], list[int]]

    def fits(self, nodes: list[Node], units: list[str], slots: int) -> bool:
        """Whether building from these would give this part: the same node objects (resolved nodes are not
        changed in place), units and slots."""
        return (
            slots == self.slots
            and len(nodes) == len(self.nodes)
            and all(map(operator.is_, nodes, self.nodes))
            and units == self.units
        )

    @classmethod
    def build(cls, nodes: list[Node], units: list[str], slots: int, first: int) -> JobGraph:
        """The part of one job whose nodes are `nodes`, numbered `first`, `first + 1`, ... (a job's nodes
        stream, wait and reduce only among themselves)."""
        m = len(nodes)
        core_prev = [-1] * m
        core_next = [-1] * m
        unit_prev = [-1] * m
        unit_next: list[list[int]] = [[] for _ in range(m)]
        by_core: dict[tuple, list[Node]] = defaultdict(list)
        for node in nodes:
            by_core[(node.job, node.pe, node.core)].append(node)
        for lst in by_core.values():
            lst.sort(key=lambda x: x.pos)
            for a, b in zip(lst, lst[1:], strict=False):
                core_prev[b.id - first] = a.id
                core_next[a.id - first] = b.id
        by_unit: dict[tuple, list[int]] = defaultdict(list)
        for node in sorted(nodes, key=lambda x: x.order):
            unit = units[node.id - first]
            if unit == "none":
                continue
            by_unit[(node.job, node.pe, unit)].append(node.id)
        for (_job, _pe, unit), ids in by_unit.items():
            k = slots if unit == "dma" else 1
            for i in range(k, len(ids)):
                unit_prev[ids[i] - first] = ids[i - k]
                unit_next[ids[i - k] - first].append(ids[i])
        producers: list[list[int]] = []
        consumers: list[list[int]] = [[] for _ in range(m)]
        stream_consumers: list[list[int]] = [[] for _ in range(m)]
        for node in nodes:
            nid = node.id
            prods = sorted({p for p, _k in node.producers if p != nid and p >= 0})
            if prods and not (first <= prods[0] and prods[-1] < first + m):
                raise AssertionError(f"{node.where}: a producer outside its job")
            producers.append(prods)
            resident = node.resident_producers
            for p in prods:
                consumers[p - first].append(nid)
                if p not in resident:
                    stream_consumers[p - first].append(nid)
        reduce_from = [
            node.reduce_from if node.reduce_from is not None and upstream_of(node) is not None else -1
            for node in nodes
        ]
        # barriers: each barrier node waits for the earlier nodes of its core since the previous barrier
        barrier_before: dict[int, list[int]] = {}
        for lst in by_core.values():
            since: list[int] = []
            for node in lst:
                if isinstance(node.cmd, Barrier):
                    barrier_before[node.id] = since
                    since = []
                else:
                    since.append(node.id)
        first_nodes: dict[tuple[int, tuple[int, int]], list[int]] = defaultdict(list)
        for node in nodes:
            if core_prev[node.id - first] < 0:
                first_nodes[(node.job, node.pe)].append(node.id)
        return cls(
            nodes,
            units,
            slots,
            core_prev,
            core_next,
            unit_prev,
            unit_next,
            producers,
            consumers,
            stream_consumers,
            reduce_from,
            dict(by_core),
            barrier_before,
            dict(first_nodes),
        )


@dataclass
class JobFlows:
    """One job's bundles (node ids as numbered in its graph, bundle numbers from 0 within the job), their sums
    and uncontended rates, and its nodes' item times; with what they were built from: the job's graph, its
    works (kept to compare by identity) and the chip."""

    graph: JobGraph
    works: list[Work]
    chip: Chip
    bundles: list[list[int]]
    bundle_of: np.ndarray
    b_bytes: np.ndarray
    b_usage: np.ndarray
    b_extra: np.ndarray  # LPDDR5 page re-opens when other streams interleave
    b_streams: np.ndarray  # distinct LPDDR5 address streams (multicast groups count once)
    b_latency: np.ndarray
    b_cap: np.ndarray
    b_cap_kind: list[str]
    b_kind0: list[str] = field(default_factory=list)
    b_rate0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    b_rate_ahead: np.ndarray = field(default_factory=lambda: np.zeros(0))
    item_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tail_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    first_item_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stall_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fits(self, graph: JobGraph, works: list[Work], chip: Chip) -> bool:
        """Whether this graph, these works (the same objects) and chip give this part."""
        return (
            graph is self.graph
            and chip is self.chip
            and len(works) == len(self.works)
            and all(map(operator.is_, works, self.works))
        )


def _bundle_sums(flows: list[Work], channels: range) -> BundleSums:
    """What a bundle's flows put on the shared resources, each multicast part once, summed in the order of the
    flows and their parts (as a dense vector would be)."""
    seen: set[tuple] = set()
    usage: dict[int, float] = {}
    extra: dict[int, float] = {}
    total = 0.0
    streams = 0
    for w in flows:
        total += w.bytes
        for part in w.parts:
            if part.key in seen:
                continue
            seen.add(part.key)
            _add_into(usage, part.usage)
            _add_into(extra, part.extra)
            if not part.usage.keys().isdisjoint(channels):
                streams += 1
        _add_into(usage, w.own_usage)
    return BundleSums(
        np.fromiter(usage.keys(), dtype=np.int64, count=len(usage)),
        np.fromiter(usage.values(), dtype=np.float64, count=len(usage)) / total,
        np.fromiter(extra.keys(), dtype=np.int64, count=len(extra)),
        np.fromiter(extra.values(), dtype=np.float64, count=len(extra)) / total,
        total,
        streams,
    )


def _add_into(sums: dict[int, float], amounts: dict[int, float]) -> None:
    """Add amounts to sums, resource by resource in the amounts' order (into empty sums: a copy, as 0.0 + v is v
    for the non-zero amounts flows hold)."""
    if not sums:
        sums.update(amounts)
        return
    for r, v in amounts.items():
        sums[r] = sums.get(r, 0.0) + v


class TimingModel:
    """The constraint graph and the per-node work of a resolved program."""

    def __init__(
        self,
        program: Program,
        resolved: Resolved,
        chip: Chip,
        data: dict[str, np.ndarray],
        memo: Memo | None = None,
    ) -> None:
        self.program = program
        self.resolved = resolved
        self.chip = chip
        self.rmap: ResourceMap = resource_map(chip)
        self.wm = WorkModel(program, resolved, chip, self.rmap, data, memo)
        self.memo = self.wm.memo
        nodes = resolved.nodes
        self.nodes = nodes
        self.works: list[Work] = self.wm.works(nodes)
        self.n = len(nodes)
        self._constraints()
        self._flows()

    # ----------------------------------------------------------------------------------- graph build

    def _job_spans(self) -> list[tuple[str, int, int]]:
        """(job name, first node id, node count) of every job: resolve numbers each job's nodes contiguously,
        job after job."""
        spans = []
        first = 0
        for job, ids in zip(job_order(self.program), self.resolved.job_nodes, strict=True):
            if ids != list(range(first, first + len(ids))):
                raise AssertionError(
                    f"job {job.name}: its nodes are not numbered contiguously after the job before"
                )
            spans.append((job.name, first, len(ids)))
            first += len(ids)
        if first != self.n:
            raise AssertionError(f"the jobs hold {first} nodes of {self.n}")
        return spans

    def _constraints(self) -> None:
        """The constraint graph, job by job: a job's part depends only on its nodes and their units, so a job
        whose nodes are the same objects as in an earlier run sharing the memo (`resolve.Fragment` reused in
        place) takes its stored part."""
        nodes, works = self.nodes, self.works
        slots = self.chip.dma.concurrent_commands
        graphs = self.memo.graphs
        self.spans = self._job_spans()
        self.graphs: list[JobGraph] = []
        for name, first, count in self.spans:
            job_nodes = nodes[first : first + count]
            units = [w.unit for w in works[first : first + count]]
            g = graphs.get(name)
            if g is None or not g.fits(job_nodes, units, slots):
                g = graphs[name] = JobGraph.build(job_nodes, units, slots, first)
            self.graphs.append(g)
        core_prev: list[int] = []
        core_next: list[int] = []
        unit_prev: list[int] = []
        reduce_from: list[int] = []
        self.unit_next: list[list[int]] = []
        self.producers: list[list[int]] = []
        self.consumers: list[list[int]] = []
        self.stream_consumers: list[list[int]] = []
        self.core_lists: dict[tuple, list[Node]] = {}
        self.barrier_before: dict[int, list[int]] = {}
        self.first_nodes: dict[tuple[int, tuple[int, int]], list[int]] = defaultdict(list)
        for g in self.graphs:
            core_prev += g.core_prev
            core_next += g.core_next
            unit_prev += g.unit_prev
            reduce_from += g.reduce_from
            self.unit_next += g.unit_next
            self.producers += g.producers
            self.consumers += g.consumers
            self.stream_consumers += g.stream_consumers
            self.core_lists.update(g.core_lists)
            self.barrier_before.update(g.barrier_before)
            self.first_nodes.update(g.first_nodes)
        self.core_prev = np.array(core_prev, dtype=np.int64)
        self.core_next = np.array(core_next, dtype=np.int64)
        self.unit_prev = np.array(unit_prev, dtype=np.int64)
        self.reduce_from = np.array(reduce_from, dtype=np.int64)
        # job structure: resolve numbered the jobs in dependency order
        self.job_of = np.repeat(
            np.arange(len(self.spans), dtype=np.int64), [count for _name, _first, count in self.spans]
        )
        self.jobs = job_order(self.program)
        self.pe_rank: dict[tuple[int, tuple[int, int]], int] = {}
        for ji, job in enumerate(self.jobs):
            for rank, pe in enumerate(sorted(job.pes)):
                self.pe_rank[(ji, pe)] = rank

    def _flows(self) -> None:
        """Bundles, their sums and uncontended rates, and the nodes' item times, job by job (a job's flows bundle
        and stream only among its own nodes): a job whose graph and works are the ones of an earlier run
        sharing the memo (the static jobs' kept work on the same chip) takes its stored part."""
        groups: dict[int, list[list[tuple[int, int]]]] = defaultdict(list)
        for group in self.resolved.mcast_groups:
            groups[self.nodes[group[0][0]].job].append(group)
        parts: list[JobFlows] = []
        for ji, ((name, first, count), graph) in enumerate(zip(self.spans, self.graphs, strict=True)):
            works = self.works[first : first + count]
            f = self.memo.flows.get(name)
            if f is None or not f.fits(graph, works, self.chip):
                f = self.memo.flows[name] = self._job_flows(graph, works, first, groups.get(ji, []))
            parts.append(f)
        self.bundles: list[list[int]] = []
        bundle_of = []
        self.b_cap_kind: list[str] = []
        self.b_kind0: list[str] = []
        for f in parts:
            bundle_of.append(np.where(f.bundle_of >= 0, f.bundle_of + len(self.bundles), -1))
            self.bundles += f.bundles
            self.b_cap_kind += f.b_cap_kind
            self.b_kind0 += f.b_kind0
        nr = self.rmap.n

        def joined(field: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([getattr(f, field) for f in parts]) if parts else empty

        self.bundle_of = np.concatenate(bundle_of) if parts else np.zeros(0, dtype=np.int64)
        self.b_bytes = joined("b_bytes", np.zeros(0))
        self.b_usage = joined("b_usage", np.zeros((0, nr)))
        self.b_extra = joined("b_extra", np.zeros((0, nr)))
        self.b_streams = joined("b_streams", np.zeros(0))
        self.b_latency = joined("b_latency", np.zeros(0))
        self.b_cap = joined("b_cap", np.zeros(0))
        self.b_rate0 = joined("b_rate0", np.zeros(0))
        self.b_rate_ahead = joined("b_rate_ahead", np.zeros(0))
        self.item_s = joined("item_s", np.zeros(0))
        self.tail_s = joined("tail_s", np.zeros(0))
        self.first_item_s = joined("first_item_s", np.zeros(0))
        self.stall_s = joined("stall_s", np.zeros(0))

    def _job_flows(
        self, graph: JobGraph, works: list[Work], first: int, groups: list[list[tuple[int, int]]]
    ) -> JobFlows:
        """One job's part of `_flows`: nodes `first` .. `first + len(works) - 1`, its multicast groups."""
        count = len(works)
        f = JobFlows(graph, works, self.chip, *self._job_bundles(first, count, groups))
        self._job_uncontended(f, first)
        return f

    def _job_bundles(self, first: int, count: int, groups: list[list[tuple[int, int]]]) -> tuple:
        """Group a job's flows of one multicast group (transitively) into lockstep bundles; their sums."""
        parent = list(range(first, first + count))

        def find(x: int) -> int:
            while parent[x - first] != x:
                parent[x - first] = parent[parent[x - first] - first]
                x = parent[x - first]
            return x

        for group in groups:
            ids = [nid for nid, _ti in group]
            for other in ids[1:]:
                ra, rb = find(ids[0]), find(other)
                if ra != rb:
                    parent[rb - first] = ra
        members: dict[int, list[int]] = defaultdict(list)
        works = self.works
        for i in range(first, first + count):
            if works[i].is_flow:
                members[find(i)].append(i)
        bundles: list[list[int]] = list(members.values())
        bundle_of = np.full(count, -1, dtype=np.int64)
        for b, mem in enumerate(bundles):
            for i in mem:
                bundle_of[i - first] = b
        nb, nr = len(bundles), self.rmap.n
        b_bytes = np.zeros(nb)
        b_usage = np.zeros((nb, nr))
        b_extra = np.zeros((nb, nr))
        b_streams = np.zeros(nb)
        b_latency = np.zeros(nb)
        b_cap = np.full(nb, INF)
        b_cap_kind: list[str] = [""] * nb
        channels = range(self.rmap.channel0, self.rmap.channel0 + self.chip.dram.channels)
        for b, mem in enumerate(bundles):
            sums = self._flow_sums(mem, channels)
            b_streams[b] = sums.streams
            b_bytes[b] = total = sums.total
            b_usage[b, sums.usage_at] = sums.usage
            b_extra[b, sums.extra_at] = sums.extra
            b_latency[b] = max(works[i].latency_s for i in mem)
            cap_b, kind_b = INF, ""
            for i in mem:
                w = works[i]
                cap = w.cap_bps * total / w.bytes
                if cap < cap_b:
                    cap_b, kind_b = cap, w.cap_kind or LATENCY
            b_cap[b], b_cap_kind[b] = cap_b, kind_b
        return bundles, bundle_of, b_bytes, b_usage, b_extra, b_streams, b_latency, b_cap, b_cap_kind

    def _flow_sums(self, mem: list[int], channels: range) -> BundleSums:
        """The sums of a bundle's flows. A bundle of one flow sums that flow's own parts: kept with its `Work`
        (which a compiled model reuses from call to call for the jobs whose shapes do not change)."""
        if len(mem) == 1:
            w = self.works[mem[0]]
            if w.bundle_sums is None:
                w.bundle_sums = _bundle_sums([w], channels)
            return w.bundle_sums
        return _bundle_sums([self.works[i] for i in mem], channels)

    def own_compute_s(self, i: int) -> float:
        w = self.works[i]
        return max(w.busy_s, w.issue_s) + w.latency_s + self.stall_s[i]

    def _job_uncontended(self, f: JobFlows, first: int) -> None:
        """Uncontended rate of every bundle of a job (with consumer back-pressure), and per-node item times."""
        cap_res = self.rmap.capacity
        nb = len(f.bundles)
        works = self.works
        # the resource that binds each bundle alone: the smallest capacity / usage over the resources it uses
        # (the first of equals)
        res_rates = [INF] * nb
        res_kinds = [""] * nb
        if nb:
            used = f.b_usage > 0
            with np.errstate(divide="ignore"):
                rates = np.where(used, cap_res[None, :] / np.where(used, f.b_usage, 1.0), INF)
            lowest = np.argmin(rates, axis=1)
            for b in np.flatnonzero(used.any(axis=1)).tolist():
                # argmin lands on an unused resource only when every used one's rate is infinite
                k = int(lowest[b]) if used[b, lowest[b]] else int(np.flatnonzero(used[b])[0])
                res_rates[b] = float(rates[b, k])
                res_kinds[b] = self.rmap.klass[k]
        rate0 = [0.0] * nb
        rate_ahead = [0.0] * nb
        f.b_kind0 = [""] * nb
        b_bytes = f.b_bytes.tolist()
        b_cap = f.b_cap.tolist()
        for b, mem in enumerate(f.bundles):
            res_rate, kind = res_rates[b], res_kinds[b]
            cap, ckind = b_cap[b], f.b_cap_kind[b]
            rate_ahead[b] = min(cap, res_rate)  # before back-pressure: how fast the first items come
            # a consumer that pops what the flow delivers caps its pace (finite circular buffers), unless the
            # CB is too small to overlap the two at all (then they alternate, see below)
            for i in mem:
                for c in self.stream_consumers[i]:
                    wc = works[c]
                    if wc.is_flow or self.alternating(i, c):
                        continue
                    d = max(wc.busy_s, wc.issue_s)
                    if d > 0:
                        bp = b_bytes[b] / d
                        if bp < cap:
                            cap, ckind = bp, unit_class(wc)
            f.b_cap[b], f.b_cap_kind[b] = cap, ckind
            if cap < res_rate:
                rate0[b], f.b_kind0[b] = cap, ckind
            else:
                rate0[b], f.b_kind0[b] = res_rate, kind
        f.b_rate0 = np.array(rate0, dtype=np.float64)
        f.b_rate_ahead = np.array(rate_ahead, dtype=np.float64)
        n = len(f.works)
        first_item = [0.0] * n
        tail = [0.0] * n
        item = [0.0] * n
        bundle_of = f.bundle_of.tolist()
        for i, w in enumerate(f.works):
            items = max(w.items, 1)
            b = bundle_of[i]
            if b >= 0:
                rate_node = rate0[b] * w.bytes / b_bytes[b]
                item[i] = w.bytes / items / max(rate_node, EPS)
                # the DMA runs ahead of a slow consumer until the CB is full: the first item is not paced
                ahead = rate_ahead[b] * w.bytes / b_bytes[b]
                first_item[i] = w.latency_s + w.bytes / items / max(ahead, EPS)
                tail[i] = w.latency_s + item[i]
            else:
                item[i] = max(w.busy_s, w.issue_s) / items
                first_item[i] = w.latency_s + item[i]
                tail[i] = item[i] * w.granule
        f.item_s = np.array(item, dtype=np.float64)
        f.tail_s = np.array(tail, dtype=np.float64)
        # producer and consumer that alternate: every granule pays the producer's latency and the
        # consumer's processing in turn; the producer stalls meanwhile, the consumer waits for whole granules
        stall = [0.0] * n
        for c in range(first, first + n):
            node = self.nodes[c]
            if not node.in_cb:
                continue  # alternating needs a CB between the two
            for p in self.stream_consumers_of(c):
                if not self.alternating(p, c):
                    continue
                _cap, tiles = node.in_cb[p]
                wc, wp = works[c], works[p]
                chunks = max(1.0, tiles / wc.granule)
                chunk_s = item[c - first] * wc.granule
                # a granule waits for its slowest item: with misses, for a miss unless all its items hit
                expected = wp.latency_s - (1.0 - wp.hit_frac) * wp.miss_latency_s
                granule_latency = expected + (1.0 - wp.hit_frac**wc.granule) * wp.miss_latency_s
                stall[p - first] += (chunks - 1.0) * (granule_latency + chunk_s)
                first_item[p - first] = granule_latency + item[p - first] * wc.granule
        f.first_item_s = np.array(first_item, dtype=np.float64)
        f.stall_s = np.array(stall, dtype=np.float64)

    def stream_consumers_of(self, c: int) -> list[int]:
        return [p for p in self.producers[c] if p not in self.nodes[c].resident_producers]

    def alternating(self, p: int, c: int) -> bool:
        """True when the CB between p and c holds fewer than two of c's granules (no double buffering)."""
        info = self.nodes[c].in_cb.get(p)
        if info is None:
            return False
        cap, tiles = info
        g = self.works[c].granule
        return tiles > cap and cap < 2 * g

    def counters(self) -> dict[str, float]:
        return summed(w.counters for w in self.works)

    def counter_columns(self) -> dict[str, np.ndarray]:
        """`counter_columns` of the nodes' counters, job block by job block: a job whose works are the same
        objects as in an earlier run sharing the memo (the static jobs' kept work) takes its stored block."""
        blocks = []
        for name, first, count in self.spans:
            works = self.works[first : first + count]
            blk = self.memo.columns.get(name)
            if blk is None or not blk.fits(works):
                blk = self.memo.columns[name] = ColumnBlock(
                    works, counter_columns([w.counters for w in works])
                )
            blocks.append(blk)
        keys = sorted(set().union(*(b.columns for b in blocks)))
        return {
            k: np.concatenate([b.columns[k] if k in b.columns else np.zeros(len(b.works)) for b in blocks])
            for k in keys
        }


# =========================================================================================== simulation


def run_events(m: TimingModel, fidelity: str, core: str | None = None) -> SimpleNamespace:
    """The event loop (`eventloop.Sim`, compiled or not) over the model; its result arrays."""
    sim = sim_module(core).Sim(m, fidelity == "event")
    sim.run()
    return sim.result()


# ========================================================================================== attribution


def _attribute(m: TimingModel, sim: SimpleNamespace) -> list[dict[str, float]]:
    """Walk each job's critical path backwards and charge every second of it to one class.

    The walk alternates between a node's end (its own work, or the producer it waited for), its start
    (the constraint that released it: issue, unit, first item of a stream, a barrier) and its issue (the
    core's chain of earlier issue windows). The charges add up to the job's time.
    """
    out: list[dict[str, float]] = []
    for ji in range(len(m.jobs)):
        att: dict[str, float] = defaultdict(float)
        ids = m.resolved.job_nodes[ji]
        launch = sim.job_launch[ji]
        if not ids:
            att[DISPATCH] += sim.job_end[ji] - launch
            out.append(dict(att))
            continue
        last = float(np.nanmax(sim.end[ids]))
        att[DISPATCH] += sim.job_end[ji] - last
        cur, mode = int(ids[int(np.nanargmax(sim.end[ids]))]), "end"
        for _ in range(4 * m.n + 8):
            if mode == "end" and isinstance(m.nodes[cur].cmd, Barrier):
                mode = "barrier"
            if mode == "end":
                er = sim.end_reason[cur]
                if er[0] == "dep":
                    p = er[1]
                    # after a reduction partner's partial sums: the transfer over the reduction network
                    klass = REDUCTION if p == int(m.reduce_from[cur]) else _node_class(m, sim, cur)
                    att[klass] += max(0.0, sim.end[cur] - sim.end[p])
                    cur = p
                else:
                    _charge_own(m, sim, cur, att)
                    mode = "start"
                continue
            if mode == "start":
                sr = sim.start_reason[cur]
                t = sim.start[cur]
                if sr[0] == "launch":
                    att[DISPATCH] += max(0.0, t - launch)
                    break
                if sr[0] == "pe_free":  # waiting for the previous job on the same PEs
                    att[QUEUE] += max(0.0, t - launch)
                    break
                if sr[0] == "issue":
                    att[ISSUE] += max(0.0, t - sim.issue_at[sr[1]])
                    cur, mode = sr[1], "issue"
                elif sr[0] == "barrier":
                    cur, mode = sr[1], "barrier"
                elif sr[0] == "unit":
                    cur, mode = sr[1], "end"
                elif sr[0] == "item":
                    att[_node_class(m, sim, sr[1])] += max(0.0, t - sim.start[sr[1]])
                    cur = sr[1]
                elif sr[0] == "bundle":
                    cur = sr[1]
                else:
                    break
                continue
            if mode == "issue":
                prev = int(m.core_prev[cur])
                if prev < 0:
                    origin = sim.pe_start_reason.get((ji, m.nodes[cur].pe), "launch")
                    att[QUEUE if origin == "pe_free" else DISPATCH] += max(0.0, sim.issue_at[cur] - launch)
                    break
                if isinstance(m.nodes[prev].cmd, Barrier):
                    cur, mode = prev, "barrier"
                else:
                    att[ISSUE] += max(0.0, sim.issue_at[cur] - sim.issue_at[prev])
                    cur = prev
                continue
            # at a barrier: continue from whatever released it
            binding, by = sim.barrier_binding[cur]
            if by >= 0:
                cur, mode = by, "end"
            else:
                cur, mode = binding, "issue"
        out.append(dict(att))
    return out


def unit_class(w: Work) -> str:
    """A node's own attribution class, compute split by unit (compute.dpe, compute.se, ...)."""
    if w.klass == COMPUTE and w.unit in ("dpe", "se", "mlu", "core"):
        return f"{COMPUTE}.{w.unit}"
    return w.klass


def _node_class(m: TimingModel, sim: SimpleNamespace, i: int) -> str:
    b = m.bundle_of[i]
    if b >= 0:
        ct = sim.b_class_time[b]
        if ct:
            return max(ct.items(), key=lambda kv: kv[1])[0] or LATENCY
        return m.b_kind0[b] or LATENCY
    w = m.works[i]
    if w.issue_s > w.busy_s:
        return ISSUE
    return unit_class(w) if w.klass not in ("dma", "sync") else COMPUTE


def _charge_own(m: TimingModel, sim: SimpleNamespace, i: int, att: dict[str, float]) -> None:
    dur = max(0.0, sim.end[i] - sim.start[i])
    if dur <= 0:
        return
    b = m.bundle_of[i]
    if b >= 0:
        lat = min(m.b_latency[b], dur)
        att[LATENCY] += lat
        stall = min(m.stall_s[i], dur - lat)
        # waiting for the consumer that alternates with it (no double buffering)
        partner = next((c for c in m.stream_consumers[i] if m.alternating(i, c)), None)
        att[unit_class(m.works[partner]) if partner is not None else COMPUTE] += stall
        rest = dur - lat - stall
        ct = sim.b_class_time[b]
        tot = sum(ct.values())
        if tot > 0:
            for k, v in ct.items():
                att[k or LATENCY] += rest * v / tot
        else:
            att[m.b_kind0[b] or LATENCY] += rest
        return
    att[_node_class(m, sim, i)] += dur


# ============================================================================================ drivers


def simulate(model: TimingModel, fidelity: str, core: str | None = None) -> TimingResult:
    """Time the model at `fidelity`; `core` picks the event core (`eventcore`: compiled or python)."""
    if fidelity not in FIDELITIES:
        raise ValueError(fidelity)
    if fidelity == "roofline":
        return _roofline(model)
    sim = run_events(model, fidelity, core)
    att = _attribute(model, sim)
    jobs = []
    host_s = model.chip.host.launch_ns * 1e-9
    for ji, job in enumerate(model.jobs):
        start = float(sim.job_launch[ji])
        if start <= host_s * (1 + 1e-12):  # launched right after the host's submission: that is its cost too
            att[ji][DISPATCH] = att[ji].get(DISPATCH, 0.0) + start
            start = 0.0
        jobs.append(JobTiming(job.name, job.kind, start, float(sim.job_end[ji]), len(job.pes), att[ji]))
    seconds = float(np.nanmax(sim.job_end)) if len(jobs) else 0.0
    res_bytes, res_util = _resource_use(model, seconds)
    if fidelity == "analytic":
        # each shared resource bounds the whole run: total effective bytes / capacity, after the launches
        bound = _resource_bound(model)
        first_launch = float(np.nanmin(sim.job_launch)) + model.chip.dispatch.job_launch_ns * 1e-9
        if bound + first_launch > seconds and jobs:
            extra = bound + first_launch - seconds
            jobs[-1].end_s += extra
            klass = _resource_bound_class(model)
            jobs[-1].detail[klass] = jobs[-1].detail.get(klass, 0.0) + extra
            seconds += extra
    table = node_table(model, sim.issue_at, sim.start, sim.end)
    return TimingResult(
        fidelity, seconds, jobs, sim.start, sim.end, model.counters(), res_bytes, res_util, sim.events, table
    )


def node_table(m: TimingModel, issue: np.ndarray, start: np.ndarray, end: np.ndarray) -> NodeTable:
    works = m.works
    start = np.nan_to_num(start, nan=0.0)
    end = np.nan_to_num(end, nan=0.0)
    flow = np.array([w.is_flow for w in works], dtype=bool)
    issue_busy = np.array([w.issue_s for w in works], dtype=np.float64)
    own = np.maximum(np.array([w.busy_s for w in works], dtype=np.float64), issue_busy)
    span = end - start
    busy = np.where(flow, span, np.minimum(own, np.maximum(span, 0.0)))
    return NodeTable(
        pe=[nd.pe for nd in m.nodes],
        core=np.array([nd.core for nd in m.nodes], dtype=np.int64),
        job=m.job_of.copy(),
        unit=[w.unit for w in works],
        command=[type(nd.cmd).__name__ for nd in m.nodes],
        issue_s=np.nan_to_num(issue, nan=0.0),
        issue_busy_s=issue_busy,
        start_s=start,
        end_s=end,
        busy_s=busy,
        re_s=np.array([w.re_s for w in works]),
        counters=[w.counters for w in works],
        columns=m.counter_columns(),
    )


def _resource_bound(m: TimingModel) -> float:
    if not len(m.bundles):
        return 0.0
    total = (m.b_usage * m.b_bytes[:, None]).sum(axis=0)
    return float((total / m.rmap.capacity).max())


def _resource_bound_class(m: TimingModel) -> str:
    total = (m.b_usage * m.b_bytes[:, None]).sum(axis=0)
    return m.rmap.klass[int(np.argmax(total / m.rmap.capacity))]


def _resource_use(m: TimingModel, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    if not len(m.bundles) or seconds <= 0:
        return {}, {}
    total = (m.b_usage * m.b_bytes[:, None]).sum(axis=0)
    by_bytes: dict[str, float] = defaultdict(float)
    util: dict[str, float] = defaultdict(float)
    for r, v in enumerate(total):
        k = m.rmap.klass[r]
        by_bytes[k] += float(v)
        util[k] = max(util[k], float(v / (m.rmap.capacity[r] * seconds)))
    return dict(by_bytes), dict(util)


def _roofline(m: TimingModel) -> TimingResult:
    chip = m.chip
    job_time = []
    for ji, job in enumerate(m.jobs):
        ids = m.resolved.job_nodes[ji]
        n_pe = max(len(job.pes), 1)
        unit_busy: dict[str, float] = defaultdict(float)
        sram_b = dram_b = 0.0
        host_b = dict.fromkeys(HostSide, 0.0)  # bytes on each host-side resource (`isa.HostTransfer`)
        for i in ids:
            w = m.works[i]
            if w.unit in ("dpe", "se", "mlu"):
                unit_busy[w.unit] += w.busy_s
            c = w.counters
            sram_b += c.get("sram_read_bytes", 0.0) + c.get("sram_write_bytes", 0.0)
            dram_b += c.get("dram_read_bytes", 0.0) + c.get("dram_write_bytes", 0.0)
            for side in host_b:
                host_b[side] += c.get(f"{side}_bytes", 0.0)
        terms = {COMPUTE: max([v / n_pe for v in unit_busy.values()] + [0.0])}
        terms["sram"] = sram_b / sram_bytes_per_s(chip)
        terms["dram"] = dram_b / dram_bytes_per_s(chip)
        for side, nbytes in host_b.items():
            r = m.rmap.host_side(side)
            terms[m.rmap.klass[r]] = max(terms.get(m.rmap.klass[r], 0.0), nbytes / m.rmap.capacity[r])
        kind = max(terms.items(), key=lambda kv: kv[1])
        job_time.append((kind[1], kind[0]))
    finish: dict[str, float] = {}
    jobs = []
    for ji, job in enumerate(m.jobs):
        start = max([finish[d] for d in job.deps] + [0.0])
        t, k = job_time[ji]
        finish[job.name] = start + t
        jobs.append(JobTiming(job.name, job.kind, start, start + t, len(job.pes), {k: t}))
    seconds = max(finish.values()) if finish else 0.0
    n = m.n
    zeros = np.zeros(n)
    return TimingResult(
        "roofline", seconds, jobs, zeros, zeros, m.counters(), {}, {}, 0, node_table(m, zeros, zeros, zeros)
    )
