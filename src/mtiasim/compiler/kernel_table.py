"""The kernel kinds code generation knows: one `KernelSpec` per `KernelKind` in `KERNELS`.

A record says, for its kind:

- `needs`: the shape the kernel needs each value it reads or writes in (the placement inserts a copy where a
  value's view cannot give it);
- `estimate_s`: the kind's own bound on the whole grid beyond moving its bytes (the DPE's MACs, the lookups'
  rows), for sizing the sub-grids only;
- `job`: the builder of its job (a `Job` of PE command programs), or `per_call` for the kinds whose jobs are
  built on every call: the lookups (their work split follows the bags' lengths; the runtime builds them from
  the bags, `tbe_job_for`) and the jagged ops (which rows go where follows the offsets): `call` builds the
  op's call-time spec, whose `job` the runtime calls with the call's offsets.

An import-time check makes sure that every kind that reaches code generation (all but
`kinds.LOWERING_ONLY`) has a record: a new kind without one fails on import, not by falling into a default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mtiasim.compiler.kinds import LOWERING_ONLY, KernelKind
from mtiasim.compiler.lower import KOp, Lowered, _natural, _to_numpy
from mtiasim.dtypes import DType
from mtiasim.errors import UnsupportedOperatorError
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, dram_bytes_per_s, se_ops_per_cycle, sram_bytes_per_s
from mtiasim.isa import HostCall, Job, PeProgram, ReduceOp, SeOp, TensorDecl
from mtiasim.kernels import attention
from mtiasim.kernels.bmm import bmm_job
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import elementwise_job, quantize_rows_job
from mtiasim.kernels.gemm import gemm_job
from mtiasim.kernels.jagged import JaggedCall
from mtiasim.kernels.layout import copy_job, gather_columns_job, transpose_job
from mtiasim.kernels.rows import column_window, gather_rows_job, im2col_job, scatter_rows_job
from mtiasim.kernels.rowwise import reduce_rows_job

Shape = tuple[int, ...]


class TensorDecls(Protocol):
    """What a job builder declares its tensors with (`placement.Declarations`)."""

    chip: Chip
    low: Lowered
    tensors: dict[str, TensorDecl]

    def decl(self, value: str, shape: Shape | None = None) -> TensorDecl: ...


@dataclass(frozen=True)
class KernelSpec:
    needs: Callable[[Lowered, KOp], list[tuple[str, Shape]]]
    estimate_s: Callable[[Chip, Lowered, KOp], float]
    job: Callable[[TensorDecls, KOp, Region], Job] | None
    per_call: bool = False  # `job` is None; the runtime builds the job per call (`tbe_job_for`, `call`)
    call: Callable[[TensorDecls, KOp, Region], JaggedCall] | None = None  # per_call kinds but the lookups


# ------------------------------------------------------------------------------------------------ needs


def _needs_natural(low: Lowered, op: KOp) -> list[tuple[str, Shape]]:
    """Every read and write as its natural 2-D grid (rows = all but the last dim)."""
    return [(x, _natural(low.views[x].shape)) for x in op.reads + op.writes if x in low.views]


def _needs_logical(low: Lowered, op: KOp) -> list[tuple[str, Shape]]:
    """Every read and the output in their logical shapes (batched kernels walk the batch dims)."""
    return [(x, low.views[x].shape) for x in op.reads] + [(op.writes[0], low.views[op.writes[0]].shape)]


def _gathered_grid(low: Lowered, value: str) -> Shape:
    """A column gather's source as [its first dim, everything else]."""
    shape = low.views[value].shape
    return shape[0], math.prod(shape) // shape[0]


def _needs_gather(low: Lowered, op: KOp) -> list[tuple[str, Shape]]:
    x, y = op.reads[0], op.writes[0]
    return [(x, _gathered_grid(low, x)), (y, _natural(low.views[y].shape))]


def _needs_im2col(low: Lowered, op: KOp) -> list[tuple[str, Shape]]:
    """x in the grid the columns are read from (a stride that divides L reads it as [N L / s, s C])."""
    x, y = op.reads[0], op.writes[0]
    return [(x, op.attrs["conv"].source_shape()), (y, _natural(low.views[y].shape))]


def _needs_pooled(low: Lowered, op: KOp) -> list[tuple[str, Shape]]:
    """A lookup's pooled outputs (its table and bags are placed by the compiler and the runtime)."""
    return [(w, _natural(low.views[w].shape)) for w in op.writes]


# --------------------------------------------------------------------------------------------- estimates


def _bytes_only(chip: Chip, low: Lowered, op: KOp) -> float:
    del chip, low, op
    return 0.0


def _macs_s(chip: Chip, low: Lowered, op: KOp) -> float:
    """The DPE's time for the op's MACs on every PE."""
    a = low.views[op.reads[0]].shape
    y = low.views[op.writes[0]].shape
    macs = math.prod(y) * a[-1]
    per_cycle = dpe_macs_per_cycle(chip, low.dtypes[op.reads[0]])
    return macs / (per_cycle * chip.grid.rows * chip.grid.cols * chip.clock.frequency_ghz * 1e9)


def _indexed_rows_s(chip: Chip, low: Lowered, op: KOp) -> float:
    """Rows moved by index: the core's issue work per row (a read-modify-write twice), shared by every PE."""
    g = op.attrs["groups"]
    per_row = chip.core.cycles_per_gather_row * (2 if op.attrs.get("accumulate") else 1)
    return g.rows * per_row / (chip.grid.rows * chip.grid.cols * chip.clock.frequency_ghz * 1e9)


def _lookups_s(chip: Chip, low: Lowered, op: KOp) -> float:
    """The lookups' rows: bandwidth of the table's level, or the gather rate over the memory latency."""
    hz = chip.clock.frequency_ghz * 1e9
    pes = chip.grid.rows * chip.grid.cols
    lookups = op.attrs.get("lookups", 0)
    table = low.buffers[op.reads[0]]
    row_bytes = table.cols * table.dtype.itemsize
    in_sram = table.nbytes < chip.sram.bytes // 2
    bw = sram_bytes_per_s(chip) if in_sram else dram_bytes_per_s(chip)
    latency_s = chip.sram.latency_cycles / hz if in_sram else chip.dram.latency_ns * 1e-9
    # per PE: the core issues a row every few cycles, with a few rows in flight over the memory latency
    per_row_s = max(chip.core.cycles_per_gather_row / hz, latency_s / chip.dma.outstanding_rows)
    return max(lookups * row_bytes / bw, lookups * per_row_s / pes)


# ------------------------------------------------------------------------------------------------- jobs


def _gemm(d: TensorDecls, op: KOp, region: Region) -> Job:
    at = op.attrs
    vector = lambda key: d.decl(at[key]) if at.get(key) else None  # noqa: E731
    return gemm_job(
        d.chip,
        op.name,
        d.decl(op.reads[0]),
        d.decl(op.reads[1]),
        d.decl(op.writes[0]),
        bias=d.decl(op.reads[2]) if at.get("bias") else None,
        out_scales=vector("scales"),
        row_scales=vector("row_scales"),
        post_bias=vector("post_bias"),
        out_scale=at.get("out_scale"),
        out_zero_point=at.get("out_zero_point", 0),
        activation=at["activation"],
        region=region,
    )


def _logical(d: TensorDecls, value: str) -> TensorDecl:
    return d.decl(value, d.low.views[value].shape)


def _attention_s(chip: Chip, low: Lowered, op: KOp) -> float:
    """The DPE's time for both products, or the SE's for the softmax, on every PE, whichever is longer."""
    a = op.attrs
    scores = float(a["items"]) * a["s_q"] * a["s_kv"]
    hz = chip.clock.frequency_ghz * 1e9 * chip.grid.rows * chip.grid.cols
    dpe = scores * (a["d"] + a["dv"]) / (dpe_macs_per_cycle(chip, low.dtypes[op.reads[0]]) * hz)
    masked = bool(a.get("mask") or a.get("causal"))
    se = scores * attention.attention_se_ops(masked) / (se_ops_per_cycle(chip, DType.FP32) * hz)
    return max(dpe, se)


def _attention(d: TensorDecls, op: KOp, region: Region) -> Job:
    a = op.attrs
    q, k, v = (d.decl(x) for x in op.reads[:3])
    mask = d.decl(a["mask"]) if a.get("mask") else None
    return attention.attention_job(
        d.chip,
        op.name,
        q,
        k,
        v,
        d.decl(op.writes[0]),
        d.decl(a["scale_vec"]),
        items=a["items"],
        mask=mask,
        mask_rows=a.get("mask_rows", ()),
        mask_per_query=a.get("mask_per_query", True),
        causal=d.decl(a["causal"]) if a.get("causal") else None,
        region=region,
    )


def _bmm(d: TensorDecls, op: KOp, region: Region) -> Job:
    a, b = _logical(d, op.reads[0]), _logical(d, op.reads[1])
    return bmm_job(d.chip, op.name, a, b, _logical(d, op.writes[0]), region=region)


def _transpose(d: TensorDecls, op: KOp, region: Region) -> Job:
    return transpose_job(d.chip, op.name, _logical(d, op.reads[0]), _logical(d, op.writes[0]), region=region)


def _gather(d: TensorDecls, op: KOp, region: Region) -> Job:
    x = d.decl(op.reads[0], _gathered_grid(d.low, op.reads[0]))
    return gather_columns_job(d.chip, op.name, x, d.decl(op.writes[0]), op.attrs["columns"], region=region)


def _copy(d: TensorDecls, op: KOp, region: Region) -> Job:
    if "window" in op.attrs:  # a window of the source's bytes seen as another grid
        (rows, row_elems), col0, cols = op.attrs["window"]
        src = column_window(d.decl(op.reads[0], (rows, row_elems)), col0, cols, d.tensors)
        return copy_job(d.chip, op.name, src, d.decl(op.writes[0], (rows, cols)), region=region)
    out = d.low.views.get(op.writes[0])  # copied on the destination's grid (a window's copy keeps its grid)
    dst = d.decl(op.writes[0], (out.rows, out.cols) if out is not None else None)
    return copy_job(d.chip, op.name, d.decl(op.reads[0], dst.shape), dst, region=region)


def _index_decl(d: TensorDecls, value: str) -> TensorDecl:
    """Index data as its own buffer when the value is all of it (a timing run reads the call's indices by
    buffer name)."""
    view = d.low.views.get(value)
    if view is not None and view.col0 == 0:
        buf = d.tensors[view.buffer]
        if view.rows * view.cols == buf.rows * buf.cols:
            return buf
    return d.decl(value)


def _im2col(d: TensorDecls, op: KOp, region: Region) -> Job:
    conv = op.attrs["conv"]
    x, zeros, y = d.decl(op.reads[0], conv.source_shape()), d.decl(op.reads[1]), d.decl(op.writes[0])
    return im2col_job(d.chip, op.name, conv, x, zeros, y, region=region)


def _row_gather(d: TensorDecls, op: KOp, region: Region) -> Job:
    x, idx, y = d.decl(op.reads[0]), _index_decl(d, op.reads[1]), d.decl(op.writes[0])
    return gather_rows_job(d.chip, op.name, x, idx, y, op.attrs["groups"], region=region, tensors=d.tensors)


def _row_scatter(d: TensorDecls, op: KOp, region: Region) -> Job:
    dst, idx, src = d.decl(op.reads[0]), _index_decl(d, op.reads[1]), d.decl(op.reads[2])
    y = d.decl(op.writes[0])
    scratch = d.decl(op.writes[1]) if len(op.writes) > 1 else None
    return scatter_rows_job(d.chip, op.name, dst, idx, src, y, op.attrs["groups"], accumulate=op.attrs["accumulate"],
                            scratch=scratch, region=region, tensors=d.tensors)  # fmt: skip


def _convert(se: SeOp) -> Callable[[TensorDecls, KOp, Region], Job]:
    """A per-tensor (de)quantization: one SE map with the op's scale and zero point."""

    def build(d: TensorDecls, op: KOp, region: Region) -> Job:
        return elementwise_job(d.chip, op.name, se, d.decl(op.reads[0]), d.decl(op.writes[0]),
                               scale=op.attrs["scale"], zero_point=op.attrs.get("zero_point", 0),
                               region=region)  # fmt: skip

    return build


def _quantize_rows(d: TensorDecls, op: KOp, region: Region) -> Job:
    x, q, scales = d.decl(op.reads[0]), d.decl(op.writes[0]), d.decl(op.writes[1])
    return quantize_rows_job(d.chip, op.name, x, q, scales, region=region)


def _reduce(d: TensorDecls, op: KOp, region: Region) -> Job:
    reduce = ReduceOp(op.attrs["op"])
    return reduce_rows_job(d.chip, op.name, reduce, d.decl(op.reads[0]), d.decl(op.writes[0]), region=region)


def _eltwise(d: TensorDecls, op: KOp, region: Region) -> Job:
    se = SeOp(op.attrs["op"])
    x = d.decl(op.reads[0])
    y = d.decl(op.reads[1]) if len(op.reads) > 1 else None
    if y is not None and y.shape != x.shape and y.rows * y.cols == x.cols and y.cols != 1:
        y = d.decl(op.reads[1], (1, x.cols)) if op.reads[1] in d.low.views else y  # a row over the rows
    params = tuple(op.attrs.get("params", ()))
    return elementwise_job(d.chip, op.name, se, x, d.decl(op.writes[0]), y=y, region=region, params=params)


def _jagged(d: TensorDecls, op: KOp, region: Region) -> JaggedCall:
    """A jagged op's call-time spec: its rows' decls (natural grids) and where its offsets come from."""
    a = op.attrs
    x, out, pad = (d.decl(v).name for v in (op.reads[0], op.writes[0], a["pad"]))
    return JaggedCall(op.name, op.kind.value, x, out, pad, a["offsets"], a["const_offsets"], a["sequences"],
                      a["max_len"], region, a["aten"], a["whole"], a["rows_per_call"])  # fmt: skip


K = KernelKind


def _host_call(d: TensorDecls, op: KOp, region: Region) -> Job:
    """One command on the region's first PE: the host's round trip (PCIe both ways, a launch of the op and a
    pass over its bytes on the host CPU) while the device waits."""
    reads = [d.decl(v) for v in op.reads]
    out = d.decl(op.writes[0])
    shapes = [d.low.views[v].shape for v in op.reads]
    out_shape = d.low.views[op.writes[0]].shape
    call = op.attrs["call"]

    def fn(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        xs = [
            torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(s))
            for a, s in zip(arrays, shapes, strict=True)
        ]
        y = call(*xs).detach().to(torch.float32).reshape(out_shape).numpy()
        return (_to_numpy(torch.from_numpy(y), out.dtype).reshape(out.rows, out.cols),)

    host = d.chip.host
    nbytes = sum(r.rows * r.cols * r.dtype.itemsize for r in reads) + out.rows * out.cols * out.dtype.itemsize
    seconds = (
        2 * host.latency_ns * 1e-9
        + nbytes / (host.bandwidth_gbps * 1e9)
        + host.cpu_op_ns * 1e-9
        + nbytes / (host.cpu_copy_gbps * 1e9)
    )
    pe = region.pe(0, 0)
    cmd = HostCall(op.attrs["aten"], fn, tuple(r.name for r in reads), (out.name,), seconds)
    return Job(op.name, "host_call", {pe: PeProgram(pe, (), ([cmd], []))}, work={"bytes": float(nbytes)})


KERNELS: dict[KernelKind, KernelSpec] = {
    K.GEMM: KernelSpec(_needs_natural, _macs_s, _gemm),
    K.TBE: KernelSpec(_needs_pooled, _lookups_s, None, per_call=True),
    K.BMM: KernelSpec(_needs_logical, _macs_s, _bmm),
    K.ATTENTION: KernelSpec(_needs_natural, _attention_s, _attention),
    K.ELTWISE: KernelSpec(_needs_natural, _bytes_only, _eltwise),
    K.QUANTIZE: KernelSpec(_needs_natural, _bytes_only, _convert(SeOp.QUANTIZE)),
    K.DEQUANTIZE: KernelSpec(_needs_natural, _bytes_only, _convert(SeOp.DEQUANTIZE)),
    K.QUANTIZE_ROWS: KernelSpec(_needs_natural, _bytes_only, _quantize_rows),
    K.GATHER: KernelSpec(_needs_gather, _bytes_only, _gather),
    K.TRANSPOSE: KernelSpec(_needs_logical, _bytes_only, _transpose),
    K.COPY: KernelSpec(_needs_natural, _bytes_only, _copy),
    K.REDUCE: KernelSpec(_needs_natural, _bytes_only, _reduce),
    K.HOST_CALL: KernelSpec(_needs_natural, _bytes_only, _host_call),
    K.JAGGED_TO_DENSE: KernelSpec(_needs_natural, _bytes_only, None, per_call=True, call=_jagged),
    K.DENSE_TO_JAGGED: KernelSpec(_needs_natural, _bytes_only, None, per_call=True, call=_jagged),
    K.IM2COL: KernelSpec(_needs_im2col, _bytes_only, _im2col),
    K.ROW_GATHER: KernelSpec(_needs_natural, _indexed_rows_s, _row_gather),
    K.ROW_SCATTER: KernelSpec(_needs_natural, _indexed_rows_s, _row_scatter),
}
del K


def kernel_for(op: KOp) -> KernelSpec:
    """The record of `op`'s kind (a kind the lowering should have resolved is an error)."""
    spec = KERNELS.get(op.kind)
    if spec is None:
        raise UnsupportedOperatorError(f"{op.name}: no kernel for {op.kind}")
    return spec


def _check_table() -> None:
    """Import-time: every kind that reaches code generation has a record, and only those."""
    missing = sorted(set(KernelKind) - LOWERING_ONLY - set(KERNELS))
    if missing:
        raise ImportError(
            f"compiler.kernel_table has no record for kernel kind(s) {', '.join(missing)} (compiler.kinds)"
        )
    stray = sorted(LOWERING_ONLY & set(KERNELS))
    if stray:
        raise ImportError(f"compiler.kernel_table has records for lowering-only kind(s) {', '.join(stray)}")
    for kind, spec in KERNELS.items():
        if (spec.job is None) != spec.per_call:
            raise ImportError(f"compiler.kernel_table: {kind} needs a job builder or per_call, not both")
        by_call = spec.per_call and kind != KernelKind.TBE  # the runtime builds the lookups' from their bags
        if (spec.call is not None) != by_call:
            raise ImportError(f"compiler.kernel_table: {kind}: `call` builds per-call jobs but lookups'")


_check_table()
