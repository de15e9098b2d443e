"""Scaled dot-product attention in one job: ``out = softmax(scale q k^T + mask) v`` per (batch x head) item,
its scores never leaving the PE.

The work is (item, query band) units of `tq` query rows, dealt out to the PEs item by item. For a unit the
PE holds the band of q in its local store and walks the keys in blocks of `nbk` key tiles (`tn` keys each):

- DPE: ``s = q k^T`` of the block, the RE's epilogue multiplying by `scale` in FP32 (`MatMul` with a scale
  vector), the FP32 scores going to a CB;
- SE: ``s += mask`` (the additive mask's tiles; a boolean mask is made additive, 0 or -inf, before the job);
  the running row max ``m' = max(m, max_j s_j)`` (a row of -inf only: -FLT_MAX, so that a fully masked row
  gives 0, as PyTorch does); ``p = exp(s - m')`` rounded to the DPE's dtype; ``l' = l c + sum_j p_j`` with
  ``c = exp(m - m')`` (FP32 sums in column order);
- DPE: ``o' = o c + p v`` (v's tiles transposed to [Dv, keys] by the MLU as they arrive);
- after the last block: ``out = o / max(l, 1)`` (l >= 1 unless every key was masked), rounded to out's dtype.

With one block (every key of the item in the local store: `resident`) this is the two-pass softmax; k and
v^T then stay in the store for all the item's bands and are read once per PE. Otherwise (a long sequence) the
blocks stream through and the running max, sum and output are rescaled block by block (a flash-style online
softmax). A causal band skips the key tiles after its last query. `plan_attention` picks the sizes from the
local store's capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw import Chip
from mtiasim.isa import (
    CbPop,
    DmaIn,
    DmaOut,
    Job,
    MatMul,
    MluTranspose,
    Operand,
    PeProgram,
    ReduceOp,
    SeMap,
    SeOp,
    SeRowReduce,
    TensorDecl,
    TileLoop,
    TileStream,
)
from mtiasim.kernels.common import Region, cb_layout, cdiv, split
from mtiasim.kernels.gemm import DPE_DTYPES, tiles
from mtiasim.opset import ELEMENTWISE, Kind

CB_Q, CB_K, CB_VS, CB_VT, CB_SC, CB_S, CB_MK, CB_M0, CB_M1, CB_C, CB_P, CB_L, CB_LJ, CB_PV, CB_O = range(15)
FLT_MAX = float(np.finfo(np.float32).max)
SCALE_COLS = 64  # the scale vector's length: at least the widest key tile
MAX_TILE = 64  # query band rows, key tile width, v tile width: the RE's 64x64 output block


@dataclass(frozen=True)
class AttentionPlan:
    """Tile sizes and local-store use of an attention job (see the module doc)."""

    tq: int  # query rows per band (divides Sq)
    tn: int  # keys per key tile (divides Skv)
    tk: int  # head-dim tile (q and k tiles are [., tk])
    tv: int  # v columns per output tile
    steps_d: int  # head-dim tiles of q and k
    nvb: int  # output tiles per band (v's columns)
    nk: int  # key tiles of an item
    nbk: int  # key tiles per block (nk: resident)
    sizes: dict[int, int]  # CB -> bytes

    @property
    def resident(self) -> bool:
        return self.nbk == self.nk


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(min(n, limit), 0, -1) if n % d == 0]


def plan_attention(
    chip: Chip, s_q: int, s_kv: int, d: int, dv: int, dtype: DType, *, items: int, mask_rows: int, pes: int
) -> AttentionPlan:
    """The sizes of an attention job: `mask_rows` the rows of a mask tile (0 without a mask, 1 for a mask
    shared by every query, else the band's). Prefers k and v^T resident, bands as tall as keep every PE busy;
    else streams key blocks. A head dim whose smallest blocks do not fit the local store is refused."""
    item = dtype.itemsize
    tk = tiles(chip)[2]
    steps_d = cdiv(d, tk)
    tv = min(MAX_TILE, dv)
    nvb = cdiv(dv, tv)
    tn = _divisors(s_kv, MAX_TILE)[0]
    nk = s_kv // tn
    row_tiles = _divisors(s_q, MAX_TILE)
    busy = [t for t in row_tiles if items * (s_q // t) >= pes]
    first = busy[0] if busy else min((t for t in row_tiles if t >= min(16, row_tiles[0])), default=1)
    order = [t for t in row_tiles if t <= first]
    store = chip.local_memory.bytes

    def sizes(tq: int, nbk: int) -> dict[int, int]:
        resident = nbk == nk
        small = tq * 4  # one [tq, 1] fp32 tile
        s = {
            CB_Q: 2 * steps_d * tq * tk * item,
            CB_K: 2 * nbk * steps_d * tn * tk * item,
            CB_VS: 2 * tn * tv * item,
            CB_VT: 2 * nvb * nbk * tv * tn * item,
            CB_SC: 2 * nbk * tn * 4,
            CB_S: nbk * tq * tn * 4,
            CB_M0: small,
            CB_M1: small,
            CB_P: nbk * tq * tn * item,
            CB_L: small,
            CB_O: nvb * tq * tv * 4,
        }
        if mask_rows:
            s[CB_MK] = 2 * nbk * (1 if mask_rows == 1 else tq) * tn * item
        if not resident:
            s.update({CB_C: small, CB_LJ: small, CB_PV: nvb * tq * tv * 4})
        return s

    def fits(s: dict[int, int]) -> bool:
        return sum(cdiv(b, 64) * 64 for b in s.values()) <= store

    # resident with bands of at least 16 rows (or the tallest), then key blocks streamed, then short bands
    tall = [t for t in order if t >= min(16, first)]
    candidates = (
        [(tq, nk) for tq in tall]
        + [(tq, nbk) for tq in order for nbk in range(nk - 1, 0, -1)]
        + [(tq, nk) for tq in order if tq not in tall]
    )
    for tq, nbk in candidates:
        s = sizes(tq, nbk)
        if fits(s):
            return AttentionPlan(tq, tn, tk, tv, steps_d, nvb, nk, nbk, s)
    need = sum(sizes(row_tiles[-1], 1).values())
    raise CapacityError(
        f"attention of head dims {d} (q, k) and {dv} (v) needs {need / 1024:.1f} KiB of local store even with "
        f"{row_tiles[-1]}-row bands and one {tn}-key tile per block; a PE holds {store / 1024:.0f} KiB"
    )


def _loop(base: tuple[int, int], *dims: tuple[int, int, int]) -> TileLoop:
    return TileLoop(base, tuple(x for x in dims if x[0] > 1))


def attention_job(
    chip: Chip,
    name: str,
    q: TensorDecl,
    k: TensorDecl,
    v: TensorDecl,
    out: TensorDecl,
    scale: TensorDecl,
    *,
    items: int,
    mask: TensorDecl | None = None,
    mask_rows: tuple[int, ...] = (),
    mask_per_query: bool = True,
    causal: TensorDecl | None = None,
    region: Region | None = None,
) -> Job:
    """``out = softmax(scale q k^T + mask) v`` for `items` (batch x head) items: q [items * Sq, D], k
    [items * Skv, D], v [items * Skv, Dv], out [items * Sq, Dv] (2-D grids, item-major); `scale` a [1, 64]
    fp32 vector holding the scale. `mask`: the additive mask [R, Skv] (0 keeps, -inf masks), item i's rows
    starting at ``mask_rows[i]``, one per query (`mask_per_query`) or one for all. `causal`: the causal mask as
    a [>= tq, Sq + Skv] Toeplitz table, ``T[r, x] = 0 if x - Sq <= r else -inf`` (keys after the query
    masked)."""
    region = region or Region.whole(chip)
    region.check(chip)
    dt = q.dtype
    if dt not in DPE_DTYPES or dt == DType.INT8 or k.dtype != dt or v.dtype != dt:
        raise UsageError(f"{name}: attention takes fp16 or bf16 q, k and v of one dtype")
    if items <= 0 or q.rows % items or k.rows % items or v.rows != k.rows or out.rows != q.rows:
        raise UsageError(
            f"{name}: q {q.shape}, k {k.shape}, v {v.shape} and out {out.shape} are not {items} items each"
        )
    s_q, s_kv, d, dv = q.rows // items, k.rows // items, q.cols, v.cols
    if k.cols != d or out.cols != dv:
        raise UsageError(f"{name}: k has {k.cols} columns for q's {d}, out {out.cols} for v's {dv}")
    if mask is not None and causal is not None:
        raise UsageError(f"{name}: a mask and causal masking together are not supported")
    if mask is not None and (mask.cols != s_kv or len(mask_rows) != items):
        raise UsageError(f"{name}: the mask must have {s_kv} columns and a first row per item")
    pe_list = [region.pe(r, c) for r in range(region.rows) for c in range(region.cols)]
    mrows = 0 if mask is None and causal is None else (1 if mask is not None and not mask_per_query else 2)
    plan = plan_attention(chip, s_q, s_kv, d, dv, dt, items=items, mask_rows=mrows, pes=len(pe_list))
    p = plan
    tq, tn, tk, tv = p.tq, p.tn, p.tk, p.tv
    masked = mrows > 0
    units = [(b, i0) for b in range(items) for i0 in range(0, s_q, tq)]
    b_mode = Operand.RESIDENT if p.resident else Operand.STREAM

    def blocks(i0: int) -> list[tuple[int, int]]:
        """(first key tile, key tiles) of each block of a band; a causal band stops after its last query (in a
        resident store only when v^T is one tile deep: its resident tiles are indexed per block)."""
        n = p.nk
        if causal is not None and (not p.resident or p.nvb == 1):
            n = min(p.nk, cdiv(i0 + tq, tn))
        return [(j, min(p.nbk, n - j)) for j in range(0, n, p.nbk)]

    def key_tiles(b: int, j: int, n: int) -> list[DmaIn | MluTranspose]:
        row = b * s_kv + j * tn
        ks = TileStream(k.name, (tn, tk), _loop((row, 0), (n, tn, 0), (p.steps_d, 0, tk)))
        vs = TileStream(v.name, (tn, tv), _loop((row, 0), (p.nvb, 0, tv), (n, tn, 0)))
        return [DmaIn.one(CB_K, ks), DmaIn.one(CB_VS, vs), MluTranspose(CB_VS, CB_VT, p.nvb * n)]

    pes = {}
    for pe, (u0, u1) in zip(pe_list, split(len(units), len(pe_list), 1), strict=False):
        if u1 <= u0:
            continue
        prog = PeProgram(pe, cb_layout(chip, pe, p.sizes, name), ([], []))
        c0, c1 = prog.cores
        mine = units[u0:u1]
        for ui, (b, i0) in enumerate(mine):
            # core 0: the unit's data (k and v^T once per item when resident)
            if p.resident and (ui == 0 or mine[ui - 1][0] != b):
                c0.extend(key_tiles(b, 0, p.nk))
            c0.append(
                DmaIn.one(CB_Q, TileStream(q.name, (tq, tk), _loop((b * s_q + i0, 0), (p.steps_d, 0, tk))))
            )
            bl = blocks(i0)
            for j, n in bl:
                c0.append(DmaIn.one(CB_SC, TileStream(scale.name, (1, tn), _loop((0, 0), (n, 0, 0)))))
                if mask is not None:
                    rows = tq if mask_per_query else 1
                    r0 = mask_rows[b] + (i0 if mask_per_query else 0)
                    c0.append(
                        DmaIn.one(CB_MK, TileStream(mask.name, (rows, tn), _loop((r0, j * tn), (n, 0, tn))))
                    )
                elif causal is not None:
                    x0 = j * tn - i0 + s_q
                    c0.append(DmaIn.one(CB_MK, TileStream(causal.name, (tq, tn), _loop((0, x0), (n, 0, tn)))))
                if not p.resident:
                    c0.extend(key_tiles(b, j, n))
            # core 1: the unit's arithmetic, block by block
            for idx, (_j, n) in enumerate(bl):
                c1.extend(_block(p, dt, idx, n, masked, b_mode))
            c1.append(CbPop(CB_M0 if len(bl) % 2 == 0 else CB_M1, 1))
            c1.append(CbPop(CB_Q, p.steps_d))
            if masked:
                c1.append(SeMap(SeOp.CLAMP, CB_L, CB_L, 1, DType.FP32, params=(("min", 1.0),)))
            c1.append(SeMap(SeOp.DIV, CB_O, CB_O, p.nvb, out.dtype, src2=CB_L, src2_period=1))
            c1.append(CbPop(CB_L, 1))
            c1.append(DmaOut(CB_O, TileStream(out.name, (tq, tv), _loop((b * s_q + i0, 0), (p.nvb, 0, tv)))))
            if p.resident and (ui + 1 == len(mine) or mine[ui + 1][0] != b):
                c1.extend([CbPop(CB_K, p.nk * p.steps_d), CbPop(CB_VT, p.nvb * p.nk)])
        pes[pe] = prog
    scores = float(items) * s_q * s_kv
    return Job(name, "attention", pes, work={"macs": scores * (d + dv), "elements": scores})


def _block(p: AttentionPlan, dt: DType, idx: int, n: int, masked: bool, b_mode: Operand) -> list:
    """Core 1's commands for key block `idx` (`n` key tiles) of a band: scores, running max, probabilities,
    running sum and output."""
    first = idx == 0
    fp32 = DType.FP32
    mo, mn = (CB_M0, CB_M1) if idx % 2 == 0 else (CB_M1, CB_M0)
    sub = (("alpha", -1.0),)
    cmds: list = [
        MatMul(CB_Q, CB_K, dt, 1, n, p.steps_d, p.tq, p.tn, p.tk, a_mode=Operand.RESIDENT, b_mode=b_mode,
               scale_cb=CB_SC, out_cb=CB_S, out_dtype=fp32),
    ]  # fmt: skip
    if masked:
        cmds.append(SeMap(SeOp.ADD, CB_S, CB_S, n, fp32, src2=CB_MK))
    cmds.append(SeRowReduce(CB_S, mn, n, n, ReduceOp.MAX, n * p.tn, fp32, keep=True))
    if masked:  # a row masked so far keeps a finite max: exp(-inf - m) = 0, not NaN
        cmds.append(SeMap(SeOp.CLAMP, mn, mn, 1, fp32, params=(("min", -FLT_MAX),)))
    if not first:  # the new max, and the factor that rescales what the earlier blocks summed
        cmds += [
            SeMap(SeOp.MAXIMUM, mn, mn, 1, fp32, src2=mo, src2_period=1),
            SeMap(SeOp.ADD, mo, CB_C, 1, fp32, src2=mn, src2_period=1, params=sub),
            SeMap(SeOp.EXP, CB_C, CB_C, 1, fp32),
        ]
    cmds += [
        SeMap(SeOp.ADD, CB_S, CB_S, n, fp32, src2=mn, src2_period=1, params=sub),
        SeMap(SeOp.EXP, CB_S, CB_P, n, dt),
        SeRowReduce(CB_P, CB_L if first else CB_LJ, n, n, ReduceOp.SUM, n * p.tn, fp32, keep=True),
    ]
    if not first:
        cmds += [
            SeMap(SeOp.MUL, CB_L, CB_L, 1, fp32, src2=CB_C, src2_period=1),
            SeMap(SeOp.ADD, CB_L, CB_L, 1, fp32, src2=CB_LJ),
        ]
    cmds += [
        MatMul(CB_P, CB_VT, dt, 1, p.nvb, n, p.tq, p.tv, p.tn, a_mode=Operand.RESIDENT, b_mode=b_mode,
               out_cb=CB_O if first else CB_PV, out_dtype=fp32),
        CbPop(CB_P, n),
    ]  # fmt: skip
    if not first:
        cmds += [
            SeMap(SeOp.MUL, CB_O, CB_O, p.nvb, fp32, src2=CB_C, src2_period=1),
            SeMap(SeOp.ADD, CB_O, CB_O, p.nvb, fp32, src2=CB_PV),
            CbPop(CB_C, 1),
        ]
    return cmds


def attention_se_ops(masked: bool) -> int:
    """SE operations per score of the job (mask add, max, subtract, exp, sum), for estimates."""
    return int(masked) + 1 + 1 + ELEMENTWISE[Kind.EXP].se_ops + 1


def causal_table(s_q: int, s_kv: int, rows: int, dtype: DType) -> np.ndarray:
    """The causal mask as a Toeplitz table [rows, Sq + Skv]: ``T[r, x] = 0 if x - Sq <= r else -inf``; the mask
    tile of queries i0.. and keys j0.. is the window at (0, j0 - i0 + Sq)."""
    x = np.arange(s_q + s_kv)[None, :] - s_q
    r = np.arange(rows)[:, None]
    return np.where(x <= r, 0.0, -np.inf).astype(dtype.numpy)


def mask_first_rows(
    batch: tuple[int, ...], mask_batch: tuple[int, ...], rows_per_item: int
) -> tuple[int, ...]:
    """The first mask row of every (flattened) batch item: mask dims of 1 broadcast."""
    strides = [math.prod(mask_batch[i + 1 :]) for i in range(len(mask_batch))]
    out = []
    for flat in range(math.prod(batch)):
        idx = np.unravel_index(flat, batch) if batch else ()
        out.append(
            sum(int(i) * s for i, s, m in zip(idx, strides, mask_batch, strict=True) if m > 1) * rows_per_item
        )
    return tuple(out)
