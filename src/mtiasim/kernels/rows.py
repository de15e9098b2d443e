"""Row operators by DMA: a 1-D convolution's columns (im2col), row gathers and row scatters with index data.

**im2col** (`im2col_job`): x [N, L, C] (channels last, the MLU's transpose of a [N, C, L] activation) ->
cols [N * L_out, K * C], column block k of row (n, t) being the row ``t * stride + k * dilation - pad_left``
of sample n (zeros outside). For each k the rows a sample uses are a run of rows of x, one every `stride`:
with stride 1 contiguous, so they move as [rows, C] tiles; with a stride s that divides L, x seen as
[N * L / s, s * C] holds them as contiguous rows of a column window; otherwise they move a row per tile. Rows
in the padding come from a one-row zero constant (the DMA zero-fills the rows of a tile past its source's
edge). Every move is a DMA in and out through the local store; the pieces are shared out over the PEs by size.

**gather** (`gather_rows_job`): ``out[g * count + i] = x[g * row_step + idx[g * index_step + i]]``: core 0
computes each row's address from its index and issues its DMA (`DmaGather`, as an embedding lookup), core 1
DMAs the rows out. The output rows are shared out over the PEs; rows wider than `MAX_ROW_BYTES` go in column
windows. Exact copies.

**scatter** (`scatter_rows_job`): ``out = dst`` with rows of src written (or, `accumulate`, added) at
``g * row_step + idx[g * index_step + i]``: each PE owns a block of rows (its groups' rows; with one group a
share of the rows, every PE scanning all indices for those in its share), copies dst's block into out, then
writes there the src rows of the indices that fall in it (`DmaScatter`), one index after the other, so a
duplicate's later row wins whatever the PEs' timing. Added rows are summed in FP32, in index order (an fp32 scratch
copy of dst, cast back at the end when the output is not fp32): ``row = f32(row + f32(src row))``, which is
torch's CPU order for `index_put_(accumulate=True)`, `scatter_add` and `index_add`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import (
    Barrier,
    DmaGather,
    DmaIn,
    DmaOut,
    DmaScatter,
    Job,
    PeId,
    PeProgram,
    SeMap,
    SeOp,
    TensorDecl,
    TileLoop,
    TileStream,
    loop,
)
from mtiasim.kernels.common import Region, cb_layout, cdiv, split

CB_IN, CB_OUT, CB_ROWS = 0, 1, 2
DEPTH = 4
TILE_BYTES = 4096
MAX_TILE_COLS = 256  # widest tile of the im2col and copy moves
MAX_ROW_BYTES = 8192  # a gathered or scattered row wider than this moves in column windows


# ------------------------------------------------------------------------------------------------ helpers
def runs(length: int, tile: int) -> list[tuple[int, int, int]]:
    """[0, length) in whole tiles: (first, tile, tiles): as many `tile`-long tiles as fit, then one tile of the
    rest, so that no tile runs into what follows."""
    tile = max(1, min(tile, length))
    main = length // tile
    out = [(0, tile, main)] if main else []
    if length - main * tile:
        out.append((main * tile, length - main * tile, 1))
    return out


def column_window(
    decl: TensorDecl, col0: int, cols: int, tensors: dict[str, TensorDecl] | None
) -> TensorDecl:
    """Columns [col0, col0 + cols) of `decl`'s 2-D view as an alias (registered in `tensors`)."""
    if col0 == 0 and cols == decl.cols:
        return decl
    if tensors is None:
        raise UsageError(f"{decl.name}: a column window needs the program's tensors to declare it in")
    name = f"{decl.name}[:, {col0}:{col0 + cols}]"
    item = decl.dtype.itemsize
    tensors[name] = TensorDecl(name, (decl.rows, cols), decl.dtype, decl.level, decl.address + col0 * item,
                               decl.cached, decl.pitch, decl.root)  # fmt: skip
    return tensors[name]


@dataclass(frozen=True)
class Move:
    """A DMA move: tiles of `src` in, the same tiles to `dst` out, the two loops iterating together."""

    src: str
    dst: str
    tile: tuple[int, int]
    src_loop: TileLoop
    dst_loop: TileLoop

    @property
    def elements(self) -> int:
        return self.src_loop.n * self.tile[0] * self.tile[1]

    def split(self, parts: int) -> list[Move]:
        """The move cut into up to `parts` moves over its outer loops (inner loops are cut only where an outer
        one has fewer iterations than parts)."""
        if parts <= 1 or not self.src_loop.dims:
            return [self]
        (n, sr, sc), (_n, dr, dc) = self.src_loop.dims[0], self.dst_loop.dims[0]
        rest_s, rest_d = self.src_loop.dims[1:], self.dst_loop.dims[1:]
        k = min(n, parts)
        out: list[Move] = []
        for i, (a, b) in enumerate(split(n, k, 1)):
            sb = (self.src_loop.base[0] + a * sr, self.src_loop.base[1] + a * sc)
            db = (self.dst_loop.base[0] + a * dr, self.dst_loop.base[1] + a * dc)
            if b - a > 1:
                src, dst = TileLoop(sb, ((b - a, sr, sc), *rest_s)), TileLoop(db, ((b - a, dr, dc), *rest_d))
                out.append(Move(self.src, self.dst, self.tile, src, dst))
            elif b - a == 1:
                inner = Move(self.src, self.dst, self.tile, TileLoop(sb, rest_s), TileLoop(db, rest_d))
                out += inner.split(parts // k + (1 if i < parts % k else 0))
        return out


def share_out(items: list[Move], pes: list[PeId]) -> dict[PeId, list[Move]]:
    """The moves split about evenly over the PEs, each piece on the least loaded PE (largest first); a PE's
    moves keep their order."""
    total = sum(m.elements for m in items)
    pieces: list[tuple[int, Move]] = []
    for i, m in enumerate(items):
        parts = max(1, min(len(pes), round(len(pes) * m.elements / max(total, 1))))
        pieces += [(i, p) for p in m.split(parts)]
    load = [(0, p) for p in range(len(pes))]
    heapq.heapify(load)
    assigned: dict[int, list[tuple[int, int, Move]]] = {}
    for order, (i, m) in sorted(enumerate(pieces), key=lambda x: -x[1][1].elements):
        elems, p = heapq.heappop(load)
        assigned.setdefault(p, []).append((i, order, m))
        heapq.heappush(load, (elems + m.elements, p))
    return {
        pes[p]: [m for _i, _o, m in sorted(ms, key=lambda x: (x[0], x[1]))]
        for p, ms in sorted(assigned.items())
    }


def _pe_list(region: Region) -> list[PeId]:
    return [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]


def _mover(chip: Chip, name: str, pe: PeId, moves: list[Move], item: int) -> PeProgram:
    """Core 0 DMAs every move's tiles in, core 1 DMAs them out, through one CB."""
    widest = max(m.tile[0] * m.tile[1] for m in moves) * item
    prog = PeProgram(pe, cb_layout(chip, pe, {CB_IN: DEPTH * widest}, name), ([], []))
    for m in moves:
        prog.cores[0].append(DmaIn.one(CB_IN, TileStream(m.src, m.tile, m.src_loop)))
    for m in moves:
        prog.cores[1].append(DmaOut(CB_IN, TileStream(m.dst, m.tile, m.dst_loop)))
    return prog


def _tile_rows(cols: int, item: int) -> int:
    return max(1, TILE_BYTES // max(1, cols * item))


# ------------------------------------------------------------------------------------------------- im2col
@dataclass(frozen=True)
class Conv1d:
    """A 1-D convolution's geometry: batch, length, channels, kernel, stride, dilation, padding."""

    n: int
    length: int
    channels: int
    kernel: int
    stride: int = 1
    dilation: int = 1
    pad: tuple[int, int] = (0, 0)

    @property
    def out_length(self) -> int:
        span = (self.kernel - 1) * self.dilation + 1
        return (self.length + self.pad[0] + self.pad[1] - span) // self.stride + 1

    @property
    def strided_view(self) -> bool:
        """Whether x is read as [N * L / s, s * C] (a stride that divides L)."""
        return self.stride > 1 and self.length % self.stride == 0

    def source_shape(self) -> tuple[int, int]:
        """The grid im2col reads x in."""
        s = self.stride if self.strided_view else 1
        return self.n * self.length // s, s * self.channels

    def valid(self, k: int) -> tuple[int, int]:
        """The output positions [t0, t1) whose tap k falls inside x (the rest read padding)."""
        q = k * self.dilation - self.pad[0]
        t0 = min(self.out_length, max(0, cdiv(-q, self.stride)))
        t1 = min(self.out_length, max(t0, (self.length - 1 - q) // self.stride + 1))
        return t0, t1


def im2col_moves(conv: Conv1d, x: str, zeros: str, out: str, item: int) -> list[Move]:
    """The DMA moves that build the columns: per tap k, the padding rows before and after (zero tiles) and the
    rows of x in between, in column pieces at most `MAX_TILE_COLS` wide."""
    n, length, c, s = conv.n, conv.length, conv.channels, conv.stride
    l_out = conv.out_length
    moves: list[Move] = []
    for k in range(conv.kernel):
        q = k * conv.dilation - conv.pad[0]
        t0, t1 = conv.valid(k)
        for c0, tc, nc in runs(c, MAX_TILE_COLS):
            col_loop = (nc, 0, tc)
            tr = _tile_rows(tc, item)
            for a, b, src_kind in ((0, t0, "pad"), (t0, t1, "x"), (t1, l_out, "pad")):
                rows_tr = 1 if src_kind == "x" and s > 1 and not conv.strided_view else tr
                for r0, trr, nt in runs(b - a, rows_tr) if b > a else []:
                    dst = loop((a + r0, k * c + c0), (n, l_out, 0), (nt, trr, 0), col_loop)
                    if src_kind == "pad":
                        src = loop((0, 0), (n, 0, 0), (nt, 0, 0), (nc, 0, 0))
                        moves.append(Move(zeros, out, (trr, tc), src, dst))
                        continue
                    t = a + r0
                    if s == 1:
                        src = loop((t + q, c0), (n, length, 0), (nt, trr, 0), col_loop)
                    elif conv.strided_view:
                        src = loop(
                            (t + q // s, (q % s) * c + c0), (n, length // s, 0), (nt, trr, 0), col_loop
                        )
                    else:
                        src = loop((t * s + q, c0), (n, length, 0), (nt, s, 0), col_loop)
                    moves.append(Move(x, out, (trr, tc), src, dst))
    return moves


def im2col_job(
    chip: Chip,
    name: str,
    conv: Conv1d,
    x: TensorDecl,
    zeros: TensorDecl,
    out: TensorDecl,
    *,
    region: Region | None = None,
) -> Job:
    """The columns of `conv` from x (seen as `conv.source_shape()`) into out [N * L_out, K * C]; `zeros` is a
    row of zeros of x's dtype."""
    region = region or Region.whole(chip)
    region.check(chip)
    l_out = conv.out_length
    if l_out < 1:
        raise UsageError(
            f"{name}: a kernel of {conv.kernel} (dilation {conv.dilation}) is longer than the input"
        )
    want = (conv.n * l_out, conv.kernel * conv.channels)
    if (
        (x.rows, x.cols) != conv.source_shape()
        or (out.rows, out.cols) != want
        or {x.dtype, zeros.dtype} != {out.dtype}
    ):
        raise UsageError(
            f"{name}: im2col reads x as {list(conv.source_shape())} and writes {list(want)} of one dtype; got "
            f"x {list(x.shape)} {x.dtype.value}, out {list(out.shape)} {out.dtype.value}, zeros {zeros.dtype.value}"
        )
    moves = im2col_moves(conv, x.name, zeros.name, out.name, out.dtype.itemsize)
    pes = {
        pe: _mover(chip, name, pe, ms, out.dtype.itemsize)
        for pe, ms in share_out(moves, _pe_list(region)).items()
    }
    return Job(name, "im2col", pes, work={"elements": float(out.rows * out.cols)})


# ------------------------------------------------------------------------------------------------- gather
@dataclass(frozen=True)
class Groups:
    """How index data names rows: `groups` groups of `count` indices; group g's i-th index is
    ``idx[g * index_step + i]`` and names row ``g * row_step + idx`` (one group: the index itself)."""

    groups: int
    count: int
    index_step: int = 0
    row_step: int = 0

    @property
    def rows(self) -> int:
        return self.groups * self.count

    def segments(self, r0: int, r1: int) -> list[tuple[int, int, int]]:
        """Output rows [r0, r1) as (group, first index position, indices) per group they cross."""
        out = []
        r = r0
        while r < r1:
            g = r // self.count
            end = min(r1, (g + 1) * self.count)
            out.append((g, g * self.index_step + r - g * self.count, end - r))
            r = end
        return out


def _check_index(name: str, idx: TensorDecl, groups: Groups) -> None:
    if idx.dtype not in (DType.INT32, DType.INT64):
        raise UsageError(f"{name}: indices {idx.name!r} are {idx.dtype.value}, not int32/int64")
    need = (groups.groups - 1) * groups.index_step + groups.count if groups.rows else 0
    if need > idx.rows * idx.cols:
        raise UsageError(f"{name}: {groups} needs {need} indices, {idx.name!r} holds {idx.rows * idx.cols}")


def gather_rows_job(
    chip: Chip,
    name: str,
    x: TensorDecl,
    idx: TensorDecl,
    out: TensorDecl,
    groups: Groups,
    *,
    region: Region | None = None,
    tensors: dict[str, TensorDecl] | None = None,
) -> Job:
    """``out[g * count + i] = x[g * row_step + idx[g * index_step + i]]`` (column windows of wide rows are
    declared in `tensors`)."""
    region = region or Region.whole(chip)
    region.check(chip)
    _check_index(name, idx, groups)
    if (out.rows, out.cols) != (groups.rows, x.cols) or out.dtype != x.dtype:
        raise UsageError(
            f"{name}: gathering {groups.rows} rows of {list(x.shape)} {x.dtype.value} needs an output "
            f"[{groups.rows}, {x.cols}] {x.dtype.value}, got {list(out.shape)} {out.dtype.value}"
        )
    item = x.dtype.itemsize
    chunks = runs(x.cols, MAX_ROW_BYTES // item)
    pe_list = _pe_list(region)
    widths = [w for _c0, w, n in chunks for _ in range(n)]
    starts = [c0 + j * w for c0, w, n in chunks for j in range(n)]
    parts = max(1, len(pe_list) // len(widths))
    items = [(c0, w, r0, r1) for c0, w in zip(starts, widths, strict=True)
             for r0, r1 in split(groups.rows, min(parts, max(groups.rows, 1)), 1) if r1 > r0]  # fmt: skip
    pes: dict[PeId, PeProgram] = {}
    for i, (c0, w, r0, r1) in enumerate(items):
        pe = pe_list[i % len(pe_list)]
        xw, ow = column_window(x, c0, w, tensors), column_window(out, c0, w, tensors)
        prog = pes.get(pe)
        if prog is None:
            sizes = {CB_ROWS: DEPTH * max(widths) * item}
            prog = pes[pe] = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        for g, start, n in groups.segments(r0, r1):
            prog.cores[0].append(DmaGather(CB_ROWS, xw.name, idx.name, start, n, g * groups.row_step))
        prog.cores[1].append(DmaOut(CB_ROWS, TileStream(ow.name, (1, w), loop((r0, 0), (r1 - r0, 1, 0)))))
    return Job(
        name,
        "gather_rows",
        pes,
        work={"rows": float(groups.rows), "bytes": float(out.rows * out.cols * item)},
    )


# ------------------------------------------------------------------------------------------------ scatter
def _blocks(groups: Groups, rows: int, widths: list[tuple[int, int]], n_pes: int) -> list[tuple[int, ...]]:
    """Each PE's block: (first group, end group, first row, end row, first column, end column). With one group
    the rows are shared out (every PE scans all indices for those in its rows); with several, whole groups
    (they touch disjoint rows); rows too wide for the local store go in column windows."""
    parts = max(1, n_pes // len(widths))
    out = []
    for c0, c1 in widths:
        if groups.groups > 1:
            for g0, g1 in split(groups.groups, min(groups.groups, parts), 1):
                if g1 > g0:
                    end = rows if g1 == groups.groups else g1 * groups.row_step
                    out.append((g0, g1, g0 * groups.row_step, end, c0, c1))
        else:
            out += [(0, 1, r0, r1, c0, c1) for r0, r1 in split(rows, min(rows, parts), 1) if r1 > r0]
    return out


def _copy_moves(src: TensorDecl, dst: TensorDecl, r0: int, r1: int, c0: int, c1: int) -> list[Move]:
    """[r0, r1) x [c0, c1) of src to the same place of dst, in whole tiles."""
    item = max(src.dtype.itemsize, dst.dtype.itemsize)
    moves = []
    for a, tc, nc in runs(c1 - c0, MAX_TILE_COLS):
        for b, tr, nr in runs(r1 - r0, _tile_rows(tc, item)) if r1 > r0 else []:
            lp = loop((r0 + b, c0 + a), (nr, tr, 0), (nc, 0, tc))
            moves.append(Move(src.name, dst.name, (tr, tc), lp, lp))
    return moves


def _copy(prog: PeProgram, moves: list[Move], cast: DType | None) -> None:
    """Core 0 DMAs the tiles in, core 1 (converting them on the SE to `cast`) DMAs them out."""
    for m in moves:
        prog.cores[0].append(DmaIn.one(CB_IN, TileStream(m.src, m.tile, m.src_loop)))
    for m in moves:
        if cast is not None:
            prog.cores[1].append(SeMap(SeOp.CAST, CB_IN, CB_OUT, m.src_loop.n, cast))
        prog.cores[1].append(
            DmaOut(CB_OUT if cast is not None else CB_IN, TileStream(m.dst, m.tile, m.dst_loop))
        )


def _sync(prog: PeProgram) -> None:
    for core in prog.cores:
        core.append(Barrier("cores"))


def scatter_rows_job(
    chip: Chip,
    name: str,
    dst: TensorDecl,
    idx: TensorDecl,
    src: TensorDecl,
    out: TensorDecl,
    groups: Groups,
    *,
    accumulate: bool = False,
    scratch: TensorDecl | None = None,
    region: Region | None = None,
    tensors: dict[str, TensorDecl] | None = None,
) -> Job:
    """``out = dst`` with src's rows written (or added) at ``g * row_step + idx[g * index_step + i]`` in the
    first ``src.cols`` columns. src is [groups * count, cols], or one row written at every index. Adding into a
    non-fp32 out needs an fp32 `scratch` of out's shape.

    Each PE owns a block of out's rows (and columns, for very wide rows): it copies dst's block, then writes
    the src rows of the indices that fall in it (`DmaScatter`, in index order), so no two PEs touch a row."""
    region = region or Region.whole(chip)
    region.check(chip)
    _check_index(name, idx, groups)
    cols = src.cols
    repeat = src.rows == 1 and groups.rows != 1
    if (
        dst.shape != out.shape
        or dst.dtype != out.dtype
        or cols > out.cols
        or (src.rows != groups.rows and not repeat)
    ):
        raise UsageError(
            f"{name}: scatter of {list(src.shape)} rows into {list(dst.shape)} -> {list(out.shape)} "
            f"({groups.rows} indices) does not fit"
        )
    via = scratch if accumulate and out.dtype != DType.FP32 else None
    if via is not None and (via.shape != out.shape or via.dtype != DType.FP32):
        raise UsageError(
            f"{name}: adding rows into {out.dtype.value} needs an fp32 scratch of shape {list(out.shape)}"
        )
    if accumulate and out.dtype != DType.FP32 and via is None:
        raise UsageError(f"{name}: adding rows into {out.dtype.value} needs an fp32 scratch")
    target = via or out
    widths = [
        (c0 + j * w, c0 + (j + 1) * w) for c0, w, n in runs(out.cols, MAX_ROW_BYTES // 4) for j in range(n)
    ]
    pes: dict[PeId, PeProgram] = {}
    pe_list = _pe_list(region)
    for i, (g0, g1, r0, r1, c0, c1) in enumerate(_blocks(groups, out.rows, widths, len(pe_list))):
        pe = pe_list[i % len(pe_list)]
        copies = _copy_moves(dst, target, r0, r1, c0, c1)
        widest = max(m.tile[0] * m.tile[1] for m in copies) * 4
        prog = pes.get(pe)
        if prog is None:
            prog = pes[pe] = PeProgram(
                pe, cb_layout(chip, pe, {CB_IN: DEPTH * widest, CB_OUT: DEPTH * widest}, name), ([], [])
            )
        _copy(prog, copies, DType.FP32 if via is not None else None)
        _sync(prog)  # the block's copy is in place before its rows are written
        if min(c1, cols) > c0 and groups.count:
            table = column_window(target, c0, min(c1, cols) - c0, tensors)
            rows_src = column_window(src, c0, min(c1, cols) - c0, tensors)
            for g in range(g0, g1):
                prog.cores[1].append(
                    DmaScatter(
                        rows_src.name,
                        table.name,
                        idx.name,
                        g * groups.index_step,
                        groups.count,
                        g * groups.row_step,
                        0 if repeat else g * groups.count,
                        0 if repeat else 1,
                        r0,
                        r1,
                        accumulate,
                    )  # fmt: skip
                )
        if via is not None:  # the fp32 sums back to out's dtype, once every add of this block is done
            _sync(prog)
            _copy(prog, _copy_moves(via, out, r0, r1, c0, c1), out.dtype)
    work = {"rows": float(groups.rows), "bytes": float(out.rows * out.cols * out.dtype.itemsize)}
    return Job(name, "scatter_rows", pes, work=work)


__all__ = ["Conv1d", "Groups", "gather_rows_job", "im2col_job", "im2col_moves", "scatter_rows_job"]
