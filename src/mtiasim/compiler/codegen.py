"""Code generation: kernel ops -> jobs of PE command programs, with tensors, dependencies and sub-grids.

Every buffer becomes a `TensorDecl` at its planned address; a view becomes an alias decl (a reshape or a
column window). A job depends on the earlier jobs that wrote bytes it reads (read after write), and on those
that read or wrote bytes it overwrites when memory is reused (write after read/write). The lookups' jobs are
built on every call (their work split follows the bags' lengths); the rest once, here.

Sub-grids: the lookups (`sparse` lane) and the ops that do not need their results (`dense` lane: the bottom
MLP) run at the same time on a row split of the grid sized by their estimated work; everything after runs on
the whole grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mtiasim.compiler.lower import KOp, Lookup, Lowered, View, _natural
from mtiasim.compiler.memory import MemoryPlan, plan_memory
from mtiasim.errors import CapacityError, MtiasimError, UnsupportedOperatorError
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, dram_bytes_per_s, sram_bytes_per_s
from mtiasim.ir import DYNAMIC
from mtiasim.isa import Job, Level, PoolMode, ReduceOp, SeOp, TensorDecl
from mtiasim.isa.commands import RowFormat
from mtiasim.kernels.bmm import bmm_job
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import elementwise_job, quantize_rows_job
from mtiasim.kernels.gemm import gemm_job
from mtiasim.kernels.layout import copy_job, gather_columns_job, transpose_job
from mtiasim.kernels.rowwise import reduce_rows_job
from mtiasim.kernels.tbe import tbe_job


@dataclass
class TbeSpec:
    """What a lookup job needs at call time."""

    kop: str
    table: str  # table decl name
    outs: list[str]  # output decl names, one per table (windows of one buffer when they are adjacent)
    out_decl: str | None  # the decl covering all tables' outputs [batch, sum dims]; None: not adjacent
    tables: list[Lookup]
    dim: int
    mode: str
    format: str
    weighted: bool
    region: Region
    deps: tuple[str, ...]
    batch: int  # DYNAMIC: one bag per index, as many as the call has (its output is placed per call)


@dataclass
class DeviceCode:
    tensors: dict[str, TensorDecl]
    constants: dict[str, np.ndarray]  # decl -> contents (weights, tables) for functional runs
    jobs: list[Job]  # static jobs in program order (lookup jobs are inserted by name at call time)
    order: list[str]  # kop names in program order
    tbe: dict[str, TbeSpec]
    inputs: dict[str, str]  # device input value -> decl
    outputs: dict[str, str]  # graph output value -> decl
    memory: MemoryPlan
    regions: dict[str, Region]
    index_base: int  # SRAM address where per-call index tensors start
    index_reserve: int
    dram_top: int
    lanes: dict[str, str] = field(default_factory=dict)


class Codegen:
    def __init__(self, low: Lowered, chip: Chip, graph_inputs: list[str], graph_outputs: list[str],
                 index_bytes: int) -> None:  # fmt: skip
        self.low = low
        self.chip = chip
        self.inputs = graph_inputs
        self.outputs = graph_outputs
        self.index_bytes = index_bytes
        self.tensors: dict[str, TensorDecl] = {}
        self.decl_cache: dict[tuple[str, tuple[int, ...]], str] = {}

    # --------------------------------------------------------------------------------- shapes/copies
    def _needs(self, op: KOp) -> list[tuple[str, tuple[int, ...]]]:
        """(value, shape the kernel needs) for every read and write of `op`."""
        v = self.low.views
        out: list[tuple[str, tuple[int, ...]]] = []
        nat = lambda name: _natural(v[name].shape)  # noqa: E731
        if op.kind == "bmm":
            out = [(x, v[x].shape) for x in op.reads] + [(op.writes[0], v[op.writes[0]].shape)]
        elif op.kind == "transpose":
            out = [(op.reads[0], v[op.reads[0]].shape), (op.writes[0], v[op.writes[0]].shape)]
        elif op.kind == "gather":
            x = op.reads[0]
            rows = v[x].shape[0]
            out = [(x, (rows, math.prod(v[x].shape) // rows)), (op.writes[0], nat(op.writes[0]))]
        elif op.kind == "tbe":
            out = [(w, nat(w)) for w in op.writes]
        else:
            out = [(x, nat(x)) for x in op.reads + op.writes if x in v]
        return out

    def _fits(self, value: str, shape: tuple[int, ...]) -> bool:
        view = self.low.views[value]
        buf = self.low.buffers[view.buffer]
        whole = view.col0 == 0 and view.cols == buf.cols and view.rows == buf.rows
        if whole:
            return math.prod(shape) == buf.rows * buf.cols
        return (
            len(shape) == 2
            and shape == (view.rows, view.cols)
            or (math.prod(shape[:-1]) == view.rows and shape[-1] == view.cols and len(shape) == 2)
        )

    def fix_views(self) -> None:
        """Insert copies where a kernel needs a shape a value's view cannot give."""
        low = self.low
        new: list[KOp] = []
        for op in low.kops:
            for value, shape in self._needs(op):
                if value in low.buffers and value not in low.views:
                    continue
                if self._fits(value, shape):
                    continue
                if value in op.writes:
                    raise UnsupportedOperatorError(
                        f"{op.name}: cannot write {value} as {list(shape)} in place (view {low.views[value]})"
                    )
                c = f"{value}~contig"
                if c not in low.views:
                    from mtiasim.compiler.lower import Buffer

                    r, cc = _natural(shape)
                    low.buffers[c] = Buffer(c, r, cc, low.dtypes[value], "activation")
                    low.views[c] = View(c, r, 0, cc, shape)
                    low.dtypes[c] = low.dtypes[value]
                    new.append(KOp(c, "copy", [value], [c], {}, op.source, op.lane))
                op.reads = [c if x == value else x for x in op.reads]
            new.append(op)
        low.kops = new

    # ------------------------------------------------------------------------------------------ memory
    def plan(self) -> MemoryPlan:
        low = self.low
        lifetimes: dict[str, tuple[int, int]] = {}
        n = len(low.kops)
        # the sparse and dense lanes run at the same time: their buffers all live through the whole phase
        phase_end = max((i for i, op in enumerate(low.kops) if op.lane != "joint"), default=-1)
        for i, op in enumerate(low.kops):
            if op.lane != "joint":
                for v in op.reads + op.writes:
                    view = low.views.get(v)
                    b = view.buffer if view is not None else v
                    s, e = lifetimes.get(b, (0, phase_end))
                    lifetimes[b] = (0, max(e, phase_end))
            for v in op.reads + op.writes:
                view = low.views.get(v)
                b = view.buffer if view is not None else v
                s, e = lifetimes.get(b, (i, i))
                lifetimes[b] = (min(s, i), max(e, i))
        acts, weights, tables, roles = {}, {}, {}, {}
        for name, buf in low.buffers.items():
            roles[name] = buf.role
            if buf.role == "weight":
                weights[name] = buf.nbytes
            elif buf.role == "table":
                tables[name] = buf.nbytes
            else:
                acts[name] = buf.nbytes
                s, e = lifetimes.get(name, (0, n))
                if buf.role == "input":
                    s = 0
                if any(low.views[o].buffer == name for o in self.outputs if o in low.views):
                    e = n
                lifetimes[name] = (s, e)
        return plan_memory(
            sram_bytes=self.chip.sram.bytes,
            dram_bytes=self.chip.dram.bytes,
            activations=acts,
            lifetimes=lifetimes,
            weights=weights,
            tables=tables,
            index_reserve=self.index_bytes,
            roles=roles,
        )

    def declare(self, mem: MemoryPlan) -> dict[str, np.ndarray]:
        constants = {}
        for name, buf in self.low.buffers.items():
            p = mem.placements[name]
            self.tensors[name] = TensorDecl(
                name, (buf.rows, buf.cols), buf.dtype, p.level, p.address, p.cached, buf.pitch_bytes
            )
            if buf.data is not None:
                constants[name] = buf.data.reshape(buf.rows, buf.cols)
        return constants

    def decl(self, value: str, shape: tuple[int, ...] | None = None) -> TensorDecl:
        low = self.low
        if value in low.buffers and value not in low.views:
            return self.tensors[value]
        view = low.views[value]
        buf = self.tensors[view.buffer]
        shape = tuple(shape or _natural(view.shape))
        key = (value, shape)
        if key in self.decl_cache:
            return self.tensors[self.decl_cache[key]]
        whole = view.col0 == 0 and view.cols == buf.cols and view.rows == buf.rows
        if whole and shape == buf.shape:
            return buf
        name = f"{value}{list(shape)}" if value != view.buffer else f"{value}{list(shape)}~view"
        if whole:
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            pitch = buf.row_pitch_bytes if shape[-1] == buf.cols else None
            decl = TensorDecl(name, shape, buf.dtype, buf.level, buf.address, buf.cached, pitch, buf.name)
            del rows
        else:
            item = buf.dtype.itemsize
            decl = TensorDecl(
                name,
                (view.rows, view.cols),
                buf.dtype,
                buf.level,
                buf.address + view.col0 * item,
                buf.cached,
                buf.pitch,
                buf.name,
            )
        self.tensors[name] = decl
        self.decl_cache[key] = name
        return decl

    # ------------------------------------------------------------------------------------------ regions
    def lanes(self) -> None:
        """sparse: the lookups; joint: ops that read bytes a lookup (or a joint op) wrote; dense: the rest,
        which can run beside the lookups."""
        tainted: list[tuple[str, int, int]] = []
        for op in self.low.kops:
            if op.kind == "tbe":
                op.lane = "sparse"
            else:
                hit = False
                for v in op.reads:
                    b, c0, c1, _ = self._extent(v)
                    if any(tb == b and t0 < c1 and c0 < t1 for tb, t0, t1 in tainted):
                        hit = True
                        break
                op.lane = "joint" if hit else "dense"
            if op.lane != "dense":
                for v in op.writes:
                    tainted.append(self._extent(v)[:3])

    def regions(self) -> dict[str, Region]:
        low = self.low
        whole = Region.whole(self.chip)
        est = {op.name: self.estimate_s(op) for op in low.kops}
        sparse = sum(est[o.name] for o in low.kops if o.lane == "sparse")
        dense = sum(est[o.name] for o in low.kops if o.lane == "dense")
        rows = self.chip.grid.rows
        if sparse <= 0 or dense <= 0 or rows < 2:
            return {"sparse": whole, "dense": whole, "joint": whole}
        r_s = int(np.clip(round(rows * sparse / (sparse + dense)), 1, rows - 1))
        cols = self.chip.grid.cols
        return {
            "sparse": Region(0, 0, r_s, cols),
            "dense": Region(r_s, 0, rows - r_s, cols),
            "joint": whole,
        }

    def estimate_s(self, op: KOp) -> float:
        """A roofline estimate of the op on the whole grid (for sizing sub-grids only)."""
        chip = self.chip
        low = self.low
        sram = sram_bytes_per_s(chip)
        hz = chip.clock.frequency_ghz * 1e9
        pes = chip.grid.rows * chip.grid.cols
        nbytes = 0.0
        for v in op.reads + op.writes:
            view = low.views.get(v)
            if view is not None:
                nbytes += math.prod(view.shape) * low.dtypes[v].itemsize if -1 not in view.shape else 0
            elif v in low.buffers and low.buffers[v].role == "weight":
                nbytes += low.buffers[v].nbytes
        t = nbytes / sram
        if op.kind in ("gemm", "bmm"):
            a = low.views[op.reads[0]].shape
            y = low.views[op.writes[0]].shape
            macs = math.prod(y) * a[-1]
            per_cycle = dpe_macs_per_cycle(chip, low.dtypes[op.reads[0]])
            t = max(t, macs / (per_cycle * chip.grid.rows * chip.grid.cols * chip.clock.frequency_ghz * 1e9))
        if op.kind == "tbe":
            lookups = op.attrs.get("lookups", 0)
            table = low.buffers[op.reads[0]]
            row_bytes = table.cols * table.dtype.itemsize
            in_sram = table.nbytes < chip.sram.bytes // 2
            bw = sram if in_sram else dram_bytes_per_s(chip)
            latency_s = chip.sram.latency_cycles / hz if in_sram else chip.dram.latency_ns * 1e-9
            # per PE: the core issues a row every few cycles, with a few rows in flight over the memory latency
            per_row_s = max(chip.core.cycles_per_gather_row / hz, latency_s / chip.dma.outstanding_rows)
            t = max(t, lookups * row_bytes / bw, lookups * per_row_s / pes)
        return t

    # --------------------------------------------------------------------------------------------- jobs
    def build(self, lookups_per_kop: dict[str, int]) -> DeviceCode:
        low = self.low
        for op in low.kops:
            if op.kind == "tbe":
                op.attrs["lookups"] = lookups_per_kop.get(op.name, 0)
        self.fix_views()
        self.lanes()
        mem = self.plan()
        constants = self.declare(mem)
        regions = self.regions()
        jobs: list[Job] = []
        tbe: dict[str, TbeSpec] = {}
        writers: list[tuple[str, str, int, int, int]] = []  # (job, buffer, col0, col1, rows)
        readers: list[tuple[str, str, int, int, int]] = []
        for op in low.kops:
            region = regions[op.lane]
            deps = self._deps(op, writers, readers)
            if op.kind == "tbe":
                outs = [self.decl(w).name for w in op.writes]
                out_all = self._span(op.writes)
                tbe[op.name] = TbeSpec(
                    op.name,
                    op.reads[0],
                    outs,
                    out_all,
                    low.lookups[op.name],
                    op.attrs["dim"],
                    op.attrs["mode"],
                    op.attrs["format"],
                    any(t.weights for t in low.lookups[op.name]),
                    region,
                    deps,
                    DYNAMIC if op.attrs.get("call_rows") else low.views[op.writes[0]].shape[0],
                )
            else:
                try:
                    job = self._job(op, region)
                except MtiasimError as e:  # say which op of the model it is, and where it comes from
                    raise type(e)(f"op {op.name} ({op.kind}) in {op.source.describe()}: {e}") from e
                job.deps = deps
                jobs.append(job)
            self._record(op, writers, readers)
        inputs = {v: self.decl(v).name for v in self.inputs if v in low.views}
        outputs = {v: self.decl(v).name for v in self.outputs}
        index_base = mem.sram_activation_bytes
        return DeviceCode(
            self.tensors,
            constants,
            jobs,
            [op.name for op in low.kops],
            tbe,
            inputs,
            outputs,
            mem,
            regions,
            index_base,
            mem.sram_index_reserve_bytes,
            mem.dram_bytes,
            {op.name: op.lane for op in low.kops},
        )

    def _span(self, values: list[str]) -> str | None:
        """One decl over the adjacent windows of `values` (the lookup's whole output); None when they are not
        adjacent (a concatenation with other values between them): the job then writes each window."""
        views = [self.low.views[v] for v in values]
        first, last = views[0], views[-1]
        if all(v.buffer == first.buffer and v.rows == first.rows for v in views):
            col0, cols = first.col0, last.col0 + last.cols - first.col0
            if sum(v.cols for v in views) == cols and all(
                views[i + 1].col0 == views[i].col0 + views[i].cols for i in range(len(views) - 1)
            ):
                buf = self.tensors[first.buffer]
                name = f"{values[0]}..{values[-1]}"
                if name not in self.tensors:
                    whole = col0 == 0 and cols == buf.cols
                    self.tensors[name] = (
                        buf
                        if whole and first.rows == buf.rows
                        else TensorDecl(
                            name,
                            (first.rows, cols),
                            buf.dtype,
                            buf.level,
                            buf.address + col0 * buf.dtype.itemsize,
                            buf.cached,
                            buf.pitch,
                            buf.name,
                        )
                    )
                return self.tensors[name].name
        return None

    def _extent(self, v: str) -> tuple[str, int, int, int]:
        low = self.low
        if v in low.buffers and v not in low.views:
            b = low.buffers[v]
            return v, 0, b.cols, b.rows
        view = low.views[v]
        return view.buffer, view.col0, view.col0 + view.cols, view.rows

    def _deps(self, op: KOp, writers: list, readers: list) -> tuple[str, ...]:
        mem = self._mem_addr
        deps: dict[str, None] = {}
        for v in op.reads:
            b, c0, c1, _ = self._extent(v)
            for job, wb, w0, w1, _ in writers:
                if wb == b and w0 < c1 and c0 < w1:
                    deps[job] = None
        for v in op.writes:
            b, c0, c1, _ = self._extent(v)
            lo, hi = mem(b)
            for job, rb, r0, r1, _ in readers + writers:
                rlo, rhi = mem(rb)
                if (rb == b and r0 < c1 and c0 < r1) or (
                    rb != b and self._same_level(rb, b) and rlo < hi and lo < rhi
                ):
                    deps[job] = None
        deps.pop(op.name, None)
        return tuple(deps)

    def _same_level(self, a: str, b: str) -> bool:
        return self.tensors[a].level == self.tensors[b].level

    def _mem_addr(self, b: str) -> tuple[int, int]:
        t = self.tensors[b]
        return t.address, t.address + t.nbytes

    def _record(self, op: KOp, writers: list, readers: list) -> None:
        for v in op.writes:
            writers.append((op.name, *self._extent(v)))
        for v in op.reads:
            readers.append((op.name, *self._extent(v)))

    def _job(self, op: KOp, region: Region) -> Job:
        chip = self.chip
        low = self.low
        d = self.decl
        k = op.kind
        if k == "gemm":
            a, w = d(op.reads[0]), d(op.reads[1])
            if op.attrs.get("w_is_data"):
                w = d(op.reads[1])
            c = d(op.writes[0])
            at = op.attrs
            bias = d(op.reads[2]) if at.get("bias") else None
            return gemm_job(
                chip,
                op.name,
                a,
                w,
                c,
                bias=bias,
                out_scales=d(at["scales"]) if at.get("scales") else None,
                row_scales=d(at["row_scales"]) if at.get("row_scales") else None,
                post_bias=d(at["post_bias"]) if at.get("post_bias") else None,
                out_scale=at.get("out_scale"),
                out_zero_point=at.get("out_zero_point", 0),
                activation=at["activation"],
                region=region,
            )
        if k == "bmm":
            a = d(op.reads[0], low.views[op.reads[0]].shape)
            b = d(op.reads[1], low.views[op.reads[1]].shape)
            c = d(op.writes[0], low.views[op.writes[0]].shape)
            return bmm_job(chip, op.name, a, b, c, region=region)
        if k == "transpose":
            x = d(op.reads[0], low.views[op.reads[0]].shape)
            y = d(op.writes[0], low.views[op.writes[0]].shape)
            return transpose_job(chip, op.name, x, y, region=region)
        if k == "gather":
            xv = low.views[op.reads[0]]
            x = d(op.reads[0], (xv.shape[0], math.prod(xv.shape) // xv.shape[0]))
            return gather_columns_job(chip, op.name, x, d(op.writes[0]), op.attrs["columns"], region=region)
        if k == "copy" and "window" in op.attrs:  # a window of the source's bytes seen as another grid
            (rows, row_elems), col0, cols = op.attrs["window"]
            src = d(op.reads[0], (rows, row_elems))
            item = src.dtype.itemsize
            name = f"{op.reads[0]}[:, {col0}:{col0 + cols}]"
            self.tensors[name] = TensorDecl(name, (rows, cols), src.dtype, src.level, src.address + col0 * item,
                                            src.cached, row_elems * item, src.root)  # fmt: skip
            return copy_job(chip, op.name, self.tensors[name], d(op.writes[0], (rows, cols)), region=region)
        if k == "copy":
            dst = d(op.writes[0])
            return copy_job(chip, op.name, d(op.reads[0], dst.shape), dst, region=region)
        if k in ("quantize", "dequantize"):
            return elementwise_job(
                chip,
                op.name,
                SeOp.QUANTIZE if k == "quantize" else SeOp.DEQUANTIZE,
                d(op.reads[0]),
                d(op.writes[0]),
                scale=op.attrs["scale"],
                zero_point=op.attrs.get("zero_point", 0),
                region=region,
            )
        if k == "quantize_rows":
            return quantize_rows_job(
                chip, op.name, d(op.reads[0]), d(op.writes[0]), d(op.writes[1]), region=region
            )
        if k == "reduce":
            return reduce_rows_job(chip, op.name, ReduceOp(op.attrs["op"]), d(op.reads[0]), d(op.writes[0]),
                                   region=region)  # fmt: skip
        if k == "eltwise":
            se = SeOp(op.attrs["op"])
            x = d(op.reads[0])
            y = d(op.reads[1]) if len(op.reads) > 1 else None
            if y is not None and y.shape != x.shape and y.rows * y.cols == x.cols and y.cols != 1:
                y = d(op.reads[1], (1, x.cols)) if op.reads[1] in low.views else y
            params = tuple(op.attrs.get("params", ()))
            return elementwise_job(chip, op.name, se, x, d(op.writes[0]), y=y, region=region, params=params)
        raise UnsupportedOperatorError(f"{op.name}: no kernel for {k}")


def tbe_job_for(chip: Chip, spec: TbeSpec, tensors: dict[str, TensorDecl], indices: str, weights: str | None,
                offsets: np.ndarray, batch: int | None = None) -> Job:  # fmt: skip
    rows = [t.rows for t in spec.tables]
    job = tbe_job(
        chip,
        spec.kop,
        tensors[spec.table],
        tensors[indices],
        tensors[spec.out_decl] if spec.out_decl else [tensors[o] for o in spec.outs],
        offsets=offsets,
        table_rows=rows,
        batch=spec.batch if batch is None else batch,
        dim=spec.dim,
        mode=PoolMode(spec.mode),
        weights=tensors[weights] if weights else None,
        region=spec.region,
        row_format=RowFormat(spec.format),
    )
    job.deps = spec.deps
    return job


def check_index_fit(level: Level, nbytes: int, reserve: int) -> bool:
    del level
    return nbytes <= reserve


__all__ = ["CapacityError", "Codegen", "DeviceCode", "TbeSpec", "tbe_job_for"]
