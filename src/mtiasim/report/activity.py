"""What the units, memories and links did over a timed run, from the engine's node table.

Shared by the Perfetto trace, the HTML report and the JSON: per-op traffic and work (for the roofline), per-PE
per-unit busy fractions (the grid heatmap), and bandwidth over time (counter tracks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtiasim.engine import NodeTable, TimingResult
from mtiasim.hw import Chip
from mtiasim.power.model import node_energy_j, spread

# the units of a PE as the trace and the heatmap show them (the RE is the MatMul's epilogue/drain part)
UNITS = ("core0", "core1", "dma", "dpe", "re", "se", "mlu")
# bytes per memory level, from the engine's counters
LEVEL_COUNTERS = {
    "local_memory": ("ls_read_bytes", "ls_write_bytes"),
    "sram": ("sram_read_bytes", "sram_write_bytes"),
    "dram": ("dram_read_bytes", "dram_write_bytes"),
    "noc": ("noc_bytes",),
}
OP_COUNTERS = ("se_ops", "epilogue_ops")


@dataclass
class OpActivity:
    """One job (= one compiled op, or one benchmark kernel): its work, its bytes per level and its energy."""

    name: str
    kind: str
    start_s: float
    end_s: float
    pes: int
    macs: float = 0.0
    vector_ops: float = 0.0
    bytes: dict[str, float] = field(default_factory=dict)
    energy_j: float = 0.0

    @property
    def ops(self) -> float:
        """Arithmetic operations: 2 per MAC plus the SE/RE element ops."""
        return 2.0 * self.macs + self.vector_ops


def op_activity(
    chip: Chip, timing: TimingResult, columns: dict[str, np.ndarray] | None = None
) -> list[OpActivity]:
    """Per job, in the timing's job order (`columns`: `counter_columns(timing.nodes.counters)`, if already
    built). Each sum adds the nodes' values in node order."""
    ops = [OpActivity(j.name, j.kind, j.start_s, j.end_s, j.pes) for j in timing.jobs]
    nodes = timing.nodes
    if nodes is None or not len(nodes):
        return ops
    columns = nodes.counter_columns() if columns is None else columns
    job = np.asarray(nodes.job, dtype=np.int64)
    n, jobs = job.size, len(ops)
    zero = np.zeros(n)

    def per_job(values: np.ndarray) -> np.ndarray:
        return np.bincount(job, weights=values, minlength=jobs)

    def summed(keys) -> np.ndarray:
        total = zero
        for k in keys:
            if k in columns:
                total = total + columns[k]
        return total

    energy = per_job(node_energy_j(chip, nodes.counters, columns))
    macs = per_job(summed(k for k in columns if k.startswith("dpe_macs_")))
    vector = per_job(summed(OP_COUNTERS))
    # a job lists a level's bytes once one of its nodes moved some, levels in the order its nodes first do
    first: dict[str, np.ndarray] = {}
    level_bytes: dict[str, np.ndarray] = {}
    for level, keys in LEVEL_COUNTERS.items():
        b = summed(keys)
        moved = np.flatnonzero(b)
        first[level] = np.full(jobs, n, dtype=np.int64)
        np.minimum.at(first[level], job[moved], moved)
        level_bytes[level] = per_job(b)
    rank = {level: i for i, level in enumerate(LEVEL_COUNTERS)}
    for j, op in enumerate(ops):
        op.energy_j, op.macs, op.vector_ops = float(energy[j]), float(macs[j]), float(vector[j])
        levels = sorted((int(first[lv][j]), rank[lv], lv) for lv in LEVEL_COUNTERS if first[lv][j] < n)
        op.bytes = {lv: float(level_bytes[lv][j]) for _, _, lv in levels}
    return ops


def unit_spans(nodes: NodeTable) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per unit of `UNITS`: (node ids, span start s, span end s) of the time the unit was busy with the node.

    A core is busy issuing a node from `issue_s` for `issue_busy_s`; a DMA for the flow's span; the DPE, SE and
    MLU for their busy time ending at the node's end (their start waits for data); the RE for the MatMul's
    `re_s` at its end."""
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    unit = np.array(nodes.unit)
    issue_end = nodes.issue_s + nodes.issue_busy_s
    for core in (0, 1):
        ids = np.flatnonzero((nodes.core == core) & (nodes.issue_busy_s > 0))
        out[f"core{core}"] = (ids, nodes.issue_s[ids], issue_end[ids])
    for u in ("dma", "dpe", "se", "mlu"):
        ids = np.flatnonzero(unit == u)
        end = nodes.end_s[ids]
        start = nodes.start_s[ids] if u == "dma" else np.maximum(nodes.start_s[ids], end - nodes.busy_s[ids])
        out[u] = (ids, start, end)
    ids = np.flatnonzero(nodes.re_s > 0)
    end = nodes.end_s[ids]
    out["re"] = (ids, np.maximum(nodes.start_s[ids], end - nodes.re_s[ids]), end)
    return out


def pe_utilization(chip: Chip, nodes: NodeTable, seconds: float) -> dict[str, np.ndarray]:
    """Per unit, a [rows, cols] array: the fraction of `seconds` the unit of each PE was busy (overlapping
    spans of one unit, e.g. the DMA's concurrent commands, are merged, so a fraction never exceeds 1)."""
    rows, cols = chip.grid.rows, chip.grid.cols
    out = {u: np.zeros((rows, cols)) for u in UNITS}
    if seconds <= 0:
        return out
    pe = np.array(nodes.pe, dtype=np.int64).reshape(-1, 2)
    flat_pe = pe[:, 0] * cols + pe[:, 1]
    for u, (ids, start, end) in unit_spans(nodes).items():
        busy = end > start
        union_s = union_lengths(flat_pe[ids[busy]], start[busy], end[busy], rows * cols)
        out[u] = np.minimum(1.0, union_s / seconds).reshape(rows, cols)
    return out


def union_lengths(group: np.ndarray, start: np.ndarray, end: np.ndarray, groups: int) -> np.ndarray:
    """Per group id in [0, groups): the length of the union of its spans [start, end) (end > start).

    The spans of a group, sorted by (start, end), merge into runs: a span opens a run when it starts after every
    earlier span of the group has ended; a run ends at the largest end in it. The runs' lengths are summed in
    order, as a sequential merge would."""
    total = np.zeros(groups)
    if len(group) == 0:
        return total
    order = np.lexsort((end, start, group))
    g, s, e = group[order], start[order], end[order]
    # the running largest end within a group, exactly: a running max of (group, rank of end) keys
    end_rank = np.empty(len(e), dtype=np.int64)
    end_rank[np.argsort(e, kind="stable")] = np.arange(len(e))
    by_rank = np.sort(e, kind="stable")
    reach = by_rank[np.maximum.accumulate(g * len(e) + end_rank) - g * len(e)]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    opens = first.copy()
    opens[1:] |= s[1:] > reach[:-1]
    last = np.ones(len(g), dtype=bool)
    last[:-1] = opens[1:]
    run_length = reach[last] - s[opens]
    np.add.at(total, g[opens], run_length)
    return total


def bandwidth_timeline(
    nodes: NodeTable, seconds: float, bins: int = 200, columns: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(bin edges in s, {level: bytes/s per bin}) for SRAM, LPDDR5 (dram) and the NoC: each node's bytes spread
    evenly over its [start, end] (`columns`: `counter_columns(nodes.counters)`, if already built)."""
    edges = np.linspace(0.0, max(seconds, 1e-12), max(1, int(bins)) + 1)
    columns = nodes.counter_columns() if columns is None else columns
    zero = np.zeros(len(nodes))
    out = {}
    for level in ("sram", "dram", "noc"):
        amounts = sum((columns.get(k, zero) for k in LEVEL_COUNTERS[level]), zero)
        out[level] = spread(amounts, nodes.start_s, nodes.end_s, edges) / (edges[1] - edges[0])
    return edges, out
