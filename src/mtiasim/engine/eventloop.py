"""The event loop of the `event` and `analytic` fidelities, on plain arrays.

This file is the only description of the loop's semantics. It runs as plain Python (the reference core) and,
compiled by Cython with the C types declared in `eventloop.pxd`, as the compiled core (`eventcore` picks
one). So the code keeps to what compiles to C loops: scalars, flat numpy arrays (typed memoryviews once
compiled), Python lists only where a node has a variable number of neighbours.

`Sim(m, share)` takes a `TimingModel` (duck-typed: this module sits below `timing`) and copies what the loop
reads into flat arrays; `run()` simulates; `result()` hands back what the attribution and the reports need.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from types import FunctionType, SimpleNamespace
from typing import Any

import numpy as np

from mtiasim.engine.memmodel import row_hit_survival
from mtiasim.isa import Barrier

INF = float("inf")
EPS = 1e-15
# event kinds
START = 0
OWN_END = 1
FLOW_DONE = 2
FINAL = 3
ACTIVATE = 4


def _is_compiled() -> bool:
    """True in the module Cython built (its functions are not Python functions)."""
    return not isinstance(_is_compiled, FunctionType)


COMPILED = _is_compiled()


def _sparse_rows(dense: np.ndarray, also: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR layout of the rows of `dense` over the columns where `dense` or `also` is non-zero: (start, cols)."""
    nz = (dense != 0) | (also != 0)
    counts = nz.sum(axis=1)
    start = np.zeros(len(dense) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    cols = np.flatnonzero(nz.reshape(-1)) % max(dense.shape[1], 1) if dense.size else np.zeros(0, np.int64)
    return start, cols.astype(np.int64)


class Sim:
    """The event loop. With `share=False` every bundle runs at its uncontended rate (analytic fidelity)."""

    def __init__(self, m: Any, share: bool) -> None:
        self.m = m
        self.share = share
        n = m.n
        chip = m.chip
        self.n = n
        self.host_launch_s = chip.host.launch_ns * 1e-9
        self.job_launch_s = chip.dispatch.job_launch_ns * 1e-9
        self.per_pe_ns = chip.dispatch.per_pe_ns
        self.job_end_s = chip.dispatch.job_end_ns * 1e-9
        # the model, as flat arrays
        self.unit_prev = m.unit_prev
        self.core_next = m.core_next
        self.reduce_from = m.reduce_from
        self.bundle_of = m.bundle_of
        self.job_of = m.job_of
        self.first_item_s = m.first_item_s
        self.tail_s = m.tail_s
        self.stall_s = m.stall_s
        self.issue_s = np.array([w.issue_s for w in m.works], dtype=np.float64)
        self.own_s = np.array([m.own_compute_s(i) for i in range(n)], dtype=np.float64)
        self.is_barrier = np.array([isinstance(nd.cmd, Barrier) for nd in m.nodes], dtype=np.int64)
        self.link_s = np.zeros(n)
        self.hop_s = np.zeros(n)
        for i in np.flatnonzero(m.reduce_from >= 0).tolist():
            self.link_s[i], self.hop_s[i] = m.wm.reduce_link_s(m.nodes[i].cmd)
        self.producers = m.producers
        self.consumers = m.consumers
        self.unit_next = m.unit_next
        self.bundles = m.bundles
        self.b_size = np.array([len(mem) for mem in m.bundles], dtype=np.int64)
        self.b_latency = m.b_latency
        self.b_cap = m.b_cap
        # what limits a bundle (an attribution class) as a code: kind_names[code], "" (nothing yet) is 0
        self.kind_names: list[str] = [""]
        codes = {"": 0}
        for name in [*m.b_cap_kind, *m.b_kind0, *m.rmap.klass]:
            if name not in codes:
                codes[name] = len(self.kind_names)
                self.kind_names.append(name)
        self.b_cap_kind = np.array([codes[k] for k in m.b_cap_kind], dtype=np.int64)
        self.b_rate0 = m.b_rate0
        self.b_kind0 = np.array([codes[k] for k in m.b_kind0], dtype=np.int64)
        self.b_streams = m.b_streams
        self.b_has_extra = np.array([int(row.any()) for row in m.b_extra], dtype=np.int64)
        self.capacity = m.rmap.capacity.astype(np.float64)
        self.klass = np.array([codes[k] for k in m.rmap.klass], dtype=np.int64)
        self.n_res = len(self.capacity)
        # each bundle's resources (usage or page re-open extra), sparse
        self.u_start, self.u_col = _sparse_rows(m.b_usage, m.b_extra)
        self.u_val = m.b_usage[np.repeat(np.arange(len(m.bundles)), np.diff(self.u_start)), self.u_col]
        self.u_extra = m.b_extra[np.repeat(np.arange(len(m.bundles)), np.diff(self.u_start)), self.u_col]
        self.u_val = np.ascontiguousarray(self.u_val, dtype=np.float64)
        self.u_extra = np.ascontiguousarray(self.u_extra, dtype=np.float64)
        # state
        self.start = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.issue_at = np.full(n, np.nan)
        self.cand = np.full(n, -INF)
        self.start_reason: list[tuple] = [("launch",)] * n
        self.end_reason: list[tuple] = [("own",)] * n
        self.need = np.array(
            [1 + (m.unit_prev[i] >= 0) + len(m.producers[i]) for i in range(n)], dtype=np.int64
        )
        self.pending_end = np.array(
            [len(m.producers[i]) + (m.reduce_from[i] >= 0) for i in range(n)], dtype=np.int64
        )
        self.own_done = np.full(n, np.nan)
        self.end_waiters: list[list[int]] = [[] for _ in range(n)]
        self.heap: list = []
        self.seq = 0
        self.events = 0
        nb = len(m.bundles)
        self.b_ready = np.zeros(nb, dtype=np.int64)
        self.b_ready_t = np.full(nb, -INF)
        self.b_ready_by = np.full(nb, -1, dtype=np.int64)
        self.b_remaining = m.b_bytes.astype(np.float64)
        self.b_rate = np.zeros(nb)
        self.b_finish = np.full(nb, INF)  # when each active bundle completes at its current rate
        # incremental re-rating: resource use at the current rates, and the bundles changed since
        self.res_used = np.zeros(self.n_res)
        self.res_valid = False
        self.added: list[int] = []
        self.removed: list[int] = []
        self.removed_rate: list[float] = []
        self.flow_version = 0  # the one pending completion event (the earliest finish) is this version
        # the active bundles in activation order: act[0:n_act]
        self.act = np.zeros(max(nb, 1), dtype=np.int64)
        self.n_act = 0
        self.b_last = 0.0
        self.b_class_time: list[dict[str, float]] = [defaultdict(float) for _ in range(nb)]
        self.b_kind = np.zeros(nb, dtype=np.int64)
        self.b_kind_since = np.zeros(nb)
        self.dirty = False
        # max-min work arrays
        self.mm_use = np.zeros(self.n_res)
        self.mm_remaining = np.zeros(self.n_res)
        self.mm_touched = np.zeros(self.n_res, dtype=np.int64)
        self.mm_cols = np.zeros(self.n_res, dtype=np.int64)
        self.mm_count = np.zeros(self.n_res, dtype=np.int64)
        self.mm_u = np.zeros(max(len(self.u_val), 1))
        self.mm_level = np.zeros(self.n_res)
        self.mm_rate = np.zeros(max(nb, 1))
        self.mm_live = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_fix = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_which = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_bycap = np.zeros(max(nb, 1), dtype=np.int64)
        # barriers: each waits for its issue and for the earlier nodes of its core
        self.barrier_need = {bid: len(before) + 1 for bid, before in m.barrier_before.items()}
        self.barrier_peers = {bid: list(m.nodes[bid].barrier_peers) for bid in m.barrier_before}
        self.barrier_arrival: dict[int, float] = {}
        self.barrier_arrival_by: dict[int, int] = {}
        self.barrier_binding: dict[int, tuple[int, int]] = {}
        self.after_barrier: dict[int, list[int]] = defaultdict(list)
        for bid, before in m.barrier_before.items():
            for x in before:
                self.after_barrier[x].append(bid)
        nj = len(m.jobs)
        self.job_nodes = m.resolved.job_nodes
        self.job_pes = [sorted(job.pes) for job in m.jobs]
        index = {job.name: ji for ji, job in enumerate(m.jobs)}
        self.job_dep_index = [[index[d] for d in job.deps] for job in m.jobs]
        self.job_dependents: list[list[int]] = [[] for _ in range(nj)]
        for jj, job in enumerate(m.jobs):
            for ji in sorted({index[d] for d in job.deps}):
                self.job_dependents[ji].append(jj)
        self.pe_rank = m.pe_rank
        self.first_nodes = m.first_nodes
        self.job_launch = np.full(nj, np.nan)
        self.job_end = np.full(nj, np.nan)
        self.job_left = np.array([len(ids) for ids in m.resolved.job_nodes], dtype=np.int64)
        self.job_deps_left = np.array([len(job.deps) for job in m.jobs], dtype=np.int64)
        self.ccp_free = 0.0
        # a PE runs one job at a time: later jobs on it wait for it (their launch may overlap)
        self.launch_done = np.full(nj, np.nan)
        self.job_last = np.full(nj, np.nan)
        self.pe_owner: dict[tuple[int, int], int] = {}
        self.pe_queue: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.pe_start_reason: dict[tuple[int, tuple[int, int]], str] = {}
        if not COMPILED:  # the interpreter indexes lists of Python numbers several times faster than arrays
            for name, value in list(vars(self).items()):
                if isinstance(value, np.ndarray):
                    setattr(self, name, value.tolist())

    def result(self) -> SimpleNamespace:
        """What the attribution, the reports and the tests read after `run`."""
        return SimpleNamespace(
            start=np.asarray(self.start),
            end=np.asarray(self.end),
            issue_at=np.asarray(self.issue_at),
            start_reason=self.start_reason,
            end_reason=self.end_reason,
            job_launch=np.asarray(self.job_launch),
            job_end=np.asarray(self.job_end),
            b_class_time=self.b_class_time,
            barrier_binding=self.barrier_binding,
            pe_start_reason=self.pe_start_reason,
            events=self.events,
        )

    def push(self, t: float, kind: int, ident: int, version: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, ident, version))

    def run(self) -> None:
        # the host submits the request; the control core then launches its jobs
        self.ccp_free = self.host_launch_s
        for ji in range(len(self.job_nodes)):
            if self.job_deps_left[ji] == 0:
                self._launch(ji, 0.0)
        heap = self.heap
        while heap:
            item = heapq.heappop(heap)
            t = item[0]
            kind = item[2]
            ident = item[3]
            self.events += 1
            if kind == START:
                self._on_start(ident, t)
            elif kind == OWN_END:
                self._on_own_end(ident, t)
            elif kind == FLOW_DONE:
                if item[4] == self.flow_version:
                    self._on_flows_done(t)
            elif kind == FINAL:
                self._finalize(ident, t)
            else:
                self._activate_bundle(ident, t)
            # re-solve the shared rates once per instant, after every event at that instant
            if self.dirty and (not heap or heap[0][0] > t):
                self._rerate(t)
        for i in range(self.n):
            if self.end[i] != self.end[i]:
                raise RuntimeError(f"timing simulation stalled at {self.m.nodes[i].where}")

    # ------------------------------------------------------------------------------------ jobs, issue

    def _launch(self, ji: int, ready: float) -> None:
        """The control core launches jobs one after another; a job's PEs start once launched and free."""
        t = max(ready, self.ccp_free)
        self.ccp_free = t + self.job_launch_s
        self.job_launch[ji] = t
        self.launch_done[ji] = self.ccp_free
        if not self.job_nodes[ji]:
            self._job_done(ji, self.ccp_free)
            return
        for pe in self.job_pes[ji]:
            if pe in self.pe_owner:
                self.pe_queue[pe].append(ji)
            else:
                self._start_pe(ji, pe, self.ccp_free, ("launch",))

    def _start_pe(self, ji: int, pe: tuple[int, int], free_at: float, reason: tuple) -> None:
        """The control core signals a job's PEs one after another; a busy PE's monitor starts it when free."""
        self.pe_owner[pe] = ji
        signalled = self.launch_done[ji] + self.pe_rank[(ji, pe)] * self.per_pe_ns * 1e-9
        if signalled >= free_at:
            reason = ("launch",)
        self.pe_start_reason[(ji, pe)] = reason[0]
        start = max(free_at, signalled)
        for i in self.first_nodes.get((ji, pe), ()):
            self._set_issue(i, start, reason)

    def _job_done(self, ji: int, t_last: float) -> None:
        self.job_last[ji] = t_last
        self.job_end[ji] = t_last + self.job_end_s
        for pe in self.job_pes[ji]:
            if self.pe_owner.get(pe) != ji:
                continue
            del self.pe_owner[pe]
            queue = self.pe_queue.get(pe)
            if queue:
                nxt = queue.pop(0)
                self._start_pe(nxt, pe, t_last, ("pe_free", ji))
        for jj in self.job_dependents[ji]:
            self.job_deps_left[jj] -= 1
            if self.job_deps_left[jj] == 0:
                ready = -INF
                for d in self.job_dep_index[jj]:
                    ready = max(ready, self.job_end[d])
                self._launch(jj, ready)

    def _set_issue(self, i: int, t: float, reason: tuple) -> None:
        """Node i's core reaches it at time t (its issue window starts)."""
        while True:
            self.issue_at[i] = t
            if self.is_barrier[i]:
                self._barrier_progress(i, t, -1)
                return
            self._resolve_dep(i, t, reason)
            nxt = self.core_next[i]
            if nxt < 0:
                return
            t = t + self.issue_s[i]
            reason = ("issue", i)
            i = nxt

    def _resolve_dep(self, i: int, t: float, reason: tuple) -> None:
        if t >= self.cand[i]:
            self.cand[i] = t
            self.start_reason[i] = reason
        self.need[i] -= 1
        if self.need[i] == 0:
            self.push(self.cand[i], START, i, 0)

    # ------------------------------------------------------------------------------------ node life

    def _on_start(self, i: int, t: float) -> None:
        b = self.bundle_of[i]
        if b < 0:
            self.start[i] = t
            self._notify_started(i)
            self.push(t + self.own_s[i], OWN_END, i, 0)
            return
        self.b_ready[b] += 1
        if t >= self.b_ready_t[b]:
            self.b_ready_t[b] = t
            self.b_ready_by[b] = i
        if self.b_ready[b] < self.b_size[b]:
            return
        start = self.b_ready_t[b]
        by = self.b_ready_by[b]
        for j in self.bundles[b]:
            self.start[j] = start
            if j != by:
                self.start_reason[j] = ("bundle", by)
        for j in self.bundles[b]:
            self._notify_started(j)
        self.push(start + self.b_latency[b], ACTIVATE, b, 0)

    def _notify_started(self, i: int) -> None:
        t = self.start[i] + self.first_item_s[i]
        for c in self.consumers[i]:
            self._resolve_dep(c, t, ("item", i))

    def _activate_bundle(self, b: int, t: float) -> None:
        self._advance(t)
        self.act[self.n_act] = b
        self.n_act += 1
        self.added.append(b)
        self.b_rate[b] = -1.0  # no completion scheduled yet
        self.dirty = True

    def _on_flow_done(self, b: int, t: float) -> None:
        self._advance(t)
        self._set_kind(b, 0, t)
        self.b_remaining[b] = 0.0
        k = 0
        while self.act[k] != b:
            k += 1
        while k + 1 < self.n_act:
            self.act[k] = self.act[k + 1]
            k += 1
        self.n_act -= 1
        if b in self.added:
            self.added.remove(b)  # came and went within one instant
        else:
            self.removed.append(b)
            self.removed_rate.append(self.b_rate[b])
        self.b_finish[b] = INF
        self.dirty = True
        for j in self.bundles[b]:
            stall = self.stall_s[j]
            if stall > 0:
                self.push(t + stall, OWN_END, j, 0)
            else:
                self._on_own_end(j, t)

    def _advance(self, t: float) -> None:
        dt = t - self.b_last
        if dt > 0:
            for k in range(self.n_act):
                b = self.act[k]
                self.b_remaining[b] = max(0.0, self.b_remaining[b] - self.b_rate[b] * dt)
        self.b_last = t

    def _set_kind(self, b: int, kind: int, t: float) -> None:
        """Charge the time since the bundle's last change to what limited it then (kinds: kind_names codes)."""
        if self.b_kind[b] != kind or kind == 0:
            if self.b_kind[b]:
                self.b_class_time[b][self.kind_names[self.b_kind[b]]] += t - self.b_kind_since[b]
            self.b_kind[b] = kind
            self.b_kind_since[b] = t

    def _rerate(self, t: float) -> None:
        self.dirty = False
        if self.n_act == 0:
            return
        if self.share and self._local_change():
            for x in range(len(self.removed)):
                self._add_use(self.res_used, self.removed[x], -self.removed_rate[x])
            for b in self.added:
                cap = self.b_cap[b]
                self._add_use(self.res_used, b, cap)
                self._set_kind(b, self.b_cap_kind[b], t)
                self.b_rate[b] = cap
                self.b_finish[b] = t + self.b_remaining[b] / max(cap, EPS)
            self.added = []
            self.removed = []
            self.removed_rate = []
            self._schedule_flow_done()
            return
        self.added = []
        self.removed = []
        self.removed_rate = []
        if self.share:
            self._maxmin()
        for k in range(self.n_act):
            b = self.act[k]
            if self.share:
                rate = self.mm_rate[k]
                if self.mm_bycap[k]:
                    kind = self.b_cap_kind[b]
                elif self.mm_which[k] >= 0:
                    kind = self.klass[self.mm_which[k]]
                else:
                    kind = 0
            else:
                rate = self.b_rate0[b]
                kind = self.b_kind0[b]
            if self.b_kind[b] != kind or kind == 0:
                self._set_kind(b, kind, t)
            old = self.b_rate[b]
            # a bundle whose rate did not change keeps its completion time
            if not (old >= 0 and abs(rate - old) <= 1e-12 * max(old, 1.0)):
                self.b_rate[b] = rate
                self.b_finish[b] = t + self.b_remaining[b] / max(rate, EPS)
        self._schedule_flow_done()

    def _add_use(self, used: np.ndarray, b: int, rate: float) -> None:
        """used += b's resource use at `rate` (bytes/s)."""
        for x in range(self.u_start[b], self.u_start[b + 1]):
            used[self.u_col[x]] += self.u_val[x] * rate

    def _local_change(self) -> bool:
        """True if the max-min rates of the other bundles cannot change: every bundle that left used no
        saturated resource, every bundle that came fits at its cap without saturating one, and none of them
        touches LPDDR5 (whose page-hit rate depends on how many streams share it)."""
        if not self.res_valid or not (self.added or self.removed):
            return False
        for b in self.removed:
            if self.b_streams[b] or self.b_has_extra[b]:
                return False
        for b in self.added:
            if self.b_streams[b] or self.b_has_extra[b]:
                return False
        used = self.mm_use
        for r in range(self.n_res):
            used[r] = self.res_used[r]
        for x in range(len(self.removed)):
            b = self.removed[x]
            for y in range(self.u_start[b], self.u_start[b + 1]):
                r = self.u_col[y]
                if self.u_val[y] > 0 and used[r] >= self.capacity[r] * (1 - 1e-9):
                    return False
            self._add_use(used, b, -self.removed_rate[x])
        for b in self.added:
            cap = self.b_cap[b]
            if not (cap < INF):
                return False
            self._add_use(used, b, cap)
            for y in range(self.u_start[b], self.u_start[b + 1]):
                r = self.u_col[y]
                if self.u_val[y] > 0 and used[r] > self.capacity[r] * (1 - 1e-9):
                    return False
        return True

    def _maxmin(self) -> None:
        """Max-min fair rates (bytes/s of each active bundle) on the shared resources, with per-bundle caps,
        into mm_rate[k] (k: position in act) and what limited each (mm_bycap, else resource mm_which);
        res_used the resources' use at those rates.

        Progressive filling: all live bundles rise together; the common level at which the first resource
        fills is remaining capacity / the live bundles' summed use of it. Bundles capped at or below that level
        stop at their caps (a resource used by one bundle alone is just another cap); otherwise the bundles on
        the filled resource(s) stop at the level. Repeat with what is left."""
        n_act = self.n_act
        streams = 0
        for k in range(n_act):
            streams += int(self.b_streams[self.act[k]])
        # other streams close each stream's open pages: blend towards one activation per access
        blend = (1.0 - row_hit_survival(self.m.chip, streams)) if streams > 1 else 0.0
        use, remaining, touched, cols, count = (
            self.mm_use,
            self.mm_remaining,
            self.mm_touched,
            self.mm_cols,
            self.mm_count,
        )
        u_start, u_col, u_val, u_extra, ueff = self.u_start, self.u_col, self.u_val, self.u_extra, self.mm_u
        live, rate, capacity, b_cap = self.mm_live, self.mm_rate, self.capacity, self.b_cap
        # each active bundle's use of its resources (ueff, per entry), and the live bundles' summed use of the
        # resources they touch (cols[0:n_cols]); count: how many live bundles use each
        n_cols = 0
        for k in range(n_act):
            live[k] = 1
            rate[k] = 0.0
            self.mm_bycap[k] = 0
            self.mm_which[k] = -1
            b = self.act[k]
            for x in range(u_start[b], u_start[b + 1]):
                v = u_val[x] + blend * u_extra[x] if blend != 0.0 else u_val[x]
                ueff[x] = v
                if v != 0:
                    r = u_col[x]
                    if not touched[r]:
                        touched[r] = 1
                        cols[n_cols] = r
                        n_cols += 1
                        remaining[r] = capacity[r]
                        use[r] = 0.0
                        count[r] = 0
                    use[r] += v
                    count[r] += 1
        n_live = n_act
        while n_live > 0:
            cap_min = INF
            for k in range(n_act):
                if live[k]:
                    cap_min = min(cap_min, b_cap[self.act[k]])
            level = INF
            for c in range(n_cols):
                r = cols[c]
                if use[r] > 0:
                    self.mm_level[r] = remaining[r] / use[r]
                    level = min(level, self.mm_level[r])
                else:
                    self.mm_level[r] = INF
            n_fix = 0
            if cap_min <= level * (1 + 1e-12):
                for k in range(n_act):
                    if live[k] and (not (level < INF) or b_cap[self.act[k]] <= level * (1 + 1e-12)):
                        cap = b_cap[self.act[k]]
                        rate[k] = cap if cap < INF else 0.0
                        self.mm_bycap[k] = 1
                        self.mm_fix[n_fix] = k
                        n_fix += 1
            elif not (level < INF):  # numerical corner: nothing bounds them
                break
            else:
                for k in range(n_act):
                    if not live[k]:
                        continue
                    b = self.act[k]
                    best = -1
                    best_u = 0.0
                    for x in range(u_start[b], u_start[b + 1]):
                        v = ueff[x]
                        if v > best_u and self.mm_level[u_col[x]] <= level * (1 + 1e-9):
                            best = u_col[
                                x
                            ]  # on a filled resource: the one it uses most (the first of equals)
                            best_u = v
                    if best >= 0:
                        rate[k] = level
                        self.mm_which[k] = best
                        self.mm_fix[n_fix] = k
                        n_fix += 1
            for f in range(n_fix):
                k = self.mm_fix[f]
                b = self.act[k]
                for x in range(u_start[b], u_start[b + 1]):
                    v = ueff[x]
                    if v != 0:
                        r = u_col[x]
                        remaining[r] -= rate[k] * v
                        count[r] -= 1
                        use[r] = use[r] - v if count[r] else 0.0
                live[k] = 0
                n_live -= 1
            for c in range(n_cols):
                remaining[cols[c]] = max(remaining[cols[c]], 0.0)
        for c in range(n_cols):
            touched[cols[c]] = 0
        for r in range(self.n_res):
            self.res_used[r] = 0.0
        for k in range(n_act):
            b = self.act[k]
            for x in range(u_start[b], u_start[b + 1]):
                self.res_used[u_col[x]] += rate[k] * ueff[x]
        self.res_valid = True

    def _schedule_flow_done(self) -> None:
        """One pending event for the earliest completion among the active bundles (not one per bundle)."""
        self.flow_version += 1
        if self.n_act:
            first = INF
            for k in range(self.n_act):
                first = min(first, self.b_finish[self.act[k]])
            self.push(first, FLOW_DONE, -1, self.flow_version)

    def _on_flows_done(self, t: float) -> None:
        """Every active bundle whose completion time has come completes, in activation order."""
        done = []
        for k in range(self.n_act):
            if self.b_finish[self.act[k]] <= t:
                done.append(self.act[k])
        for b in done:
            self._on_flow_done(b, t)
        if not done:
            self._schedule_flow_done()

    def _on_own_end(self, i: int, t: float) -> None:
        self.own_done[i] = t
        if self.pending_end[i] == 0:
            self._complete(i)
            return
        for p in self.producers[i]:
            self._wait_end(i, p)
        r = self.reduce_from[i]
        if r >= 0:
            self._wait_end(i, r)

    def _wait_end(self, i: int, p: int) -> None:
        if self.end[p] != self.end[p]:
            self.end_waiters[p].append(i)
        else:
            self._end_dep_done(i)

    def _end_dep_done(self, i: int) -> None:
        self.pending_end[i] -= 1
        if self.pending_end[i] == 0:
            self._complete(i)

    def _complete(self, i: int) -> None:
        t = self.own_done[i]
        reason: tuple = ("own",)
        for p in self.producers[i]:
            tp = self.end[p] + self.tail_s[i]
            if tp > t:
                t = tp
                reason = ("dep", p)
        r = self.reduce_from[i]
        if r >= 0:
            tp = self.end[r] + self.link_s[i] + self.hop_s[i] + self.tail_s[i]
            if tp > t:
                t = tp
                reason = ("dep", r)
        self.end_reason[i] = reason
        if t > self.own_done[i]:
            self.push(t, FINAL, i, 0)
        else:
            self._finalize(i, t)

    def _finalize(self, i: int, t: float) -> None:
        self.end[i] = t
        for nxt in self.unit_next[i]:
            self._resolve_dep(nxt, t, ("unit", i))
        waiters = self.end_waiters[i]
        self.end_waiters[i] = []
        for w in waiters:
            self._end_dep_done(w)
        for bid in self.after_barrier.get(i, ()):
            self._barrier_progress(bid, t, i)
        self._node_done(self.job_of[i])

    def _node_done(self, ji: int) -> None:
        self.job_left[ji] -= 1
        if self.job_left[ji] == 0:
            last = -INF
            for i in self.job_nodes[ji]:
                if self.end[i] == self.end[i]:
                    last = max(last, self.end[i])
            self._job_done(ji, last)

    def _barrier_progress(self, bid: int, t: float, by: int) -> None:
        if t >= self.barrier_arrival.get(bid, -INF):
            self.barrier_arrival[bid] = t
            self.barrier_arrival_by[bid] = by
        self.barrier_need[bid] -= 1
        if self.barrier_need[bid]:
            return
        group = [bid, *self.barrier_peers[bid]]
        for g in group:
            if self.barrier_need[g]:
                return
        binding = group[0]
        for g in group:
            if self.barrier_arrival[g] > self.barrier_arrival[binding]:
                binding = g
        release = self.barrier_arrival[binding]
        for g in group:
            self.start[g] = release
            self.end[g] = release
            self.barrier_binding[g] = (binding, self.barrier_arrival_by[binding])
        for g in group:
            nxt = self.core_next[g]
            if nxt >= 0:
                self._set_issue(nxt, release, ("barrier", g))
            for w in self.after_barrier.get(g, ()):
                self._barrier_progress(w, release, g)
            self._node_done(self.job_of[g])
