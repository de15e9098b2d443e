"""The torch meaning of the row operators (`im2col`, `gather_rows`, `scatter_rows`), for the reference
interpreter (`reference.run_graph`) and the error bounds (`runtime.bounds`), which map errors through the same
functions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mtiasim.errors import UsageError


def im2col(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    """x [N, L, C] (channels last) -> [N, L_out, K * C]: column k * C + c of row (n, t) is
    ``x[n, t * stride + k * dilation - pad_left, c]``, 0 where that falls outside [0, L)."""
    k, s, d = a["kernel"], a["stride"], a["dilation"]
    left, right = a["pad"]
    n, _length, c = x.shape
    xp = F.pad(x, (0, 0, left, right))
    cols = xp.unfold(1, (k - 1) * d + 1, s)[..., ::d]  # [N, L_out, C, K]
    return cols.permute(0, 1, 3, 2).reshape(n, cols.shape[1], k * c)


def row_positions(idx: torch.Tensor, a: dict[str, Any], rows: int, where: str) -> torch.Tensor:
    """The rows of [rows, W] that index data `idx` names under a row operator's groups (int64 [groups * count]):
    group g's i-th index is ``idx[g * index_step + i]``, a row of the group's block ``[g * row_step, ...)``."""
    g = torch.arange(a["groups"], dtype=torch.int64)[:, None]
    i = torch.arange(a["count"], dtype=torch.int64)[None, :]
    flat = idx.reshape(-1).to(torch.int64)
    picked = flat[(g * a["index_step"] + i).reshape(-1)] if flat.numel() else flat
    limit = a["row_step"] if a["groups"] > 1 else rows
    if picked.numel() and (int(picked.min()) < 0 or int(picked.max()) >= limit):
        bad = int(picked[(picked < 0) | (picked >= limit)][0])
        raise UsageError(f"{where}: index {bad} is outside [0, {limit})")
    return picked + (g * a["row_step"]).expand(-1, a["count"]).reshape(-1)


def gather_rows(x: torch.Tensor, idx: torch.Tensor, a: dict[str, Any], where: str) -> torch.Tensor:
    return x[row_positions(idx, a, x.shape[0], where)]


def scatter_rows(
    dst: torch.Tensor,
    idx: torch.Tensor,
    src: torch.Tensor | None,
    a: dict[str, Any],
    where: str,
    acc_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A copy of dst with rows of src (or the constant `value`) at the indexed rows of its first `cols` columns;
    accumulate: added in FP32 (`acc_dtype`) one index after the other (torch's CPU order), rounded once to
    dst's dtype; otherwise a later index of a duplicate wins."""
    rows = row_positions(idx, a, dst.shape[0], where)
    cols = a.get("cols", dst.shape[1])
    vals = src if src is not None else torch.full((1, cols), float(a["value"]), dtype=dst.dtype)
    vals = vals.reshape(-1, cols).expand(rows.numel(), cols)  # one row: written at every index
    if a.get("accumulate"):
        y = dst.to(acc_dtype).clone()
        y[:, :cols].index_put_((rows,), vals.to(acc_dtype), accumulate=True)
        return y.to(dst.dtype)
    # torch leaves duplicates undefined here (its CPU kernel may keep any of them): the chip's later one wins
    last = torch.zeros(dst.shape[0], dtype=torch.int64).scatter_reduce(
        0, rows, torch.arange(rows.numel()), "amax", include_self=False
    )
    keep = last[rows] == torch.arange(rows.numel())
    y = dst.clone()
    y[rows[keep], :cols] = vals.to(dst.dtype)[keep]
    return y
