"""A compiled model: call it like the PyTorch module; it runs on the simulated chip.

One call, on the timeline:

1. the host runs the index bookkeeping (`HostPrologue`) and converts the inputs to the device's dtypes;
2. the inputs cross PCIe (host -> device);
3. the device program runs (engine: jobs on sub-grids, shared SRAM / LPDDR5 / NoC);
4. the outputs cross PCIe back.

In `timing` mode nothing is computed: the returned tensors have the right shapes and dtypes and hold zeros
(documented; `report.computed` is False).

Compile once, run many: what does not depend on a call's index values is built on the first call and kept,
keyed on what determines it: the jobs' shape-level resolutions (`engine.resolve.Fragment`: same job, chip and
tensor declarations), the memory streams of static jobs and the work of their nodes that reads no per-call
state (`engine.Memo`). Per call only the index-dependent work is redone: the lookup and jagged jobs (their
gathers, bag lengths, rows), the SRAM cache model and the gathers' work. None of this changes a result: a call
gives what a fresh model given the same `cache_state` gives.

The one state a call leaves for the next is explicit: `cache_state` (`CacheState`), the rows the last calls
gathered from tables that live in LPDDR5 behind the SRAM cache; a call starts with the cache warmed by them, as a
serving run's previous batches would leave it. A fresh model starts cold; `reset_cache_state()` makes it cold
again; assigning a `CacheState` (e.g. another model's `cache_state.copy()`) starts the next call from it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtiasim.compiler import CompiledGraph, tbe_job_for
from mtiasim.dtypes import DType
from mtiasim.engine import Memo, execute
from mtiasim.errors import CapacityError, NumericsWarning, UsageError
from mtiasim.frontend import Captured
from mtiasim.frontend.dtypes import DTYPE_TO_TORCH
from mtiasim.frontend.host import host_cost_s, tensor_ops
from mtiasim.frontend.reference import batched_table_bags, normalize_bags
from mtiasim.hw import Chip
from mtiasim.ir import DYNAMIC
from mtiasim.isa import Job, Level, Program, TensorDecl
from mtiasim.report.run import RunReport, build_report, numerics_warnings
from mtiasim.runtime.hostside import HOST_KINDS, with_host_side

CACHE_HISTORY_CALLS = 2
_CHECK_MAXIMA = ("max_abs_err", "max_bound", "max_err_over_bound", "max_sigma", "max_err_over_sigma")
# summed over the outputs: an element is unbounded where the worst-case bound exceeds the range (deep stacks:
# DLRM-v2's cross network), and a check whose every finite element is unbounded says nothing
_CHECK_SUMS = ("elements", "unbounded", "nonfinite_reference", "outside")


@dataclass
class CacheState:
    """The SRAM cache's state a compiled model carries between calls: per cached table (its declaration's
    name), the global rows each of the last `calls` calls gathered, oldest first. The next call's program
    replays them (`Program.cache_history`) to warm its cache model; the call then records its own rows."""

    history: dict[str, list[np.ndarray]] = field(default_factory=dict)
    calls: int = CACHE_HISTORY_CALLS

    def replay(self, tensors: dict[str, TensorDecl]) -> dict[str, np.ndarray]:
        """The `Program.cache_history` of the next call: the remembered rows of each cached table."""
        return {
            table: np.concatenate(rows)
            for table, rows in self.history.items()
            if rows and table in tensors and tensors[table].cached
        }

    def record(self, lookups: dict[str, np.ndarray]) -> None:
        """Remember a call's gathered rows (table -> rows), keeping the last `calls` calls."""
        for table, rows in lookups.items():
            hist = self.history.setdefault(table, [])
            hist.append(rows)
            del hist[: -self.calls]

    def reset(self) -> None:
        """A cold cache: the next call starts with nothing cached."""
        self.history.clear()

    def copy(self) -> CacheState:
        return CacheState({t: list(rows) for t, rows in self.history.items()}, self.calls)


@dataclass
class CallInputs:
    """A call's device inputs, ready for the engine."""

    data: dict[str, np.ndarray]  # decl -> array (functional runs and index values for the cache model)
    tensors: dict[str, TensorDecl]  # per-call decls (indices, weights)
    jobs: dict[str, Job]  # lookup jobs by kop name
    h2d_bytes: int
    index_bytes: int
    lookups: dict[str, np.ndarray]  # table decl -> global rows gathered this call


class CompiledModel:
    """What `mtiasim.compile` returns."""

    def __init__(
        self,
        captured: Captured,
        compiled: CompiledGraph,
        chip: Chip,
        mode: str,
        fidelity: str,
        out_dtypes: list,
    ) -> None:
        self.captured = captured
        self.compiled = compiled
        self.chip = chip
        self.mode = mode
        self.fidelity = fidelity
        self.out_dtypes = out_dtypes
        self.report: RunReport | None = None
        self.calls = 0
        self.cache_state = CacheState()  # the only state that changes a later call's result (module doc)
        self._streams: dict = {}
        self._works: dict = {}  # static jobs' node work, kept across calls
        self._fragments: dict = {}  # jobs' shape-level resolutions (`engine.resolve.Fragment`), kept across calls
        self._graphs: dict = {}  # jobs' constraint graphs (`engine.timing.JobGraph`), kept across calls
        self._columns: dict = {}  # jobs' counter columns (`engine.timing.ColumnBlock`), kept across calls
        self._flows: dict = {}  # jobs' bundles and rates (`engine.timing.JobFlows`), kept across calls
        self._last: tuple[dict[str, Any], list[torch.Tensor]] | None = None  # functional: inputs, outputs

    def reset_cache_state(self) -> None:
        """Start the next call with a cold SRAM cache, as a fresh model would."""
        self.cache_state.reset()

    def warm(self, *args: Any, **kwargs: Any) -> None:
        """A warm-up batch: the SRAM cache state moves as a call with these inputs would move it, and nothing
        is simulated. The cache state is the only state a call leaves to the next (the memos keep a call's
        work, they do not change its result), so the next call reports what it would after a full call."""
        values = self.captured.host(self.captured.flat_inputs(args, kwargs), effects=True)
        self.cache_state.record(self._inputs(values, functional=False).lookups)

    def check(self) -> dict[str, Any]:
        """The last call's device outputs against the fp32 meaning of the model, under the error bounds that
        follow from docs/numerics.md: per output the largest error, the largest bound, the largest
        error/bound ratio and whether every element is within its bound (`passed`). Needs a functional call."""
        if self._last is None:
            raise UsageError(
                f"model {self.compiled.graph.name}: check() compares the last call's numbers; "
                "call the model in mode 'functional' or 'both' first"
            )
        from mtiasim.runtime.bounds import error_bounds

        values, outs = self._last
        per = []
        for b, got in zip(error_bounds(self.compiled, values), outs, strict=True):
            per.append({"output": b.name, **b.check(got)})
        return {  # a graph with no device outputs has nothing to be wrong: zeros, passed
            "reference": "the model in fp32 (PyTorch)",
            **{key: max((o[key] for o in per), default=0.0) for key in _CHECK_MAXIMA},
            **{key: sum(o[key] for o in per) for key in _CHECK_SUMS},
            "passed": all(o["passed"] for o in per),
            "outputs": per,
        }

    @property
    def memory_plan(self) -> str:
        return self.compiled.code.memory.table()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = self.captured.flat_inputs(args, kwargs)
        wall0 = time.perf_counter()
        values = self.captured.host(flat, effects=True)
        device = iter(self.run(values))
        outputs = []
        for kind, v in self.captured.returns:
            outputs.append(next(device) if kind == "device" else values[v] if kind == "host" else v)
        self.report.wall_s = time.perf_counter() - wall0  # type: ignore[union-attr]
        return torch.utils._pytree.tree_unflatten(outputs, self.captured.out_spec)

    # -------------------------------------------------------------------------------------------- run
    def run(self, values: dict[str, Any]) -> list[torch.Tensor]:
        code = self.compiled.code
        functional = self.mode in ("functional", "both")
        call = self._inputs(values, functional)
        tensors = dict(code.tensors)
        tensors.update(call.tensors)
        jobs: list[Job] = []
        static = {j.name: j for j in code.jobs}
        for name in code.order:
            if name in call.jobs:
                jobs.append(call.jobs[name])
            elif name in static:
                jobs.append(static[name])
        d2h = sum(tensors[code.outputs[v]].nbytes for v in self.compiled.graph.outputs)
        host = self.chip.host
        host_s = host_cost_s(
            tensor_ops(self.captured.host.nodes), call.index_bytes, host.cpu_op_ns, host.cpu_copy_gbps
        )
        # the host's prologue and the PCIe transfers are engine jobs around the device's (`hostside`)
        jobs = with_host_side(jobs, self.chip, host_s=host_s, h2d_bytes=call.h2d_bytes, d2h_bytes=d2h)
        program = Program(self.compiled.graph.name, tensors, jobs)
        program.cache_history.update(self.cache_state.replay(tensors))
        data = dict(call.data)
        if functional:
            data.update(code.constants)
        # the static jobs' memory streams are the same every call: their work-model results are kept
        # and so is the work of their nodes that reads no per-call state
        unchanged = frozenset(name for name in static if name not in call.jobs)
        memo = Memo(
            streams=self._streams,
            static_jobs=unchanged,
            works=self._works,
            fragments=self._fragments,
            graphs=self._graphs,
            columns=self._columns,
            flows=self._flows,
        )
        result = execute(program, self.chip, mode=self.mode, fidelity=self.fidelity, inputs=data, memo=memo)
        self.cache_state.record(call.lookups)
        self.calls += 1
        outs = []
        for i, v in enumerate(self.compiled.graph.outputs):
            decl = tensors[code.outputs[v]]
            shape = self.compiled.graph.values[v].shape
            if DYNAMIC in shape:  # rows known per call (placed by `_inputs`)
                shape = (decl.rows, *shape[1:])
            if result.outputs is not None:
                arr = np.ascontiguousarray(result.outputs[decl.name]).reshape(shape)
                t = _to_torch(arr, decl.dtype).to(self.out_dtypes[i])
            else:
                t = torch.zeros(shape, dtype=self.out_dtypes[i])
            outs.append(t)
        self._last = (values, outs) if result.outputs is not None else None
        self.report = build_report(self, program, result, host_s, call.h2d_bytes, d2h, HOST_KINDS)
        self.report.numerics_warnings = numerics_warnings(self, self.report.conversions)
        for line in self.report.numerics_warnings:
            warnings.warn(NumericsWarning(f"model {self.compiled.graph.name}: {line}"), stacklevel=3)
        return outs

    def _inputs(self, values: dict[str, Any], functional: bool) -> CallInputs:
        code = self.compiled.code
        g = self.compiled.graph
        data: dict[str, np.ndarray] = {}
        h2d = 0
        for v, decl_name in code.inputs.items():
            decl = code.tensors[decl_name]
            t = values[v]
            if not isinstance(t, torch.Tensor):
                raise UsageError(f"model {g.name}: input {v} is not a tensor")
            want = g.values[v].shape
            if tuple(t.shape) != tuple(want):
                raise UsageError(
                    f"model {g.name}: input {v} has shape {list(t.shape)}, compiled for {list(want)}"
                )
            h2d += decl.rows * decl.cols * decl.dtype.itemsize
            if functional or not decl.dtype.is_float:  # index data: timing reads it too (which rows move)
                data[decl.base or decl.name] = _to_numpy(t, decl.dtype).reshape(decl.rows, decl.cols)
        tensors: dict[str, TensorDecl] = {}
        jobs: dict[str, Job] = {}
        lookups: dict[str, np.ndarray] = {}
        sram_at = code.index_base
        dram_at = code.dram_top

        def place(nbytes: int, what: str) -> tuple[Level, int]:
            """Where the next per-call tensor goes: the SRAM's index space, else LPDDR5 (128-byte aligned)."""
            nonlocal sram_at, dram_at
            size = -(-nbytes // 128) * 128
            if sram_at + nbytes <= code.index_base + code.index_reserve:
                sram_at += size
                return Level.SRAM, sram_at - size
            dram_at += size
            if dram_at > self.chip.dram.bytes:
                raise CapacityError(f"model {g.name}: the {what} do not fit LPDDR5")
            return Level.DRAM, dram_at - size

        index_bytes = 0
        sources = {op.name: op.source for op in self.compiled.lowered.kops}
        for name, spec in code.tbe.items():
            idx_parts, off_parts, w_parts = [], [], []
            base = 0
            global_rows = []
            for t in spec.tables:
                bags = (values[t.indices], values[t.offsets] if t.offsets else None)
                bags += (values[t.weights] if t.weights else None,)
                if t.batched is not None:
                    bags = batched_table_bags(*bags, *t.batched)
                idx, off, w = normalize_bags(
                    *bags,
                    include_last_offset=t.include_last_offset,
                    padding_idx=t.padding_idx,
                    one_per_bag=t.one_per_bag,
                    rows=t.rows,
                    where=f"model {g.name}: lookup {name} table {t.table} ({sources[name].describe()})",
                )
                if off.size - 1 != spec.batch and spec.batch != DYNAMIC:
                    raise UsageError(
                        f"model {g.name}: lookup {name} table {t.table}: {off.size - 1} bags, compiled for {spec.batch}"
                    )
                idx_parts.append(idx)
                off_parts.append(off[:-1] + base)
                if w is not None:
                    w_parts.append(w)
                base += idx.size
                global_rows.append(idx + t.row_start)
            n = max(base, 1)
            offsets = np.concatenate(off_parts + [np.array([base], dtype=np.int64)])
            index_bytes += base * 8 + offsets.size * 8  # the model's int64 indices and offsets, read once
            # stacked tables are one table to the kernel: their indices are rows of the packed tables
            parts = global_rows if spec.stacked else idx_parts
            idx_all = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            idt = DType.INT32 if (idx_all.size == 0 or idx_all.max() < 2**31) else DType.INT64
            need = n * idt.itemsize + (n * 4 if spec.weighted else 0)

            level, at = place(need, f"indices of {name}")
            batch = None
            if (
                spec.batch == DYNAMIC
            ):  # one row per index, as many as this call has: its output is placed here
                batch, out = base, spec.outs[0]
                row = code.tensors[out]  # the compiled one-row stand-in
                tensors[out] = TensorDecl(
                    out, (batch, spec.dim), row.dtype, *place(row.nbytes * batch, f"rows of {name}")
                )
            iname = f"{name}@indices"
            tensors[iname] = TensorDecl(iname, (n,), idt, level, at)
            arr = np.zeros(n, dtype=idt.numpy)
            arr[:base] = idx_all
            data[iname] = arr
            wname = None
            if spec.weighted:
                wname = f"{name}@weights"
                tensors[wname] = TensorDecl(wname, (n,), DType.FP32, level, at + n * idt.itemsize)
                warr = np.zeros(n, dtype=np.float32)
                if w_parts:
                    warr[:base] = np.concatenate(w_parts)
                data[wname] = warr
            h2d += need + offsets.size * 4
            all_tensors = dict(code.tensors)
            all_tensors.update(tensors)
            jobs[name] = tbe_job_for(self.chip, spec, all_tensors, iname, wname, offsets, batch)
            lookups[spec.table] = np.concatenate(global_rows) if global_rows else np.zeros(0, np.int64)
        all_tensors = dict(code.tensors)
        all_tensors.update(tensors)  # rows known per call only, placed above
        for name, jc in code.calls.items():  # the jagged ops: the offsets say which rows go where
            given = jc.const_offsets if jc.const_offsets is not None else values[jc.offsets]
            where = f"model {g.name}: {jc.aten} (op {name}, {sources[name].describe()})"
            offsets = jc.check(given, all_tensors, where)
            if jc.const_offsets is None:  # the host reads them and hands them over (int32)
                index_bytes += offsets.size * 8
                h2d += offsets.size * 4
            if jc.rows_per_call:  # its rows, offsets[-1] of them, are placed here (for a one-row stand-in)
                row = code.tensors[jc.out]
                shape = (int(offsets[-1]), row.cols)
                tensors[jc.out] = all_tensors[jc.out] = TensorDecl(
                    jc.out, shape, row.dtype, *place(row.nbytes * shape[0], f"rows of {name}")
                )
            jobs[name] = jc.job(self.chip, all_tensors, offsets)
        return CallInputs(data, tensors, jobs, h2d, index_bytes, lookups)


def _to_numpy(t: torch.Tensor, dtype: DType) -> np.ndarray:
    x = t.detach().cpu()
    if dtype == DType.BF16:
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(dtype.numpy)
    return x.to(DTYPE_TO_TORCH[dtype]).numpy()


def _to_torch(a: np.ndarray, dtype: DType) -> torch.Tensor:
    if dtype == DType.BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    if not a.flags.writeable:  # an input or a weight output as it came: the engine's read-only view
        return torch.from_numpy(np.array(a, copy=True))
    return torch.from_numpy(np.ascontiguousarray(a))
