"""Jagged rows (FBGEMM's layout): B sequences stored one after another in values [T, D], sequence b in rows
``[offsets[b], offsets[b + 1])``; the padded dense form is [B, S, D], sequence b in rows ``[b * S, (b + 1) * S)``.

`fbgemm.jagged_to_padded_dense` puts row ``offsets[b] + s`` at ``dense[b, s]`` for ``s < min(length, S)`` (a
longer sequence is truncated) and the padding value elsewhere; `fbgemm.dense_to_jagged` puts ``dense[b, s]``
back at row ``offsets[b] + s`` for the same positions and zeros in every other row of the [T, D] result.
Both are row copies. This module says which rows go where, from the offsets alone (numpy, no torch): the
kernels, the reference interpreter, the error bounds and the runtime all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtiasim.errors import UsageError


@dataclass(frozen=True)
class Piece:
    """Rows [dst, dst + rows) of the output come from rows [src, src + rows) of the input, or are padding
    (`from_input` False: `src` is then 0)."""

    dst: int
    src: int
    rows: int
    from_input: bool


def check_offsets(
    offsets: object, *, sequences: int, rows: int, where: str, whole: bool = False
) -> np.ndarray:
    """`offsets` as int64 [sequences + 1]: integers, never decreasing, within the `rows` rows of the jagged
    values (from 0 to `rows`; ending at `rows` when `whole`); a one-line UsageError starting with `where`
    otherwise."""
    arr = np.asarray(offsets)
    if arr.dtype.kind not in "iu":
        raise UsageError(f"{where}: offsets must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size != sequences + 1:
        raise UsageError(
            f"{where}: offsets must have {sequences + 1} entries (sequences + 1), got {arr.size}"
        )
    steps = np.diff(arr)
    if (steps < 0).any():
        b = int(np.flatnonzero(steps < 0)[0])
        raise UsageError(
            f"{where}: offsets must never decrease, got offsets[{b}] = {int(arr[b])} > offsets[{b + 1}] = "
            f"{int(arr[b + 1])}"
        )
    if arr[0] < 0 or arr[-1] > rows:
        raise UsageError(
            f"{where}: offsets must stay within the {rows} jagged rows, got [{int(arr[0])}, {int(arr[-1])}]"
        )
    if whole and arr[-1] != rows:
        raise UsageError(
            f"{where}: offsets must end at {rows}, the rows compiled for (no total_L), got {int(arr[-1])}"
        )
    return arr


def lengths(offsets: np.ndarray, max_len: int) -> np.ndarray:
    """The rows of each sequence that the dense form holds: its length, truncated to `max_len`."""
    return np.minimum(np.diff(offsets), max_len)


def to_dense_pieces(offsets: np.ndarray, max_len: int) -> list[Piece]:
    """jagged -> dense [B * S rows]: each sequence's rows, then its padding; in output order, adjacent pieces
    of one kind merged when both sides continue."""
    pieces: list[Piece] = []
    for b, n in enumerate(lengths(offsets, max_len).tolist()):
        _append(pieces, Piece(b * max_len, int(offsets[b]), n, True))
        _append(pieces, Piece(b * max_len + n, 0, max_len - n, False))
    return pieces


def to_jagged_pieces(offsets: np.ndarray, max_len: int, rows: int) -> list[Piece]:
    """dense [B * S rows] -> jagged [rows]: each sequence's kept rows at its offset, zeros in every other row
    (before the first offset, past the last, and the positions a truncated sequence drops); in output order."""
    pieces: list[Piece] = []
    at = 0
    for b, n in enumerate(lengths(offsets, max_len).tolist()):
        start = int(offsets[b])
        _append(pieces, Piece(at, 0, start - at, False))
        _append(pieces, Piece(start, b * max_len, n, True))
        at = start + n
    _append(pieces, Piece(at, 0, rows - at, False))
    return pieces


def _append(pieces: list[Piece], p: Piece) -> None:
    if p.rows <= 0:
        return
    last = pieces[-1] if pieces else None
    if (
        last is not None
        and last.from_input == p.from_input
        and last.dst + last.rows == p.dst
        and (not p.from_input or last.src + last.rows == p.src)
    ):
        pieces[-1] = Piece(last.dst, last.src, last.rows + p.rows, p.from_input)
    else:
        pieces.append(p)
