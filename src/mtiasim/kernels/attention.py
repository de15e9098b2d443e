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
- after the last block: ``out = o * (1 / max(l, 1))`` (l >= 1 unless every key was masked: a fully masked
  row's output is 0), rounded to out's dtype.

With one block (every key of the item in the local store: `resident`) this is the two-pass softmax; k and
v^T then stay in the store for all the item's bands (loaded once per PE and item, the next item's while this
one computes). Otherwise (a long sequence) the blocks stream through and the running max, sum and output are
rescaled block by block (a flash-style online softmax). A causal band skips the key tiles after its last
query.

Core 0 moves the data; core 1 issues the arithmetic, software-pipelined so that the DPE and the SE work at
once: the scores of the next block are issued before this block's product with v (two score buffers), and,
when resident, the next unit's softmax before this unit's normalisation (two probability and output buffers).
`plan_attention` picks the sizes from the local store's capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, se_ops_per_cycle, sram_bytes_per_s
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
from mtiasim.kernels.gemm import tiles
from mtiasim.opset import ELEMENTWISE, Kind

FLT_MAX = float(np.finfo(np.float32).max)
SCALE_COLS = 64  # the scale vector's length: at least the widest key tile
MAX_TILE = 64  # query band rows, key tile width, v tile width: the RE's 64x64 output block
FP32 = DType.FP32
SUB = (("alpha", -1.0),)  # x + (-1) y


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
    sizes: dict[str, int]  # CB name -> bytes

    @property
    def resident(self) -> bool:
        return self.nbk == self.nk


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(min(n, limit), 0, -1) if n % d == 0]


def _sizes(
    tq: int,
    nbk: int,
    *,
    nk: int,
    tn: int,
    tk: int,
    tv: int,
    steps_d: int,
    nvb: int,
    item: int,
    mask_rows: int,
) -> dict[str, int]:
    """The CBs of a plan (see `attention_job` for what each holds) and their bytes."""
    resident = nbk == nk
    small = tq * 4  # one [tq, 1] fp32 tile
    s = {
        "Q": 2 * steps_d * tq * tk * item,
        "K": 2 * nbk * steps_d * tn * tk * item,
        "VS": 2 * tn * tv * item,
        "VT": 2 * nvb * nbk * tv * tn * item,
        "SC": 2 * nbk * tn * 4,
        "S0": nbk * tq * tn * 4,
        "S1": nbk * tq * tn * 4,
    }
    if mask_rows:
        s["MK"] = 2 * nbk * (1 if mask_rows == 1 else tq) * tn * item
    if resident:
        s.update(M=small, P0=nbk * tq * tn * item, P1=nbk * tq * tn * item, LJ=small, L=2 * small)
        s.update(O0=nvb * tq * tv * 4, O1=nvb * tq * tv * 4)
    else:
        s.update(M0=small, M1=small, C=small, P0=nbk * tq * tn * item, L=small, LJ=small)
        s.update(PV=nvb * tq * tv * 4, O0=nvb * tq * tv * 4)
    return s


def plan_attention(
    chip: Chip, s_q: int, s_kv: int, d: int, dv: int, dtype: DType, *, items: int, mask_rows: int, pes: int
) -> AttentionPlan:
    """The sizes of an attention job: `mask_rows` the rows of a mask tile (0 without a mask, 1 for a mask
    shared by every query, else the band's). Of the band heights and key tiles (divisors of Sq and Skv up to
    64) and key blocks that fit the local store, the one with the shortest estimated time on the busiest PE;
    k and v^T resident when that is no slower. A head dim whose smallest blocks do not fit is refused."""
    item = dtype.itemsize
    tk = tiles(chip)[2]
    steps_d = cdiv(d, tk)
    tv = min(MAX_TILE, dv)
    nvb = cdiv(dv, tv)
    store = chip.local_memory.bytes
    dpe_rate, se_rate = dpe_macs_per_cycle(chip, dtype), se_ops_per_cycle(chip, FP32)
    sram = sram_bytes_per_s(chip) / chip.hz

    def used(s: dict[str, int]) -> int:
        return sum(cdiv(b, 64) * 64 for b in s.values())

    def fits(s: dict[str, int]) -> bool:
        return used(s) <= store and len(s) <= chip.local_memory.max_circular_buffers

    def estimate(tq: int, tn: int, nbk: int) -> float:
        """Cycles of the busiest PE: its units, each bound by the DPE, the SE or its core's issue, or its
        share of SRAM bandwidth."""
        nk = s_kv // tn
        blocks, bands = cdiv(nk, nbk), s_q // tq
        rows = cdiv(tq, chip.dpe.block_m) * chip.dpe.block_m  # the DPE works in whole 32-row blocks
        keys = nk * cdiv(tn, chip.dpe.block_n) * chip.dpe.block_n
        dpe = rows * keys * (steps_d * tk + nvb * tv) / dpe_rate
        ops = tq * s_kv * attention_se_ops(mask_rows > 0) + (2 * blocks - 1) * tq * nvb * tv
        se = ops / se_rate + blocks * (5 * nbk + 8) * chip.se.command_overhead_cycles
        units = cdiv(items * bands, pes)
        kv = s_kv * (d + dv) * item * (cdiv(units, bands) if nbk == nk else units)  # per item, or per band
        dma = (units * tq * (d + dv) * item + kv) * min(pes, items * bands) / sram
        issue = blocks * 24 * chip.core.cycles_per_command
        return max(units * max(dpe, se, issue), dma)

    options = []
    for tn in _divisors(s_kv, MAX_TILE):
        nk = s_kv // tn
        dims = dict(nk=nk, tn=tn, tk=tk, tv=tv, steps_d=steps_d, nvb=nvb, item=item, mask_rows=mask_rows)
        for tq in _divisors(s_q, MAX_TILE):
            nbk = next((n for n in range(nk, 0, -1) if fits(_sizes(tq, n, **dims))), None)
            if nbk is not None:  # resident (nbk = nk) is preferred at equal time: it moves k and v once
                options.append((estimate(tq, tn, nbk), nbk != nk, -tq, -tn, (tq, tn, nbk)))
    if not options:
        least = _sizes(
            1, 1, nk=s_kv, tn=1, tk=tk, tv=tv, steps_d=steps_d, nvb=nvb, item=item, mask_rows=mask_rows
        )
        raise CapacityError(
            f"attention of head dims {d} (q, k) and {dv} (v) needs {used(least) / 1024:.1f} KiB of local store "
            f"in {len(least)} circular buffers even with one query and one key per tile; a PE holds "
            f"{store / 1024:.0f} KiB and {chip.local_memory.max_circular_buffers} buffers"
        )
    tq, tn, nbk = min(options)[-1]
    nk = s_kv // tn
    sizes = _sizes(
        tq, nbk, nk=nk, tn=tn, tk=tk, tv=tv, steps_d=steps_d, nvb=nvb, item=item, mask_rows=mask_rows
    )
    return AttentionPlan(tq, tn, tk, tv, steps_d, nvb, nk, nbk, sizes)


def _loop(base: tuple[int, int], *dims: tuple[int, int, int]) -> TileLoop:
    return TileLoop(base, tuple(x for x in dims if x[0] > 1))


@dataclass(frozen=True)
class _Step:
    """One key block of one unit: item `b`, band rows from `i0`, block `idx` of the band (`n` key tiles from
    key tile `j`), the step's position `s` among the PE's steps."""

    s: int
    b: int
    i0: int
    idx: int
    j: int
    n: int
    last: bool  # the band's last block

    @property
    def first(self) -> bool:
        return self.idx == 0


class _Compute:
    """Core 1's commands (see the module doc): `scores` (DPE), `softmax` (SE), `mix` (DPE, p v) and `finish`
    (SE: rescale or divide, then write the band out)."""

    def __init__(
        self, p: AttentionPlan, cb: dict[str, int], dt: DType, out: TensorDecl, s_q: int, masked: bool
    ):
        self.p, self.cb, self.dt, self.out, self.s_q, self.masked = p, cb, dt, out, s_q, masked
        self.b_mode = Operand.RESIDENT if p.resident else Operand.STREAM

    def _m(self, st: _Step) -> tuple[int, int]:
        """(running max before the block, after it)."""
        if self.p.resident:
            return self.cb["M"], self.cb["M"]
        m0, m1 = self.cb["M0"], self.cb["M1"]
        return (m0, m1) if st.idx % 2 == 0 else (m1, m0)

    def _p(self, st: _Step) -> int:
        return self.cb["P0" if not self.p.resident or st.s % 2 == 0 else "P1"]

    def _o(self, st: _Step) -> int:
        return self.cb["O0" if not self.p.resident or st.s % 2 == 0 else "O1"]

    def scores(self, st: _Step) -> MatMul:
        p, cb = self.p, self.cb
        return MatMul(cb["Q"], cb["K"], self.dt, 1, st.n, p.steps_d, p.tq, p.tn, p.tk, a_mode=Operand.RESIDENT,
                      b_mode=self.b_mode, scale_cb=cb["SC"], out_cb=cb[f"S{st.s % 2}"], out_dtype=FP32)  # fmt: skip

    def softmax(self, st: _Step) -> list:
        p, cb, n = self.p, self.cb, st.n
        s = cb[f"S{st.s % 2}"]
        mo, mn = self._m(st)
        cmds: list = []
        if self.masked:
            cmds.append(SeMap(SeOp.ADD, s, s, n, FP32, src2=cb["MK"]))
        cmds.append(SeRowReduce(s, mn, n, n, ReduceOp.MAX, n * p.tn, FP32, keep=True))
        if self.masked:  # a row masked so far keeps a finite max: exp(-inf - m) = 0, not NaN
            cmds.append(SeMap(SeOp.CLAMP, mn, mn, 1, FP32, params=(("min", -FLT_MAX),)))
        if not st.first:  # the new max, and the factor that rescales what the earlier blocks summed
            cmds += [
                SeMap(SeOp.MAXIMUM, mn, mn, 1, FP32, src2=mo, src2_period=1),
                SeMap(SeOp.ADD, mo, cb["C"], 1, FP32, src2=mn, src2_period=1, params=SUB),
                SeMap(SeOp.EXP, cb["C"], cb["C"], 1, FP32),
            ]
        pb = self._p(st)
        cmds += [
            SeMap(SeOp.ADD, s, s, n, FP32, src2=mn, src2_period=1, params=SUB),
            SeMap(SeOp.EXP, s, pb, n, self.dt),
        ]
        if st.last:
            cmds.append(CbPop(mn, 1))
        if p.resident:  # l -> 1 / max(l, 1) at once (the next unit's sum comes before this unit's finish)
            cmds.append(SeRowReduce(pb, cb["LJ"], n, n, ReduceOp.SUM, n * p.tn, FP32, keep=True))
            if self.masked:  # l >= 1 unless every key was masked: then 1, and the row's output 0
                cmds.append(SeMap(SeOp.CLAMP, cb["LJ"], cb["LJ"], 1, FP32, params=(("min", 1.0),)))
            cmds.append(SeMap(SeOp.RECIPROCAL, cb["LJ"], cb["L"], 1, FP32))
        elif st.first:
            cmds.append(SeRowReduce(pb, cb["L"], n, n, ReduceOp.SUM, n * p.tn, FP32, keep=True))
        else:
            cmds += [
                SeRowReduce(pb, cb["LJ"], n, n, ReduceOp.SUM, n * p.tn, FP32, keep=True),
                SeMap(SeOp.MUL, cb["L"], cb["L"], 1, FP32, src2=cb["C"], src2_period=1),
                SeMap(SeOp.ADD, cb["L"], cb["L"], 1, FP32, src2=cb["LJ"]),
            ]
        return cmds

    def mix(self, st: _Step) -> list:
        p = self.p
        out = self._o(st) if st.first else self.cb["PV"]
        return [
            MatMul(self._p(st), self.cb["VT"], self.dt, 1, p.nvb, st.n, p.tq, p.tv, p.tn, a_mode=Operand.RESIDENT,
                   b_mode=self.b_mode, out_cb=out, out_dtype=FP32),
            CbPop(self._p(st), st.n),
        ]  # fmt: skip

    def finish(self, st: _Step) -> list:
        p, cb = self.p, self.cb
        o = self._o(st)
        cmds: list = []
        if not st.first:
            cmds += [
                SeMap(SeOp.MUL, o, o, p.nvb, FP32, src2=cb["C"], src2_period=1),
                SeMap(SeOp.ADD, o, o, p.nvb, FP32, src2=cb["PV"]),
                CbPop(cb["C"], 1),
            ]
        if st.last:
            if not p.resident:
                if self.masked:
                    cmds.append(SeMap(SeOp.CLAMP, cb["L"], cb["L"], 1, FP32, params=(("min", 1.0),)))
                cmds.append(SeMap(SeOp.RECIPROCAL, cb["L"], cb["L"], 1, FP32))
            row = st.b * self.s_q + st.i0
            cmds += [
                SeMap(SeOp.MUL, o, o, p.nvb, self.out.dtype, src2=cb["L"], src2_period=1),
                CbPop(cb["L"], 1),
                DmaOut(o, TileStream(self.out.name, (p.tq, p.tv), _loop((row, 0), (p.nvb, 0, p.tv)))),
            ]
        return cmds


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
    masked).

    CBs: Q (the band of q), K (k's tiles), VS and VT (v's tiles, and transposed), SC (scale vectors), MK (mask
    tiles), S0/S1 (scores), M/M0/M1 (running max), C (rescale factor), P0/P1 (probabilities), L and LJ (sums;
    resident: L the sums' reciprocals),
    PV (a block's p v), O0/O1 (output)."""
    region = region or Region.whole(chip)
    region.check(chip)
    dt = q.dtype
    if dt not in (DType.FP16, DType.BF16) or k.dtype != dt or v.dtype != dt:
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
    p = plan_attention(chip, s_q, s_kv, d, dv, dt, items=items, mask_rows=mrows, pes=len(pe_list))
    tq, tn, tk, tv = p.tq, p.tn, p.tk, p.tv
    cb = {key: i for i, key in enumerate(p.sizes)}
    compute = _Compute(p, cb, dt, out, s_q, mrows > 0)
    units = [(b, i0) for b in range(items) for i0 in range(0, s_q, tq)]

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
        return [DmaIn.one(cb["K"], ks), DmaIn.one(cb["VS"], vs), MluTranspose(cb["VS"], cb["VT"], p.nvb * n)]

    def data(st: _Step, new_item: bool) -> list:
        """Core 0's commands for a step: k and v^T (once per item when resident), q, scale and mask tiles."""
        cmds: list = []
        if st.first:
            if p.resident and new_item:
                cmds += key_tiles(st.b, 0, p.nk)
            qs = TileStream(q.name, (tq, tk), _loop((st.b * s_q + st.i0, 0), (p.steps_d, 0, tk)))
            cmds.append(DmaIn.one(cb["Q"], qs))
        n, j = st.n, st.j
        cmds.append(DmaIn.one(cb["SC"], TileStream(scale.name, (1, tn), _loop((0, 0), (n, 0, 0)))))
        if mask is not None:
            rows = tq if mask_per_query else 1
            r0 = mask_rows[st.b] + (st.i0 if mask_per_query else 0)
            cmds.append(
                DmaIn.one(cb["MK"], TileStream(mask.name, (rows, tn), _loop((r0, j * tn), (n, 0, tn))))
            )
        elif causal is not None:
            x0 = j * tn - st.i0 + s_q
            cmds.append(DmaIn.one(cb["MK"], TileStream(causal.name, (tq, tn), _loop((0, x0), (n, 0, tn)))))
        if not p.resident:
            cmds += key_tiles(st.b, j, n)
        return cmds

    pes = {}
    for pe, (u0, u1) in zip(pe_list, split(len(units), len(pe_list), 1), strict=False):
        if u1 <= u0:
            continue
        steps: list[_Step] = []
        for b, i0 in units[u0:u1]:
            bl = blocks(i0)
            steps += [_Step(len(steps) + x, b, i0, x, j, n, x + 1 == len(bl)) for x, (j, n) in enumerate(bl)]
        prog = PeProgram(pe, cb_layout(chip, pe, {cb[key]: b for key, b in p.sizes.items()}, name), ([], []))
        c0, c1 = prog.cores
        for x, st in enumerate(steps):
            c0.extend(data(st, x == 0 or steps[x - 1].b != st.b))
        c1.extend([compute.scores(steps[0]), *compute.softmax(steps[0])])
        for x, st in enumerate(steps):
            nxt = steps[x + 1] if x + 1 < len(steps) else None
            if nxt is None or nxt.first:
                c1.append(CbPop(cb["Q"], p.steps_d))  # the band's last scores are issued
            if p.resident and (nxt is None or nxt.b != st.b):
                c1.append(CbPop(cb["K"], p.nk * p.steps_d))
            if nxt is not None:
                c1.append(compute.scores(nxt))  # the DPE's next scores while the SE works on this block
            c1.extend(compute.mix(st))
            if p.resident and (nxt is None or nxt.b != st.b):
                c1.append(CbPop(cb["VT"], p.nvb * p.nk))
            if p.resident and nxt is not None:  # the next softmax before this division: the SE keeps going
                c1.extend(compute.softmax(nxt))
                c1.extend(compute.finish(st))
            else:
                c1.extend(compute.finish(st))
                if nxt is not None:
                    c1.extend(compute.softmax(nxt))
        pes[pe] = prog
    scores = float(items) * s_q * s_kv
    return Job(name, "attention", pes, work={"macs": scores * (d + dv), "elements": scores})


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
        row = sum(int(i) * s for i, s, m in zip(idx, strides, mask_batch, strict=True) if m > 1)
        out.append(row * rows_per_item)
    return tuple(out)
