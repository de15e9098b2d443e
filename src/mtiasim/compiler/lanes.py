"""Lanes and sub-grids: the lookups (`sparse` lane) and the ops that do not need their results (`dense` lane:
the bottom MLP) run at the same time on a row split of the grid sized by their estimated work; everything
after (`joint`) runs on the whole grid.

The estimate is a roofline on the whole grid: the op's bytes at SRAM bandwidth, or its kind's own bound (the
`estimate_s` of its `kernel_table` record: the DPE's MACs, the lookups' rows), whichever is longer. It sizes
the sub-grids only; the timing engine times the jobs.
"""

from __future__ import annotations

import math

import numpy as np

from mtiasim.compiler.kernel_table import kernel_for
from mtiasim.compiler.kinds import KernelKind
from mtiasim.compiler.lower import KOp, Lowered
from mtiasim.compiler.placement import extent
from mtiasim.hw import Chip
from mtiasim.hw.peaks import sram_bytes_per_s
from mtiasim.kernels.common import Region


def assign_lanes(low: Lowered) -> None:
    """sparse: the lookups; joint: ops that read bytes a lookup (or a joint op) wrote; dense: the rest,
    which can run beside the lookups."""
    tainted: list[tuple[str, int, int]] = []
    for op in low.kops:
        if op.kind == KernelKind.TBE:
            op.lane = "sparse"
        else:
            hit = False
            for v in op.reads:
                b, c0, c1, _ = extent(low, v)
                if any(tb == b and t0 < c1 and c0 < t1 for tb, t0, t1 in tainted):
                    hit = True
                    break
            op.lane = "joint" if hit else "dense"
        if op.lane != "dense":
            for v in op.writes:
                tainted.append(extent(low, v)[:3])


def estimate_s(chip: Chip, low: Lowered, op: KOp) -> float:
    """A roofline estimate of the op on the whole grid (for sizing sub-grids only)."""
    nbytes = 0.0
    for v in op.reads + op.writes:
        view = low.views.get(v)
        if view is not None:
            nbytes += math.prod(view.shape) * low.dtypes[v].itemsize if -1 not in view.shape else 0
        elif v in low.buffers and low.buffers[v].role == "weight":
            nbytes += low.buffers[v].nbytes
    return max(nbytes / sram_bytes_per_s(chip), kernel_for(op).estimate_s(chip, low, op))


def sub_grids(chip: Chip, low: Lowered) -> dict[str, Region]:
    """The region each lane runs on: sparse and dense split the grid's rows by their estimated work (the whole
    grid for both when either has none)."""
    whole = Region.whole(chip)
    est = {op.name: estimate_s(chip, low, op) for op in low.kops}
    sparse = sum(est[o.name] for o in low.kops if o.lane == "sparse")
    dense = sum(est[o.name] for o in low.kops if o.lane == "dense")
    rows = chip.grid.rows
    if sparse <= 0 or dense <= 0 or rows < 2:
        return {"sparse": whole, "dense": whole, "joint": whole}
    r_s = int(np.clip(round(rows * sparse / (sparse + dense)), 1, rows - 1))
    cols = chip.grid.cols
    return {
        "sparse": Region(0, 0, r_s, cols),
        "dense": Region(r_s, 0, rows - r_s, cols),
        "joint": whole,
    }
