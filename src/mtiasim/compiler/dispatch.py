"""Jobs: each kernel op's job, built by its kind's `kernel_table` record, on its lane's sub-grid, with its
dependencies.

A job depends on the earlier jobs that wrote bytes it reads (read after write), and on those that read or
wrote bytes it overwrites when memory is reused (write after read/write). The lookups' jobs are built on every
call (`tbe_job_for`: their work split follows the bags' lengths); what they need then is their `TbeSpec`. So are
the jagged ops' (`JaggedCall.job`: the offsets say which rows go where).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mtiasim.compiler.kernel_table import kernel_for
from mtiasim.compiler.lower import KOp, Lookup
from mtiasim.compiler.placement import Declarations, extent
from mtiasim.errors import MtiasimError
from mtiasim.hw import Chip
from mtiasim.ir import DYNAMIC
from mtiasim.isa import Job, Level, PoolMode, TensorDecl
from mtiasim.isa.commands import RowFormat
from mtiasim.kernels.common import Region
from mtiasim.kernels.jagged import JaggedCall
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
    stacked: bool = False  # the tables' rows (DYNAMIC batch) one after another in one output, as one table


Access = tuple[str, str, int, int, int]  # (job, buffer, col0, col1, rows)


class Dependencies:
    """The bytes each job so far wrote and read, and what a new job must wait for."""

    def __init__(self, decls: Declarations) -> None:
        self.decls = decls
        self.writers: list[Access] = []
        self.readers: list[Access] = []

    def of(self, op: KOp) -> tuple[str, ...]:
        low, tensors = self.decls.low, self.decls.tensors
        deps: dict[str, None] = {}
        for v in op.reads:
            b, c0, c1, _ = extent(low, v)
            for job, wb, w0, w1, _ in self.writers:
                if wb == b and w0 < c1 and c0 < w1:
                    deps[job] = None
        for v in op.writes:
            b, c0, c1, _ = extent(low, v)
            lo, hi = self._addresses(b)
            for job, rb, r0, r1, _ in self.readers + self.writers:
                rlo, rhi = self._addresses(rb)
                same_level = tensors[rb].level == tensors[b].level
                if (rb == b and r0 < c1 and c0 < r1) or (rb != b and same_level and rlo < hi and lo < rhi):
                    deps[job] = None
        deps.pop(op.name, None)
        return tuple(deps)

    def record(self, op: KOp) -> None:
        low = self.decls.low
        for v in op.writes:
            self.writers.append((op.name, *extent(low, v)))
        for v in op.reads:
            self.readers.append((op.name, *extent(low, v)))

    def _addresses(self, buffer: str) -> tuple[int, int]:
        t = self.decls.tensors[buffer]
        return t.address, t.address + t.nbytes


def _tbe_spec(decls: Declarations, op: KOp, region: Region, deps: tuple[str, ...]) -> TbeSpec:
    low = decls.low
    outs = [decls.decl(w).name for w in op.writes]
    return TbeSpec(
        op.name,
        op.reads[0],
        outs,
        decls.span(op.writes),
        low.lookups[op.name],
        op.attrs["dim"],
        op.attrs["mode"],
        op.attrs["format"],
        any(t.weights for t in low.lookups[op.name]),
        region,
        deps,
        DYNAMIC if op.attrs.get("call_rows") else low.views[op.writes[0]].shape[0],
        op.attrs.get("stacked", False),
    )


def build_jobs(
    decls: Declarations, regions: dict[str, Region]
) -> tuple[list[Job], dict[str, TbeSpec], dict[str, JaggedCall]]:
    """The static jobs in program order (each on its lane's region), the lookups' call-time specs and the other
    per-call ops' (`KernelSpec.call`)."""
    jobs: list[Job] = []
    tbe: dict[str, TbeSpec] = {}
    calls: dict[str, JaggedCall] = {}
    deps_of = Dependencies(decls)
    for op in decls.low.kops:
        region = regions[op.lane]
        deps = deps_of.of(op)
        spec = kernel_for(op)
        if spec.call is not None:
            calls[op.name] = replace(spec.call(decls, op, region), deps=deps)
        elif spec.per_call:
            tbe[op.name] = _tbe_spec(decls, op, region, deps)
        else:
            assert spec.job is not None
            try:
                job = spec.job(decls, op, region)
            except MtiasimError as e:  # say which op of the model it is, and where it comes from
                raise type(e)(f"op {op.name} ({op.kind}) in {op.source.describe()}: {e}") from e
            job.deps = deps
            jobs.append(job)
        deps_of.record(op)
    return jobs, tbe, calls


def tbe_job_for(chip: Chip, spec: TbeSpec, tensors: dict[str, TensorDecl], indices: str, weights: str | None,
                offsets: np.ndarray, batch: int | None = None) -> Job:  # fmt: skip
    """A lookup's job for one call: its bags' `indices` (and `weights`) placed, split by `offsets`."""
    rows = [t.rows for t in spec.tables]
    if spec.stacked:  # one table to the kernel: the indices are already rows of the packed tables
        rows = [sum(rows)]
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
