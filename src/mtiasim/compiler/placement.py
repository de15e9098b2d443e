"""Placement: where the kernel ops' bytes live.

- `fix_views`: a copy wherever a kernel needs a value in a shape its view cannot give (a reshape that crosses
  the rows of a window, say); the shapes each kind needs are its `kernel_table` record's `needs`.
- `plan`: the memory plan: each buffer's lifetime in program order (the sparse and dense lanes run at the same
  time, so their buffers live through the whole phase), then `memory.plan_memory`.
- `Declarations`: every buffer as a `TensorDecl` at its planned address; a view as an alias decl (a reshape or
  a column window), made on demand by `decl`.
"""

from __future__ import annotations

import math

import numpy as np

from mtiasim.compiler.kernel_table import Shape, kernel_for
from mtiasim.compiler.kinds import KernelKind
from mtiasim.compiler.lower import Buffer, KOp, Lowered, View, _natural
from mtiasim.compiler.memory import MemoryPlan, plan_memory
from mtiasim.errors import UnsupportedOperatorError
from mtiasim.hw import Chip
from mtiasim.isa import TensorDecl


def extent(low: Lowered, value: str) -> tuple[str, int, int, int]:
    """(buffer, first column, end column, rows) of the bytes `value` covers."""
    if value in low.buffers and value not in low.views:
        b = low.buffers[value]
        return value, 0, b.cols, b.rows
    view = low.views[value]
    return view.buffer, view.col0, view.col0 + view.cols, view.rows


def _fits(low: Lowered, value: str, shape: Shape) -> bool:
    view = low.views[value]
    buf = low.buffers[view.buffer]
    whole = view.col0 == 0 and view.cols == buf.cols and view.rows == buf.rows
    if whole:
        return math.prod(shape) == buf.rows * buf.cols
    return (
        len(shape) == 2
        and shape == (view.rows, view.cols)
        or (math.prod(shape[:-1]) == view.rows and shape[-1] == view.cols and len(shape) == 2)
    )


def fix_views(low: Lowered) -> None:
    """Insert copies where a kernel needs a shape a value's view cannot give."""
    new: list[KOp] = []
    for op in low.kops:
        for value, shape in kernel_for(op).needs(low, op):
            if value in low.buffers and value not in low.views:
                continue
            if _fits(low, value, shape):
                continue
            if value in op.writes:
                raise UnsupportedOperatorError(
                    f"{op.name}: cannot write {value} as {list(shape)} in place (view {low.views[value]})"
                )
            c = f"{value}~contig"
            if c not in low.views:
                # the copy keeps the window's grid; the kernel sees the whole contiguous buffer as `shape`
                src = low.views[value]
                r, cc = (src.rows, src.cols) if math.prod(shape) == src.rows * src.cols else _natural(shape)
                low.buffers[c] = Buffer(c, r, cc, low.dtypes[value], "activation")
                low.views[c] = View(c, r, 0, cc, shape)
                low.dtypes[c] = low.dtypes[value]
                new.append(KOp(c, KernelKind.COPY, [value], [c], {}, op.source, op.lane))
            op.reads = [c if x == value else x for x in op.reads]
        new.append(op)
    low.kops = new


def plan(low: Lowered, chip: Chip, outputs: list[str], index_bytes: int) -> MemoryPlan:
    """The memory plan of `low`'s buffers (after `lanes.assign_lanes`: the lanes' buffers share a phase)."""
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
            if any(low.views[o].buffer == name for o in outputs if o in low.views):
                e = n
            lifetimes[name] = (s, e)
    return plan_memory(
        sram_bytes=chip.sram.scratchpad_capacity_bytes,
        dram_bytes=chip.dram.bytes,
        activations=acts,
        lifetimes=lifetimes,
        weights=weights,
        tables=tables,
        index_reserve=index_bytes,
        roles=roles,
    )


class Declarations:
    """The tensors of the device code: a decl per buffer at its planned address (`declare`), and per view and
    shape a kernel asks for (`decl`, `span`)."""

    def __init__(self, low: Lowered, chip: Chip) -> None:
        self.low = low
        self.chip = chip
        self.tensors: dict[str, TensorDecl] = {}
        self.decl_cache: dict[tuple[str, Shape], str] = {}

    def declare(self, mem: MemoryPlan) -> dict[str, np.ndarray]:
        """Declare every buffer where `mem` placed it; returns the constant contents (weights, tables)."""
        constants = {}
        for name, buf in self.low.buffers.items():
            p = mem.placements[name]
            self.tensors[name] = TensorDecl(
                name, (buf.rows, buf.cols), buf.dtype, p.level, p.address, p.cached, buf.pitch_bytes
            )
            if buf.data is not None:
                constants[name] = buf.data.reshape(buf.rows, buf.cols)
        return constants

    def decl(self, value: str, shape: Shape | None = None) -> TensorDecl:
        """`value` as a tensor of `shape` (default: its natural 2-D grid): its buffer's decl, or an alias."""
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
            pitch = buf.row_pitch_bytes if shape[-1] == buf.cols else None
            decl = TensorDecl(name, shape, buf.dtype, buf.level, buf.address, buf.cached, pitch, buf.name)
        else:
            item = buf.dtype.itemsize
            decl = TensorDecl(name, (view.rows, view.cols), buf.dtype, buf.level, buf.address + view.col0 * item,
                              buf.cached, buf.pitch, buf.name)  # fmt: skip
        self.tensors[name] = decl
        self.decl_cache[key] = name
        return decl

    def span(self, values: list[str]) -> str | None:
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
                        else TensorDecl(name, (first.rows, cols), buf.dtype, buf.level,
                                        buf.address + col0 * buf.dtype.itemsize, buf.cached, buf.pitch, buf.name)
                    )  # fmt: skip
                return self.tensors[name].name
        return None
