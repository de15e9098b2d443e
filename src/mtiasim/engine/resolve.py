"""Resolve a program: run its commands in a dependency-respecting order, at shape level and (in functional
mode) with data, and record who produced what each command consumed.

This is where the command set's rules are enforced: CBs inside the local store, tiles that fit their CB,
resident operands that fit, matching tile shapes, multicast groups issuing identical streams, reduction chains
that connect, barriers every participant reaches, and CBs left empty at the end of a job. A program that
cannot make progress is a deadlock, reported with what each stuck core waits for.

Each command runs atomically here (a DMA loop delivers its whole stream before its consumer runs). The timing
engine later overlaps producers and consumers; the numbers do not depend on that overlap.

In functional mode the resolver moves tiles (DMA in, out, gathers, peer copies, the MLU's layout commands);
what a computing command makes of its tiles (MatMul, the SE's commands) is `engine.functional`'s.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.engine import functional as fx
from mtiasim.engine import numerics as nx
from mtiasim.engine.tiles import ArrayTiles, Piece, RowTiles, TensorTiles, TileRun
from mtiasim.errors import CapacityError, ProgramError
from mtiasim.hw import Chip
from mtiasim.isa import (
    Barrier,
    CbDecl,
    CbPop,
    Command,
    CoreWork,
    Direction,
    DmaGather,
    DmaIn,
    DmaOut,
    DmaPeer,
    DmaScatter,
    HostCall,
    HostTransfer,
    Job,
    MatMul,
    MluConcat,
    MluReshape,
    MluTranspose,
    Operand,
    PeId,
    PoolMode,
    Program,
    SeMap,
    SeMinMax,
    SeOp,
    SePool,
    SeRowReduce,
    SeRowScale,
    TensorDecl,
    TileLoop,
)
from mtiasim.isa.commands import BINARY_SE_OPS, EPILOGUE_ACTIVATIONS


@dataclass
class Node:
    """One command instance of one core of one PE, with what it consumed."""

    id: int
    job: int
    pe: PeId
    core: int
    pos: int
    cmd: Command
    order: int = -1
    producers: list[tuple[int, int]] = field(default_factory=list)  # (node id, tiles) it read
    resident_readers: list[int] = field(default_factory=list)  # for CbPop: who read the popped tiles
    reduce_from: int | None = None
    barrier_peers: list[int] = field(default_factory=list)
    mcast_group: list[int | None] = field(default_factory=list)  # per DmaIn transfer: multicast group id
    resident_producers: set[int] = field(default_factory=set)  # producers whose tiles it read in place
    in_cb: dict[int, tuple[int, int]] = field(
        default_factory=dict
    )  # producer -> (CB capacity in tiles, tiles)
    in_shape: tuple[int, int] | None = None  # tile shape and dtype of the first CB it read
    in_dtype: DType | None = None

    @property
    def where(self) -> str:
        return f"PE{self.pe} core {self.core} command {self.pos} ({type(self.cmd).__name__})"


@dataclass
class Resolved:
    nodes: list[Node]
    job_nodes: list[list[int]]
    mcast_groups: list[list[tuple[int, int]]]  # (node id, transfer index) per group
    memory: dict[str, np.ndarray] | None
    # functional runs: what each job's conversions met (NaN/Inf inputs, saturation, fp16 overflow)
    conversions: dict[str, nx.ConversionStats] = field(default_factory=dict)


@dataclass
class _Seg:
    producer: int
    count: int
    shape: tuple[int, int]
    dtype: DType
    source: object | None  # TileSource in functional mode
    offset: int = 0
    readers: list[int] = field(default_factory=list)


@dataclass
class _Cb:
    decl: CbDecl
    segs: deque[_Seg] = field(default_factory=deque)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.segs)


@dataclass
class Fragment:
    """One job's shape-level resolution, kept to be reused by later runs of programs that contain the same job
    (a compiled model's calls): what the resolution depends on (the job object, the chip, the declarations of
    the tensors it read), where its nodes were placed (`at`: job index, first node id, first order, first
    multicast group), its nodes, how many orders it took, its multicast groups."""

    job: Job
    chip: Chip
    tensors: dict[str, TensorDecl]
    at: tuple[int, int, int, int]
    nodes: list[Node]
    orders: int
    groups: list[list[tuple[int, int]]]

    def fits(self, job: Job, chip: Chip, program: Program) -> bool:
        """Whether resolving `job` in `program` on `chip` gives this fragment (up to its placement). The job
        must be the same object (jobs are not changed in place once built)."""
        if job is not self.job or chip is not self.chip:
            return False
        tensors = program.tensors
        return all(tensors.get(name) == decl for name, decl in self.tensors.items())

    def move(self, at: tuple[int, int, int, int]) -> None:
        """Renumber the fragment to land at `at`: its nodes become shifted copies (the old ones are untouched)."""
        _, dn, do, dg = (x - y for x, y in zip(at, self.at, strict=True))
        ji = at[0]

        def g(gid: int | None) -> int | None:
            return None if gid is None else gid + dg

        self.nodes = [
            replace(
                n,
                id=n.id + dn,
                job=ji,
                order=n.order + do,
                producers=[(p + dn, k) for p, k in n.producers],
                resident_readers=[r + dn for r in n.resident_readers],
                reduce_from=None if n.reduce_from is None else n.reduce_from + dn,
                barrier_peers=[b + dn for b in n.barrier_peers],
                mcast_group=[g(x) for x in n.mcast_group],
                resident_producers={p + dn for p in n.resident_producers},
                in_cb={p + dn: v for p, v in n.in_cb.items()},
            )
            for n in self.nodes
        ]
        self.groups = [[(nid + dn, ti) for nid, ti in grp] for grp in self.groups]
        self.at = at


class _JobState:
    def __init__(self, job: Job, job_index: int) -> None:
        self.job = job
        self.index = job_index
        self.cbs: dict[tuple[PeId, int], _Cb] = {}
        self.links: dict[tuple[PeId, PeId], deque[tuple[int, int, object | None]]] = {}
        self.barriers: dict[tuple, set[int]] = {}
        self.barrier_key_of: dict[int, tuple] = {}
        self.barrier_seen: dict[tuple[PeId, int, str], int] = {}
        self.mcast_seq: dict[tuple[PeId, tuple], int] = {}
        self.mcast: dict[tuple[tuple, int], list[tuple[int, int, object]]] = {}
        self.stats = nx.ConversionStats()


class _Resolver:
    def __init__(
        self,
        program: Program,
        chip: Chip,
        memory: dict[str, np.ndarray] | None,
        fragments: dict[str, Fragment] | None = None,
    ) -> None:
        self.program = program
        self.chip = chip
        self.memory = memory
        self.nodes: list[Node] = []
        self.job_nodes: list[list[int]] = []
        self.mcast_groups: list[list[tuple[int, int]]] = []
        self.order = 0
        self.fragments = fragments
        # the tensors the job being resolved reads (what its fragment is checked against)
        self._used: dict[str, TensorDecl] = {}

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> Resolved:
        conversions: dict[str, nx.ConversionStats] = {}
        # shape-level runs reuse the fragment of a job resolved before (same job, chip and tensors)
        reuse = self.fragments is not None and self.memory is None
        for ji, job in enumerate(job_order(self.program)):
            frag = self.fragments.get(job.name) if reuse else None  # type: ignore[union-attr]
            if frag is not None and frag.fits(job, self.chip, self.program):
                self._place(frag, ji)
                continue
            at = (ji, len(self.nodes), self.order, len(self.mcast_groups))
            self._used = {}
            st = self._resolve_job(job, ji)
            if self.memory is not None:
                conversions[job.name] = st.stats
            if reuse:
                self.fragments[job.name] = Fragment(  # type: ignore[index]
                    job,
                    self.chip,
                    self._used,
                    at,
                    self.nodes[at[1] :],
                    self.order - at[2],
                    self.mcast_groups[at[3] :],
                )
        return Resolved(self.nodes, self.job_nodes, self.mcast_groups, self.memory, conversions)

    def _place(self, frag: Fragment, ji: int) -> None:
        """Append a stored fragment's nodes and multicast groups here (as they are when they land where they
        were stored; renumbered copies otherwise, which the fragment then keeps)."""
        at = (ji, len(self.nodes), self.order, len(self.mcast_groups))
        if at != frag.at:
            frag.move(at)
        self.nodes.extend(frag.nodes)
        self.job_nodes.append([n.id for n in frag.nodes])
        self.mcast_groups.extend(frag.groups)
        self.order += frag.orders

    def _tensor(self, name: str, where: str) -> TensorDecl:
        decl = self.program.tensor(name, where)
        self._used[name] = decl
        return decl

    def _resolve_job(self, job: Job, ji: int) -> _JobState:
        st = _JobState(job, ji)
        self._check_pes(job, st)
        queues: dict[tuple[PeId, int], list[int]] = {}
        ids: list[int] = []
        for pe in sorted(job.pes):
            prog = job.pes[pe]
            for core, cmds in enumerate(prog.cores):
                q = []
                for pos, cmd in enumerate(cmds):
                    node = Node(len(self.nodes), ji, pe, core, pos, cmd)
                    self.nodes.append(node)
                    q.append(node.id)
                    ids.append(node.id)
                queues[(pe, core)] = q
        self.job_nodes.append(ids)
        pcs = {key: 0 for key in queues}
        remaining = len(ids)
        while remaining:
            progress = False
            for key, q in queues.items():
                while pcs[key] < len(q):
                    node = self.nodes[q[pcs[key]]]
                    released = self._step(node, st)
                    if released is None:
                        break
                    for nid in released:
                        n = self.nodes[nid]
                        pcs[(n.pe, n.core)] += 1
                        n.order = self.order
                        self.order += 1
                        remaining -= 1
                    progress = True
            if not progress:
                raise ProgramError(self._deadlock_message(job, queues, pcs, st))
        self._finish_job(job, st)
        return st

    def _check_pes(self, job: Job, st: _JobState) -> None:
        chip = self.chip
        ls = chip.local_memory.bytes
        for pe, prog in job.pes.items():
            r, c = pe
            if not (0 <= r < chip.grid.rows and 0 <= c < chip.grid.cols):
                raise ProgramError(
                    f"job {job.name}: PE{pe} is outside the {chip.grid.rows}x{chip.grid.cols} grid"
                )
            if len(prog.cbs) > chip.local_memory.max_circular_buffers:
                raise CapacityError(
                    f"job {job.name}: PE{pe} declares {len(prog.cbs)} circular buffers, the limit is "
                    f"{chip.local_memory.max_circular_buffers}"
                )
            spans = []
            for decl in prog.cbs:
                if (pe, decl.cb) in st.cbs:
                    raise ProgramError(f"job {job.name}: PE{pe} declares CB {decl.cb} twice")
                if decl.size_bytes <= 0 or decl.offset_bytes < 0:
                    raise ProgramError(f"job {job.name}: PE{pe} CB {decl.cb} has an empty or negative range")
                if decl.offset_bytes + decl.size_bytes > ls:
                    raise CapacityError(
                        f"job {job.name}: PE{pe} CB {decl.cb} [{decl.offset_bytes}, "
                        f"{decl.offset_bytes + decl.size_bytes}) exceeds the {ls // 1024} KiB local store"
                    )
                spans.append((decl.offset_bytes, decl.offset_bytes + decl.size_bytes, decl.cb))
                st.cbs[(pe, decl.cb)] = _Cb(decl)
            spans.sort()
            for (_a0, a1, ca), (b0, _b1, cb) in zip(spans, spans[1:], strict=False):
                if b0 < a1:
                    raise ProgramError(
                        f"job {job.name}: PE{pe} CB {ca} and CB {cb} overlap in the local store"
                    )
            if len(prog.cores) != chip.core.cores_per_pe:
                raise ProgramError(
                    f"job {job.name}: PE{pe} has {len(prog.cores)} command lists, not {chip.core.cores_per_pe}"
                )

    def _finish_job(self, job: Job, st: _JobState) -> None:
        for (pe, cbid), cb in st.cbs.items():
            if cb.count:
                raise ProgramError(
                    f"job {job.name}: PE{pe} CB {cbid} ends the job with {cb.count} unconsumed tiles"
                )
        for (src, dst), q in st.links.items():
            if q:
                raise ProgramError(
                    f"job {job.name}: {len(q)} partial blocks sent PE{src} -> PE{dst} were never reduced"
                )
        for (key, seq), entries in st.mcast.items():
            axis, members = key
            if len(entries) != len(members):
                got = sorted(self.nodes[e[0]].pe for e in entries)
                raise ProgramError(
                    f"job {job.name}: multicast {axis} group {list(members)} transfer #{seq} is issued by {got} only"
                )
            first = entries[0][2]
            for nid, _ti, stream in entries[1:]:
                if stream != first:
                    raise ProgramError(
                        f"job {job.name}: {self.nodes[nid].where}: multicast transfer #{seq} differs from the one "
                        f"PE{self.nodes[entries[0][0]].pe} issues for the same group"
                    )
            gid = len(self.mcast_groups)
            self.mcast_groups.append([(nid, ti) for nid, ti, _ in entries])
            for nid, ti, _ in entries:
                self.nodes[nid].mcast_group[ti] = gid

    def _deadlock_message(self, job: Job, queues, pcs, st: _JobState) -> str:
        stuck = []
        for key, q in queues.items():
            if pcs[key] < len(q):
                node = self.nodes[q[pcs[key]]]
                stuck.append(f"{node.where} waits for {self._waiting_for(node, st)}")
        shown = "; ".join(stuck[:4]) + (f"; and {len(stuck) - 4} more" if len(stuck) > 4 else "")
        return f"job {job.name}: deadlock: {shown}"

    def _waiting_for(self, node: Node, st: _JobState) -> str:
        cmd = node.cmd
        if isinstance(cmd, Barrier):
            return f"the other participants of a {cmd.scope} barrier"
        if isinstance(cmd, MatMul) and cmd.reduce_in is not None:
            src = _upstream(node.pe, cmd.reduce_in)
            have = sum(x[1] for x in st.links.get((src, node.pe), ()))
            if have < cmd.blocks:
                return f"{cmd.blocks} partial blocks from PE{src} (has {have})"
        for cb, need in _inputs(cmd):
            have = st.cbs[(node.pe, cb)].count if (node.pe, cb) in st.cbs else 0
            if have < need:
                return f"{need} tiles in CB {cb} (has {have})"
        if isinstance(cmd, DmaPeer):
            return f"{cmd.n_tiles} tiles in PE{cmd.src_pe} CB {cmd.src_cb}"
        return "its inputs"

    # ------------------------------------------------------------------------------------------ CB ops

    def _cb(self, st: _JobState, node: Node, cb: int) -> _Cb:
        try:
            return st.cbs[(node.pe, cb)]
        except KeyError:
            raise ProgramError(
                f"job {st.job.name}: {node.where}: CB {cb} is not declared on PE{node.pe}"
            ) from None

    def _push(self, st: _JobState, node: Node, cb: int, count: int, shape, dtype: DType, source) -> None:
        state = self._cb(st, node, cb)
        tile_bytes = shape[0] * shape[1] * dtype.itemsize
        if tile_bytes > state.decl.size_bytes:
            raise CapacityError(
                f"job {st.job.name}: {node.where}: a {shape[0]}x{shape[1]} {dtype.value} tile ({tile_bytes} B) "
                f"does not fit CB {cb} ({state.decl.size_bytes} B)"
            )
        if count:
            state.segs.append(_Seg(node.id, count, tuple(shape), dtype, source))

    def _take(
        self, st: _JobState, node: Node, cb: int, n: int, pop: bool, record: bool = True
    ) -> tuple[TileRun | None, list[_Seg]]:
        """The first n tiles of a CB (popped or not). Records the producers as inputs of `node`."""
        state = self._cb(st, node, cb)
        pieces: list[Piece] = []
        used: list[_Seg] = []
        left = n
        functional = self.memory is not None
        for seg in state.segs:
            if left == 0:
                break
            k = min(left, seg.count)
            if functional:
                pieces.append(Piece(seg.source, seg.offset, k))  # type: ignore[arg-type]
            used.append(seg)
            if node.in_shape is None:
                node.in_shape, node.in_dtype = seg.shape, seg.dtype
            if record:
                node.producers.append((seg.producer, k))
                tile_bytes = max(1, seg.shape[0] * seg.shape[1] * seg.dtype.itemsize)
                cap, got = node.in_cb.get(seg.producer, (state.decl.size_bytes // tile_bytes, 0))
                node.in_cb[seg.producer] = (cap, got + k)
            left -= k
        if pop:
            left = n
            while left:
                seg = state.segs[0]
                k = min(left, seg.count)
                if k == seg.count:
                    state.segs.popleft()
                else:
                    seg.offset += k
                    seg.count -= k
                left -= k
        return (TileRun(pieces) if functional else None), used

    def _check_tiles(
        self, st: _JobState, node: Node, segs: list[_Seg], cb: int, shape, dtype: DType | None, what: str
    ) -> None:
        for seg in segs:
            if tuple(seg.shape) != tuple(shape) or (dtype is not None and seg.dtype != dtype):
                want = f"{shape[0]}x{shape[1]}" + (f" {dtype.value}" if dtype else "")
                raise ProgramError(
                    f"job {st.job.name}: {node.where}: {what} in CB {cb} are {seg.shape[0]}x{seg.shape[1]} "
                    f"{seg.dtype.value}, expected {want}"
                )

    def _resident_fits(self, st: _JobState, node: Node, cb: int, n: int, segs: list[_Seg]) -> None:
        decl = self._cb(st, node, cb).decl
        tile_bytes = segs[0].shape[0] * segs[0].shape[1] * segs[0].dtype.itemsize if segs else 0
        if n * tile_bytes > decl.size_bytes:
            raise CapacityError(
                f"job {st.job.name}: {node.where}: {n} resident tiles of {tile_bytes} B "
                f"({n * tile_bytes / 1024:.1f} KiB) exceed CB {cb} ({decl.size_bytes / 1024:.1f} KiB)"
            )
        for seg in segs:
            seg.readers.append(node.id)
            node.resident_producers.add(seg.producer)

    # ------------------------------------------------------------------------------------------ step

    def _step(self, node: Node, st: _JobState) -> list[int] | None:
        """Run `node` if it can; return the nodes that completed (several for a barrier), None if blocked."""
        cmd = node.cmd
        if isinstance(cmd, Barrier):
            return self._barrier(node, cmd, st)
        for cb, need in _inputs(cmd):
            if self._cb(st, node, cb).count < need:
                return None
        handler = _HANDLERS.get(type(cmd))
        if handler is None:
            raise ProgramError(f"job {st.job.name}: {node.where}: unknown command {cmd!r}")
        if handler(self, node, cmd, st) is False:
            return None
        return [node.id]

    def _barrier(self, node: Node, cmd: Barrier, st: _JobState) -> list[int] | None:
        if cmd.scope == "cores":
            members = [node.pe]
        elif cmd.scope == "group":
            if cmd.group not in st.job.groups:
                raise ProgramError(f"job {st.job.name}: {node.where}: unknown barrier group {cmd.group!r}")
            members = list(st.job.groups[cmd.group])
            if node.pe not in members:
                raise ProgramError(
                    f"job {st.job.name}: {node.where}: PE{node.pe} is not in barrier group {cmd.group!r}"
                )
        else:
            raise ProgramError(f"job {st.job.name}: {node.where}: barrier scope must be 'cores' or 'group'")
        key = st.barrier_key_of.get(node.id)
        if key is None:
            tag = f"{cmd.scope}:{cmd.group}"
            seen = (node.pe, node.core, tag)
            seq = st.barrier_seen.get(seen, 0)
            st.barrier_seen[seen] = seq + 1
            key = (tag, tuple(sorted(members)), seq)
            st.barrier_key_of[node.id] = key
            st.barriers.setdefault(key, set()).add(node.id)
        arrived = st.barriers[key]
        if len(arrived) < len(members) * self.chip.core.cores_per_pe:
            return None
        released = sorted(arrived)
        for nid in released:
            self.nodes[nid].barrier_peers = [x for x in released if x != nid]
        arrived.clear()
        return released

    # ------------------------------------------------------------------------------------------ handlers

    def _dma_in(self, node: Node, cmd: DmaIn, st: _JobState) -> None:
        n = cmd.iterations
        node.mcast_group = [None] * len(cmd.transfers)
        for ti, tr in enumerate(cmd.transfers):
            if tr.stream.n_tiles != n:
                raise ProgramError(
                    f"job {st.job.name}: {node.where}: its transfers move different tile counts"
                )
            decl = self._tensor(tr.stream.tensor, f"job {st.job.name}: {node.where}")
            _check_stream(decl, tr.stream, st, node)
            source = None
            if self.memory is not None:
                loop_ = tr.stream.loop
                source = TensorTiles(self._array(decl.name), loop_.origins(), tr.stream.tile, loop_)
            self._push(st, node, tr.cb, n, tr.stream.tile, decl.dtype, source)
            if tr.multicast is not None:
                mc = tr.multicast
                members = tuple(sorted(mc.members))
                if node.pe not in members:
                    raise ProgramError(
                        f"job {st.job.name}: {node.where}: issuer is not in its multicast group"
                    )
                axis_index = 0 if mc.axis == "row" else 1 if mc.axis == "col" else None
                if axis_index is None or len({m[axis_index] for m in members}) != 1:
                    raise ProgramError(
                        f"job {st.job.name}: {node.where}: multicast group {list(members)} is not one "
                        f"{mc.axis} (the NoC coalesces same-row or same-column requests only)"
                    )
                if self.chip.noc.multicast == "none":
                    raise ProgramError(
                        f"job {st.job.name}: {node.where}: chip {self.chip.name} has no multicast"
                    )
                for m in members:
                    if m not in st.job.pes:
                        raise ProgramError(
                            f"job {st.job.name}: {node.where}: multicast member PE{m} is not in the job"
                        )
                key = (mc.axis, members)
                seq = st.mcast_seq.get((node.pe, key), 0)
                st.mcast_seq[(node.pe, key)] = seq + 1
                st.mcast.setdefault((key, seq), []).append((node.id, ti, tr.stream))

    def _dma_out(self, node: Node, cmd: DmaOut, st: _JobState) -> None:
        decl = self._tensor(cmd.stream.tensor, f"job {st.job.name}: {node.where}")
        _check_stream(decl, cmd.stream, st, node)
        run, segs = self._take(st, node, cmd.cb, cmd.stream.n_tiles, pop=True)
        self._check_tiles(st, node, segs, cmd.cb, cmd.stream.tile, decl.dtype, "tiles written out")
        if run is not None:
            _scatter(self._array(decl.name), cmd.stream.loop.origins(), cmd.stream.tile, run)

    def _indexed_rows(self, where: str, cmd: DmaGather | DmaScatter) -> np.ndarray | None:
        """The table rows an indexed DMA names (None at shape level), checked."""
        table = self._tensor(cmd.table, where)
        idx = self._tensor(cmd.indices, where)
        if idx.dtype not in (DType.INT32, DType.INT64):
            raise ProgramError(f"{where}: index tensor {idx.name!r} is {idx.dtype.value}, not int32/int64")
        n_idx = idx.rows * idx.cols
        if cmd.start < 0 or cmd.count < 0 or cmd.start + cmd.count > n_idx:
            raise ProgramError(
                f"{where}: indices [{cmd.start}, {cmd.start + cmd.count}) outside {idx.name!r} ({n_idx})"
            )
        if self.memory is None:
            return None
        rows = self._array(idx.name).reshape(-1)[cmd.start : cmd.start + cmd.count].astype(np.int64)
        rows = rows + cmd.table_row_offset
        bad = (rows < 0) | (rows >= table.rows)
        if bad.any():
            raise ProgramError(
                f"{where}: row index {int(rows[bad][0])} outside table {table.name!r} ({table.rows} rows)"
            )
        return rows

    def _dma_gather(self, node: Node, cmd: DmaGather, st: _JobState) -> None:
        where = f"job {st.job.name}: {node.where}"
        table = self._tensor(cmd.table, where)
        rows = self._indexed_rows(where, cmd)
        source = None if rows is None else RowTiles(self._array(table.name), rows)
        self._push(st, node, cmd.cb, cmd.count, (1, table.cols), table.dtype, source)

    def _dma_scatter(self, node: Node, cmd: DmaScatter, st: _JobState) -> None:
        where = f"job {st.job.name}: {node.where}"
        table, src = self._tensor(cmd.table, where), self._tensor(cmd.src, where)
        rows = self._indexed_rows(where, cmd)
        last = cmd.src_row0 + max(cmd.count - 1, 0) * cmd.src_step
        if src.cols != table.cols or not 0 <= cmd.src_row0 <= last < src.rows or cmd.src_step < 0:
            raise ProgramError(
                f"{where}: rows {cmd.src_row0}..{last} of {src.name!r} {list(src.shape)} cannot be written to "
                f"{table.name!r} {list(table.shape)}"
            )
        if cmd.accumulate and (table.dtype != DType.FP32 or not src.dtype.is_float):
            raise ProgramError(
                f"{where}: rows are added in FP32: table {table.name!r} must be fp32, src float"
            )
        if not cmd.accumulate and src.dtype != table.dtype:
            raise ProgramError(
                f"{where}: {src.name!r} is {src.dtype.value}, table {table.name!r} {table.dtype.value}"
            )
        if rows is None:
            return
        hi = table.rows if cmd.row_hi is None else cmd.row_hi
        k = np.nonzero((rows >= cmd.row_lo) & (rows < hi))[0]
        r = rows[k]
        values = self._array(src.name)[cmd.src_row0 + k * cmd.src_step]
        array = self._array(table.name)
        if cmd.accumulate:  # one index after the other (ufunc.at is unbuffered: duplicates add in order)
            with np.errstate(over="ignore", invalid="ignore"):  # IEEE: to +-inf, inf - inf is NaN
                np.add.at(array, r, values.astype(np.float32))
        else:  # a later index of a duplicate wins: write each row's last value
            keep = r.size - 1 - np.unique(r[::-1], return_index=True)[1]
            array[r[keep]] = values[keep]

    def _dma_peer(self, node: Node, cmd: DmaPeer, st: _JobState) -> bool:
        src_key = (cmd.src_pe, cmd.src_cb)
        if src_key not in st.cbs:
            raise ProgramError(
                f"job {st.job.name}: {node.where}: PE{cmd.src_pe} has no CB {cmd.src_cb} in this job"
            )
        state = st.cbs[src_key]
        if state.count < cmd.n_tiles:
            return False
        shim = Node(-1, node.job, cmd.src_pe, 0, 0, cmd)
        run, segs = self._take(st, shim, cmd.src_cb, cmd.n_tiles, pop=True, record=False)
        for seg in segs:
            node.producers.append((seg.producer, min(seg.count, cmd.n_tiles)))
        if segs:
            node.in_shape, node.in_dtype = segs[0].shape, segs[0].dtype
            self._check_tiles(st, node, segs, cmd.src_cb, segs[0].shape, segs[0].dtype, "tiles")
            src = ArrayTiles(run.get(0, cmd.n_tiles)) if run is not None else None
            self._push(st, node, cmd.cb, cmd.n_tiles, segs[0].shape, segs[0].dtype, src)
        return True

    def _matmul(self, node: Node, cmd: MatMul, st: _JobState) -> bool:
        where = f"job {st.job.name}: {node.where}"
        chip = self.chip
        if cmd.dtype not in (DType.INT8, DType.FP16, DType.BF16):
            raise ProgramError(f"{where}: the DPE has no {cmd.dtype.value} datapath (int8, fp16, bf16)")
        acc_elems = chip.re.accumulator_banks * chip.re.bank_rows * chip.re.bank_cols
        if cmd.tile_m * cmd.tile_n > acc_elems:
            raise CapacityError(
                f"{where}: a {cmd.tile_m}x{cmd.tile_n} output block exceeds the RE's {acc_elems} accumulators"
            )
        if min(cmd.m_blocks, cmd.n_blocks, cmd.steps, cmd.tile_m, cmd.tile_n, cmd.tile_k) <= 0:
            raise ProgramError(f"{where}: empty matmul loop")
        if (cmd.reduce_out is None) == (cmd.out_cb is None):
            raise ProgramError(f"{where}: a MatMul sends its blocks either to out_cb or over reduce_out")
        if (cmd.epilogue_vectors or cmd.activation is not None) and cmd.out_cb is None:
            raise ProgramError(
                f"{where}: scale_cb, row_scale_cb, post_bias_cb and activation apply where blocks are "
                "converted (out_cb)"
            )
        if cmd.activation is not None and cmd.activation not in EPILOGUE_ACTIVATIONS:
            known = ", ".join(sorted(a.value for a in EPILOGUE_ACTIVATIONS))
            raise ProgramError(
                f"{where}: activation {cmd.activation.value} is not an epilogue activation ({known})"
            )
        if cmd.reduce_in is not None:
            src = _upstream(node.pe, cmd.reduce_in)
            q = st.links.get((src, node.pe))
            have = sum(x[1] for x in q) if q else 0
            if have < cmd.blocks:
                return False
        n_a = cmd.blocks * cmd.steps if cmd.a_mode == Operand.STREAM else cmd.m_blocks * cmd.steps
        n_b = cmd.blocks * cmd.steps if cmd.b_mode == Operand.STREAM else cmd.n_blocks * cmd.steps
        a_run, a_segs = self._take(st, node, cmd.a_cb, n_a, pop=cmd.a_mode == Operand.STREAM)
        self._check_tiles(st, node, a_segs, cmd.a_cb, (cmd.tile_m, cmd.tile_k), cmd.dtype, "A tiles")
        if cmd.a_mode == Operand.RESIDENT:
            self._resident_fits(st, node, cmd.a_cb, n_a, a_segs)
        b_run, b_segs = self._take(st, node, cmd.b_cb, n_b, pop=cmd.b_mode == Operand.STREAM)
        self._check_tiles(st, node, b_segs, cmd.b_cb, (cmd.tile_n, cmd.tile_k), cmd.dtype, "B tiles")
        if cmd.b_mode == Operand.RESIDENT:
            self._resident_fits(st, node, cmd.b_cb, n_b, b_segs)
        bias_run = None
        if cmd.bias_cb is not None:
            bias_run, bias_segs = self._take(st, node, cmd.bias_cb, cmd.blocks, pop=True)
            self._check_tiles(st, node, bias_segs, cmd.bias_cb, (1, cmd.tile_n), cmd.acc_dtype, "bias tiles")
        vectors: dict[str, TileRun | None] = {}
        for key, cb, shape in (
            ("scales", cmd.scale_cb, (1, cmd.tile_n)),
            ("row_scales", cmd.row_scale_cb, (cmd.tile_m, 1)),
            ("post_bias", cmd.post_bias_cb, (1, cmd.tile_n)),
        ):
            if cb is not None:
                vectors[key], segs = self._take(st, node, cb, cmd.blocks, pop=True)
                self._check_tiles(st, node, segs, cb, shape, DType.FP32, key.replace("_", " ") + " tiles")
        partials = None
        if cmd.reduce_in is not None:
            src = _upstream(node.pe, cmd.reduce_in)
            q = st.links[(src, node.pe)]
            producer, count, data = q.popleft()
            if count != cmd.blocks:
                raise ProgramError(
                    f"{where}: receives {count} partial blocks from PE{src}, expects {cmd.blocks}"
                )
            node.reduce_from = producer
            partials = data
        acc = None
        if self.memory is not None:
            acc = fx.matmul_blocks(cmd, a_run, b_run, bias_run, partials)
        if cmd.reduce_out is not None:
            dst = cmd.reduce_out.step(node.pe)
            if dst not in st.job.pes:
                raise ProgramError(
                    f"{where}: reduce_out {cmd.reduce_out.value} leads to PE{dst}, which is not in the job"
                )
            st.links.setdefault((node.pe, dst), deque()).append((node.id, cmd.blocks, acc))
        else:
            out_dtype = cmd.out_dtype or cmd.acc_dtype
            data = None
            if acc is not None:
                tiles = {k: run.get(0, cmd.blocks) for k, run in vectors.items() if run is not None}
                data = ArrayTiles(
                    fx.convert_blocks(acc, cmd, out_dtype, tiles, self.chip.se.lut_segments, st.stats)
                )
            self._push(st, node, cmd.out_cb, cmd.blocks, (cmd.tile_m, cmd.tile_n), out_dtype, data)  # type: ignore[arg-type]
        return True

    def _se_map(self, node: Node, cmd: SeMap, st: _JobState) -> None:
        where = f"job {st.job.name}: {node.where}"
        run, segs = self._take(st, node, cmd.src, cmd.n_tiles, pop=True)
        shape, in_dtype = segs[0].shape, segs[0].dtype
        self._check_tiles(st, node, segs, cmd.src, shape, in_dtype, "tiles")
        run2 = None
        if cmd.op in BINARY_SE_OPS:
            if cmd.src2 is None:
                raise ProgramError(f"{where}: {cmd.op.value} needs a second source CB")
            if cmd.src2_period < 0:
                raise ProgramError(f"{where}: negative src2_period")
            resident = cmd.src2_period > 0
            n2 = cmd.src2_period if resident else cmd.n_tiles
            run2, segs2 = self._take(st, node, cmd.src2, n2, pop=not resident)
            head = segs2[0].shape if segs2 else shape
            # a [1, c] tile broadcasts over rows, an [r, 1] tile over columns
            shape2 = (
                (shape[0], 1) if tuple(head) == (shape[0], 1) else (1, shape[1]) if head[0] == 1 else shape
            )
            self._check_tiles(st, node, segs2, cmd.src2, shape2, None, "second operand tiles")
            if resident:
                self._resident_fits(st, node, cmd.src2, n2, segs2)
        if cmd.op == SeOp.QUANTIZE and cmd.out_dtype not in (DType.INT8, DType.UINT8):
            raise ProgramError(f"{where}: quantize produces int8 or uint8, not {cmd.out_dtype.value}")
        qparams = None
        if cmd.scale_cb is not None:
            qrun, qsegs = self._take(st, node, cmd.scale_cb, 1, pop=False)
            self._resident_fits(st, node, cmd.scale_cb, 1, qsegs)
            self._check_tiles(st, node, qsegs, cmd.scale_cb, (1, 2), DType.FP32, "min/max tile")
            if qrun is not None:
                lo, hi = (float(v) for v in qrun.get(0, 1).reshape(-1))
                qparams = fx.dynamic_qparams(lo, hi)
        row_scales = None
        if cmd.row_scale_cb is not None:
            if cmd.row_scale_period <= 0 or cmd.op != SeOp.QUANTIZE:
                raise ProgramError(f"{where}: row scales need quantize and a positive row_scale_period")
            n_s = -(-cmd.n_tiles // cmd.row_scale_period)
            rrun, rsegs = self._take(st, node, cmd.row_scale_cb, n_s, pop=False)
            self._resident_fits(st, node, cmd.row_scale_cb, n_s, rsegs)
            self._check_tiles(st, node, rsegs, cmd.row_scale_cb, (shape[0], 1), DType.FP32, "row scale tiles")
            if rrun is not None:
                row_scales = rrun.take(np.arange(cmd.n_tiles) // cmd.row_scale_period)
        source = None
        if run is not None:
            x = run.get(0, cmd.n_tiles)
            if row_scales is not None:
                qparams = (row_scales, 0)
            y = None
            if run2 is not None:
                if cmd.src2_period:
                    y = run2.take(np.arange(cmd.n_tiles) % cmd.src2_period)
                else:
                    y = run2.get(0, cmd.n_tiles)
            source = ArrayTiles(fx.se_map(cmd, x, y, qparams, self.chip.se.lut_segments, st.stats))
        self._push(st, node, cmd.dst, cmd.n_tiles, shape, cmd.out_dtype, source)

    def _se_minmax(self, node: Node, cmd: SeMinMax, st: _JobState) -> None:
        run, segs = self._take(st, node, cmd.src, cmd.n_tiles, pop=True)
        source = ArrayTiles(fx.minmax(run.get(0, cmd.n_tiles))) if run is not None else None
        self._push(st, node, cmd.dst, 1, (1, 2), DType.FP32, source)

    def _take_bands(self, node: Node, cmd: SeRowScale | SeRowReduce, st: _JobState):
        """(run, tile shape, bands) of a row-band command's input, checked."""
        where = f"job {st.job.name}: {node.where}"
        if cmd.band <= 0 or cmd.n_tiles % cmd.band:
            raise ProgramError(f"{where}: {cmd.n_tiles} tiles are not whole bands of {cmd.band}")
        keep = isinstance(cmd, SeRowReduce) and cmd.keep
        run, segs = self._take(st, node, cmd.src, cmd.n_tiles, pop=not keep)
        shape = segs[0].shape
        self._check_tiles(st, node, segs, cmd.src, shape, segs[0].dtype, "tiles")
        if keep:  # read in place: the tiles must all be in the CB at once
            self._resident_fits(st, node, cmd.src, cmd.n_tiles, segs)
        return run, shape, cmd.n_tiles // cmd.band

    def _se_row_scale(self, node: Node, cmd: SeRowScale, st: _JobState) -> None:
        run, shape, bands = self._take_bands(node, cmd, st)
        source = ArrayTiles(fx.row_scales(run.get(0, cmd.n_tiles), cmd.band)) if run is not None else None
        self._push(st, node, cmd.dst, bands, (shape[0], 1), DType.FP32, source)

    def _se_row_reduce(self, node: Node, cmd: SeRowReduce, st: _JobState) -> None:
        where = f"job {st.job.name}: {node.where}"
        run, shape, bands = self._take_bands(node, cmd, st)
        if not (cmd.band - 1) * shape[1] < cmd.cols <= cmd.band * shape[1]:
            raise ProgramError(f"{where}: {cmd.cols} columns do not end in the last of {cmd.band} tiles")
        if not cmd.out_dtype.is_float:
            raise ProgramError(f"{where}: a row reduction writes a float dtype, not {cmd.out_dtype.value}")
        source = None
        if run is not None:
            source = ArrayTiles(fx.reduce_rows(run.get(0, cmd.n_tiles), cmd, st.stats))
        self._push(st, node, cmd.dst, bands, (shape[0], 1), cmd.out_dtype, source)

    def _se_pool(self, node: Node, cmd: SePool, st: _JobState) -> None:
        where = f"job {st.job.name}: {node.where}"
        run, segs = self._take(st, node, cmd.src, cmd.rows, pop=True)
        fmt = cmd.row_format
        cols, dt = fmt.row_cols(cmd.dim), fmt.dtype
        for seg in segs:
            if seg.shape != (1, cols) or seg.dtype != dt:
                raise ProgramError(
                    f"{where}: rows are {seg.shape[1]} {seg.dtype.value}, expected {fmt.value} rows of {cols} {dt.value}"
                )
        if cmd.weights is not None and cmd.mode == PoolMode.MAX:
            raise ProgramError(f"{where}: per-sample weights need sum or mean pooling, not max")
        source = None
        if run is not None:
            rows = run.get(0, cmd.rows)[:, 0, :] if cmd.rows else np.zeros((0, cols), dt.numpy)
            w = None
            if cmd.weights is not None:
                decl = self._tensor(cmd.weights, where)
                w = self._array(decl.name).reshape(-1)[cmd.weights_start : cmd.weights_start + cmd.rows]
            source = ArrayTiles(fx.pool(cmd, rows, w, st.stats))
        self._push(st, node, cmd.dst, len(cmd.lengths), (1, cmd.dim), cmd.out_dtype, source)

    def _mlu_transpose(self, node: Node, cmd: MluTranspose, st: _JobState) -> None:
        run, segs = self._take(st, node, cmd.src, cmd.n_tiles, pop=True)
        shape, dt = segs[0].shape, segs[0].dtype
        self._check_tiles(st, node, segs, cmd.src, shape, dt, "tiles")
        source = ArrayTiles(np.ascontiguousarray(run.get(0, cmd.n_tiles).transpose(0, 2, 1))) if run else None
        self._push(st, node, cmd.dst, cmd.n_tiles, (shape[1], shape[0]), dt, source)

    def _mlu_concat(self, node: Node, cmd: MluConcat, st: _JobState) -> None:
        parts, shapes, dt = [], [], None
        for src in cmd.srcs:
            run, segs = self._take(st, node, src, cmd.n_tiles, pop=True)
            self._check_tiles(st, node, segs, src, segs[0].shape, segs[0].dtype, "tiles")
            if dt is not None and segs[0].dtype != dt:
                raise ProgramError(f"job {st.job.name}: {node.where}: concatenated tiles differ in dtype")
            dt = segs[0].dtype
            shapes.append(segs[0].shape)
            if run is not None:
                parts.append(run.get(0, cmd.n_tiles))
        other = 1 - cmd.axis
        if len({s[other] for s in shapes}) != 1:
            raise ProgramError(
                f"job {st.job.name}: {node.where}: tiles {shapes} cannot be joined along axis {cmd.axis}"
            )
        out_shape = (
            (sum(s[0] for s in shapes), shapes[0][1])
            if cmd.axis == 0
            else (shapes[0][0], sum(s[1] for s in shapes))
        )
        source = ArrayTiles(np.concatenate(parts, axis=1 + cmd.axis)) if parts else None
        self._push(st, node, cmd.dst, cmd.n_tiles, out_shape, dt, source)  # type: ignore[arg-type]

    def _mlu_reshape(self, node: Node, cmd: MluReshape, st: _JobState) -> None:
        run, segs = self._take(st, node, cmd.src, cmd.n_tiles, pop=True)
        shape, dt = segs[0].shape, segs[0].dtype
        if shape[0] * shape[1] != cmd.shape[0] * cmd.shape[1]:
            raise ProgramError(
                f"job {st.job.name}: {node.where}: cannot reshape {shape} tiles to {cmd.shape}"
            )
        source = ArrayTiles(run.get(0, cmd.n_tiles).reshape(cmd.n_tiles, *cmd.shape)) if run else None
        self._push(st, node, cmd.dst, cmd.n_tiles, cmd.shape, dt, source)

    def _host_call(self, node: Node, cmd: HostCall, st: _JobState) -> None:
        for name in cmd.reads + cmd.writes:  # every tensor it names must exist
            self._tensor(name, f"job {st.job.name}")
        if self.memory is None:
            return
        outs = cmd.fn(*(self._array(n) for n in cmd.reads))
        for name, value in zip(cmd.writes, outs, strict=True):
            self._array(name)[...] = value

    def _cb_pop(self, node: Node, cmd: CbPop, st: _JobState) -> None:
        _run, segs = self._take(st, node, cmd.cb, cmd.n, pop=True, record=False)
        for seg in segs:
            node.resident_readers.extend(seg.readers)
            node.producers.append((seg.producer, 0))

    def _core_work(self, node: Node, cmd: CoreWork, st: _JobState) -> None:
        if cmd.cycles < 0:
            raise ProgramError(f"job {st.job.name}: {node.where}: negative cycle count")

    def _array(self, name: str) -> np.ndarray:
        assert self.memory is not None
        try:
            return self.memory[name]
        except KeyError:
            raise ProgramError(
                f"{self.program.name}: tensor {name!r} has no data (functional mode needs every input)"
            ) from None


_HANDLERS = {
    DmaIn: _Resolver._dma_in,
    DmaOut: _Resolver._dma_out,
    DmaGather: _Resolver._dma_gather,
    DmaScatter: _Resolver._dma_scatter,
    DmaPeer: _Resolver._dma_peer,
    MatMul: _Resolver._matmul,
    SeMap: _Resolver._se_map,
    SeMinMax: _Resolver._se_minmax,
    SeRowScale: _Resolver._se_row_scale,
    SeRowReduce: _Resolver._se_row_reduce,
    SePool: _Resolver._se_pool,
    MluTranspose: _Resolver._mlu_transpose,
    MluConcat: _Resolver._mlu_concat,
    MluReshape: _Resolver._mlu_reshape,
    CbPop: _Resolver._cb_pop,
    HostCall: _Resolver._host_call,
    HostTransfer: lambda self, node, cmd, st: None,  # host-side work: no tensor, no number
    CoreWork: _Resolver._core_work,
}


def _inputs(cmd: Command) -> list[tuple[int, int]]:
    """(CB, tiles needed) a command waits for before it can run."""
    if isinstance(cmd, DmaOut):
        return [(cmd.cb, cmd.stream.n_tiles)]
    if isinstance(cmd, MatMul):
        n_a = cmd.blocks * cmd.steps if cmd.a_mode == Operand.STREAM else cmd.m_blocks * cmd.steps
        n_b = cmd.blocks * cmd.steps if cmd.b_mode == Operand.STREAM else cmd.n_blocks * cmd.steps
        need = [(cmd.a_cb, n_a), (cmd.b_cb, n_b)]
        if cmd.bias_cb is not None:
            need.append((cmd.bias_cb, cmd.blocks))
        for cb in (cmd.scale_cb, cmd.row_scale_cb, cmd.post_bias_cb):
            if cb is not None:
                need.append((cb, cmd.blocks))
        return need
    if isinstance(cmd, SeMap):
        need = [(cmd.src, cmd.n_tiles)]
        if cmd.src2 is not None:
            need.append((cmd.src2, cmd.src2_period or cmd.n_tiles))
        if cmd.scale_cb is not None:
            need.append((cmd.scale_cb, 1))
        if cmd.row_scale_cb is not None:
            need.append((cmd.row_scale_cb, -(-cmd.n_tiles // max(cmd.row_scale_period, 1))))
        return need
    if isinstance(cmd, SeMinMax | SeRowScale | SeRowReduce | MluTranspose | MluReshape):
        return [(cmd.src, cmd.n_tiles)]
    if isinstance(cmd, SePool):
        return [(cmd.src, cmd.rows)]
    if isinstance(cmd, MluConcat):
        return [(s, cmd.n_tiles) for s in cmd.srcs]
    if isinstance(cmd, CbPop):
        return [(cmd.cb, cmd.n)]
    return []


def _upstream(pe: PeId, direction: Direction) -> PeId:
    r, c = pe
    return (r, c - 1) if direction is Direction.EAST else (r - 1, c)


def _check_stream(decl, stream, st: _JobState, node: Node) -> None:
    """Check that every tile of `stream` starts inside `decl` (a sample of them for long streams)."""
    tr, tc = stream.tile
    if tr <= 0 or tc <= 0:
        raise ProgramError(f"job {st.job.name}: {node.where}: empty tile {stream.tile}")
    lo, row_hi, col_hi = _origin_extent(stream.loop)
    if lo < 0 or row_hi >= decl.rows or col_hi >= decl.cols:
        raise ProgramError(
            f"job {st.job.name}: {node.where}: a tile of tensor {decl.name!r} starts outside its "
            f"{decl.rows}x{decl.cols} view"
        )


@functools.lru_cache(maxsize=4096)
def _origin_extent(lp: TileLoop) -> tuple[int, int, int]:
    """(lowest row or column, highest row, highest column) of a loop's tile origins (of a sample of them for
    long loops); (0, -1, -1) for a loop of no tiles. Kept per loop: many commands repeat a loop."""
    n = lp.n
    if n > 65536:
        o = lp.sample(4096)[0]
        return (int(o.min()), int(o[:, 0].max()), int(o[:, 1].max())) if o.size else (0, -1, -1)
    if n == 0:
        return 0, -1, -1
    # an affine nest's extreme origins: every loop at its first or last index, independently
    row_lo = lp.base[0] + sum(min(0, (c - 1) * dr) for c, dr, _dc in lp.dims)
    col_lo = lp.base[1] + sum(min(0, (c - 1) * dc) for c, _dr, dc in lp.dims)
    row_hi = lp.base[0] + sum(max(0, (c - 1) * dr) for c, dr, _dc in lp.dims)
    col_hi = lp.base[1] + sum(max(0, (c - 1) * dc) for c, _dr, dc in lp.dims)
    return min(row_lo, col_lo), row_hi, col_hi


def job_order(program: Program) -> list[Job]:
    by_name = {}
    for job in program.jobs:
        if job.name in by_name:
            raise ProgramError(f"{program.name}: job name {job.name!r} is used twice")
        by_name[job.name] = job
    order: list[Job] = []
    state: dict[str, int] = {}

    def visit(job: Job, chain: tuple[str, ...]) -> None:
        if state.get(job.name) == 2:
            return
        if state.get(job.name) == 1:
            raise ProgramError(f"{program.name}: job dependency cycle {' -> '.join((*chain, job.name))}")
        state[job.name] = 1
        for dep in job.deps:
            if dep not in by_name:
                raise ProgramError(f"{program.name}: job {job.name!r} depends on unknown job {dep!r}")
            visit(by_name[dep], (*chain, job.name))
        state[job.name] = 2
        order.append(job)

    for job in program.jobs:
        visit(job, ())
    return order


_SCATTER_CHUNK = 4096  # tiles written at once


def _write_rectangle(array: np.ndarray, origins: np.ndarray, tile: tuple[int, int], run: TileRun) -> bool:
    """Write the tiles of `run` when they are a rectangle of tile-sized cells in row-major order (`origins`
    from the first, a row of `cols` tiles after the other): one strided copy into the array (the parts outside
    it dropped). False, writing nothing, when they are laid out otherwise."""
    n = origins.shape[0]
    tr, tc = tile
    r, c = origins[:, 0], origins[:, 1]
    r0, c0 = int(r[0]), int(c[0])
    cols = n if (r == r0).all() else int(np.argmax(r != r0))
    if cols == 0 or n % cols:
        return False
    rows = n // cols
    k = np.arange(n, dtype=np.int64)
    if not ((r == r0 + k // cols * tr).all() and (c == c0 + k % cols * tc).all()):
        return False
    h, w = min(rows * tr, array.shape[0] - r0), min(cols * tc, array.shape[1] - c0)
    if h <= 0 or w <= 0:
        return True  # every tile lies past the edge
    cells = run.get(0, n).reshape(rows, cols, tr, tc).transpose(0, 2, 1, 3)
    if h == rows * tr and w == cols * tc:
        array[r0 : r0 + h, c0 : c0 + w].reshape(rows, tr, cols, tc)[...] = cells
    else:
        array[r0 : r0 + h, c0 : c0 + w] = cells.reshape(rows * tr, cols * tc)[:h, :w]
    return True


def _scatter(array: np.ndarray, origins: np.ndarray, tile: tuple[int, int], run: TileRun) -> None:
    """Write the tiles of `run` to `array` at `origins` (the parts outside the array are dropped); a later tile
    overwrites an earlier one where they overlap."""
    nrow, ncol = array.shape
    tr, tc = tile
    n = origins.shape[0]
    if n == 0:
        return
    # tiles on one grid of their own size (distinct origins, the same offset from it) cannot overlap: those
    # wholly inside are written at once, as blocks of a [rows, tr, cols, tc] view of the array; the rest (edge
    # tiles, overlapping streams) one after the other, in order
    if n <= _SCATTER_CHUNK and _write_rectangle(array, origins, tile, run):
        return
    r, c = origins[:, 0], origins[:, 1]
    grid = (
        ((r - r[0]) % tr == 0).all()
        and ((c - c[0]) % tc == 0).all()
        and np.unique(r * (ncol + tc) + c).size == n
    )
    whole = (r + tr <= nrow) & (c + tc <= ncol) if grid else np.zeros(n, dtype=bool)
    for i0 in range(0, n, _SCATTER_CHUNK):
        i1 = min(n, i0 + _SCATTER_CHUNK)
        tiles = run.get(i0, i1)
        inside = whole[i0:i1]
        if inside.any():
            ri, ci = r[i0:i1][inside], c[i0:i1][inside]
            r0, c0 = int(ri.min()), int(ci.min())
            bi, bj = (ri - r0) // tr, (ci - c0) // tc
            rows, cols = int(bi.max()) + 1, int(bj.max()) + 1
            blocks = array[r0 : r0 + rows * tr, c0 : c0 + cols * tc].reshape(rows, tr, cols, tc)
            blocks.transpose(0, 2, 1, 3)[bi, bj] = tiles[inside]
        for k in np.flatnonzero(~inside).tolist():
            rk, ck = int(r[i0 + k]), int(c[i0 + k])
            nr, nc = min(tr, nrow - rk), min(tc, ncol - ck)
            array[rk : rk + nr, ck : ck + nc] = tiles[k, :nr, :nc]


def resolve(
    program: Program,
    chip: Chip,
    memory: dict[str, np.ndarray] | None = None,
    fragments: dict[str, Fragment] | None = None,
) -> Resolved:
    """Run `program` at shape level (and with data when `memory` holds every tensor as a 2-D array).

    `fragments` (job name -> `Fragment`) carries shape-level resolutions between runs: a job found there with the
    same job object, chip and tensor declarations is not resolved again; the jobs resolved are stored. Runs with
    data (functional) neither read nor store fragments."""
    return _Resolver(program, chip, memory, fragments).run()
