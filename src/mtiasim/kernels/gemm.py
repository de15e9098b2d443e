"""FC / GEMM: ``C[M, N] = A[M, K] @ W[N, K].T`` (+ bias), the mapping published in ISCA'23 §4.

The PE sub-grid is split three ways: its rows share out M (and, for small M, part of N), its columns share out
N and K. Each PE computes 64x64 output blocks (2x2 RE accumulator banks) over its k-range in 32-deep steps:
core 0 loops the DMA of 64x32 tiles, core 1 loops 4 DPE blocks per step and, per block, hands the accumulator
on. K is split along a row of adjacent PEs whose partial blocks are summed west->east over the reduction
network; the last PE of the chain converts the block (requantized INT8, INT32, FP16/BF16...) and writes it
out. A tiles are multicast along rows, W tiles along columns: each is read from memory once per group of PEs
that need it at the same time.

Two loop structures share that partition of the grid:

- `ws` (weight-stationary, the default): each PE loads a chunk of its W slice into its local store (a column of
  PEs shares the load by multicast), the two cores synchronise, then A streams past it; chunk after chunk, as
  many as the 128 KB local store needs. The weight load is a phase of its own, as ISCA'23's FC measurements
  show (time ~ launch + |W| / SRAM bandwidth + MACs / peak).
- `os` (output-stationary streaming): A and W tiles both stream, W re-read for every m-block; no load phase.

The sub-grid shape is chosen from the problem's shape by the kernel's own cost estimate (compute per PE,
memory traffic after multicast, Fabric Interface load), as a compiler would.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, dram_bytes_per_s, sram_bytes_per_s
from mtiasim.isa import (
    Barrier,
    CbPop,
    Direction,
    DmaIn,
    DmaOut,
    Job,
    Level,
    MatMul,
    Multicast,
    Operand,
    PeId,
    PeProgram,
    TensorDecl,
    TileStream,
    Transfer,
    loop,
)
from mtiasim.kernels.common import Region, cb_layout, cdiv, split

CB_A, CB_B, CB_C, CB_BIAS = 0, 1, 2, 3
STREAM_DEPTH_TILES = 4
OUT_DEPTH_TILES = 2
DPE_DTYPES = (DType.INT8, DType.FP16, DType.BF16)
VARIANTS = ("ws", "os")


@dataclass(frozen=True)
class GemmMapping:
    """Rows of the sub-grid: `rows_m` x `rows_n` groups; columns: `cols_n` groups of `k_split` PEs."""

    rows_m: int
    rows_n: int
    cols_n: int
    k_split: int
    variant: str = "ws"

    @property
    def rows(self) -> int:
        return self.rows_m * self.rows_n

    @property
    def cols(self) -> int:
        return self.cols_n * self.k_split

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.rows}x{self.cols} PEs (M over {self.rows_m}, N over "
            f"{self.rows_n}x{self.cols_n}, K over {self.k_split})"
        )


@dataclass(frozen=True)
class _Part:
    m: tuple[int, int]
    n: tuple[int, int]
    k: tuple[int, int]

    def blocks(self, tm: int, tn: int, tk: int) -> tuple[int, int, int]:
        return (
            cdiv(self.m[1] - self.m[0], tm),
            cdiv(self.n[1] - self.n[0], tn),
            cdiv(self.k[1] - self.k[0], tk),
        )


def tiles(chip: Chip) -> tuple[int, int, int]:
    """Tile sizes (m, n, k): 2x2 DPE blocks of output per accumulator set, one block deep in k."""
    d = chip.dpe
    return 2 * d.block_m, 2 * d.block_n, d.block_k


def _parts(
    mapping: GemmMapping, M: int, K: int, N: int, tm: int, tn: int, tk: int
) -> dict[tuple[int, int], _Part]:
    ms = split(M, mapping.rows_m, tm)
    ns = split(N, mapping.rows_n * mapping.cols_n, tn)
    ks = split(K, mapping.k_split, tk)
    out = {}
    for r in range(mapping.rows):
        for c in range(mapping.cols):
            m = ms[r // mapping.rows_n]
            n = ns[(r % mapping.rows_n) * mapping.cols_n + c // mapping.k_split]
            k = ks[c % mapping.k_split]
            out[(r, c)] = _Part(m, n, k)
    return out


def _fixed_cb_bytes(chip: Chip, dtype: DType, out_dtype: DType, bias: bool) -> int:
    tm, tn, tk = tiles(chip)
    acc = 4
    return (
        STREAM_DEPTH_TILES * tm * tk * dtype.itemsize
        + OUT_DEPTH_TILES * tm * tn * out_dtype.itemsize
        + (OUT_DEPTH_TILES * tn * acc if bias else 0)
    )


def ws_chunk_blocks(chip: Chip, k_steps: int, dtype: DType, out_dtype: DType, bias: bool) -> int:
    """How many 64-wide n-blocks of a W slice k_steps deep fit the local store next to the other CBs."""
    tm, tn, tk = tiles(chip)
    budget = chip.local_memory.bytes - _fixed_cb_bytes(chip, dtype, out_dtype, bias) - 256
    per_block = tn * tk * k_steps * dtype.itemsize
    return max(0, budget // per_block)


def _estimate_s(
    chip: Chip,
    mapping: GemmMapping,
    M: int,
    K: int,
    N: int,
    dtype: DType,
    out_dtype: DType,
    levels: tuple[Level, Level],
) -> float:
    """The kernel's own cost estimate of a mapping (not the engine's timing)."""
    tm, tn, tk = tiles(chip)
    ks = split(K, mapping.k_split, tk)
    if any(hi <= lo for lo, hi in ks):
        return math.inf
    ms = split(M, mapping.rows_m, tm)
    ns = split(N, mapping.rows_n * mapping.cols_n, tn)
    mb = max(cdiv(hi - lo, tm) for lo, hi in ms)
    nb = max(cdiv(hi - lo, tn) for lo, hi in ns)
    kb = max(cdiv(hi - lo, tk) for lo, hi in ks)
    if mb == 0 or nb == 0:
        return math.inf
    block_cycles = (
        4 * chip.dpe.block_m * chip.dpe.block_n * chip.dpe.block_k / dpe_macs_per_cycle(chip, dtype)
    )
    compute = mb * nb * kb * block_cycles / chip.hz
    item = dtype.itemsize
    bw_a = sram_bytes_per_s(chip) if levels[0] == Level.SRAM else 0.5 * dram_bytes_per_s(chip)
    bw_w = sram_bytes_per_s(chip) if levels[1] == Level.SRAM else 0.5 * dram_bytes_per_s(chip)
    # A is re-read for every n-block of a PE by each row group sharing its m-range
    a_time = M * K * item * nb * mapping.rows_n / bw_a
    fi = mb * nb * kb * (tm + tn) * tk * item / (chip.noc.fi_bytes_per_cycle * chip.hz)
    pes = mapping.rows * mapping.cols
    fixed = (
        pes * chip.dispatch.per_pe_ns * 1e-9
        + (mapping.k_split - 1)
        * (chip.reduction.hop_latency_cycles + tm * tn * 4 / chip.reduction.link_bytes_per_cycle)
        / chip.hz
    )
    if mapping.variant == "os":
        w_time = N * K * item * mb / bw_w
        return max(compute, a_time + w_time, fi) + fixed
    per_chunk = ws_chunk_blocks(chip, kb, dtype, out_dtype, False)
    if per_chunk == 0:
        return math.inf
    chunks = cdiv(nb, per_chunk)
    w_time = N * K * item / bw_w
    return w_time + max(compute, a_time, fi) + fixed + chunks * 2 * chip.sram.latency_cycles / chip.hz


def choose_mapping(
    chip: Chip,
    M: int,
    K: int,
    N: int,
    dtype: DType,
    out_dtype: DType,
    levels: tuple[Level, Level],
    region: Region,
    variant: str = "auto",
) -> GemmMapping:
    """The sub-grid partition with the best kernel estimate. Variant `auto`: weight-stationary when the
    weights sit in SRAM (the v1 library's FC), else whichever variant the estimate prefers (LPDDR5 traffic
    decides: `ws` saves W re-reads but must split K to fit its chunks, which re-reads A)."""
    if variant == "auto":
        if levels[1] == Level.SRAM:
            return choose_mapping(chip, M, K, N, dtype, out_dtype, levels, region, "ws")
        options = [choose_mapping(chip, M, K, N, dtype, out_dtype, levels, region, v) for v in VARIANTS]
        return min(options, key=lambda mp: _estimate_s(chip, mp, M, K, N, dtype, out_dtype, levels))
    if variant not in VARIANTS:
        raise UsageError(f"unknown GEMM variant {variant!r} (known: auto, {', '.join(VARIANTS)})")
    best: tuple[float, int, GemmMapping] | None = None
    for rows_m, rows_n in itertools.product(range(1, region.rows + 1), repeat=2):
        if rows_m * rows_n > region.rows:
            continue
        for k_split, cols_n in itertools.product(range(1, region.cols + 1), repeat=2):
            if k_split * cols_n > region.cols:
                continue
            mapping = GemmMapping(rows_m, rows_n, cols_n, k_split, variant)
            est = _estimate_s(chip, mapping, M, K, N, dtype, out_dtype, levels)
            key = (est * (1 + 1e-9), mapping.rows * mapping.cols, mapping)
            if best is None or key[:2] < best[:2]:
                best = key
    if best is None or not math.isfinite(best[0]):
        raise UsageError(f"GEMM {M}x{K}x{N} {dtype.value}: no {variant} mapping fits region {region}")
    return best[2]


def gemm_job(
    chip: Chip,
    name: str,
    a: TensorDecl,
    w: TensorDecl,
    c: TensorDecl,
    *,
    out_scale: float | None = None,
    bias: TensorDecl | None = None,
    region: Region | None = None,
    mapping: GemmMapping | None = None,
    variant: str = "auto",
) -> Job:
    """The job computing ``c = a @ w.T (+ bias)`` on a sub-grid of `region` (default: the whole grid)."""
    region = region or Region.whole(chip)
    region.check(chip)
    dtype = a.dtype
    if dtype not in DPE_DTYPES:
        raise UsageError(f"{name}: the DPE multiplies int8, fp16 or bf16, not {dtype.value}")
    if w.dtype != dtype:
        raise UsageError(f"{name}: A is {dtype.value} but W is {w.dtype.value}")
    if len(a.shape) != 2 or len(w.shape) != 2 or len(c.shape) != 2:
        raise UsageError(f"{name}: A, W and C must be 2-D")
    M, K = a.shape
    N, K2 = w.shape
    if K2 != K or c.shape != (M, N):
        raise UsageError(f"{name}: shapes A{a.shape} W{w.shape} C{c.shape} do not chain (C = A @ W.T)")
    acc = DType.INT32 if dtype == DType.INT8 else DType.FP32
    if dtype == DType.INT8 and c.dtype in (DType.INT8, DType.UINT8) and out_scale is None:
        raise UsageError(f"{name}: an int8 output needs a requantization scale")
    if bias is not None and (bias.shape != (1, N) or bias.dtype != acc):
        raise UsageError(
            f"{name}: bias must be [1, {N}] {acc.value}, got {list(bias.shape)} {bias.dtype.value}"
        )
    mapping = mapping or choose_mapping(chip, M, K, N, dtype, c.dtype, (a.level, w.level), region, variant)
    if mapping.rows > region.rows or mapping.cols > region.cols:
        raise UsageError(f"{name}: mapping {mapping} does not fit region {region}")
    return _Builder(chip, name, a, w, c, out_scale, bias, region, mapping, acc).build()


class _Builder:
    def __init__(self, chip, name, a, w, c, out_scale, bias, region, mapping, acc) -> None:
        self.chip, self.name, self.a, self.w, self.c = chip, name, a, w, c
        self.out_scale, self.bias, self.region, self.mapping, self.acc = out_scale, bias, region, mapping, acc
        self.tm, self.tn, self.tk = tiles(chip)
        M, K = a.shape
        N = w.shape[0]
        self.parts = _parts(mapping, M, K, N, self.tm, self.tn, self.tk)
        self.active = {rc: p for rc, p in self.parts.items() if p.m[1] > p.m[0] and p.n[1] > p.n[0]}

    # streams ---------------------------------------------------------------------------------------

    def a_stream(self, p: _Part, n_repeat: int) -> TileStream:
        mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        return TileStream(
            self.a.name,
            (self.tm, self.tk),
            loop((p.m[0], p.k[0]), (mb, self.tm, 0), (n_repeat, 0, 0), (kb, 0, self.tk)),
        )

    def w_stream(self, p: _Part, n0: int, nb: int, m_repeat: int) -> TileStream:
        _mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        return TileStream(
            self.w.name,
            (self.tn, self.tk),
            loop((n0, p.k[0]), (m_repeat, 0, 0), (nb, self.tn, 0), (kb, 0, self.tk)),
        )

    def c_stream(self, p: _Part, n0: int, nb: int) -> TileStream:
        mb, _nb, _kb = p.blocks(self.tm, self.tn, self.tk)
        return TileStream(
            self.c.name, (self.tm, self.tn), loop((p.m[0], n0), (mb, self.tm, 0), (nb, 0, self.tn))
        )

    def bias_stream(self, p: _Part, n0: int, nb: int) -> TileStream:
        mb, _nb, _kb = p.blocks(self.tm, self.tn, self.tk)
        assert self.bias is not None
        return TileStream(self.bias.name, (1, self.tn), loop((0, n0), (mb, 0, 0), (nb, 0, self.tn)))

    def groups(self, key_fn) -> dict[tuple, list[PeId]]:
        """PEs that issue the identical stream in the same row (axis 0) or column (axis 1)."""
        out: dict[tuple, list[PeId]] = {}
        for rc, p in self.active.items():
            for key in key_fn(rc, p):
                out.setdefault(key, []).append(self.region.pe(*rc))
        return out

    @staticmethod
    def multicast(axis: str, members: list[PeId]) -> Multicast | None:
        return Multicast(axis, tuple(members)) if len(members) > 1 else None

    # common pieces --------------------------------------------------------------------------------

    def matmul(self, p: _Part, kpart: int, nb: int, b_mode: Operand) -> MatMul:
        mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        last = kpart == self.mapping.k_split - 1
        return MatMul(
            CB_A,
            CB_B,
            self.a.dtype,
            mb,
            nb,
            kb,
            self.tm,
            self.tn,
            self.tk,
            b_mode=b_mode,
            bias_cb=CB_BIAS if self.bias is not None and kpart == 0 else None,
            reduce_in=Direction.EAST if kpart > 0 else None,
            reduce_out=None if last else Direction.EAST,
            out_cb=CB_C if last else None,
            out_dtype=self.c.dtype if last else None,
            out_scale=self.out_scale if last else None,
        )

    def program(self, rc: tuple[int, int], w_cb_bytes: int) -> PeProgram:
        pe = self.region.pe(*rc)
        kpart = rc[1] % self.mapping.k_split
        item = self.a.dtype.itemsize
        sizes = {CB_A: STREAM_DEPTH_TILES * self.tm * self.tk * item, CB_B: w_cb_bytes}
        if kpart == self.mapping.k_split - 1:
            sizes[CB_C] = OUT_DEPTH_TILES * self.tm * self.tn * self.c.dtype.itemsize
        if self.bias is not None and kpart == 0:
            sizes[CB_BIAS] = OUT_DEPTH_TILES * self.tn * self.acc.itemsize
        return PeProgram(pe, cb_layout(self.chip, pe, sizes, self.name), ([], []))

    def build(self) -> Job:
        pes = self._build_ws() if self.mapping.variant == "ws" else self._build_os()
        M, K = self.a.shape
        N = self.w.shape[0]
        return Job(
            self.name,
            "gemm",
            pes,
            work={
                "macs": float(M) * N * K,
                "useful_bytes": float(self.a.nbytes + self.w.nbytes + self.c.nbytes),
            },
        )

    # output-stationary streaming -----------------------------------------------------------------

    def _build_os(self) -> dict[PeId, PeProgram]:
        tm, tn, tk = self.tm, self.tn, self.tk
        a_groups = self.groups(lambda rc, p: [(rc[0], self.a_stream(p, p.blocks(tm, tn, tk)[1]))])
        w_groups = self.groups(
            lambda rc, p: [
                (rc[1], self.w_stream(p, p.n[0], p.blocks(tm, tn, tk)[1], p.blocks(tm, tn, tk)[0]))
            ]
        )
        pes = {}
        for rc, p in self.active.items():
            mb, nb, _kb = p.blocks(tm, tn, tk)
            kpart = rc[1] % self.mapping.k_split
            prog = self.program(rc, STREAM_DEPTH_TILES * tn * tk * self.a.dtype.itemsize)
            sa, sw = self.a_stream(p, nb), self.w_stream(p, p.n[0], nb, mb)
            prog.cores[0].append(
                DmaIn(
                    (
                        Transfer(CB_A, sa, self.multicast("row", a_groups[(rc[0], sa)])),
                        Transfer(CB_B, sw, self.multicast("col", w_groups[(rc[1], sw)])),
                    )
                )
            )
            if self.bias is not None and kpart == 0:
                prog.cores[0].append(DmaIn.one(CB_BIAS, self.bias_stream(p, p.n[0], nb)))
            prog.cores[1].append(self.matmul(p, kpart, nb, Operand.STREAM))
            if kpart == self.mapping.k_split - 1:
                prog.cores[1].append(DmaOut(CB_C, self.c_stream(p, p.n[0], nb)))
            pes[prog.pe] = prog
        return pes

    # weight-stationary, chunked ------------------------------------------------------------------

    def _chunks(self, p: _Part) -> list[tuple[int, int]]:
        """(first n, n-blocks) of each W chunk a PE holds in turn."""
        mb, nb, kb = p.blocks(self.tm, self.tn, self.tk)
        per = ws_chunk_blocks(self.chip, kb, self.a.dtype, self.c.dtype, self.bias is not None)
        if per == 0:
            raise UsageError(
                f"{self.name}: a {self.tn}-wide W block {kb * self.tk} deep does not fit the local store; "
                f"split K further (mapping {self.mapping.describe()})"
            )
        return [(p.n[0] + q * self.tn, min(per, nb - q)) for q in range(0, nb, per)]

    def _build_ws(self) -> dict[PeId, PeProgram]:
        tm, tn, tk = self.tm, self.tn, self.tk
        item = self.a.dtype.itemsize
        chunks = {rc: self._chunks(p) for rc, p in self.active.items()}
        a_groups = self.groups(
            lambda rc, p: [(rc[0], q, self.a_stream(p, n)) for q, (_n0, n) in enumerate(chunks[rc])]
        )
        w_groups = self.groups(
            lambda rc, p: [(rc[1], q, self.w_stream(p, n0, n, 1)) for q, (n0, n) in enumerate(chunks[rc])]
        )
        pes = {}
        for rc, p in self.active.items():
            _mb, _nb, kb = p.blocks(tm, tn, tk)
            kpart = rc[1] % self.mapping.k_split
            most = max(n for _n0, n in chunks[rc])
            prog = self.program(rc, most * tn * tk * kb * item)
            core0, core1 = prog.cores
            for q, (n0, n) in enumerate(chunks[rc]):
                sw = self.w_stream(p, n0, n, 1)
                core0.append(DmaIn.one(CB_B, sw, self.multicast("col", w_groups[(rc[1], q, sw)])))
                core0.append(Barrier("cores"))
                core1.append(Barrier("cores"))
                sa = self.a_stream(p, n)
                core0.append(DmaIn.one(CB_A, sa, self.multicast("row", a_groups[(rc[0], q, sa)])))
                if self.bias is not None and kpart == 0:
                    core0.append(DmaIn.one(CB_BIAS, self.bias_stream(p, n0, n)))
                core1.append(self.matmul(p, kpart, n, Operand.RESIDENT))
                if kpart == self.mapping.k_split - 1:
                    core1.append(DmaOut(CB_C, self.c_stream(p, n0, n)))
                core1.append(CbPop(CB_B, n * kb))
                core0.append(Barrier("cores"))
                core1.append(Barrier("cores"))
            pes[prog.pe] = prog
        return pes
