"""The event loop of the `event` and `analytic` fidelities, on flat arrays.

This file is the only description of the loop's semantics. It runs as plain Python (the reference core) and,
compiled by Cython with the C types declared in `eventloop.pxd`, as the compiled core (`eventcore` picks
one). So the loop keeps to what compiles to C without Python objects: scalars and flat numpy arrays (typed
memoryviews once compiled; Python lists when interpreted). A node's variable number of neighbours is a CSR
pair (`x_start[i]:x_start[i + 1]` indexes `x`); reasons are integer codes; the event queue is a binary heap
over parallel arrays ordered by (time, push order); per-PE job queues and the nodes waiting for a node's end
are linked lists in preallocated arrays. `result()` turns the codes back into the tuples and dicts the
attribution reads.

`Sim(m, share)` takes a `TimingModel` (duck-typed: this module sits below `timing`) and copies what the loop
reads into flat arrays; `run()` simulates; `result()` hands back what the attribution and the reports need.
"""

from __future__ import annotations

from itertools import chain
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
# why a node started (start_code; start_arg: the node, or for BY_PE_FREE the job, behind it)
BY_LAUNCH = 0
BY_PE_FREE = 1
BY_ISSUE = 2
BY_ITEM = 3
BY_UNIT = 4
BY_BUNDLE = 5
BY_BARRIER = 6
START_NAMES = ("launch", "pe_free", "issue", "item", "unit", "bundle", "barrier")
# why a node ended (end_code; end_arg: the node it waited for)
END_OWN = 0
END_DEP = 1


def _is_compiled() -> bool:
    """True in the module Cython built (its functions are not Python functions)."""
    return not isinstance(_is_compiled, FunctionType)


COMPILED = _is_compiled()


def _zeros(n: int, dtype: type) -> Any:
    """A work array: numpy once compiled (a typed memoryview takes it), a list when interpreted (the
    interpreter indexes lists of Python numbers several times faster than arrays)."""
    a = np.zeros(n, dtype=dtype)
    return a if COMPILED else a.tolist()


def _ints(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _floats(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _starts(counts: Any) -> np.ndarray:
    """CSR row starts of rows with these lengths: [0, c0, c0 + c1, ...]."""
    start = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=start[1:])
    return start


def _csr(lists: Any) -> tuple[np.ndarray, np.ndarray]:
    """(start, flat) of a sequence of int sequences: lists[i] is flat[start[i]:start[i + 1]]."""
    start = _starts([len(x) for x in lists])
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(start[len(lists)]))
    return start, flat


def _representatives(
    usage: np.ndarray, extra: np.ndarray, capacity: np.ndarray, klass: np.ndarray
) -> np.ndarray:
    """For each resource, the first resource whose usage and re-open columns, capacity and class are
    bitwise the same (e.g. the SRAM slices that every access interleaves over evenly). The max-min solver
    does exactly the same arithmetic on such clones, so it keeps only the first of them."""
    nr = len(capacity)
    by_column = np.hstack([usage.T, extra.T, capacity[:, None], klass[:, None].astype(np.float64)])
    first: dict[bytes, int] = {}
    rep = np.zeros(nr, dtype=np.int64)
    for r in range(nr):
        rep[r] = first.setdefault(by_column[r].tobytes(), r)
    return rep


def _drop(arr: Any, n: int, value: int) -> None:
    """Remove `value` from the first `n` entries of `arr`, keeping the others' order."""
    k = 0
    while arr[k] != value:
        k += 1
    while k + 1 < n:
        arr[k] = arr[k + 1]
        k += 1


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
        self.unit_prev = _ints(m.unit_prev)
        self.core_next = _ints(m.core_next)
        self.reduce_from = _ints(m.reduce_from)
        self.bundle_of = _ints(m.bundle_of)
        self.job_of = _ints(m.job_of)
        self.first_item_s = _floats(m.first_item_s)
        self.tail_s = _floats(m.tail_s)
        self.stall_s = _floats(m.stall_s)
        self.issue_s = np.array([w.issue_s for w in m.works], dtype=np.float64)
        self.own_s = np.array([m.own_compute_s(i) for i in range(n)], dtype=np.float64)
        self.is_barrier = np.array([isinstance(nd.cmd, Barrier) for nd in m.nodes], dtype=np.int64)
        self.link_s = np.zeros(n)
        self.hop_s = np.zeros(n)
        for i in np.flatnonzero(m.reduce_from >= 0).tolist():
            self.link_s[i], self.hop_s[i] = m.wm.reduce_link_s(m.nodes[i].cmd)
        prod_start, self.prod = _csr(m.producers)
        self.prod_start = prod_start
        self.cons_start, self.cons = _csr(m.consumers)
        self.unext_start, self.unext = _csr(m.unit_next)
        bm_start, self.bm = _csr(m.bundles)
        self.bm_start = bm_start
        nb = len(m.bundles)
        self.nb = nb
        self.b_size = np.diff(bm_start)
        self.b_latency = _floats(m.b_latency)
        self.b_cap = _floats(m.b_cap)
        # what limits a bundle (an attribution class) as a code: kind_names[code], "" (nothing yet) is 0
        self.kind_names: list[str] = [""]
        codes = {"": 0}
        for name in [*m.b_cap_kind, *m.b_kind0, *m.rmap.klass]:
            if name not in codes:
                codes[name] = len(self.kind_names)
                self.kind_names.append(name)
        self.n_kinds = len(self.kind_names)
        self.b_cap_kind = np.array([codes[k] for k in m.b_cap_kind], dtype=np.int64)
        self.b_rate0 = _floats(m.b_rate0)
        self.b_kind0 = np.array([codes[k] for k in m.b_kind0], dtype=np.int64)
        self.b_streams = _floats(m.b_streams)
        nstreams = np.asarray(m.b_streams).astype(np.int64)
        self.b_nstreams = nstreams
        self.b_has_extra = np.asarray(m.b_extra != 0).any(axis=1).astype(np.int64)
        capacity = m.rmap.capacity.astype(np.float64)
        klass = np.array([codes[k] for k in m.rmap.klass], dtype=np.int64)
        self.capacity = capacity
        self.klass = klass
        self.n_res = len(capacity)
        # each bundle's resources (usage or page re-open extra), sparse, one of each set of clones
        rep = _representatives(m.b_usage, m.b_extra, capacity, klass)
        rows, cols = np.nonzero(((m.b_usage != 0) | (m.b_extra != 0)) & (rep == np.arange(self.n_res)))
        self.u_start = _starts(np.bincount(rows, minlength=nb))
        self.u_col = cols.astype(np.int64)
        u_val = np.ascontiguousarray(m.b_usage[rows, cols], dtype=np.float64)
        u_extra = np.ascontiguousarray(m.b_extra[rows, cols], dtype=np.float64)
        self.u_val = u_val
        self.u_extra = u_extra
        # uses and re-open parts all >= 0: a blend > 0 keeps every entry's use > 0 or = 0 as it was
        self.nonneg = bool((u_val >= 0).all() and (u_extra >= 0).all())
        # LPDDR5 page-hit blend per number of streams sharing the channels (NaN: not computed yet)
        self.blend_of = np.full(int(nstreams.sum()) + 2, np.nan)
        # state
        self.start = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.issue_at = np.full(n, np.nan)
        self.cand = np.full(n, -INF)
        self.start_code = np.zeros(n, dtype=np.int64)  # BY_LAUNCH
        self.start_arg = np.full(n, -1, dtype=np.int64)
        self.end_code = np.zeros(n, dtype=np.int64)  # END_OWN
        self.end_arg = np.full(n, -1, dtype=np.int64)
        self.need = 1 + (m.unit_prev >= 0).astype(np.int64) + np.diff(prod_start)
        self.pending_end = np.diff(prod_start) + (m.reduce_from >= 0).astype(np.int64)
        self.own_done = np.full(n, np.nan)
        # nodes waiting for a node's end: linked lists (w_head[i], w_next[e]) of entries e naming node w_node[e]
        n_wait = int(prod_start[n]) + int((m.reduce_from >= 0).sum())
        self.w_head = np.full(n, -1, dtype=np.int64)
        self.w_tail = np.full(n, -1, dtype=np.int64)
        self.w_node = np.zeros(max(n_wait, 1), dtype=np.int64)
        self.w_next = np.zeros(max(n_wait, 1), dtype=np.int64)
        self.n_wait = 0
        # the event queue: a binary heap ordered by (time, push order), its fields in parallel arrays
        self.h_cap = 2 * (n + nb) + 16
        self.h_n = 0
        self.h_t = np.zeros(self.h_cap)
        self.h_seq = np.zeros(self.h_cap, dtype=np.int64)
        self.h_kind = np.zeros(self.h_cap, dtype=np.int64)
        self.h_ident = np.zeros(self.h_cap, dtype=np.int64)
        self.h_ver = np.zeros(self.h_cap, dtype=np.int64)
        self.seq = 0
        self.events = 0
        self.b_ready = np.zeros(nb, dtype=np.int64)
        self.b_ready_t = np.full(nb, -INF)
        self.b_ready_by = np.full(nb, -1, dtype=np.int64)
        self.b_remaining = m.b_bytes.astype(np.float64)
        self.b_rate = np.zeros(nb)
        self.b_finish = np.full(nb, INF)  # when each active bundle completes at its current rate
        # incremental re-rating: resource use at the current rates (res_used[r], valid once res_epoch[r] is
        # rate_epoch: computed on demand from the solver's lists), and the bundles changed since
        self.res_used = np.zeros(self.n_res)
        self.res_epoch = np.zeros(self.n_res, dtype=np.int64)
        self.rate_epoch = 0
        self.res_valid = False
        self.copy_stamp = np.zeros(self.n_res, dtype=np.int64)  # _local_change's copy: taken at copy_epoch
        self.copy_epoch = 0
        self.added = np.zeros(max(nb, 1), dtype=np.int64)
        self.n_added = 0
        self.b_added = np.zeros(max(nb, 1), dtype=np.int64)  # 1 while in added[0:n_added]
        self.removed = np.zeros(max(nb, 1), dtype=np.int64)
        self.removed_rate = np.zeros(max(nb, 1))
        self.n_removed = 0
        self.done = np.zeros(max(nb, 1), dtype=np.int64)  # _on_flows_done's completions
        self.flow_version = 0  # the one pending completion event (the earliest finish) is this version
        # the active bundles in activation order: act[0:n_act]
        self.act = np.zeros(max(nb, 1), dtype=np.int64)
        self.n_act = 0
        self.b_last = 0.0
        # time per limiting class: class_time[b * n_kinds + kind]; the (b, kind) pairs in first-charge order
        self.class_time = np.zeros(max(nb * self.n_kinds, 1))
        self.class_seen = np.zeros(max(nb * self.n_kinds, 1), dtype=np.int64)
        self.class_log = np.zeros(max(nb * self.n_kinds, 1), dtype=np.int64)
        self.n_class_log = 0
        self.b_kind = np.zeros(nb, dtype=np.int64)
        self.b_kind_since = np.zeros(nb)
        self.dirty = False
        # the max-min solver's view of the active bundles, kept between solutions: for each resource, the
        # entries (u_* index) of the bundles it knows with a non-zero use, in activation order (a linked list
        # l_head[r] -> l_next[x]), their summed use use0[r] and number count0[r]; cols[0:n_cols] the resources
        # with entries (col_pos[r] their position, -1 if none); the bundles it knows (in_lists) with their
        # rates at its last solution (mm_brate), those of them that have completed since (pend[0:n_pend]), and
        # the LPDDR5 blend their uses were computed with (blend_s; NaN: none yet)
        n_u = max(len(u_val), 1)
        self.e_b = np.repeat(np.arange(nb, dtype=np.int64), np.diff(self.u_start))
        self.l_next = np.full(n_u, -1, dtype=np.int64)
        self.l_prev = np.full(n_u, -1, dtype=np.int64)
        self.l_head = np.full(self.n_res, -1, dtype=np.int64)
        self.l_tail = np.full(self.n_res, -1, dtype=np.int64)
        self.use0 = np.zeros(self.n_res)
        self.count0 = np.zeros(self.n_res, dtype=np.int64)
        self.col_pos = np.full(self.n_res, -1, dtype=np.int64)
        self.n_cols = 0
        self.in_lists = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_brate = np.zeros(max(nb, 1))
        self.pend = np.zeros(max(nb, 1), dtype=np.int64)
        self.n_pend = 0
        self.blend_s = np.nan
        self.res_dirty = np.zeros(self.n_res, dtype=np.int64)
        self.dirty_list = np.zeros(self.n_res, dtype=np.int64)
        self.n_dirty = 0
        self.at_level = np.zeros(self.n_res, dtype=np.int64)
        self.pos = np.zeros(max(nb, 1), dtype=np.int64)
        self.best_u = np.zeros(max(nb, 1))
        # max-min work arrays
        self.mm_use = np.zeros(self.n_res)
        self.mm_remaining = np.zeros(self.n_res)
        self.mm_cols = np.zeros(self.n_res, dtype=np.int64)
        self.mm_count = np.zeros(self.n_res, dtype=np.int64)
        self.mm_u = np.zeros(n_u)
        self.mm_level = np.zeros(self.n_res)
        self.mm_rate = np.zeros(max(nb, 1))
        self.mm_live = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_fix = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_which = np.zeros(max(nb, 1), dtype=np.int64)
        self.mm_bycap = np.zeros(max(nb, 1), dtype=np.int64)
        # barriers: each waits for its issue and for the earlier nodes of its core; peers: its group
        self.barrier_need = np.zeros(n, dtype=np.int64)
        peers: list[list[int]] = [[] for _ in range(n)]
        after: list[list[int]] = [[] for _ in range(n)]
        for bid, before in m.barrier_before.items():
            self.barrier_need[bid] = len(before) + 1
            peers[bid] = list(m.nodes[bid].barrier_peers)
            for x in before:
                after[x].append(bid)
        self.peer_start, self.peer = _csr(peers)
        self.after_start, self.after = _csr(after)
        self.barrier_arrival = np.full(n, -INF)
        self.barrier_arrival_by = np.full(n, -1, dtype=np.int64)
        self.bind_node = np.full(n, -1, dtype=np.int64)  # barrier_binding[g] = (bind_node[g], bind_by[g])
        self.bind_by = np.full(n, -1, dtype=np.int64)
        self.bind_log = np.zeros(max(n, 1), dtype=np.int64)
        self.n_bind_log = 0
        # jobs; a slot is one (job, PE) pair, the PEs of a job in sorted order
        nj = len(m.jobs)
        jn_start, self.jn = _csr(m.resolved.job_nodes)
        self.jn_start = jn_start
        index = {job.name: ji for ji, job in enumerate(m.jobs)}
        self.dep_start, self.dep = _csr([[index[d] for d in job.deps] for job in m.jobs])
        dependents: list[list[int]] = [[] for _ in range(nj)]
        for jj, job in enumerate(m.jobs):
            for ji in sorted({index[d] for d in job.deps}):
                dependents[ji].append(jj)
        self.dependent_start, self.dependent = _csr(dependents)
        pes = sorted({pe for job in m.jobs for pe in job.pes})
        pe_id = {pe: x for x, pe in enumerate(pes)}
        self.slot_key: list[tuple[int, tuple[int, int]]] = [
            (ji, pe) for ji, job in enumerate(m.jobs) for pe in sorted(job.pes)
        ]
        n_slots = len(self.slot_key)
        self.jp_start = _starts([len(job.pes) for job in m.jobs])
        self.jp_job = np.array([ji for ji, _pe in self.slot_key], dtype=np.int64)
        self.jp_pe = np.array([pe_id[pe] for _ji, pe in self.slot_key], dtype=np.int64)
        self.jp_rank = np.array([m.pe_rank[key] for key in self.slot_key], dtype=np.int64)
        self.fn_start, self.fn = _csr([m.first_nodes.get(key, ()) for key in self.slot_key])
        self.job_launch = np.full(nj, np.nan)
        self.job_end = np.full(nj, np.nan)
        self.job_left = np.diff(jn_start)
        self.job_deps_left = np.array([len(job.deps) for job in m.jobs], dtype=np.int64)
        self.job_host = np.array([1 if job.host else 0 for job in m.jobs], dtype=np.int64)
        self.ccp_free = 0.0
        # a PE runs one job at a time: later jobs on it wait for it (their launch may overlap)
        self.launch_done = np.full(nj, np.nan)
        self.job_last = np.full(nj, np.nan)
        self.pe_owner = np.full(max(len(pes), 1), -1, dtype=np.int64)
        self.q_head = np.full(max(len(pes), 1), -1, dtype=np.int64)  # each PE's queue of waiting slots
        self.q_tail = np.full(max(len(pes), 1), -1, dtype=np.int64)
        self.q_next = np.full(max(n_slots, 1), -1, dtype=np.int64)
        self.slot_reason = np.full(
            max(n_slots, 1), -1, dtype=np.int64
        )  # BY_LAUNCH or BY_PE_FREE once started
        self.slot_log = np.zeros(max(n_slots, 1), dtype=np.int64)
        self.n_slot_log = 0
        if not COMPILED:  # the interpreter indexes lists of Python numbers several times faster than arrays
            for name, value in list(vars(self).items()):
                if isinstance(value, np.ndarray):
                    setattr(self, name, value.tolist())

    def result(self) -> SimpleNamespace:
        """What the attribution, the reports and the tests read after `run`."""
        start_code, start_arg = np.asarray(self.start_code).tolist(), np.asarray(self.start_arg).tolist()
        launch = (START_NAMES[BY_LAUNCH],)
        start_reason = [
            launch if c == BY_LAUNCH else (START_NAMES[c], a)
            for c, a in zip(start_code, start_arg, strict=True)
        ]
        own = ("own",)
        end_reason = [
            own if c == END_OWN else ("dep", a)
            for c, a in zip(
                np.asarray(self.end_code).tolist(), np.asarray(self.end_arg).tolist(), strict=True
            )
        ]
        nk = self.n_kinds
        b_class_time: list[dict[str, float]] = [{} for _ in range(self.nb)]
        for x in range(self.n_class_log):
            slot = self.class_log[x]
            b_class_time[slot // nk][self.kind_names[slot % nk]] = float(self.class_time[slot])
        barrier_binding = {}
        for x in range(self.n_bind_log):
            g = self.bind_log[x]
            barrier_binding[int(g)] = (int(self.bind_node[g]), int(self.bind_by[g]))
        pe_start_reason = {}
        for x in range(self.n_slot_log):
            s = self.slot_log[x]
            pe_start_reason[self.slot_key[s]] = START_NAMES[self.slot_reason[s]]
        return SimpleNamespace(
            start=np.asarray(self.start),
            end=np.asarray(self.end),
            issue_at=np.asarray(self.issue_at),
            start_reason=start_reason,
            end_reason=end_reason,
            job_launch=np.asarray(self.job_launch),
            job_end=np.asarray(self.job_end),
            b_class_time=b_class_time,
            barrier_binding=barrier_binding,
            pe_start_reason=pe_start_reason,
            events=self.events,
        )

    # ------------------------------------------------------------------------------------ event queue

    def push(self, t: float, kind: int, ident: int, version: int) -> None:
        self.seq += 1
        if self.h_n == self.h_cap:
            self._grow_heap()
        seq = self.seq
        j = self.h_n
        self.h_n += 1
        while j > 0:  # sift up past the entries that come later
            up = (j - 1) >> 1
            tu = self.h_t[up]
            if tu < t or (tu == t and self.h_seq[up] < seq):
                break
            self._heap_move(up, j)
            j = up
        self.h_t[j] = t
        self.h_seq[j] = seq
        self.h_kind[j] = kind
        self.h_ident[j] = ident
        self.h_ver[j] = version

    def _heap_move(self, src: int, dst: int) -> None:
        self.h_t[dst] = self.h_t[src]
        self.h_seq[dst] = self.h_seq[src]
        self.h_kind[dst] = self.h_kind[src]
        self.h_ident[dst] = self.h_ident[src]
        self.h_ver[dst] = self.h_ver[src]

    def _pop(self) -> None:
        """Drop the first entry (h_*[0]): the last one sifts down from the root."""
        self.h_n -= 1
        last = self.h_n
        if last == 0:
            return
        t = self.h_t[last]
        seq = self.h_seq[last]
        j = 0
        while True:
            c = 2 * j + 1
            if c >= last:
                break
            if c + 1 < last:
                tc = self.h_t[c]
                td = self.h_t[c + 1]
                if td < tc or (td == tc and self.h_seq[c + 1] < self.h_seq[c]):
                    c += 1
            tc = self.h_t[c]
            if t < tc or (t == tc and seq < self.h_seq[c]):
                break
            self._heap_move(c, j)
            j = c
        self._heap_move(last, j)

    def _grow_heap(self) -> None:
        cap = 2 * self.h_cap
        h_t, h_seq, h_kind = _zeros(cap, np.float64), _zeros(cap, np.int64), _zeros(cap, np.int64)
        h_ident, h_ver = _zeros(cap, np.int64), _zeros(cap, np.int64)
        for j in range(self.h_n):
            h_t[j] = self.h_t[j]
            h_seq[j] = self.h_seq[j]
            h_kind[j] = self.h_kind[j]
            h_ident[j] = self.h_ident[j]
            h_ver[j] = self.h_ver[j]
        self.h_t, self.h_seq, self.h_kind, self.h_ident, self.h_ver = h_t, h_seq, h_kind, h_ident, h_ver
        self.h_cap = cap

    def run(self) -> None:
        # the host submits the request; the control core then launches its jobs
        self.ccp_free = self.host_launch_s
        for ji in range(len(self.job_launch)):
            if self.job_deps_left[ji] == 0:
                self._launch(ji, 0.0)
        while self.h_n > 0:
            t = self.h_t[0]
            kind = self.h_kind[0]
            ident = self.h_ident[0]
            version = self.h_ver[0]
            self._pop()
            self.events += 1
            if kind == START:
                self._on_start(ident, t)
            elif kind == OWN_END:
                self._on_own_end(ident, t)
            elif kind == FLOW_DONE:
                if version == self.flow_version:
                    self._on_flows_done(t)
            elif kind == FINAL:
                self._finalize(ident, t)
            else:
                self._activate_bundle(ident, t)
            # re-solve the shared rates once per instant, after every event at that instant
            if self.dirty and (self.h_n == 0 or self.h_t[0] > t):
                self._rerate(t)
        for i in range(self.n):
            if self.end[i] != self.end[i]:
                raise RuntimeError(f"timing simulation stalled at {self.m.nodes[i].where}")

    # ------------------------------------------------------------------------------------ jobs, issue

    def _launch(self, ji: int, ready: float) -> None:
        """The control core launches jobs one after another; a job's PEs start once launched and free. The
        host's jobs start when ready, without the control core."""
        if self.job_host[ji]:
            t = ready
            done = ready
        else:
            t = max(ready, self.ccp_free)
            self.ccp_free = t + self.job_launch_s
            done = self.ccp_free
        self.job_launch[ji] = t
        self.launch_done[ji] = done
        if self.jn_start[ji] == self.jn_start[ji + 1]:
            self._job_done(ji, done)
            return
        for s in range(self.jp_start[ji], self.jp_start[ji + 1]):
            pe = self.jp_pe[s]
            if self.pe_owner[pe] >= 0:
                if self.q_tail[pe] >= 0:
                    self.q_next[self.q_tail[pe]] = s
                else:
                    self.q_head[pe] = s
                self.q_tail[pe] = s
            else:
                self._start_pe(s, done, BY_LAUNCH, -1)

    def _start_pe(self, s: int, free_at: float, code: int, arg: int) -> None:
        """The control core signals a job's PEs one after another; a busy PE's monitor starts it when free.
        s: the (job, PE) slot."""
        ji = self.jp_job[s]
        self.pe_owner[self.jp_pe[s]] = ji
        signalled = self.launch_done[ji] + self.jp_rank[s] * self.per_pe_ns * 1e-9
        if signalled >= free_at:
            code = BY_LAUNCH
            arg = -1
        self.slot_reason[s] = code
        self.slot_log[self.n_slot_log] = s
        self.n_slot_log += 1
        start = max(free_at, signalled)
        for x in range(self.fn_start[s], self.fn_start[s + 1]):
            self._set_issue(self.fn[x], start, code, arg)

    def _job_done(self, ji: int, t_last: float) -> None:
        self.job_last[ji] = t_last
        self.job_end[ji] = t_last + (0.0 if self.job_host[ji] else self.job_end_s)
        for s in range(self.jp_start[ji], self.jp_start[ji + 1]):
            pe = self.jp_pe[s]
            if self.pe_owner[pe] != ji:
                continue
            self.pe_owner[pe] = -1
            nxt = self.q_head[pe]
            if nxt >= 0:
                self.q_head[pe] = self.q_next[nxt]
                if self.q_head[pe] < 0:
                    self.q_tail[pe] = -1
                self._start_pe(nxt, t_last, BY_PE_FREE, ji)
        for x in range(self.dependent_start[ji], self.dependent_start[ji + 1]):
            jj = self.dependent[x]
            self.job_deps_left[jj] -= 1
            if self.job_deps_left[jj] == 0:
                ready = -INF
                for y in range(self.dep_start[jj], self.dep_start[jj + 1]):
                    ready = max(ready, self.job_end[self.dep[y]])
                self._launch(jj, ready)

    def _set_issue(self, i: int, t: float, code: int, arg: int) -> None:
        """Node i's core reaches it at time t (its issue window starts)."""
        while True:
            self.issue_at[i] = t
            if self.is_barrier[i]:
                self._barrier_progress(i, t, -1)
                return
            self._resolve_dep(i, t, code, arg)
            nxt = self.core_next[i]
            if nxt < 0:
                return
            t = t + self.issue_s[i]
            code = BY_ISSUE
            arg = i
            i = nxt

    def _resolve_dep(self, i: int, t: float, code: int, arg: int) -> None:
        if t >= self.cand[i]:
            self.cand[i] = t
            self.start_code[i] = code
            self.start_arg[i] = arg
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
        for x in range(self.bm_start[b], self.bm_start[b + 1]):
            j = self.bm[x]
            self.start[j] = start
            if j != by:
                self.start_code[j] = BY_BUNDLE
                self.start_arg[j] = by
        for x in range(self.bm_start[b], self.bm_start[b + 1]):
            self._notify_started(self.bm[x])
        self.push(start + self.b_latency[b], ACTIVATE, b, 0)

    def _notify_started(self, i: int) -> None:
        t = self.start[i] + self.first_item_s[i]
        for x in range(self.cons_start[i], self.cons_start[i + 1]):
            self._resolve_dep(self.cons[x], t, BY_ITEM, i)

    def _activate_bundle(self, b: int, t: float) -> None:
        self._advance(t)
        self.act[self.n_act] = b
        self.n_act += 1
        self.added[self.n_added] = b
        self.n_added += 1
        self.b_added[b] = 1
        self.b_rate[b] = -1.0  # no completion scheduled yet
        self.dirty = True

    def _on_flow_done(self, b: int, t: float) -> None:
        self._advance(t)
        self._set_kind(b, 0, t)
        self.b_remaining[b] = 0.0
        _drop(self.act, self.n_act, b)
        self.n_act -= 1
        if self.b_added[b]:  # came and went within one instant
            _drop(self.added, self.n_added, b)
            self.n_added -= 1
            self.b_added[b] = 0
        else:
            self.removed[self.n_removed] = b
            self.removed_rate[self.n_removed] = self.b_rate[b]
            self.n_removed += 1
        if self.in_lists[b]:
            self.pend[self.n_pend] = b
            self.n_pend += 1
        self.b_finish[b] = INF
        self.dirty = True
        for x in range(self.bm_start[b], self.bm_start[b + 1]):
            j = self.bm[x]
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
                slot = b * self.n_kinds + self.b_kind[b]
                if not self.class_seen[slot]:
                    self.class_seen[slot] = 1
                    self.class_log[self.n_class_log] = slot
                    self.n_class_log += 1
                self.class_time[slot] += t - self.b_kind_since[b]
            self.b_kind[b] = kind
            self.b_kind_since[b] = t

    def _clear_changes(self) -> None:
        for x in range(self.n_added):
            self.b_added[self.added[x]] = 0
        self.n_added = 0
        self.n_removed = 0

    def _rerate(self, t: float) -> None:
        self.dirty = False
        if self.n_act == 0:
            return
        if self.share and self._local_change():
            for x in range(self.n_removed):
                self._charge(self.removed[x], -self.removed_rate[x])
            for x in range(self.n_added):
                b = self.added[x]
                cap = self.b_cap[b]
                self._charge(b, cap)
                self._set_kind(b, self.b_cap_kind[b], t)
                self.b_rate[b] = cap
                self.b_finish[b] = t + self.b_remaining[b] / max(cap, EPS)
            self._clear_changes()
            self._schedule_flow_done()
            return
        self._clear_changes()
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

    def _add_use(self, b: int, rate: float) -> None:
        """_local_change's copy of the use (mm_use) += b's resource use at `rate` (bytes/s)."""
        for x in range(self.u_start[b], self.u_start[b + 1]):
            r = self.u_col[x]
            self._copy_use(r)
            self.mm_use[r] += self.u_val[x] * rate

    def _copy_use(self, r: int) -> None:
        """_local_change works on a copy of the resources' use, taken when it first reads each."""
        if self.copy_stamp[r] != self.copy_epoch:
            self.copy_stamp[r] = self.copy_epoch
            self.mm_use[r] = self._res_used(r)

    def _charge(self, b: int, rate: float) -> None:
        """res_used += b's resource use at `rate` (bytes/s)."""
        for x in range(self.u_start[b], self.u_start[b + 1]):
            r = self.u_col[x]
            self.res_used[r] = self._res_used(r) + self.u_val[x] * rate

    def _res_used(self, r: int) -> float:
        """Resource r's use at the rates of the last max-min solution (then changed by `_charge`): summed
        over its entries in activation order when first asked after a solution."""
        if self.res_epoch[r] != self.rate_epoch:
            used = 0.0
            x = self.l_head[r]
            while x >= 0:
                used += self.mm_brate[self.e_b[x]] * self.mm_u[x]
                x = self.l_next[x]
            self.res_used[r] = used
            self.res_epoch[r] = self.rate_epoch
        return self.res_used[r]

    def _local_change(self) -> bool:
        """True if the max-min rates of the other bundles cannot change: every bundle that left used no
        saturated resource, every bundle that came fits at its cap without saturating one, and none of them
        touches LPDDR5 (whose page-hit rate depends on how many streams share it)."""
        if not self.res_valid or not (self.n_added or self.n_removed):
            return False
        for x in range(self.n_removed):
            b = self.removed[x]
            if self.b_streams[b] or self.b_has_extra[b]:
                return False
        for x in range(self.n_added):
            b = self.added[x]
            if self.b_streams[b] or self.b_has_extra[b]:
                return False
        self.copy_epoch += 1
        used = self.mm_use
        for x in range(self.n_removed):
            b = self.removed[x]
            for y in range(self.u_start[b], self.u_start[b + 1]):
                r = self.u_col[y]
                self._copy_use(r)
                if self.u_val[y] > 0 and used[r] >= self.capacity[r] * (1 - 1e-9):
                    return False
            self._add_use(b, -self.removed_rate[x])
        for x in range(self.n_added):
            b = self.added[x]
            cap = self.b_cap[b]
            if not (cap < INF):
                return False
            self._add_use(b, cap)
            for y in range(self.u_start[b], self.u_start[b + 1]):
                r = self.u_col[y]
                if self.u_val[y] > 0 and used[r] > self.capacity[r] * (1 - 1e-9):
                    return False
        return True

    def _blend(self, streams: int) -> float:
        """How far other streams push each stream's LPDDR5 accesses towards one activation per access."""
        if streams <= 1:
            return 0.0
        if self.blend_of[streams] != self.blend_of[streams]:
            self.blend_of[streams] = 1.0 - row_hit_survival(self.m.chip, streams)
        return self.blend_of[streams]

    def _link(self, b: int, blend: float) -> None:
        """The solver learns of bundle b (activated last): its uses at this blend join the resources' lists
        (at their ends) and their sums, except on resources whose sums are re-added anyway (res_dirty)."""
        self.in_lists[b] = 1
        for x in range(self.u_start[b], self.u_start[b + 1]):
            v = self.u_val[x] + blend * self.u_extra[x] if blend != 0.0 else self.u_val[x]
            self.mm_u[x] = v
            if v != 0:
                r = self.u_col[x]
                tail = self.l_tail[r]
                self.l_prev[x] = tail
                self.l_next[x] = -1
                if tail >= 0:
                    self.l_next[tail] = x
                else:
                    self.l_head[r] = x
                self.l_tail[r] = x
                self.count0[r] += 1
                if not self.res_dirty[r]:
                    self.use0[r] += v
                if self.col_pos[r] < 0:
                    self.col_pos[r] = self.n_cols
                    self.mm_cols[self.n_cols] = r
                    self.n_cols += 1

    def _unlink(self, b: int) -> None:
        """The solver forgets bundle b: its entries leave the lists; their resources' sums are re-added."""
        self.in_lists[b] = 0
        for x in range(self.u_start[b], self.u_start[b + 1]):
            if self.mm_u[x] != 0:
                r = self.u_col[x]
                prev = self.l_prev[x]
                nxt = self.l_next[x]
                if prev >= 0:
                    self.l_next[prev] = nxt
                else:
                    self.l_head[r] = nxt
                if nxt >= 0:
                    self.l_prev[nxt] = prev
                else:
                    self.l_tail[r] = prev
                self.count0[r] -= 1
                self._mark_dirty(r)

    def _mark_dirty(self, r: int) -> None:
        if not self.res_dirty[r]:
            self.res_dirty[r] = 1
            self.dirty_list[self.n_dirty] = r
            self.n_dirty += 1

    def _sync_lists(self, blend: float) -> None:
        """Bring the solver's lists to the active bundles (act[0:n_act], in activation order): drop the
        completed ones, append the new ones (all activated after every bundle it knows), and re-add the sums
        of the resources that lost entries, in list order. A new blend changes every use: start afresh."""
        if blend != self.blend_s and self.nonneg and blend > 0.0 and self.blend_s > 0.0:
            # no use changes sign: the entries with a re-open part change in place, their sums are re-added
            for c in range(self.n_cols):
                r = self.mm_cols[c]
                x = self.l_head[r]
                while x >= 0:
                    if self.u_extra[x] != 0:
                        self.mm_u[x] = self.u_val[x] + blend * self.u_extra[x]
                        self._mark_dirty(r)
                    x = self.l_next[x]
            self.blend_s = blend
        if blend != self.blend_s:
            for x in range(self.n_pend):
                self.in_lists[self.pend[x]] = 0
            for k in range(self.n_act):
                self.in_lists[self.act[k]] = 0
            for c in range(self.n_cols):
                r = self.mm_cols[c]
                self.l_head[r] = -1
                self.l_tail[r] = -1
                self.count0[r] = 0
                self.use0[r] = 0.0
                self.col_pos[r] = -1
            self.n_cols = 0
            self.blend_s = blend
        else:
            for x in range(self.n_pend):
                self._unlink(self.pend[x])
        self.n_pend = 0
        for k in range(self.n_act):
            b = self.act[k]
            self.pos[b] = k
            if not self.in_lists[b]:
                self._link(b, blend)
        for y in range(self.n_dirty):
            r = self.dirty_list[y]
            self.res_dirty[r] = 0
            used = 0.0
            x = self.l_head[r]
            while x >= 0:
                used += self.mm_u[x]
                x = self.l_next[x]
            self.use0[r] = used
            if self.count0[r] == 0 and self.col_pos[r] >= 0:  # no entries left: out of cols
                c = self.col_pos[r]
                last = self.mm_cols[self.n_cols - 1]
                self.mm_cols[c] = last
                self.col_pos[last] = c
                self.col_pos[r] = -1
                self.n_cols -= 1
        self.n_dirty = 0

    def _maxmin(self) -> None:
        """Max-min fair rates (bytes/s of each active bundle) on the shared resources, with per-bundle caps,
        into mm_rate[k] (k: position in act) and what limited each (mm_bycap, else resource mm_which);
        res_used the resources' use at those rates.

        Progressive filling: all live bundles rise together; the common level at which the first resource
        fills is remaining capacity / the live bundles' summed use of it. Bundles capped at or below that level
        stop at their caps (a resource used by one bundle alone is just another cap); otherwise the bundles on
        the filled resource(s) stop at the level. Repeat with what is left.

        The summed uses (in activation order, as every sum here) are kept between solutions and re-added only
        for the resources that lost a bundle (`_sync_lists`); the bundles on a filled resource are found from
        its list."""
        n_act = self.n_act
        act = self.act
        streams = 0
        for k in range(n_act):
            streams += self.b_nstreams[act[k]]
        # other streams close each stream's open pages: blend towards one activation per access
        self._sync_lists(self._blend(streams))
        use, remaining, cols, count = self.mm_use, self.mm_remaining, self.mm_cols, self.mm_count
        u_start, u_col, ueff = self.u_start, self.u_col, self.mm_u
        live, rate, capacity, b_cap = self.mm_live, self.mm_rate, self.capacity, self.b_cap
        level_of, fix, bycap, which = self.mm_level, self.mm_fix, self.mm_bycap, self.mm_which
        best_u, at_level, l_next, e_b, pos = self.best_u, self.at_level, self.l_next, self.e_b, self.pos
        n_cols = self.n_cols
        for k in range(n_act):
            live[k] = 1
            rate[k] = 0.0
            bycap[k] = 0
            which[k] = -1
            best_u[k] = 0.0
        for c in range(n_cols):
            r = cols[c]
            remaining[r] = capacity[r]
            use[r] = self.use0[r]
            count[r] = self.count0[r]
        n_live = n_act
        while n_live > 0:
            cap_min = INF
            for k in range(n_act):
                if live[k]:
                    cap_min = min(cap_min, b_cap[act[k]])
            level = INF
            for c in range(n_cols):
                r = cols[c]
                if use[r] > 0:
                    level_of[r] = remaining[r] / use[r]
                    level = min(level, level_of[r])
                else:
                    level_of[r] = INF
            n_fix = 0
            if cap_min <= level * (1 + 1e-12):
                top = level * (1 + 1e-12)
                for k in range(n_act):
                    if live[k] and (not (level < INF) or b_cap[act[k]] <= top):
                        cap = b_cap[act[k]]
                        rate[k] = cap if cap < INF else 0.0
                        bycap[k] = 1
                        fix[n_fix] = k
                        n_fix += 1
            elif not (level < INF):  # numerical corner: nothing bounds them
                break
            else:
                # the live bundles on a filled resource stop at the level; each names the filled resource it
                # uses most (the first of equals in resource order)
                top = level * (1 + 1e-9)
                for c in range(n_cols):
                    r = cols[c]
                    if level_of[r] <= top:
                        at_level[r] = 1
                for r in range(self.n_res):
                    if at_level[r]:
                        at_level[r] = 0
                        x = self.l_head[r]
                        while x >= 0:
                            k = pos[e_b[x]]
                            if live[k] and ueff[x] > best_u[k]:
                                which[k] = r
                                best_u[k] = ueff[x]
                            x = l_next[x]
                for k in range(n_act):
                    if live[k] and which[k] >= 0:
                        rate[k] = level
                        fix[n_fix] = k
                        n_fix += 1
            if n_fix == n_live:  # all fixed: what is left of the resources is not needed
                break
            for f in range(n_fix):
                k = fix[f]
                b = act[k]
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
        for k in range(n_act):
            self.mm_brate[act[k]] = rate[k]
        self.rate_epoch += 1  # res_used: recomputed on demand
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
        n_done = 0
        for k in range(self.n_act):
            if self.b_finish[self.act[k]] <= t:
                self.done[n_done] = self.act[k]
                n_done += 1
        for x in range(n_done):
            self._on_flow_done(self.done[x], t)
        if n_done == 0:
            self._schedule_flow_done()

    def _on_own_end(self, i: int, t: float) -> None:
        self.own_done[i] = t
        if self.pending_end[i] == 0:
            self._complete(i)
            return
        for x in range(self.prod_start[i], self.prod_start[i + 1]):
            self._wait_end(i, self.prod[x])
        r = self.reduce_from[i]
        if r >= 0:
            self._wait_end(i, r)

    def _wait_end(self, i: int, p: int) -> None:
        if self.end[p] != self.end[p]:
            e = self.n_wait
            self.n_wait += 1
            self.w_node[e] = i
            self.w_next[e] = -1
            if self.w_tail[p] >= 0:
                self.w_next[self.w_tail[p]] = e
            else:
                self.w_head[p] = e
            self.w_tail[p] = e
        else:
            self._end_dep_done(i)

    def _end_dep_done(self, i: int) -> None:
        self.pending_end[i] -= 1
        if self.pending_end[i] == 0:
            self._complete(i)

    def _complete(self, i: int) -> None:
        t = self.own_done[i]
        code = END_OWN
        arg = -1
        for x in range(self.prod_start[i], self.prod_start[i + 1]):
            p = self.prod[x]
            tp = self.end[p] + self.tail_s[i]
            if tp > t:
                t = tp
                code = END_DEP
                arg = p
        r = self.reduce_from[i]
        if r >= 0:
            tp = self.end[r] + self.link_s[i] + self.hop_s[i] + self.tail_s[i]
            if tp > t:
                t = tp
                code = END_DEP
                arg = r
        self.end_code[i] = code
        self.end_arg[i] = arg
        if t > self.own_done[i]:
            self.push(t, FINAL, i, 0)
        else:
            self._finalize(i, t)

    def _finalize(self, i: int, t: float) -> None:
        self.end[i] = t
        for x in range(self.unext_start[i], self.unext_start[i + 1]):
            self._resolve_dep(self.unext[x], t, BY_UNIT, i)
        e = self.w_head[i]
        self.w_head[i] = -1
        self.w_tail[i] = -1
        while e >= 0:
            self._end_dep_done(self.w_node[e])
            e = self.w_next[e]
        for x in range(self.after_start[i], self.after_start[i + 1]):
            self._barrier_progress(self.after[x], t, i)
        self._node_done(self.job_of[i])

    def _node_done(self, ji: int) -> None:
        self.job_left[ji] -= 1
        if self.job_left[ji] == 0:
            last = -INF
            for x in range(self.jn_start[ji], self.jn_start[ji + 1]):
                i = self.jn[x]
                if self.end[i] == self.end[i]:
                    last = max(last, self.end[i])
            self._job_done(ji, last)

    def _barrier_progress(self, bid: int, t: float, by: int) -> None:
        if t >= self.barrier_arrival[bid]:
            self.barrier_arrival[bid] = t
            self.barrier_arrival_by[bid] = by
        self.barrier_need[bid] -= 1
        if self.barrier_need[bid]:
            return
        # the group: bid and its peers
        p0, p1 = self.peer_start[bid], self.peer_start[bid + 1]
        for x in range(p0, p1):
            if self.barrier_need[self.peer[x]]:
                return
        binding = bid
        for x in range(p0, p1):
            g = self.peer[x]
            if self.barrier_arrival[g] > self.barrier_arrival[binding]:
                binding = g
        release = self.barrier_arrival[binding]
        for x in range(p0 - 1, p1):
            g = bid if x < p0 else self.peer[x]
            self.start[g] = release
            self.end[g] = release
            if self.bind_node[g] < 0:
                self.bind_log[self.n_bind_log] = g
                self.n_bind_log += 1
            self.bind_node[g] = binding
            self.bind_by[g] = self.barrier_arrival_by[binding]
        for x in range(p0 - 1, p1):
            g = bid if x < p0 else self.peer[x]
            nxt = self.core_next[g]
            if nxt >= 0:
                self._set_issue(nxt, release, BY_BARRIER, g)
            for y in range(self.after_start[g], self.after_start[g + 1]):
                self._barrier_progress(self.after[y], release, g)
            self._node_done(self.job_of[g])
