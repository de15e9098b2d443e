"""Layout operators: transpose on the MLU; concat, copy and column gather by DMA.

Transpose ``[m, k, n] -> [m, n, k]``: each PE takes whole batches; core 0 DMAs [tk, tn] tiles in, the MLU
transposes them, core 1 DMAs the [tn, tk] tiles to their transposed place. A 2-D ``[M, N] -> [N, M]`` shares
its (ragged) tile grid out over the PEs instead.

Concat of 2-D views along the last dimension (``[..., w_i] -> [..., sum w_i]``), copy between (possibly
strided) views of one shape, and column gather are pure data movement: each tile is read into the local store
and written to its place in the output. Any of their tensors may be a column window (`MemoryPlan.alias`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import DmaIn, DmaOut, Job, MluTranspose, PeProgram, TensorDecl, TileLoop, TileStream
from mtiasim.kernels.common import Region, cb_layout, cdiv, split
from mtiasim.kernels.tiling import grid_loops, tile_shape

CB_IN, CB_OUT, CB_IN2 = 0, 1, 2
DEPTH = 4
TILE_BYTES = 4096
MAX_RUN_COLS = 256  # a gathered run wider than this moves in several tile streams
# CB ids of concatenated inputs, in order (the first two as the two-input concat has always used them)
CONCAT_CBS = (CB_IN, CB_IN2, CB_OUT, *range(3, 16))


def largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _pe_list(region: Region) -> list[tuple[int, int]]:
    return [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]


def transpose_job(
    chip: Chip, name: str, x: TensorDecl, out: TensorDecl, *, region: Region | None = None
) -> Job:
    """``out = x.transpose(-1, -2)``: [m, k, n] -> [m, n, k], or [M, N] -> [N, M]."""
    region = region or Region.whole(chip)
    region.check(chip)
    if len(x.shape) == 2 and out.shape == (x.shape[1], x.shape[0]) and out.dtype == x.dtype:
        return _transpose_2d(chip, name, x, out, region)
    if len(x.shape) != 3 or out.shape != (x.shape[0], x.shape[2], x.shape[1]) or out.dtype != x.dtype:
        raise UsageError(
            f"{name}: transpose maps [m, k, n] to [m, n, k] (or [M, N] to [N, M]) of the same dtype; "
            f"got {x.shape} -> {out.shape}"
        )
    m, k, n = x.shape
    tk, tn = largest_divisor(k, 64), largest_divisor(n, 64)
    pes = {}
    pe_list = _pe_list(region)
    for pe, (b0, b1) in zip(pe_list, split(m, len(pe_list), 1), strict=False):
        nb = b1 - b0
        if nb <= 0:
            continue
        tile_bytes = tk * tn * x.dtype.itemsize
        prog = PeProgram(
            pe, cb_layout(chip, pe, {CB_IN: DEPTH * tile_bytes, CB_OUT: DEPTH * tile_bytes}, name), ([], [])
        )
        dims_in = tuple(d for d in ((nb, k, 0), (k // tk, tk, 0), (n // tn, 0, tn)) if d[0] > 1)
        dims_out = tuple(d for d in ((nb, n, 0), (k // tk, 0, tk), (n // tn, tn, 0)) if d[0] > 1)
        s_in = TileStream(x.name, (tk, tn), TileLoop((b0 * k, 0), dims_in))
        s_out = TileStream(out.name, (tn, tk), TileLoop((b0 * n, 0), dims_out))
        prog.cores[0].append(DmaIn.one(CB_IN, s_in))
        prog.cores[1].append(MluTranspose(CB_IN, CB_OUT, s_in.n_tiles))
        prog.cores[1].append(DmaOut(CB_OUT, s_out))
        pes[pe] = prog
    return Job(name, "transpose", pes, work={"elements": float(m * k * n)})


def _transpose_2d(chip: Chip, name: str, x: TensorDecl, out: TensorDecl, region: Region) -> Job:
    """[M, N] -> [N, M]: square tiles (ragged at the edges: zero-padded in, clipped out) shared over PEs."""
    rows, cols = x.shape
    side = 64 if x.dtype.itemsize <= 2 else 32
    tile = (min(side, rows), min(side, cols))
    tile_bytes = tile[0] * tile[1] * x.dtype.itemsize
    pes = {}
    for pe, lp in zip(_pe_list(region), grid_loops(rows, cols, tile, region.size), strict=False):
        prog = PeProgram(
            pe, cb_layout(chip, pe, {CB_IN: DEPTH * tile_bytes, CB_OUT: DEPTH * tile_bytes}, name), ([], [])
        )
        flipped = TileLoop((lp.base[1], lp.base[0]), tuple((n, dc, dr) for n, dr, dc in lp.dims))
        prog.cores[0].append(DmaIn.one(CB_IN, TileStream(x.name, tile, lp)))
        prog.cores[1].append(MluTranspose(CB_IN, CB_OUT, lp.n))
        prog.cores[1].append(DmaOut(CB_OUT, TileStream(out.name, (tile[1], tile[0]), flipped)))
        pes[pe] = prog
    return Job(name, "transpose", pes, work={"elements": float(rows * cols)})


def concat_job(
    chip: Chip,
    name: str,
    inputs: Sequence[TensorDecl] | TensorDecl,
    out: TensorDecl,
    legacy_out: TensorDecl | None = None,
    *,
    region: Region | None = None,
) -> Job:
    """``out = cat(inputs, dim=-1)`` for inputs of the same leading shape and dtype, any last-dim widths.

    The two-input form ``concat_job(chip, name, x, y, out)`` is still accepted.
    """
    if isinstance(inputs, TensorDecl):
        if legacy_out is None:
            raise UsageError(f"{name}: concat_job(chip, name, inputs, out) takes a sequence of inputs")
        xs: list[TensorDecl] = [inputs, out]
        out = legacy_out
    else:
        xs = list(inputs)
    region = region or Region.whole(chip)
    region.check(chip)
    lead = xs[0].shape[:-1] if xs else ()
    widths = [x.shape[-1] for x in xs]
    if (
        not xs
        or any(x.shape[:-1] != lead or x.dtype != out.dtype for x in xs)
        or out.shape != (*lead, sum(widths))
    ):
        shapes = ", ".join(str(x.shape) for x in xs)
        raise UsageError(
            f"{name}: concat of {shapes} along the last dim cannot give {out.shape} {out.dtype.value}"
        )
    rows, item = xs[0].rows, out.dtype.itemsize
    col0 = [sum(widths[:i]) for i in range(len(xs))]
    # (input, first column, width, tile): an input's ragged last columns move in a tile of their exact width, so
    # no zero-padded tile spills into the next input's columns of `out`
    pieces = []
    for i, w in enumerate(widths):
        tile = tile_shape(rows, w, item)
        main = w - w % tile[1]
        pieces.append((i, 0, main, tile))
        if main < w:
            pieces.append((i, main, w - main, tile_shape(rows, w - main, item)))
    loops = [grid_loops(rows, w, tile, region.size) for _i, _c, w, tile in pieces]
    tile_bytes = max(t[0] * t[1] for _i, _c, _w, t in pieces) * item
    n_cbs = max(1, min(len(xs), len(CONCAT_CBS), chip.local_memory.bytes // (DEPTH * tile_bytes + 64)))
    pes = {}
    for p, pe in enumerate(_pe_list(region)):
        moves = []
        for (i, c, _w, tile), piece_loops in zip(pieces, loops, strict=True):
            if p < len(piece_loops):
                lp = piece_loops[p]
                src = TileLoop((lp.base[0], lp.base[1] + c), lp.dims)
                dst = TileLoop((lp.base[0], lp.base[1] + c + col0[i]), lp.dims)
                moves.append(
                    (
                        CONCAT_CBS[i % n_cbs],
                        TileStream(xs[i].name, tile, src),
                        TileStream(out.name, tile, dst),
                    )
                )
        if moves:
            pes[pe] = _mover(chip, name, pe, moves, {cb: DEPTH * tile_bytes for cb, _s, _d in moves})
    return Job(name, "concat", pes, work={"elements": float(out.rows * out.cols)})


def _mover(
    chip: Chip,
    name: str,
    pe: tuple[int, int],
    moves: list[tuple[int, TileStream, TileStream]],
    sizes: dict[int, int],
) -> PeProgram:
    """A PE that DMAs each (CB, source stream, destination stream) in through its CB and out again: core 0
    issues the reads in order, core 1 the writes."""
    prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
    for cb, src, _dst in moves:
        prog.cores[0].append(DmaIn.one(cb, src))
    for cb, _src, dst in moves:
        prog.cores[1].append(DmaOut(cb, dst))
    return prog


def copy_job(chip: Chip, name: str, src: TensorDecl, dst: TensorDecl, *, region: Region | None = None) -> Job:
    """``dst = src`` for views of one shape and dtype (either may be a strided column window; they must not
    overlap)."""
    region = region or Region.whole(chip)
    region.check(chip)
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise UsageError(
            f"{name}: copy needs one shape and dtype, got {src.shape} {src.dtype.value} -> "
            f"{dst.shape} {dst.dtype.value}"
        )
    tile = tile_shape(src.rows, src.cols, src.dtype.itemsize)
    tile_bytes = tile[0] * tile[1] * src.dtype.itemsize
    pes = {}
    for pe, lp in zip(_pe_list(region), grid_loops(src.rows, src.cols, tile, region.size), strict=False):
        moves = [(CB_IN, TileStream(src.name, tile, lp), TileStream(dst.name, tile, lp))]
        pes[pe] = _mover(chip, name, pe, moves, {CB_IN: DEPTH * tile_bytes})
    return Job(name, "copy", pes, work={"elements": float(src.rows * src.cols)})


def column_runs(columns: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive source columns: (first source column, first output column, width)."""
    runs: list[tuple[int, int, int]] = []
    for j, c in enumerate(columns):
        if runs and c == runs[-1][0] + runs[-1][2] and runs[-1][2] < MAX_RUN_COLS:
            s0, d0, w = runs[-1]
            runs[-1] = (s0, d0, w + 1)
        else:
            runs.append((int(c), j, 1))
    return runs


def gather_columns_job(
    chip: Chip,
    name: str,
    x: TensorDecl,
    out: TensorDecl,
    columns: Sequence[int],
    *,
    region: Region | None = None,
) -> Job:
    """``out[:, j] = x[:, columns[j]]`` for a constant column list (2-D views).

    The list is cut into maximal runs of consecutive source columns (at most 256 wide). Each run gets a share
    of the PEs in proportion to its width and splits its rows among them; every piece (a run over a range of
    rows) is one DMA tile stream in and one out, placed on the least loaded PE. So a job has about
    2 x max(PEs, runs) DMA commands, however many rows.
    """
    region = region or Region.whole(chip)
    region.check(chip)
    cols = [int(c) for c in columns]
    if out.rows != x.rows or out.cols != len(cols) or out.dtype != x.dtype:
        raise UsageError(
            f"{name}: gathering {len(cols)} columns of {x.shape} {x.dtype.value} needs an output "
            f"[{x.rows}, {len(cols)}] {x.dtype.value}, got {out.shape} {out.dtype.value}"
        )
    bad = [c for c in cols if not 0 <= c < x.cols]
    if bad:
        raise UsageError(f"{name}: column {bad[0]} is outside {x.name!r} ({x.cols} columns)")
    item = x.dtype.itemsize
    pe_list = _pe_list(region)
    pieces: list[tuple[int, int, int, int, int]] = []  # (first row, rows, tile rows, run index, elements)
    runs = column_runs(cols)
    for ri, (_s0, _d0, w) in enumerate(runs):
        share = max(1, min(x.rows, round(len(pe_list) * w / len(cols))))
        tr = max(1, min(cdiv(x.rows, share), TILE_BYTES // (w * item)))
        for r0, r1 in split(x.rows, share, tr):
            if r1 > r0:
                pieces.append((r0, r1 - r0, tr, ri, (r1 - r0) * w))
    load = [(0, p) for p in range(len(pe_list))]  # (elements, PE index): a min-heap
    heapq.heapify(load)
    assigned: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for piece in sorted(pieces, key=lambda pc: (-pc[4], pc[3], pc[0])):
        elems, p = heapq.heappop(load)
        assigned.setdefault(p, []).append(piece)
        heapq.heappush(load, (elems + piece[4], p))
    pes = {}
    for p in sorted(assigned):
        moves = []
        widest = 0
        for r0, n_rows, tr, ri, _e in sorted(assigned[p], key=lambda pc: (pc[3], pc[0])):
            s0, d0, w = runs[ri]
            n = cdiv(n_rows, tr)
            dims = ((n, tr, 0),) if n > 1 else ()
            moves.append(
                (
                    CB_IN,
                    TileStream(x.name, (tr, w), TileLoop((r0, s0), dims)),
                    TileStream(out.name, (tr, w), TileLoop((r0, d0), dims)),
                )
            )
            widest = max(widest, tr * w)
        pes[pe_list[p]] = _mover(chip, name, pe_list[p], moves, {CB_IN: DEPTH * widest * item})
    return Job(name, "gather_columns", pes, work={"elements": float(out.rows * out.cols)})
