"""Table-batched EmbeddingBag (TBE) on int8 rows (FBGEMM's or ATen's layout) or fp16/fp32 rows.

All tables of one embedding dim live in one [sum of rows, row cols] tensor (`RowFormat`: FBGEMM int8 rows are
uint8 [4 + dim], fp16 scale and bias, then dim bytes; ATen int8 rows uint8 [dim + 8], the bytes then fp32 scale
and bias; fp16/fp32 rows [dim]), in SRAM, or in LPDDR5 reached through the SRAM in cache mode. Tables of
different dims need one job each. The output may be a column window of a wider tensor (`MemoryPlan.alias`):
table t's pooled rows go to columns [t*dim, (t+1)*dim) of the window; or one [batch, dim] tensor (window) per
table, wherever each lies (a concatenation whose tables of one dim are not next to each other). Bags are laid out table-major, as FBGEMM's
``(indices, offsets[T*B + 1])`` and torchrec's KeyedJaggedTensor. The bags are shared out over the PEs by
lookups (with a per-bag cost), contiguously.

On each PE, core 0 loops over its bags' indices: it reads an index from the local store, computes the row's
address and issues the row's DMA (v1 has no indexed DMA, ISCA'25). Core 1 has the SE dequantize and
accumulate the rows of a bag (at most 32 rows per SE accumulate command on v1), then DMAs the pooled row out.
The row buffer holds one SE accumulate group: 32 rows (fewer where the PE has fewer rows in all). A bag of
more than half of it fills it alone, so gathering and pooling take turns and every such bag waits for its
slowest row; shorter bags share it, so the next bags' rows are gathered (their memory latency hidden) while
the pooling core works on earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import (
    DmaGather,
    DmaOut,
    Job,
    PeId,
    PeProgram,
    PoolMode,
    RowFormat,
    SePool,
    TensorDecl,
    TileStream,
    loop,
)
from mtiasim.kernels.common import Region, cb_layout, cdiv

CB_ROWS, CB_OUT = 0, 1
PER_BAG_COST_ROWS = 4.0  # a bag costs about as much as this many lookups (set-up, pooled-row write)


def _split_bags(lengths: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous bag ranges with about equal work (lookups plus a per-bag cost)."""
    work = np.cumsum(lengths.astype(np.float64) + PER_BAG_COST_ROWS)
    total = float(work[-1]) if work.size else 0.0
    bounds = [0]
    for p in range(1, parts):
        bounds.append(int(np.searchsorted(work, total * p / parts, side="left")) + 1)
    bounds.append(lengths.size)
    bounds = np.maximum.accumulate(np.clip(bounds, 0, lengths.size)).tolist()
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def tbe_job(
    chip: Chip,
    name: str,
    table: TensorDecl,
    indices: TensorDecl,
    out: TensorDecl | Sequence[TensorDecl],
    *,
    offsets: np.ndarray,
    table_rows: list[int],
    batch: int,
    dim: int,
    mode: PoolMode = PoolMode.SUM,
    weights: TensorDecl | None = None,
    region: Region | None = None,
    row_format: RowFormat = RowFormat.INT8_FBGEMM,
) -> Job:
    """The job pooling ``T = len(table_rows)`` tables for `batch` samples into ``out[batch, T * dim]``, or into
    ``out[t][batch, dim]`` for table t when `out` is a sequence of T tensors."""
    region = region or Region.whole(chip)
    region.check(chip)
    n_tables = len(table_rows)
    row_format = RowFormat(row_format)
    cols, dt = row_format.row_cols(dim), row_format.dtype
    if table.dtype != dt or table.cols != cols:
        raise UsageError(
            f"{name}: table {table.name!r} is {table.dtype.value} [{table.rows}, {table.cols}]; "
            f"{row_format.value} rows of dim {dim} are {dt.value} [rows, {cols}]"
        )
    if weights is not None and mode == PoolMode.MAX:
        raise UsageError(f"{name}: per-sample weights need sum or mean pooling, not max")
    outs = [out] if isinstance(out, TensorDecl) else list(out)
    if len(outs) == 1:
        if outs[0].shape != (batch, n_tables * dim):
            raise UsageError(f"{name}: output must be [{batch}, {n_tables * dim}], got {list(outs[0].shape)}")
        targets = [(outs[0].name, t * dim) for t in range(n_tables)]  # (tensor, first column) per table
    elif len(outs) != n_tables or any(o.shape != (batch, dim) for o in outs):
        raise UsageError(
            f"{name}: give one output [{batch}, {n_tables * dim}] or {n_tables} outputs [{batch}, {dim}], "
            f"got {[list(o.shape) for o in outs]}"
        )
    else:
        targets = [(o.name, 0) for o in outs]
    out_dtype = outs[0].dtype
    if any(o.dtype != out_dtype for o in outs) or out_dtype not in (DType.FP16, DType.BF16, DType.FP32):
        raise UsageError(
            f"{name}: pooled rows are fp16, bf16 or fp32 (one dtype), not {', '.join(o.dtype.value for o in outs)}"
        )
    if sum(table_rows) != table.rows:
        raise UsageError(
            f"{name}: table rows {sum(table_rows)} do not match tensor {table.name!r} ({table.rows})"
        )
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.shape != (n_tables * batch + 1,):
        raise UsageError(
            f"{name}: offsets must have tables*batch+1 = {n_tables * batch + 1} entries, got {offsets.size}"
        )
    lengths = np.diff(offsets)
    if offsets[0] != 0 or (lengths < 0).any():
        raise UsageError(f"{name}: offsets must start at 0 and never decrease")
    n_idx = indices.rows * indices.cols
    if offsets[-1] > n_idx:
        raise UsageError(f"{name}: offsets reach {int(offsets[-1])} but there are {n_idx} indices")
    row_start = np.concatenate([[0], np.cumsum(table_rows)]).astype(np.int64)
    pe_list = [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]
    ranges = _split_bags(lengths, len(pe_list))
    row_bytes = table.cols * table.dtype.itemsize
    pes: dict[PeId, PeProgram] = {}
    for pe, (j0, j1) in zip(pe_list, ranges, strict=False):
        # the row buffer: one SE accumulate group of rows (short bags share it, a long bag's rows wait for the
        # pooling of the group before)
        out_bytes = 2 * dim * out_dtype.itemsize
        fit = (chip.local_memory.bytes - cdiv(out_bytes, 64) * 64) // row_bytes  # what the local store holds
        group = int(max(1, min(chip.se.accumulate_max_rows, int(lengths[j0:j1].sum()), fit)))
        sizes = {CB_ROWS: group * row_bytes, CB_OUT: out_bytes}
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        j = j0
        while j < j1:
            t = j // batch
            seg_end = min(j1, (t + 1) * batch)
            lens = tuple(lengths[j:seg_end].tolist())
            start, count = int(offsets[j]), int(offsets[seg_end] - offsets[j])
            if count:
                prog.cores[0].append(
                    DmaGather(CB_ROWS, table.name, indices.name, start, count, int(row_start[t]))
                )
            prog.cores[1].append(
                SePool(
                    CB_ROWS,
                    CB_OUT,
                    lens,
                    dim,
                    mode,
                    out_dtype,
                    weights=weights.name if weights is not None else None,
                    weights_start=start,
                    row_format=row_format,
                )
            )
            b0 = j - t * batch
            target, col0 = targets[t]
            prog.cores[1].append(
                DmaOut(CB_OUT, TileStream(target, (1, dim), loop((b0, col0), (seg_end - j, 1, 0))))
            )
            j = seg_end
        pes[pe] = prog
    return Job(
        name,
        "tbe",
        pes,
        work={"lookups": float(offsets[-1]), "row_bytes": float(offsets[-1]) * row_bytes},
    )
