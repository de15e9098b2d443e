"""Jagged <-> padded dense rows (FBGEMM's `jagged_to_padded_dense` and `dense_to_jagged`) by DMA.

Both are row copies decided by the offsets (`mtiasim.jagged`): each output row is a row of the input or
padding (zeros for `dense_to_jagged`). The output's rows are shared out over the PEs in whole tiles of rows;
on each PE core 0 DMAs every piece it has in (a run of consecutive input rows, or the padding rows of a small
constant tensor read again for every tile) and core 1 DMAs it out to its place, as the layout kernels move
bytes (`layout._mover`). So every output row is read once and written once: the job moves
``2 x out rows x D x itemsize`` bytes whatever the lengths; the offsets only decide where they go.

The offsets are data, known per call: the job is built on every call (`JaggedCall.job`), as the lookups' are.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import Job, TensorDecl, TileStream, loop
from mtiasim.jagged import Piece, check_offsets, to_dense_pieces, to_jagged_pieces
from mtiasim.kernels.common import Region, cdiv, split
from mtiasim.kernels.layout import CB_IN, DEPTH, TILE_BYTES, _mover, _pe_list

MAX_COLS = 256  # a wider row moves in several column tiles
TO_DENSE, TO_JAGGED = "jagged_to_dense", "dense_to_jagged"


def tile_of(cols: int, itemsize: int) -> tuple[int, int]:
    """The largest tile of whole rows (up to `MAX_COLS` wide) the job moves: about `TILE_BYTES`."""
    tc = min(cols, MAX_COLS)
    return max(1, TILE_BYTES // (tc * itemsize)), tc


def pad_rows(cols: int, itemsize: int) -> int:
    """Rows of the padding constant a job reads its padding from (one tile's)."""
    return tile_of(cols, itemsize)[0]


def _streams(
    src: str, dst: str, piece: Piece, tile: tuple[int, int], cols: int
) -> list[tuple[TileStream, TileStream]]:
    """(source, destination) tile streams of one piece: whole tiles of rows, then one tile of the rest; padding
    reads the same rows of `src` for every tile."""
    tr, tc = min(tile[0], piece.rows), tile[1]
    main = piece.rows - piece.rows % tr
    n_cols = cdiv(cols, tc)
    step = tr if piece.from_input else 0
    out = []
    for r0, rows, n in ((0, tr, main // tr), (main, piece.rows - main, 1)):
        if rows <= 0 or n <= 0:
            continue
        src_row = piece.src + r0 if piece.from_input else 0
        s = TileStream(src, (rows, tc), loop((src_row, 0), (n, step, 0), (n_cols, 0, tc)))
        d = TileStream(dst, (rows, tc), loop((piece.dst + r0, 0), (n, rows, 0), (n_cols, 0, tc)))
        out.append((s, d))
    return out


def jagged_rows_job(
    chip: Chip,
    name: str,
    x: TensorDecl,
    out: TensorDecl,
    pad: TensorDecl,
    pieces: list[Piece],
    *,
    kind: str = "jagged_rows",
    region: Region | None = None,
) -> Job:
    """``out`` (rows of its 2-D grid) assembled from `pieces`: rows of `x`, or the rows of the padding tensor
    `pad` (read again for each tile). Every row of `out` must be covered once, in order."""
    region = region or Region.whole(chip)
    region.check(chip)
    if x.cols != out.cols or pad.cols != out.cols or len({x.dtype, out.dtype, pad.dtype}) != 1:
        raise UsageError(
            f"{name}: rows of {x.shape} {x.dtype.value} (padding {pad.shape} {pad.dtype.value}) cannot fill "
            f"{out.shape} {out.dtype.value}"
        )
    covered = sum(p.rows for p in pieces)
    if covered != out.rows or any(p.from_input and p.src + p.rows > x.rows for p in pieces):
        raise UsageError(f"{name}: the pieces cover {covered} of {out.rows} rows or reach past {x.rows} rows")
    item = out.dtype.itemsize
    tile = tile_of(out.cols, item)
    if pad.rows < tile[0] and any(not p.from_input for p in pieces):
        raise UsageError(f"{name}: the padding tensor needs {tile[0]} rows, has {pad.rows}")
    pe_list = _pe_list(region)
    firsts = [p.dst for p in pieces]
    pes = {}
    for pe, (lo, hi) in zip(pe_list, split(out.rows, len(pe_list), tile[0]), strict=False):
        moves = []
        for p in pieces[max(0, bisect_right(firsts, lo) - 1) : bisect_left(firsts, hi)]:
            a, e = max(lo, p.dst), min(hi, p.dst + p.rows)
            if e <= a:
                continue
            part = Piece(a, p.src + (a - p.dst) if p.from_input else 0, e - a, p.from_input)
            for s, d in _streams(x.name if p.from_input else pad.name, out.name, part, tile, out.cols):
                moves.append((CB_IN, s, d))
        if moves:
            pes[pe] = _mover(chip, name, pe, moves, {CB_IN: DEPTH * tile[0] * tile[1] * item})
    return Job(name, kind, pes, work={"elements": float(out.rows * out.cols)})


@dataclass(frozen=True)
class JaggedCall:
    """A jagged op's job, built on every call from that call's offsets (`job`): the decls of its input, output
    and padding rows, its offsets (the value the host hands over, or constants), its region and dependencies."""

    kop: str
    kind: str  # TO_DENSE | TO_JAGGED
    x: str
    out: str
    pad: str
    offsets: str  # the graph value holding them (the host's, per call)
    const_offsets: tuple[int, ...] | None  # a model's constant offsets (checked when compiled)
    sequences: int
    max_len: int
    region: Region
    aten: str = ""  # the model's op, for messages
    whole: bool = False  # the offsets must end at the jagged rows (dense_to_jagged without total_L)
    rows_per_call: bool = False  # dense_to_jagged whose rows are known per call: offsets[-1], placed per call
    deps: tuple[str, ...] = ()

    def check(self, offsets: object, tensors: dict[str, TensorDecl], where: str) -> np.ndarray:
        """This call's offsets, checked against the op's sequences and jagged rows (whose decls, placed per call
        for rows known per call only, are in `tensors`; a `rows_per_call` output has offsets[-1] rows)."""
        arr = np.asarray(offsets)
        if self.rows_per_call:
            rows = int(arr.reshape(-1)[-1]) if arr.size and arr.dtype.kind in "iu" else 0
        else:
            rows = tensors[self.x if self.kind == TO_DENSE else self.out].rows
        return check_offsets(arr, sequences=self.sequences, rows=rows, where=where, whole=self.whole)

    def job(self, chip: Chip, tensors: dict[str, TensorDecl], offsets: np.ndarray) -> Job:
        x, out = tensors[self.x], tensors[self.out]
        if self.kind == TO_DENSE:
            pieces = to_dense_pieces(offsets, self.max_len)
        else:
            pieces = to_jagged_pieces(offsets, self.max_len, out.rows)
        job = jagged_rows_job(chip, self.kop, x, out, tensors[self.pad], pieces, kind=self.kind,
                              region=self.region)  # fmt: skip
        job.deps = self.deps
        return job
