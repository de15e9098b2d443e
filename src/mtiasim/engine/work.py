"""What each command costs: closed forms for work inside a PE, byte flows for shared resources.

For every resolved node this module gives a `Work`: the unit it occupies and for how long at full rate, the
time its core spends issuing it (every loop iteration is one command to the Command Processor), its startup
latency, and, for data movement, the bytes it puts on each shared resource (SRAM slices, LPDDR5 channels,
NoC lanes, Fabric Interfaces) plus the rate caps that latency and issue impose. The timing fidelities
(roofline, analytic, event) all start from these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.engine.cache import SetAssociativeCache
from mtiasim.engine.memmodel import (
    cache_slice,
    cache_slice_bytes,
    dram_channel_parts,
    dram_effective_bytes,
    dram_location,
    dram_transactions,
    hashed_target,
    run_lines,
    sram_slice_bytes,
    tile_slice_bytes,
)
from mtiasim.engine.resolve import Fragment, Node, Resolved, _upstream, job_order
from mtiasim.engine.resources import ResourceMap
from mtiasim.errors import ProgramError
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, se_ops_per_cycle
from mtiasim.isa import (
    Barrier,
    CbPop,
    CoreWork,
    DmaGather,
    DmaIn,
    DmaOut,
    DmaPeer,
    DmaScatter,
    HostCall,
    HostTransfer,
    Level,
    MatMul,
    MluConcat,
    MluReshape,
    MluTranspose,
    PeId,
    Program,
    ReduceOp,
    RowFormat,
    SeMap,
    SeMinMax,
    SeOp,
    SePool,
    SeRowReduce,
    SeRowScale,
    TensorDecl,
)
from mtiasim.isa.memory import TileStream, stream_bytes, stream_runs, tile_runs
from mtiasim.opset import ELEMENTWISE

if TYPE_CHECKING:
    from mtiasim.engine.timing import ColumnBlock, JobFlows, JobGraph

INF = float("inf")

SE_OPS_PER_ELEMENT = {
    SeOp.COPY: 1,
    SeOp.CAST: 1,
    SeOp.QUANTIZE: 2,
    SeOp.DEQUANTIZE: 2,
    **{SeOp(k.value): e.se_ops for k, e in ELEMENTWISE.items()},
}
POOL_OPS_PER_ELEMENT = 3  # dequantize (multiply, add) and accumulate
UNPACK_OPS_PER_ELEMENT = 1  # 4-bit rows: one more op per element to take its nibble out of the byte
FLOAT_POOL_OPS_PER_ELEMENT = 1  # float rows: accumulate (weighted: one fused multiply-add) or max
SCAN_OPS_PER_INDEX = 3  # a row write's index scan on the vector unit: compare with both ends, compress


def own_bytes(tensors: dict[str, TensorDecl], level: Level) -> int:
    """Bytes the tensors of a level occupy (aliases take none of their own)."""
    return sum(t.nbytes for t in tensors.values() if t.level == level and t.base is None)


@dataclass
class FlowPart:
    """Memory-side usage of one stream; a multicast group's members share one part (read once).

    `extra` is the LPDDR5 channel time (in bytes) the stream adds when other streams close its open pages.
    """

    key: tuple
    usage: dict[int, float]
    extra: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleSums:
    """What a bundle of flows puts on the shared resources, per byte it moves: resource indices and fractions
    (its usage, and the LPDDR5 page re-opens when streams interleave), its bytes and its LPDDR5 streams."""

    usage_at: np.ndarray
    usage: np.ndarray
    extra_at: np.ndarray
    extra: np.ndarray
    total: float
    streams: int


LOCAL_MEMORY = "local_memory"  # attribution class of a unit bound by its local-store port


@dataclass
class Work:
    unit: str  # dma, dpe, se, mlu, core, none
    klass: str  # attribution class of its own busy time: compute, issue, ...
    busy_s: float = 0.0
    issue_s: float = 0.0
    items: int = 1
    latency_s: float = 0.0
    bytes: float = 0.0
    parts: list[FlowPart] = field(default_factory=list)
    own_usage: dict[int, float] = field(default_factory=dict)
    cap_bps: float = INF
    cap_kind: str = ""
    granule: float = 1.0  # items the unit needs present to start one command iteration
    hit_frac: float = 1.0  # gathers: rows that hit the SRAM cache; a miss adds `miss_latency_s`
    miss_latency_s: float = 0.0
    re_s: float = 0.0  # a MatMul's reduction-engine time (epilogue conversion and accumulator drain)
    counters: dict[str, float] = field(default_factory=dict)
    bundle_sums: BundleSums | None = (
        None  # the timing model's sums of a flow bundled alone (`timing._bundles`)
    )

    @property
    def is_flow(self) -> bool:
        return self.bytes > 0 and self.unit == "dma"


@dataclass
class MemParts:
    """Where an access pattern's bytes land (counts only: the LPDDR5 timing turns them into channel time)."""

    slices: np.ndarray | None  # effective bytes per SRAM slice
    bursts: np.ndarray | None  # burst bytes per LPDDR5 channel
    activations: np.ndarray | None  # row activations per LPDDR5 channel, the stream alone
    side_bytes: np.ndarray  # data bytes entering the grid from each side (N, S, E, W)
    interleaved: np.ndarray | None = None  # row activations when many streams interleave
    write: bool = False  # LPDDR5 writes (they pay bus turnarounds)
    transactions: np.ndarray | None = None  # LPDDR5 transactions per channel (its controller's queue)
    requests: float = 0.0  # NoC requests the DMA engine issues for the pattern


@dataclass
class Memo:
    """Work-model results that do not depend on calibrated constants, reusable across timing runs of the
    same resolved program (calibration, design sweeps over clocks or latencies)."""

    streams: dict[tuple, tuple[float, MemParts]] = field(default_factory=dict)
    gathers: dict[int, tuple] = field(default_factory=dict)
    cache_hits: dict[int, np.ndarray] | None = None
    dense_miss: dict[str, float] | None = None
    # jobs that are the same (same commands, tensors and addresses) in every run sharing this memo, and the
    # work of their nodes that reads no per-run state (index data, the SRAM cache's contents)
    static_jobs: frozenset[str] = frozenset()
    works: dict[tuple, Work] = field(default_factory=dict)
    # LPDDR5 streams started together by the same command on several PEs: their first accesses, and the
    # banks they keep busy at once for a given number of requests pending per channel
    lockstep: dict[tuple, list[np.ndarray]] | None = None
    banks: dict[tuple, float] = field(default_factory=dict)
    # shape-level resolutions of jobs (job name -> `resolve.Fragment`), reused while job, chip and tensors match
    fragments: dict[str, Fragment] = field(default_factory=dict)
    # per job (by name): its part of the timing model's constraint graph, its nodes' counter columns, its
    # bundles and rates, reused while what they were built from is the same (`timing.JobGraph`, ...)
    graphs: dict[str, JobGraph] = field(default_factory=dict)
    columns: dict[str, ColumnBlock] = field(default_factory=dict)
    flows: dict[str, JobFlows] = field(default_factory=dict)  # bundles and rates (`timing.JobFlows`)


def _add(usage: dict[int, float], index: int, amount: float) -> None:
    if amount:
        usage[index] = usage.get(index, 0.0) + amount


class WorkModel:
    """Computes the `Work` of every node of a resolved program on a chip."""

    def __init__(
        self,
        program: Program,
        resolved: Resolved,
        chip: Chip,
        rmap: ResourceMap,
        data: dict[str, np.ndarray],
        memo: Memo | None = None,
    ) -> None:
        self.program = program
        self.data = data
        self.resolved = resolved
        self.chip = chip
        self.rmap = rmap
        self.cyc = 1.0 / chip.hz
        self.memo = memo if memo is not None else Memo()
        self._mcast_groups: dict[int, tuple[list[PeId], int]] = {}  # `_mcast_group`
        self._gather_lines: dict[int, np.ndarray] = {}  # cache lines of this run's gathers (node id)
        if self.memo.cache_hits is None:
            self.memo.cache_hits = {}
            self._simulate_cache()
        self.gather_hits = self.memo.cache_hits
        if self.memo.dense_miss is None:
            self.memo.dense_miss = self._dense_misses()
        self._job_names = [job.name for job in job_order(program)]
        # the grid side (N, S, E, W) of every SRAM slice and LPDDR5 channel
        self._slice_side = np.array([rmap.slice_side(s) for s in range(chip.sram.slices)], dtype=np.int64)
        self._channel_side = np.array(
            [rmap.channel_side(c) for c in range(chip.dram.channels)], dtype=np.int64
        )
        self._reads_run_state = False
        self._group_key: tuple | None = None
        self._part_usage: dict[tuple, tuple[dict[int, float], dict[int, float]]] = {}
        self._lane_width = max(chip.grid.rows, chip.grid.cols)

    # ----------------------------------------------------------------------------------------- helpers

    def _level_latency_s(self, decl: TensorDecl) -> float:
        sram_s = self.chip.sram.latency_cycles * self.cyc
        if decl.level == Level.SRAM:
            return sram_s
        if decl.cached:
            self._reads_run_state = True  # the SRAM cache's contents differ from run to run
            miss = (self.memo.dense_miss or {}).get(decl.root, 1.0)
            return sram_s + miss * self.chip.dram.latency_ns * 1e-9
        return self.chip.dram.latency_ns * 1e-9

    def _hops(self, pe: PeId) -> int:
        """NoC hops between a PE and the grid's edge, where the SRAM slices and memory controllers attach."""
        r, c = pe
        return min(r, self.chip.grid.rows - 1 - r, c, self.chip.grid.cols - 1 - c) + 1

    def _hops_s(self, pe: PeId) -> float:
        return self._hops(pe) * self.chip.noc.hop_latency_cycles * self.cyc

    def _memory_parts(
        self, decl: TensorDecl, starts, lengths, scale, random_rows: bool = False, write: bool = False
    ) -> MemParts:
        requests = self._requests(lengths, scale)
        if decl.level == Level.SRAM:
            per = sram_slice_bytes(self.chip, starts, lengths, scale)
            return MemParts(per, None, None, self._slice_sides(per), requests=requests)
        bursts, acts, inter = dram_channel_parts(self.chip, starts, lengths, scale, random_rows=random_rows)
        channels = self.chip.dram.channels
        g = self.chip.dram.interleave_bytes
        # data bytes by channel side, for the lanes (the NoC carries data, not activations)
        raw = np.bincount(
            hashed_target(np.asarray(starts) // g, channels),
            weights=np.asarray(lengths, dtype=np.float64),
            minlength=channels,
        )
        raw *= scale
        side = np.bincount(self._channel_side, weights=raw, minlength=4)
        trans = dram_transactions(self.chip, starts, lengths, scale)
        return MemParts(None, bursts, acts, side, inter, write=write, requests=requests, transactions=trans)

    def _requests(self, lengths, scale: float) -> float:
        """NoC requests for runs of these lengths: a run is cut into requests of at most `request_bytes`."""
        r = self.chip.dma.request_bytes
        return float((-(-np.asarray(lengths, dtype=np.int64) // r)).sum()) * scale

    def _slice_sides(self, per_slice: np.ndarray) -> np.ndarray:
        """Bytes per side of the grid (N, S, E, W) of bytes per SRAM slice."""
        return np.bincount(self._slice_side, weights=per_slice, minlength=4)

    def _usage(self, parts: MemParts, banks: float | None = None) -> dict[int, float]:
        usage: dict[int, float] = {}
        if parts.slices is not None:
            s0 = self.rmap.slice0
            for s_, b in enumerate(parts.slices.tolist()):
                if b:
                    usage[s0 + s_] = b
        if parts.bursts is not None:
            eff = dram_effective_bytes(self.chip, parts.bursts, parts.activations, parts.write, banks)
            c0 = self.rmap.channel0
            for c, b in enumerate(eff.tolist()):
                if b:
                    usage[c0 + c] = b
        if parts.transactions is not None:
            t = self.chip.dram.transaction_bytes
            q0 = self.rmap.queue0
            for c, n in enumerate(parts.transactions.tolist()):
                if n * t:
                    usage[q0 + c] = n * t
        return usage

    def _extra(self, parts: MemParts, banks: float | None = None) -> dict[int, float]:
        """LPDDR5 channel bytes a stream adds when interleaving with others closes its pages."""
        out: dict[int, float] = {}
        if (
            parts.bursts is not None
            and parts.interleaved is not None
            and (parts.interleaved > parts.activations).any()
        ):
            alone = dram_effective_bytes(self.chip, parts.bursts, parts.activations, parts.write, banks)
            inter = dram_effective_bytes(self.chip, parts.bursts, parts.interleaved, parts.write, banks)
            for c, b in enumerate(np.maximum(inter - alone, 0.0)):
                _add(out, self.rmap.channel0 + c, float(b))
        return out

    def _memory_usage(
        self, decl: TensorDecl, starts, lengths, scale, random_rows: bool = False
    ) -> tuple[dict[int, float], np.ndarray]:
        """Bytes per slice or channel resource, and bytes per side of the grid they enter from."""
        parts = self._memory_parts(decl, starts, lengths, scale, random_rows)
        return self._usage(parts), parts.side_bytes

    def _lanes(
        self, side_bytes: np.ndarray, pes: list[PeId], axis: str | None, inbound: bool
    ) -> dict[int, float]:
        """NoC entry lanes used: data enters the grid at the target's column (N/S) or row (E/W); a multicast
        enters once and is replicated along its row or column (spread over the entry points it can use)."""
        usage: dict[int, float] = {}
        for side in range(4):
            b = side_bytes[side]
            if not b:
                continue
            along_cols = side in (0, 1)
            base = (self.rmap.lane_in0 if inbound else self.rmap.lane_out0) + side * self._lane_width
            at = 1 if along_cols else 0  # N/S lanes by the PE's column, E/W by its row
            if axis is None:
                targets = [base + pe[at] for pe in pes]  # as `ResourceMap.lane`
                share = b  # unicast: every target receives the whole stream
            elif (axis == "row") == along_cols:
                targets = [base + pe[at] for pe in pes]
                share = b / len(pes)  # the replication runs across the entry lanes: spread over them
            else:
                targets = [self.rmap.lane(side, pes[0], inbound)]
                share = b
            for t in targets:
                _add(usage, t, share)
        return usage

    @staticmethod
    def _stream_key(decl: TensorDecl, stream: TileStream, inbound: bool) -> tuple:
        return (decl.name, decl.address, decl.level, decl.cached, inbound, stream)

    def _measure_streams(self, nodes: list[Node]) -> None:
        """Where the scratchpad tile streams of these nodes' DMA commands land (`memo.streams`), all in one
        pass: their sampled runs, SRAM slice bytes, grid sides and NoC requests as arrays over the streams.
        Every stream's results equal its own `_stream_part` measurement (integer sums, the same roundings)."""
        todo: dict[tuple, tuple[TensorDecl, TileStream]] = {}
        for node in nodes:
            cmd = node.cmd
            if isinstance(cmd, DmaIn):
                pairs = [(tr.stream, True) for tr in cmd.transfers]
            elif isinstance(cmd, DmaOut):
                pairs = [(cmd.stream, False)]
            else:
                continue
            for stream, inbound in pairs:
                decl = self.program.tensors[stream.tensor]
                key = self._stream_key(decl, stream, inbound)
                if decl.level == Level.SRAM and key not in self.memo.streams:
                    todo[key] = (decl, stream)
        if not todo:
            return
        tiles = tile_runs(list(todo.values()))
        slices = tile_slice_bytes(self.chip, tiles)
        n = len(todo)
        sides = np.bincount(
            (np.arange(n)[:, None] * 4 + self._slice_side[None, :]).reshape(-1),
            weights=slices.reshape(-1),
            minlength=n * 4,
        ).reshape(n, 4)
        r = self.chip.dma.request_bytes
        requests = tiles.per_stream(tiles.runs * -(-tiles.run_bytes // r)).tolist()
        run_bytes = tiles.per_stream(tiles.runs * tiles.run_bytes).tolist()
        scales = tiles.scale.tolist()
        for i, (key, (decl, stream)) in enumerate(todo.items()):
            # a stream sampled whole moves its runs' bytes
            nbytes = float(run_bytes[i]) if scales[i] == 1.0 else float(stream_bytes(decl, stream))
            parts = MemParts(slices[i], None, None, sides[i], requests=float(requests[i]) * scales[i])
            self.memo.streams[key] = (nbytes, parts)

    def _stream_part(
        self, decl: TensorDecl, stream, pes: list[PeId], axis: str | None, inbound: bool
    ) -> tuple[float, dict[int, float], dict[int, float]]:
        key = self._stream_key(decl, stream, inbound)
        hit = self.memo.streams.get(key)
        if hit is None:
            runs = stream_runs(decl, stream)
            if decl.level == Level.DRAM and decl.cached:
                parts = self._cached_stream_parts(decl, runs, inbound)
            else:
                parts = self._memory_parts(
                    decl, runs.sample_starts, runs.sample_lengths, runs.sample_scale, write=not inbound
                )
            hit = (float(stream_bytes(decl, stream)), parts)
            self.memo.streams[key] = hit
        nbytes, parts = hit
        banks = (
            self._bank_parallelism(self._group_key, decl) if parts.bursts is not None and inbound else None
        )
        self._last_parts = parts
        # the members of a multicast group ask for the same usage: computed once (the dicts are not mutated)
        ukey = (key, tuple(pes), axis, banks)
        got = self._part_usage.get(ukey)
        if got is None:
            usage = self._usage(parts, banks)
            for k, v in self._lanes(parts.side_bytes, pes, axis, inbound).items():
                _add(usage, k, v)
            got = (usage, self._extra(parts, banks))
            self._part_usage[ukey] = got
        return nbytes, *got

    def _cached_stream_parts(self, decl: TensorDecl, runs, inbound: bool) -> MemParts:
        """A tile stream over an LPDDR5 tensor reached through the SRAM cache: every access reads (or writes)
        whole lines in the slice of its memory controller. LPDDR5 sees whole lines: reads miss in the tensor's
        miss fraction and are filled (a line once per miss, also written into its slice), written lines are
        written back once each."""
        chip = self.chip
        line = chip.sram.cache_line_bytes
        starts, lengths, scale = runs.sample_starts, runs.sample_lengths, runs.sample_scale
        slices = cache_slice_bytes(chip, starts, lengths, scale)
        side = self._slice_sides(slices)
        miss = (self.memo.dense_miss or {}).get(decl.root, 1.0) if inbound else 1.0
        # the distinct lines of the sample, in first-touch order, stand for the lines LPDDR5 moves
        lines, _ = run_lines(starts, lengths, line)
        _u, first = np.unique(lines, return_index=True)
        distinct = lines[np.sort(first)]
        total = runs.bytes  # bytes the stream accesses (all of it)
        moved = total * miss if inbound else total  # bytes of lines that cross to or from LPDDR5
        line_scale = moved / max(1.0, float(distinct.size * line))
        fstarts = distinct * line
        flens = np.full(distinct.size, line, dtype=np.int64)
        bursts, alone, inter = dram_channel_parts(chip, fstarts, flens, line_scale)
        trans = dram_transactions(chip, fstarts, flens, line_scale)
        if inbound:
            fills = np.zeros(chip.sram.slices)
            np.add.at(fills, cache_slice(chip, fstarts), float(line) * line_scale)
            slices = slices + fills  # a missing line is written into its slice before it is read
        return MemParts(
            slices,
            bursts,
            alone,
            side,
            inter,
            write=not inbound,
            requests=self._requests(lengths, scale),
            transactions=trans,
        )

    def _dense_misses(self) -> dict[str, float]:
        """Per LPDDR5 tensor read by tile streams through the SRAM cache: the fraction of its reads that
        miss. The first read of every byte misses; re-reads hit while the cached tensors of the program fit
        the cache (LRU over a larger footprint keeps the capacity's share of them). Aliases count as the
        buffer they view."""
        reads: dict[str, float] = {}
        footprint: dict[str, int] = {}
        for node in self.resolved.nodes:
            cmd = node.cmd
            if isinstance(cmd, DmaIn):
                for ti, tr in enumerate(cmd.transfers):
                    decl = self.program.tensors[tr.stream.tensor]
                    if not (decl.level == Level.DRAM and decl.cached):
                        continue
                    gid = node.mcast_group[ti] if node.mcast_group else None
                    if gid is not None and node.id != self._mcast_group(gid)[1]:
                        continue  # one memory read per multicast group
                    root = decl.root
                    reads[root] = reads.get(root, 0.0) + stream_bytes(decl, tr.stream)
                    footprint[root] = self.program.tensors.get(root, decl).nbytes
            elif isinstance(cmd, DmaOut):
                decl = self.program.tensors[cmd.stream.tensor]
                if decl.level == Level.DRAM and decl.cached:
                    footprint[decl.root] = self.program.tensors.get(decl.root, decl).nbytes
        sram_used = own_bytes(self.program.tensors, Level.SRAM)
        capacity = max(0, self.chip.sram.bytes - sram_used)
        total = sum(footprint.values())
        keep = min(1.0, capacity / total) if total else 1.0
        out = {}
        for name, nbytes in reads.items():
            first = min(1.0, footprint[name] / nbytes) if nbytes else 1.0
            out[name] = 1.0 - (1.0 - first) * keep
        return out

    # ------------------------------------------------------------------------------- LPDDR5 lockstep

    def _pending_per_channel(self, cached: bool) -> int:
        """LPDDR5 transactions one channel's controller works on at once when the memory is busy: its queue."""
        return max(1, round(self.chip.dram.queue_entries))

    def _bank_parallelism(self, group: tuple, decl: TensorDecl) -> float:
        """Banks one LPDDR5 channel keeps cycling at once for the reads of a command that several PEs start
        together (the same command of their programs): they run in lockstep, so the requests pending at a
        channel come from the front of all their streams. Where their addresses are a power-of-two stride
        apart, those requests pile onto one bank and the channel opens one row per tRC; spread, they keep
        many banks busy (then tRRD/tFAW or the bus bind). Expected distinct banks among the pending requests
        of each channel, averaged over the streams' first accesses."""
        if self.memo.lockstep is None:
            self.memo.lockstep = self._lockstep_streams()
        seqs = self.memo.lockstep.get(group)
        if not seqs:
            return float(self.chip.dram.banks_per_channel)
        pending = self._pending_per_channel(decl.cached)
        key = (group, pending)
        got = self.memo.banks.get(key)
        if got is None:
            got = lockstep_banks(self.chip, seqs, pending)
            self.memo.banks[key] = got
        return got

    def _lockstep_streams(self) -> dict[tuple, list[np.ndarray]]:
        """The first LPDDR5 addresses (cache-line fills through the cache, run pieces direct) of every distinct
        read stream, grouped by the command that starts them together on several PEs."""
        chip = self.chip
        line = chip.sram.cache_line_bytes
        groups: dict[tuple, dict[tuple, np.ndarray]] = {}
        for node in self.resolved.nodes:
            if not isinstance(node.cmd, DmaIn):
                continue
            for ti, tr in enumerate(node.cmd.transfers):
                decl = self.program.tensors[tr.stream.tensor]
                if decl.level != Level.DRAM:
                    continue
                g = groups.setdefault((node.job, node.core, node.pos, ti), {})
                skey = (decl.name, tr.stream)
                if skey in g:
                    continue
                starts, lengths = _first_runs(decl, tr.stream, LOCKSTEP_ACCESSES)
                if decl.cached:
                    lines, _ = run_lines(starts, lengths, line)
                    _u, first = np.unique(lines, return_index=True)
                    addr = lines[np.sort(first)] * line
                else:
                    addr = starts
                g[skey] = addr[:LOCKSTEP_ACCESSES]
        return {k: list(v.values()) for k, v in groups.items()}

    # ------------------------------------------------------------------------------------------ cache

    def _simulate_cache(self) -> None:
        """Run every cached-table gather through the set-associative model of the SRAM in cache mode."""
        gathers = []
        for node in self.resolved.nodes:
            if isinstance(node.cmd, DmaGather):
                decl = self.program.tensors[node.cmd.table]
                if decl.level == Level.DRAM and decl.cached:
                    gathers.append(node)
        if not gathers:
            return
        line = self.chip.sram.cache_line_bytes
        cache = SetAssociativeCache(self.chip, self.cache_capacity_lines())
        history = []  # the lines of earlier batches, oldest first (none to keep where the cache has no lines)
        if cache.capacity:
            if self.program.cache_state is not None:
                history.append(np.asarray(self.program.cache_state, dtype=np.int64))
            for name, rows in self.program.cache_history.items():
                decl = self.program.tensors.get(name)
                if decl is not None and decl.cached:
                    history.append(_row_lines(decl, np.asarray(rows, dtype=np.int64), line)[0])
        if history:
            cache.warm(np.concatenate(history))
        # interleave the PEs' accesses by their relative position, as concurrent PEs would issue them
        line_ids, row_of, pos = [], [], []
        for node in gathers:
            cmd = node.cmd
            decl = self.program.tensors[cmd.table]
            rows = self._gather_rows(node)
            lines, row_index = _row_lines(decl, rows, line)
            self._gather_lines[node.id] = lines
            line_ids.append(lines)
            row_of.append(row_index)
            pos.append((row_index + 0.5) / max(rows.size, 1))
        all_lines = np.concatenate(line_ids)
        all_row = np.concatenate(row_of)
        if cache.capacity == 0:  # the scratchpad holds the whole SRAM: every access misses, in any order
            hits = np.zeros(all_lines.size, dtype=bool)
        else:
            order = np.argsort(np.concatenate(pos), kind="stable")
            hits = np.empty(all_lines.size, dtype=bool)
            hits[order] = cache.run(all_lines[order])
        # each gather's accesses are one contiguous segment of the concatenation, in its own order
        end = np.cumsum([lines.size for lines in line_ids]).tolist()
        for node, lo, hi in zip(gathers, [0, *end[:-1]], end, strict=True):
            self.memo.cache_hits[node.id] = np.stack([all_row[lo:hi], hits[lo:hi]], axis=1)

    def cache_capacity_lines(self) -> int:
        """Lines the SRAM caches: what the resident (scratchpad) tensors leave of it."""
        sram_used = own_bytes(self.program.tensors, Level.SRAM)
        return max(0, self.chip.sram.bytes - sram_used) // self.chip.sram.cache_line_bytes

    def _gather_rows(self, node: Node) -> np.ndarray:
        cmd = node.cmd
        assert isinstance(cmd, DmaGather | DmaScatter)
        data = self.data.get(cmd.indices)
        if data is None:
            decl = self.program.tensors[cmd.table]
            if decl.level == Level.DRAM and decl.cached:
                raise ProgramError(
                    f"{node.where}: timing needs the index tensor {cmd.indices!r} (index streams drive the "
                    "cache model)"
                )
            # indices the device computes are not known in a timing run: the rows are taken as spread
            # evenly over the table (they only decide which SRAM slices or LPDDR5 channels serve them)
            return np.linspace(0, decl.rows - 1, cmd.count).round().astype(np.int64)
        return data.reshape(-1)[cmd.start : cmd.start + cmd.count].astype(np.int64) + cmd.table_row_offset

    # ------------------------------------------------------------------------------------------- work

    def works(self, nodes: list[Node]) -> list[Work]:
        """The work of every node: the scratchpad streams of the DMA commands still to model are measured
        first, all in one pass (`_measure_streams`)."""
        kept = [self._kept_work(n) for n in nodes]
        self._measure_streams([n for n, w in zip(nodes, kept, strict=True) if w is None])
        return [self.work(n) if w is None else w for n, w in zip(nodes, kept, strict=True)]

    def _kept_key(self, node: Node) -> tuple | None:
        """The key of a node's work in the memo, where its job is the same in every run sharing the memo."""
        job = self._job_names[node.job]
        return (job, node.pe, node.core, node.pos) if job in self.memo.static_jobs else None

    def _kept_work(self, node: Node) -> Work | None:
        key = self._kept_key(node)
        return None if key is None else self.memo.works.get(key)

    def work(self, node: Node) -> Work:
        key = self._kept_key(node)
        if key is not None and key in self.memo.works:
            return self.memo.works[key]
        self._reads_run_state = False
        w = self._work(node)
        if key is not None and not self._reads_run_state:
            self.memo.works[key] = w
        return w

    def _work(self, node: Node) -> Work:
        cmd = node.cmd
        fn = getattr(self, "_w_" + type(cmd).__name__)
        w: Work = fn(node, cmd)
        if w.unit in ("dpe", "se", "mlu"):
            # the unit streams its operands through the PE's local-store port: it cannot go faster than that
            ls_bytes = w.counters.get("ls_read_bytes", 0.0) + w.counters.get("ls_write_bytes", 0.0)
            ls_s = ls_bytes / (self.chip.local_memory.bytes_per_cycle * self.chip.hz)
            if ls_s > w.busy_s:
                w.busy_s, w.klass = ls_s, LOCAL_MEMORY
        return w

    def _issue(self, commands: float, extra_cycles: float = 0.0) -> float:
        return (commands * self.chip.core.cycles_per_command + extra_cycles) * self.cyc

    def _w_DmaIn(self, node: Node, cmd: DmaIn) -> Work:
        w = Work("dma", "dma", items=cmd.iterations)
        lat = 0.0
        requests = 0.0
        for ti, tr in enumerate(cmd.transfers):
            decl = self.program.tensors[tr.stream.tensor]
            gid = node.mcast_group[ti] if node.mcast_group else None
            self._group_key = (node.job, node.core, node.pos, ti)
            if gid is not None and tr.multicast is not None:
                members, _leader = self._mcast_group(gid)
                nbytes, usage, extra = self._stream_part(decl, tr.stream, members, tr.multicast.axis, True)
                key: tuple = ("mcast", gid)
            else:
                nbytes, usage, extra = self._stream_part(decl, tr.stream, [node.pe], None, True)
                key = ("node", node.id, ti)
            w.parts.append(FlowPart(key, usage, extra))
            w.bytes += nbytes
            requests += self._last_parts.requests
            lat = max(lat, self._level_latency_s(decl))
            if gid is None or node.id == self._mcast_group(gid)[1]:  # memory is read once per multicast group
                _count_access(w.counters, "read", decl, nbytes, self._last_parts)
        _add(w.own_usage, self.rmap.fi_in(node.pe), w.bytes)
        w.counters["noc_bytes"] = w.bytes
        w.counters["noc_byte_hops"] = w.bytes * self._hops(node.pe)
        w.counters["ls_write_bytes"] = w.bytes
        w.latency_s = lat + self._hops_s(node.pe)
        w.issue_s = self._issue(cmd.iterations * len(cmd.transfers), self.chip.dma.setup_cycles)
        w.counters["commands"] = cmd.iterations * len(cmd.transfers)
        self._caps(w, self._in_flight(w.bytes, requests) / max(w.latency_s, 1e-12), "latency")
        return w

    def _mcast_group(self, gid: int) -> tuple[list[PeId], int]:
        """A multicast group's member PEs (sorted) and its leader, the member node of the lowest id."""
        got = self._mcast_groups.get(gid)
        if got is None:
            group = self.resolved.mcast_groups[gid]
            got = (sorted(self.resolved.nodes[n].pe for n, _ in group), min(n for n, _ in group))
            self._mcast_groups[gid] = got
        return got

    def _in_flight(self, nbytes: float, requests: float) -> float:
        """Bytes a DMA engine keeps in flight: `outstanding_requests` requests of the pattern's mean size."""
        dma = self.chip.dma
        size = nbytes / requests if requests > 0 else float(dma.request_bytes)
        return dma.outstanding_requests * min(size, float(dma.request_bytes))

    def _w_DmaOut(self, node: Node, cmd: DmaOut) -> Work:
        decl = self.program.tensors[cmd.stream.tensor]
        w = Work("dma", "dma", items=cmd.stream.n_tiles)
        self._group_key = (node.job, node.core, node.pos, 0)
        nbytes, usage, extra = self._stream_part(decl, cmd.stream, [node.pe], None, False)
        parts = self._last_parts
        w.parts.append(FlowPart(("node", node.id, 0), usage, extra))
        w.bytes = nbytes
        _add(w.own_usage, self.rmap.fi_out(node.pe), nbytes)
        w.latency_s = self._level_latency_s(decl) + self._hops_s(node.pe)
        w.issue_s = self._issue(cmd.stream.n_tiles, self.chip.dma.setup_cycles)
        w.counters.update(
            noc_bytes=nbytes,
            noc_byte_hops=nbytes * self._hops(node.pe),
            ls_read_bytes=nbytes,
            commands=cmd.stream.n_tiles,
        )
        _count_access(w.counters, "write", decl, nbytes, parts)
        self._caps(w, self._in_flight(nbytes, parts.requests) / max(w.latency_s, 1e-12), "latency")
        return w

    def _w_DmaPeer(self, node: Node, cmd: DmaPeer) -> Work:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.INT8
        nbytes = float(cmd.n_tiles * shape[0] * shape[1] * dt.itemsize)
        w = Work("dma", "dma", items=cmd.n_tiles, bytes=nbytes)
        _add(w.own_usage, self.rmap.fi_in(node.pe), nbytes)
        _add(w.own_usage, self.rmap.fi_out(cmd.src_pe), nbytes)
        dist = abs(node.pe[0] - cmd.src_pe[0]) + abs(node.pe[1] - cmd.src_pe[1])
        w.latency_s = (
            dist * self.chip.noc.hop_latency_cycles + 2 * self.chip.sram.latency_cycles / 3
        ) * self.cyc
        w.issue_s = self._issue(cmd.n_tiles, self.chip.dma.setup_cycles)
        w.counters.update(
            noc_bytes=nbytes,
            noc_byte_hops=nbytes * dist,
            ls_read_bytes=nbytes,
            ls_write_bytes=nbytes,
            commands=cmd.n_tiles,
        )
        # local store to local store: each tile is contiguous, cut into requests
        requests = cmd.n_tiles * math.ceil(nbytes / max(cmd.n_tiles, 1) / self.chip.dma.request_bytes)
        self._caps(w, self._in_flight(nbytes, requests) / max(w.latency_s, 1e-12), "latency")
        return w

    def _w_DmaGather(self, node: Node, cmd: DmaGather) -> Work:
        chip = self.chip
        decl = self.program.tensors[cmd.table]
        idx = self.program.tensors[cmd.indices]
        w = Work("dma", "dma", items=max(cmd.count, 1))
        self._reads_run_state = True  # the rows it gathers are data
        memo = self.memo.gathers.get(node.id)
        if memo is None:
            memo = self._gather_parts(node, decl)
            self.memo.gathers[node.id] = memo
        n, hit_frac, parts = memo
        per_row = decl.cols * decl.dtype.itemsize
        nbytes = float(n * per_row)
        # independent rows: the requests pending at a channel land on random banks
        banks = None
        if parts.bursts is not None:
            b = chip.dram.banks_per_channel
            banks = b * (1.0 - (1.0 - 1.0 / b) ** self._pending_per_channel(decl.cached))
        usage = self._usage(parts, banks)
        # the index list itself is read from its tensor
        idx_slice = int(
            hashed_target(np.array([idx.address // chip.sram.interleave_bytes]), chip.sram.slices)[0]
        )
        _add(usage, self.rmap.slice0 + idx_slice, float(cmd.count * idx.dtype.itemsize))
        for k, v in self._lanes(parts.side_bytes, [node.pe], None, True).items():
            _add(usage, k, v)
        w.parts.append(FlowPart(("node", node.id, 0), usage))
        w.bytes = nbytes
        _add(w.own_usage, self.rmap.fi_in(node.pe), nbytes)
        sram_s = chip.sram.latency_cycles * self.cyc
        if decl.level == Level.SRAM:
            latency = sram_s
        elif decl.cached:
            latency = sram_s + (1.0 - hit_frac) * chip.dram.latency_ns * 1e-9
            w.hit_frac, w.miss_latency_s = hit_frac, chip.dram.latency_ns * 1e-9
        else:
            latency = chip.dram.latency_ns * 1e-9
        w.latency_s = latency + self._hops_s(node.pe)
        w.issue_s = (chip.dma.setup_cycles + n * chip.core.cycles_per_gather_row) * self.cyc
        # every row is a DMA command of its own (no indexed DMA on v1): the engine's concurrent commands are
        # the rows in flight, unless its outstanding requests run out first
        row_requests = math.ceil(per_row / chip.dma.request_bytes)
        rows_in_flight = min(
            float(chip.dma.concurrent_commands), chip.dma.outstanding_requests / row_requests
        )
        self._caps(w, rows_in_flight * per_row / max(w.latency_s, 1e-12), "latency")
        w.counters.update(
            noc_bytes=nbytes,
            noc_byte_hops=nbytes * self._hops(node.pe),
            ls_write_bytes=nbytes,
            commands=n,
            gathered_rows=n,
        )
        w.counters["cache_hit_rows"] = hit_frac * n
        _count_access(w.counters, "read", decl, nbytes, parts)
        return w

    def _w_DmaScatter(self, node: Node, cmd: DmaScatter) -> Work:
        """Rows written where their indices say (`isa.DmaScatter`): the core scans the indices on its vector
        unit (`SCAN_OPS_PER_INDEX` integer ops each), then for each row in its range computes the address and
        issues the row's DMA (as a gather does), plus the DMA of the src row in and, when adding, of the table
        row in: a read-modify-write whose SE add (one FP32 op per element) overlaps the DMAs and is counted,
        not timed."""
        chip = self.chip
        table, src = self.program.tensors[cmd.table], self.program.tensors[cmd.src]
        idx = self.program.tensors[cmd.indices]
        self._reads_run_state = True  # which rows it writes is data
        rows = self._gather_rows(node)
        hi = table.rows if cmd.row_hi is None else cmd.row_hi
        k = np.nonzero((rows >= cmd.row_lo) & (rows < hi))[0]
        m, acc = k.size, int(cmd.accumulate)
        row_bytes, src_bytes = table.cols * table.dtype.itemsize, src.cols * src.dtype.itemsize
        w = Work("dma", "dma", items=max(m, 1))
        usage: dict[int, float] = {}
        # the whole index list is read (every PE sharing the rows scans all of it)
        idx_bytes = cmd.count * idx.dtype.itemsize
        i_parts = self._memory_parts(idx, np.array([idx.address + cmd.start * idx.dtype.itemsize]),
                                     np.array([max(idx_bytes, 1)]), 1.0)  # fmt: skip
        streams = [(i_parts, 1, (True,))]
        if m:
            t_parts = self._row_parts(table, rows[k])
            s_parts = self._row_parts(src, cmd.src_row0 + k * cmd.src_step)
            streams += [(t_parts, 1 + acc, (False, True)[: 1 + acc]), (s_parts, 1, (True,))]
            _count_access(w.counters, "write", table, float(m * row_bytes), t_parts)
            _count_access(w.counters, "read", src, float(m * src_bytes), s_parts)
            if acc:
                _count_access(w.counters, "read", table, float(m * row_bytes), t_parts)
        _count_access(w.counters, "read", idx, float(idx_bytes), i_parts)
        for parts, times, lanes in streams:
            for key, v in self._usage(parts).items():
                _add(usage, key, times * v)
            for inbound in lanes:
                for key, v in self._lanes(parts.side_bytes, [node.pe], None, inbound).items():
                    _add(usage, key, v)
        w.parts.append(FlowPart(("node", node.id, 0), usage))
        inbound_bytes = float(m * (src_bytes + acc * row_bytes) + idx_bytes)
        w.bytes = inbound_bytes + m * row_bytes
        _add(w.own_usage, self.rmap.fi_out(node.pe), float(m * row_bytes))
        _add(w.own_usage, self.rmap.fi_in(node.pe), inbound_bytes)
        read_s = max(self._level_latency_s(src), self._level_latency_s(table) if acc else 0.0)
        w.latency_s = read_s + self._level_latency_s(table) + self._hops_s(node.pe)
        scan = cmd.count * SCAN_OPS_PER_INDEX * idx.dtype.itemsize / chip.vector.int8_ops_per_cycle
        per_row = chip.core.cycles_per_gather_row + (1 + acc) * chip.core.cycles_per_command
        w.issue_s = (chip.dma.setup_cycles + scan + m * per_row) * self.cyc
        # rows in flight as a gather's (one command each, unless the outstanding requests run out first);
        # the index list streams as a DMA loop does
        lat = max(w.latency_s, 1e-12)
        row_requests = math.ceil(max(row_bytes, src_bytes) / chip.dma.request_bytes)
        rows_in_flight = min(
            float(chip.dma.concurrent_commands), chip.dma.outstanding_requests / row_requests
        )
        idx_in_flight = self._in_flight(float(idx_bytes), self._requests([max(idx_bytes, 1)], 1.0))
        flight_s = m * lat / rows_in_flight + idx_bytes * lat / idx_in_flight
        self._caps(w, w.bytes / max(flight_s, 1e-12), "latency")
        w.counters.update(
            noc_bytes=w.bytes,
            noc_byte_hops=w.bytes * self._hops(node.pe),
            ls_read_bytes=float(m * row_bytes),
            ls_write_bytes=inbound_bytes,
            commands=float(m * (2 + acc)),
            scattered_rows=float(m),
        )
        if acc:
            w.counters["se_ops"] = float(m * table.cols)
        return w

    def _row_parts(self, decl: TensorDecl, rows: np.ndarray) -> MemParts:
        """Where rows at scattered positions of a tensor land (a sample of at most 8192 rows)."""
        pick = (
            rows if rows.size <= 8192 else rows[np.linspace(0, rows.size - 1, 8192).round().astype(np.int64)]
        )
        starts = decl.address + pick * decl.pitch
        lengths = np.full(pick.size, decl.cols * decl.dtype.itemsize, dtype=np.int64)
        return self._memory_parts(decl, starts, lengths, rows.size / pick.size, random_rows=True)

    def _gather_parts(self, node: Node, decl: TensorDecl) -> tuple[int, float, MemParts]:
        """(rows, fraction of rows that hit the SRAM cache, where the bytes land) of one gather."""
        rows = self._gather_rows(node)
        n = rows.size
        if n == 0:
            return 0, 1.0, MemParts(None, None, None, np.zeros(4))
        if decl.level == Level.DRAM and decl.cached:
            return n, *self._cached_parts(node, decl, rows)
        max_sample = 8192
        pick = rows if n <= max_sample else rows[np.linspace(0, n - 1, max_sample).round().astype(np.int64)]
        starts = decl.address + pick * decl.pitch
        lengths = np.full(pick.size, decl.cols * decl.dtype.itemsize, dtype=np.int64)
        parts = self._memory_parts(decl, starts, lengths, n / pick.size, random_rows=True)
        return n, (1.0 if decl.level == Level.SRAM else 0.0), parts

    def _cached_parts(self, node: Node, decl: TensorDecl, rows: np.ndarray) -> tuple[float, MemParts]:
        """A gather through the SRAM cache: every line a row touches (a row straddling a line boundary touches
        two) is read whole from the slice of its memory controller; missing lines are first filled from LPDDR5
        (an independent access each) and written into their slice."""
        chip = self.chip
        line = chip.sram.cache_line_bytes
        rec = self.gather_hits[node.id]  # (row position, hit) per line access
        lines = self._gather_lines.get(node.id)
        if lines is None:
            lines, _ = _row_lines(decl, rows, line)
        hit = rec[:, 1].astype(bool)
        starts = lines * line
        slc = cache_slice(chip, starts)
        slices = np.bincount(slc, minlength=chip.sram.slices).astype(np.float64) * line
        side = self._slice_sides(slices)
        bursts = acts = trans = None
        if (~hit).any():
            lens = np.full(int((~hit).sum()), line, dtype=np.int64)
            bursts, acts, _inter = dram_channel_parts(chip, starts[~hit], lens, 1.0, random_rows=True)
            trans = dram_transactions(chip, starts[~hit], lens, 1.0)
            slices = slices + np.bincount(slc[~hit], minlength=chip.sram.slices).astype(np.float64) * line
        # a row hits when every line it touches hits
        row_hit = np.bincount(rec[:, 0].astype(np.int64), weights=~hit, minlength=rows.size) == 0
        return float(row_hit.mean()), MemParts(slices, bursts, acts, side, transactions=trans)

    def _w_MatMul(self, node: Node, cmd: MatMul) -> Work:
        chip = self.chip
        d = chip.dpe
        sub = (
            math.ceil(cmd.tile_m / d.block_m)
            * math.ceil(cmd.tile_n / d.block_n)
            * math.ceil(cmd.tile_k / d.block_k)
        )
        cycles_per_sub = d.block_m * d.block_n * d.block_k / dpe_macs_per_cycle(chip, cmd.dtype)
        acc_bytes = cmd.tile_m * cmd.tile_n * 4
        drain = acc_bytes / chip.re.bytes_per_cycle
        dpe_cycles = cmd.blocks * cmd.steps * sub * cycles_per_sub
        epi_ops = epilogue_ops_per_element(cmd)
        epi_block = 0.0
        if epi_ops:
            # the RE converts a block while the DPE computes the next: a two-stage pipeline
            epi_block = cmd.tile_m * cmd.tile_n * epi_ops / se_ops_per_cycle(chip, DType.FP32)
            busy_cycles = max(dpe_cycles, cmd.blocks * epi_block) + epi_block + drain
        else:
            busy_cycles = dpe_cycles + drain
        w = Work("dpe", "compute", items=cmd.blocks * cmd.steps)
        w.busy_s = busy_cycles * self.cyc
        w.re_s = min(busy_cycles, cmd.blocks * epi_block + drain) * self.cyc
        w.latency_s = d.pipeline_latency_cycles * self.cyc
        vectors = (cmd.bias_cb is not None) + cmd.epilogue_vectors
        commands = cmd.blocks * (cmd.steps * sub + 2 + vectors)
        w.issue_s = self._issue(commands)
        macs = cmd.blocks * cmd.steps * sub * d.block_m * d.block_n * d.block_k
        in_bytes = cmd.blocks * cmd.steps * (cmd.tile_m + cmd.tile_n) * cmd.tile_k * cmd.dtype.itemsize
        in_bytes += (
            cmd.blocks
            * 4
            * (
                cmd.tile_n
                * ((cmd.bias_cb is not None) + (cmd.scale_cb is not None) + (cmd.post_bias_cb is not None))
                + cmd.tile_m * (cmd.row_scale_cb is not None)
            )
        )
        w.counters.update(
            {
                f"dpe_macs_{cmd.dtype.value}": float(macs),
                "ls_read_bytes": float(in_bytes),
                "commands": commands,
            }
        )
        if epi_ops:
            w.counters["epilogue_ops"] = float(cmd.blocks * cmd.tile_m * cmd.tile_n * epi_ops)
        if cmd.out_cb is not None:
            out_dt = cmd.out_dtype or cmd.acc_dtype
            w.counters["ls_write_bytes"] = float(cmd.blocks * cmd.tile_m * cmd.tile_n * out_dt.itemsize)
        else:
            w.counters["reduction_bytes"] = float(cmd.blocks * acc_bytes)
        return w

    def reduce_link_s(self, cmd: MatMul) -> tuple[float, float]:
        """(time to send one partial block over a reduction link, hop latency)."""
        acc_bytes = cmd.tile_m * cmd.tile_n * 4
        return (
            acc_bytes / self.chip.reduction.link_bytes_per_cycle * self.cyc,
            self.chip.reduction.hop_latency_cycles * self.cyc,
        )

    def _se(self, elems: float, ops_per: float, dtype: DType, commands: int) -> tuple[float, float]:
        chip = self.chip
        busy = elems * ops_per / se_ops_per_cycle(chip, dtype) + commands * chip.se.command_overhead_cycles
        return busy * self.cyc, elems * ops_per

    def _w_SeMap(self, node: Node, cmd: SeMap) -> Work:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.FP16
        elems = float(cmd.n_tiles * shape[0] * shape[1])
        w = Work("se", "compute", items=cmd.n_tiles)
        w.busy_s, ops = self._se(elems, SE_OPS_PER_ELEMENT[cmd.op], dt, cmd.n_tiles)
        w.issue_s = self._issue(cmd.n_tiles)
        w.latency_s = self.chip.se.command_overhead_cycles * self.cyc
        n_in = 2 if cmd.src2 is not None else 1
        w.counters.update(
            se_ops=ops,
            ls_read_bytes=elems * dt.itemsize * n_in,
            ls_write_bytes=elems * cmd.out_dtype.itemsize,
            commands=cmd.n_tiles,
        )
        return w

    def _w_SeMinMax(self, node: Node, cmd: SeMinMax) -> Work:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.FP16
        elems = float(cmd.n_tiles * shape[0] * shape[1])
        w = Work("se", "compute", items=cmd.n_tiles)
        w.busy_s, ops = self._se(elems, 1, dt, cmd.n_tiles)
        w.issue_s = self._issue(cmd.n_tiles)
        w.counters.update(se_ops=ops, ls_read_bytes=elems * dt.itemsize, commands=cmd.n_tiles)
        return w

    def _w_SeRowScale(self, node: Node, cmd: SeRowScale) -> Work:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.FP16
        elems = float(cmd.n_tiles * shape[0] * shape[1])
        bands = cmd.n_tiles // max(cmd.band, 1)
        w = Work("se", "compute", items=cmd.n_tiles)
        # |x| and max per element, then one multiply per row
        w.busy_s, ops = self._se(elems * 2 + bands * shape[0], 1, dt, cmd.n_tiles)
        w.issue_s = self._issue(cmd.n_tiles)
        w.counters.update(
            se_ops=ops,
            ls_read_bytes=elems * dt.itemsize,
            ls_write_bytes=float(bands * shape[0] * 4),
            commands=cmd.n_tiles,
        )
        return w

    def _w_SeRowReduce(self, node: Node, cmd: SeRowReduce) -> Work:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.FP16
        elems = float(cmd.n_tiles * shape[0] * shape[1])
        bands = cmd.n_tiles // max(cmd.band, 1)
        w = Work("se", "compute", items=cmd.n_tiles)
        # one add (or compare) per element into FP32 lane accumulators, then a lane-tree per row (and a
        # divide for the mean)
        per_row = math.log2(max(self.chip.se.fp32_ops_per_cycle, 2.0)) + (cmd.op == ReduceOp.MEAN)
        w.busy_s, ops = self._se(elems + bands * shape[0] * per_row, 1, DType.FP32, cmd.n_tiles)
        w.issue_s = self._issue(cmd.n_tiles)
        w.latency_s = self.chip.se.command_overhead_cycles * self.cyc
        w.counters.update(
            se_ops=ops,
            ls_read_bytes=elems * dt.itemsize,
            ls_write_bytes=float(bands * shape[0] * cmd.out_dtype.itemsize),
            commands=cmd.n_tiles,
        )
        return w

    def _w_SePool(self, node: Node, cmd: SePool) -> Work:
        chip = self.chip
        per_cmd = chip.se.accumulate_max_rows
        lengths = np.asarray(cmd.lengths, dtype=np.int64)
        accumulates = int(np.maximum(1, -(-lengths // per_cmd)).sum())
        commands = accumulates + len(cmd.lengths)
        elems = float(cmd.rows * cmd.dim)
        w = Work("se", "compute", items=max(cmd.rows, 1))
        mean_len = cmd.rows / max(len(cmd.lengths), 1)
        w.granule = max(1.0, min(float(per_cmd), mean_len))
        fmt = cmd.row_format
        # quantized rows are dequantized on the SE's FP16 path (4-bit ones unpacked first); float rows
        # accumulate at their own width
        ops_per = POOL_OPS_PER_ELEMENT if fmt.is_quantized else FLOAT_POOL_OPS_PER_ELEMENT
        ops_per += UNPACK_OPS_PER_ELEMENT if fmt.bits == 4 else 0
        rate_dtype = DType.FP32 if fmt == RowFormat.FP32 else DType.FP16
        busy, ops = self._se(elems, ops_per, rate_dtype, commands)
        out_elems = len(cmd.lengths) * cmd.dim
        w.busy_s = busy + out_elems / se_ops_per_cycle(chip, DType.FP16) * self.cyc
        # the pooling core's own per-bag work (row-buffer wait and release, accumulator set-up) besides issuing,
        # part of it per element of the pooled row (clearing the accumulator, handing the row on)
        per_bag = chip.core.cycles_per_bag + cmd.dim * chip.core.cycles_per_pooled_element
        w.issue_s = self._issue(commands, len(cmd.lengths) * per_bag)
        w.latency_s = chip.se.command_overhead_cycles * self.cyc
        w.counters.update(
            se_ops=ops + out_elems,
            ls_read_bytes=float(cmd.rows * fmt.row_bytes(cmd.dim)),
            ls_write_bytes=float(out_elems * cmd.out_dtype.itemsize),
            commands=commands,
        )
        return w

    def _mlu(self, node: Node, n_tiles: int, nbytes: float) -> Work:
        w = Work("mlu", "compute", items=n_tiles)
        w.busy_s = nbytes / self.chip.mlu.bytes_per_cycle * self.cyc
        w.issue_s = self._issue(n_tiles)
        w.counters.update(mlu_bytes=nbytes, ls_read_bytes=nbytes, ls_write_bytes=nbytes, commands=n_tiles)
        return w

    def _tile_bytes(self, node: Node) -> float:
        shape, dt = node.in_shape or (1, 1), node.in_dtype or DType.INT8
        return float(shape[0] * shape[1] * dt.itemsize)

    def _w_MluTranspose(self, node: Node, cmd: MluTranspose) -> Work:
        return self._mlu(node, cmd.n_tiles, cmd.n_tiles * self._tile_bytes(node))

    def _w_MluConcat(self, node: Node, cmd: MluConcat) -> Work:
        return self._mlu(node, cmd.n_tiles, len(cmd.srcs) * cmd.n_tiles * self._tile_bytes(node))

    def _w_MluReshape(self, node: Node, cmd: MluReshape) -> Work:
        return self._mlu(node, cmd.n_tiles, cmd.n_tiles * self._tile_bytes(node))

    def _w_CbPop(self, node: Node, cmd: CbPop) -> Work:
        return Work("none", "issue", issue_s=self._issue(1), counters={"commands": 1})

    def _w_Barrier(self, node: Node, cmd: Barrier) -> Work:
        return Work("none", "sync")

    def _w_HostCall(self, node: Node, cmd: HostCall) -> Work:
        return Work("core", "host", busy_s=cmd.seconds)

    def _w_HostTransfer(self, node: Node, cmd: HostTransfer) -> Work:
        """A flow on one host-side resource (`engine.resources`): it shares the resource with the others."""
        nbytes = float(cmd.nbytes)
        w = Work("dma", "host", bytes=nbytes, latency_s=cmd.latency_s, counters={f"{cmd.side}_bytes": nbytes})
        _add(w.own_usage, self.rmap.host_side(cmd.side), nbytes)
        return w

    def _w_CoreWork(self, node: Node, cmd: CoreWork) -> Work:
        t = cmd.cycles * self.cyc
        return Work("core", "issue", busy_s=t, issue_s=t)

    def _caps(self, w: Work, latency_cap: float, kind: str) -> None:
        caps = [(latency_cap, kind)]
        if w.issue_s > 0 and w.bytes > 0:
            caps.append((w.bytes / w.issue_s, "issue"))
        cap, k = min(caps)
        w.cap_bps, w.cap_kind = cap, k


def epilogue_ops_per_element(cmd: MatMul) -> int:
    """SE-equivalent ops per output element of a MatMul's epilogue: one per scale multiply or bias add, the
    activation's, and the multiply by an output scale after them (the final rounding is the RE's conversion,
    as for a plain requantization)."""
    ops = cmd.epilogue_vectors
    if cmd.activation is not None:
        ops += SE_OPS_PER_ELEMENT[cmd.activation]
    if ops and cmd.out_scale is not None:
        ops += 1
    return ops


LOCKSTEP_ACCESSES = 1024  # first accesses of each stream the lockstep bank analysis looks at


def _first_runs(decl: TensorDecl, stream, max_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """(start address, length) of the first contiguous runs of a tile stream, in order (one per tile row,
    or one per tile where it covers whole packed rows)."""
    lp = stream.loop
    item = decl.dtype.itemsize
    rows_per_tile = max(1, stream.tile[0])
    n = min(lp.n, max(1, max_runs // rows_per_tile + 1))
    idx = np.arange(n, dtype=np.int64)
    r0 = np.full(n, lp.base[0], dtype=np.int64)
    c0 = np.full(n, lp.base[1], dtype=np.int64)
    rem = idx.copy()
    for count, dr, dc in reversed(lp.dims):
        i = rem % count
        rem //= count
        r0 += i * dr
        c0 += i * dc
    nr = np.clip(np.minimum(r0 + stream.tile[0], decl.rows) - r0, 0, None)
    nc = np.clip(np.minimum(c0 + stream.tile[1], decl.cols) - c0, 0, None)
    packed = decl.pitch == decl.cols * item
    starts, lengths = [], []
    for a, b, rr, cc in zip(r0.tolist(), c0.tolist(), nr.tolist(), nc.tolist(), strict=True):
        if rr == 0 or cc == 0:
            continue
        base = decl.address + a * decl.pitch + b * item
        if packed and cc == decl.cols:
            starts.append(np.array([base], dtype=np.int64))
            lengths.append(np.array([rr * cc * item], dtype=np.int64))
        else:
            starts.append(base + np.arange(rr, dtype=np.int64) * decl.pitch)
            lengths.append(np.full(rr, cc * item, dtype=np.int64))
    if not starts:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    return np.concatenate(starts)[:max_runs], np.concatenate(lengths)[:max_runs]


def lockstep_banks(chip: Chip, seqs: list[np.ndarray], pending: int) -> float:
    """Expected distinct banks among `pending` requests waiting at a channel, when the streams `seqs`
    (addresses in order) advance in lockstep: their accesses arrive step by step (all streams' first, then
    all their second...), and a channel's pending requests are the next `pending` arrivals on it."""
    d = chip.dram
    n = min(s.size for s in seqs)
    if n == 0:
        return float(d.banks_per_channel)
    addr = np.stack([s[:n] for s in seqs], axis=1).reshape(-1)  # step-major
    channel, bank, _page = dram_location(chip, addr)
    total, weight = 0.0, 0.0
    for c in range(d.channels):
        b = bank[channel == c]
        if b.size == 0:
            continue
        w = max(1, min(pending, b.size))
        for i in range(0, b.size - w + 1, w):
            total += np.unique(b[i : i + w]).size * w
            weight += w
    if weight == 0:
        return float(d.banks_per_channel)
    return max(1.0, min(float(d.banks_per_channel), total / weight))


def _row_lines(decl: TensorDecl, rows: np.ndarray, line: int) -> tuple[np.ndarray, np.ndarray]:
    """Cache-line ids touched by each row (in order), and the row position each line access belongs to."""
    start = decl.address + rows * decl.pitch
    end = start + decl.cols * decl.dtype.itemsize
    l0, l1 = start // line, (end - 1) // line
    counts = (l1 - l0 + 1).astype(np.int64)
    # a row touches a few lines: take them from a rows x (most lines a row touches) grid, row by row
    k = np.arange(int(counts.max()) if counts.size else 0, dtype=np.int64)
    grid = l0.astype(np.int64)[:, None] + k[None, :]
    if counts.size and counts.min() == k.size:  # every row touches as many lines: the whole grid
        return grid.reshape(-1), np.repeat(np.arange(rows.size), k.size)
    touched = k[None, :] < counts[:, None]
    row_pos = np.broadcast_to(np.arange(rows.size)[:, None], touched.shape)[touched]
    return grid[touched], row_pos


def _count_access(
    counters: dict[str, float], kind: str, decl: TensorDecl, nbytes: float, parts: MemParts
) -> None:
    """Bytes moved per memory level: SRAM tensors in SRAM; LPDDR5 tensors in LPDDR5 bursts, plus, through
    the cache, every line through its SRAM slice."""

    def add(key: str, v: float) -> None:
        if v:
            counters[key] = counters.get(key, 0.0) + float(v)

    if decl.level == Level.SRAM:
        add(f"sram_{kind}_bytes", nbytes)
        return
    add(f"dram_{kind}_bytes", parts.bursts.sum() if parts.bursts is not None else 0.0)
    # row activations of the access alone (interleaving with other streams can add more: see memmodel)
    add("dram_activations", parts.activations.sum() if parts.activations is not None else 0.0)
    if decl.cached and parts.slices is not None:
        add(f"sram_{kind}_bytes", parts.slices.sum())


def upstream_of(node: Node) -> PeId | None:
    cmd = node.cmd
    if isinstance(cmd, MatMul) and cmd.reduce_in is not None:
        return _upstream(node.pe, cmd.reduce_in)
    return None
