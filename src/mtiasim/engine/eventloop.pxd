# C types for compiling eventloop.py with Cython (pure Python mode): the semantics live in eventloop.py only.
cimport cython
from libc.stdint cimport int64_t


cdef double INF, EPS
cdef int64_t START, OWN_END, FLOW_DONE, FINAL, ACTIVATE
cdef int64_t BY_LAUNCH, BY_PE_FREE, BY_ISSUE, BY_ITEM, BY_UNIT, BY_BUNDLE, BY_BARRIER, END_OWN, END_DEP


@cython.locals(k=Py_ssize_t)
cdef void _drop(int64_t[::1] arr, Py_ssize_t n, int64_t value)


@cython.final
cdef class Sim:
    cdef public object m
    cdef public bint share
    cdef public Py_ssize_t n, nb, n_res, n_act, n_kinds
    cdef public double host_launch_s, job_launch_s, per_pe_ns, job_end_s, ccp_free, b_last
    # the model
    cdef public int64_t[::1] unit_prev, core_next, reduce_from, bundle_of, job_of, is_barrier
    cdef public double[::1] first_item_s, tail_s, stall_s, issue_s, own_s, link_s, hop_s
    cdef public int64_t[::1] prod_start, prod, cons_start, cons, unext_start, unext, bm_start, bm
    cdef public list kind_names, slot_key
    cdef public int64_t[::1] b_size, b_cap_kind, b_kind0, b_nstreams, b_has_extra, klass
    cdef public double[::1] b_latency, b_cap, b_rate0, b_streams, capacity, blend_of
    cdef public int64_t[::1] u_start, u_col
    cdef public double[::1] u_val, u_extra
    # nodes
    cdef public double[::1] start, end, issue_at, cand, own_done
    cdef public int64_t[::1] start_code, start_arg, end_code, end_arg, need, pending_end
    cdef public int64_t[::1] w_head, w_tail, w_node, w_next
    cdef public Py_ssize_t n_wait
    # the event queue
    cdef public Py_ssize_t h_cap, h_n
    cdef public double[::1] h_t
    cdef public int64_t[::1] h_seq, h_kind, h_ident, h_ver
    cdef public int64_t seq, events, flow_version
    # bundles and the rates
    cdef public int64_t[::1] b_ready, b_ready_by, act, added, b_added, removed, done, b_kind
    cdef public double[::1] b_ready_t, b_remaining, b_rate, b_finish, res_used, removed_rate, b_kind_since
    cdef public Py_ssize_t n_added, n_removed, n_class_log
    cdef public bint res_valid, dirty
    cdef public double[::1] class_time
    cdef public int64_t[::1] class_seen, class_log
    cdef public double[::1] mm_use, mm_remaining, mm_level, mm_rate, mm_u, best_u
    cdef public int64_t[::1] mm_cols, mm_count, mm_live, mm_fix, mm_which, mm_bycap
    # the solver's lists
    cdef public int64_t[::1] e_b, l_next, l_prev, l_head, l_tail, count0, col_pos, in_lists, pend
    cdef public int64_t[::1] res_dirty, dirty_list, at_level, pos, res_epoch
    cdef public double[::1] use0, mm_brate
    cdef public Py_ssize_t n_cols, n_pend, n_dirty
    cdef public int64_t rate_epoch, copy_epoch
    cdef public int64_t[::1] copy_stamp
    cdef public double blend_s
    cdef public bint nonneg
    # barriers
    cdef public int64_t[::1] barrier_need, peer_start, peer, after_start, after, barrier_arrival_by
    cdef public double[::1] barrier_arrival
    cdef public int64_t[::1] bind_node, bind_by, bind_log
    cdef public Py_ssize_t n_bind_log
    # jobs and PEs
    cdef public int64_t[::1] jn_start, jn, dep_start, dep, dependent_start, dependent
    cdef public int64_t[::1] jp_start, jp_job, jp_pe, jp_rank, fn_start, fn
    cdef public double[::1] job_launch, job_end, launch_done, job_last
    cdef public int64_t[::1] job_left, job_deps_left, job_host, pe_owner, q_head, q_tail, q_next, slot_reason, slot_log
    cdef public Py_ssize_t n_slot_log

    @cython.locals(seq=int64_t, j=Py_ssize_t, up=Py_ssize_t, tu=double)
    cdef void push(self, double t, int64_t kind, int64_t ident, int64_t version)

    cdef void _heap_move(self, Py_ssize_t src, Py_ssize_t dst)

    @cython.locals(last=Py_ssize_t, t=double, seq=int64_t, j=Py_ssize_t, c=Py_ssize_t, tc=double, td=double)
    cdef void _pop(self)

    @cython.locals(cap=Py_ssize_t, j=Py_ssize_t, h_t=double[::1], h_seq=int64_t[::1], h_kind=int64_t[::1],
                   h_ident=int64_t[::1], h_ver=int64_t[::1])
    cdef void _grow_heap(self)

    @cython.locals(t=double, kind=int64_t, ident=Py_ssize_t, version=int64_t, ji=Py_ssize_t, i=Py_ssize_t)
    cpdef void run(self)

    @cython.locals(t=double, done=double, s=Py_ssize_t, pe=Py_ssize_t)
    cdef void _launch(self, Py_ssize_t ji, double ready)

    @cython.locals(ji=Py_ssize_t, signalled=double, start=double, x=Py_ssize_t)
    cdef void _start_pe(self, Py_ssize_t s, double free_at, int64_t code, int64_t arg)

    @cython.locals(s=Py_ssize_t, pe=Py_ssize_t, nxt=Py_ssize_t, x=Py_ssize_t, y=Py_ssize_t, jj=Py_ssize_t,
                   ready=double)
    cdef void _job_done(self, Py_ssize_t ji, double t_last)

    @cython.locals(nxt=Py_ssize_t)
    cdef void _set_issue(self, Py_ssize_t i, double t, int64_t code, int64_t arg)

    cdef void _resolve_dep(self, Py_ssize_t i, double t, int64_t code, int64_t arg)

    @cython.locals(b=Py_ssize_t, start=double, by=Py_ssize_t, j=Py_ssize_t, x=Py_ssize_t)
    cdef void _on_start(self, Py_ssize_t i, double t)

    @cython.locals(x=Py_ssize_t, t=double)
    cdef void _notify_started(self, Py_ssize_t i)

    cdef void _activate_bundle(self, Py_ssize_t b, double t)

    @cython.locals(k=Py_ssize_t, j=Py_ssize_t, x=Py_ssize_t, stall=double)
    cdef void _on_flow_done(self, Py_ssize_t b, double t)

    @cython.locals(dt=double, k=Py_ssize_t, b=Py_ssize_t)
    cdef void _advance(self, double t)

    @cython.locals(slot=Py_ssize_t)
    cdef void _set_kind(self, Py_ssize_t b, int64_t kind, double t)

    @cython.locals(x=Py_ssize_t)
    cdef void _clear_changes(self)

    @cython.locals(x=Py_ssize_t, b=Py_ssize_t, k=Py_ssize_t, cap=double, rate=double, old=double, kind=int64_t)
    cdef void _rerate(self, double t)

    @cython.locals(x=Py_ssize_t, r=Py_ssize_t)
    cdef void _add_use(self, Py_ssize_t b, double rate)

    cdef void _copy_use(self, Py_ssize_t r)

    @cython.locals(x=Py_ssize_t, r=Py_ssize_t)
    cdef void _charge(self, Py_ssize_t b, double rate)

    @cython.locals(used=double, x=Py_ssize_t)
    cdef double _res_used(self, Py_ssize_t r)

    @cython.locals(x=Py_ssize_t, y=Py_ssize_t, b=Py_ssize_t, r=Py_ssize_t, cap=double, used=double[::1])
    cdef bint _local_change(self)

    cdef double _blend(self, Py_ssize_t streams)

    @cython.locals(x=Py_ssize_t, v=double, r=Py_ssize_t, tail=Py_ssize_t)
    cdef void _link(self, Py_ssize_t b, double blend)

    @cython.locals(x=Py_ssize_t, r=Py_ssize_t, prev=Py_ssize_t, nxt=Py_ssize_t)
    cdef void _unlink(self, Py_ssize_t b)

    cdef void _mark_dirty(self, Py_ssize_t r)

    @cython.locals(x=Py_ssize_t, k=Py_ssize_t, c=Py_ssize_t, r=Py_ssize_t, b=Py_ssize_t, y=Py_ssize_t,
                   used=double, last=Py_ssize_t)
    cdef void _sync_lists(self, double blend)

    @cython.locals(
        n_act=Py_ssize_t, streams=Py_ssize_t, use=double[::1], remaining=double[::1], cols=int64_t[::1],
        count=int64_t[::1], n_cols=Py_ssize_t, c=Py_ssize_t, u_start=int64_t[::1], u_col=int64_t[::1],
        ueff=double[::1], live=int64_t[::1], rate=double[::1], capacity=double[::1], b_cap=double[::1],
        act=int64_t[::1], level_of=double[::1], fix=int64_t[::1], bycap=int64_t[::1], which=int64_t[::1],
        best_u=double[::1], at_level=int64_t[::1], l_next=int64_t[::1], e_b=int64_t[::1], pos=int64_t[::1],
        k=Py_ssize_t, b=Py_ssize_t, x=Py_ssize_t, r=Py_ssize_t, n_live=Py_ssize_t, cap_min=double,
        level=double, top=double, n_fix=Py_ssize_t, cap=double, v=double, f=Py_ssize_t,
    )
    cdef void _maxmin(self)

    @cython.locals(first=double, k=Py_ssize_t)
    cdef void _schedule_flow_done(self)

    @cython.locals(k=Py_ssize_t, x=Py_ssize_t, n_done=Py_ssize_t)
    cdef void _on_flows_done(self, double t)

    @cython.locals(x=Py_ssize_t, r=Py_ssize_t)
    cdef void _on_own_end(self, Py_ssize_t i, double t)

    @cython.locals(e=Py_ssize_t)
    cdef void _wait_end(self, Py_ssize_t i, Py_ssize_t p)

    cdef void _end_dep_done(self, Py_ssize_t i)

    @cython.locals(t=double, code=int64_t, arg=int64_t, x=Py_ssize_t, p=Py_ssize_t, tp=double, r=Py_ssize_t)
    cdef void _complete(self, Py_ssize_t i)

    @cython.locals(x=Py_ssize_t, e=Py_ssize_t)
    cdef void _finalize(self, Py_ssize_t i, double t)

    @cython.locals(last=double, x=Py_ssize_t, i=Py_ssize_t)
    cdef void _node_done(self, Py_ssize_t ji)

    @cython.locals(p0=Py_ssize_t, p1=Py_ssize_t, x=Py_ssize_t, y=Py_ssize_t, g=Py_ssize_t, binding=Py_ssize_t,
                   release=double, nxt=Py_ssize_t)
    cdef void _barrier_progress(self, Py_ssize_t bid, double t, Py_ssize_t by)
