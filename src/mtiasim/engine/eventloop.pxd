# C types for compiling eventloop.py with Cython (pure Python mode): the semantics live in eventloop.py only.
cimport cython
from libc.stdint cimport int64_t


cdef double INF, EPS
cdef long START, OWN_END, FLOW_DONE, FINAL, ACTIVATE


cdef class Sim:
    cdef public object m
    cdef public bint share
    cdef public Py_ssize_t n, n_res, n_act
    cdef public double host_launch_s, job_launch_s, per_pe_ns, job_end_s, ccp_free, b_last
    cdef public int64_t[:] unit_prev, core_next, reduce_from, bundle_of, job_of, is_barrier, b_size, b_has_extra
    cdef public double[:] first_item_s, tail_s, stall_s, issue_s, own_s, link_s, hop_s
    cdef public list producers, consumers, unit_next, bundles, kind_names
    cdef public int64_t[:] b_cap_kind, b_kind0, klass, b_kind
    cdef public double[:] b_latency, b_cap, b_rate0, b_streams, capacity
    cdef public int64_t[:] u_start, u_col
    cdef public double[:] u_val, u_extra
    cdef public double[:] start, end, issue_at, cand, own_done
    cdef public list start_reason, end_reason, end_waiters, heap
    cdef public int64_t[:] need, pending_end
    cdef public long long seq, events, flow_version
    cdef public int64_t[:] b_ready, b_ready_by, act
    cdef public double[:] b_ready_t, b_remaining, b_rate, b_finish, res_used, b_kind_since
    cdef public bint res_valid, dirty
    cdef public list added, removed, removed_rate, b_class_time
    cdef public double[:] mm_use, mm_remaining, mm_level, mm_rate, mm_u
    cdef public int64_t[:] mm_touched, mm_cols, mm_count, mm_live, mm_fix, mm_which, mm_bycap
    cdef public dict barrier_need, barrier_peers, barrier_arrival, barrier_arrival_by, barrier_binding
    cdef public object after_barrier, pe_queue
    cdef public list job_nodes, job_pes, job_dep_index, job_dependents
    cdef public dict pe_rank, pe_owner, pe_start_reason
    cdef public object first_nodes
    cdef public double[:] job_launch, job_end, launch_done, job_last
    cdef public int64_t[:] job_left, job_deps_left

    cdef void push(self, double t, long kind, Py_ssize_t ident, long long version)

    @cython.locals(t=double, pe=object)
    cdef void _launch(self, Py_ssize_t ji, double ready)

    @cython.locals(signalled=double, start=double, i=Py_ssize_t)
    cdef void _start_pe(self, Py_ssize_t ji, object pe, double free_at, tuple reason)

    @cython.locals(jj=Py_ssize_t, d=Py_ssize_t, ready=double, nxt=Py_ssize_t)
    cdef void _job_done(self, Py_ssize_t ji, double t_last)

    @cython.locals(nxt=Py_ssize_t)
    cdef void _set_issue(self, Py_ssize_t i, double t, tuple reason)

    cdef void _resolve_dep(self, Py_ssize_t i, double t, tuple reason)

    @cython.locals(b=Py_ssize_t, start=double, by=Py_ssize_t, j=Py_ssize_t)
    cdef void _on_start(self, Py_ssize_t i, double t)

    @cython.locals(c=Py_ssize_t, t=double)
    cdef void _notify_started(self, Py_ssize_t i)

    cdef void _activate_bundle(self, Py_ssize_t b, double t)

    @cython.locals(k=Py_ssize_t, j=Py_ssize_t, stall=double)
    cdef void _on_flow_done(self, Py_ssize_t b, double t)

    @cython.locals(dt=double, k=Py_ssize_t, b=Py_ssize_t)
    cdef void _advance(self, double t)

    cdef void _set_kind(self, Py_ssize_t b, int64_t kind, double t)

    @cython.locals(x=Py_ssize_t, b=Py_ssize_t, k=Py_ssize_t, cap=double, rate=double, old=double, kind=int64_t)
    cdef void _rerate(self, double t)

    @cython.locals(x=Py_ssize_t)
    cdef void _add_use(self, double[:] used, Py_ssize_t b, double rate)

    @cython.locals(x=Py_ssize_t, y=Py_ssize_t, b=Py_ssize_t, r=Py_ssize_t, cap=double, used=double[:])
    cdef bint _local_change(self)

    @cython.locals(
        n_act=Py_ssize_t, streams=Py_ssize_t, blend=double, use=double[:], remaining=double[:],
        touched=int64_t[:], cols=int64_t[:], count=int64_t[:], n_cols=Py_ssize_t, c=Py_ssize_t,
        u_start=int64_t[:], u_col=int64_t[:], u_val=double[:], u_extra=double[:],
        ueff=double[:], live=int64_t[:], rate=double[:], capacity=double[:], b_cap=double[:],
        k=Py_ssize_t, b=Py_ssize_t, x=Py_ssize_t, r=Py_ssize_t, n_live=Py_ssize_t, cap_min=double,
        level=double, n_fix=Py_ssize_t, cap=double, best=Py_ssize_t, best_u=double, v=double, f=Py_ssize_t,
    )
    cdef void _maxmin(self)

    @cython.locals(first=double, k=Py_ssize_t)
    cdef void _schedule_flow_done(self)

    @cython.locals(k=Py_ssize_t, b=Py_ssize_t)
    cdef void _on_flows_done(self, double t)

    @cython.locals(p=Py_ssize_t, r=Py_ssize_t)
    cdef void _on_own_end(self, Py_ssize_t i, double t)

    cdef void _wait_end(self, Py_ssize_t i, Py_ssize_t p)

    cdef void _end_dep_done(self, Py_ssize_t i)

    @cython.locals(t=double, p=Py_ssize_t, tp=double, r=Py_ssize_t)
    cdef void _complete(self, Py_ssize_t i)

    @cython.locals(nxt=Py_ssize_t, w=Py_ssize_t, bid=Py_ssize_t)
    cdef void _finalize(self, Py_ssize_t i, double t)

    @cython.locals(last=double, i=Py_ssize_t)
    cdef void _node_done(self, Py_ssize_t ji)

    @cython.locals(release=double, g=Py_ssize_t, binding=Py_ssize_t, nxt=Py_ssize_t, w=Py_ssize_t)
    cdef void _barrier_progress(self, Py_ssize_t bid, double t, Py_ssize_t by)
