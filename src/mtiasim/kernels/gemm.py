"""FC / GEMM: ``C[M, N] = A[M, K] @ W[N, K].T`` (+ bias), the mapping published in ISCA'23 §4.

The PE sub-grid is split three ways: its rows share out M (and, for small M, part of N), its columns share out
N and K. Each PE computes 64x64 output blocks (2x2 RE accumulator banks) over its k-range in 32-deep steps:
core 0 loops the DMA of 64x32 tiles, core 1 loops 4 DPE blocks per step and, per block, hands the accumulator
on. K is split along a row of adjacent PEs whose partial blocks are summed west->east over the reduction
network; the last PE of the chain converts the block (requantized INT8, INT32, FP16/BF16...) and writes it
out. A tiles are multicast along rows, W tiles along columns: each is read from memory once per group of PEs
that need it at the same time.

Three loop structures share that partition of the grid:

- `ws` (weight-stationary): each PE loads a chunk of its W slice into its local store (a column of PEs shares
  the load by multicast), the two cores synchronise, then A streams past it; chunk after chunk, as many as the
  128 KB local store needs. The weight load is a phase of its own, as ISCA'23's FC measurements show (time ~
  launch + |W| / SRAM bandwidth + MACs / peak). The v1 library's FC when the weights sit in SRAM.
- `is` (activation-stationary): each PE keeps a 64-row block of A resident and streams W past it, W read once
  per m-block (the least traffic when W does not fit on chip).
- `os` (output-stationary streaming): A and W tiles both stream, W re-read for every m-block; no load phase.

Epilogue: a per-column fp32 scale (`out_scales`, per-channel requantization) and an activation (relu, sigmoid,
tanh) are applied where each block is converted, on the chain's last PE, which streams [1, 64] scale tiles in
as the first PE streams bias tiles (see `isa.MatMul` for the exact arithmetic).

Tiles are 64 rows by `tile_k` columns: 32 (one DPE block, the published kernel) or wider, so that DMAs from
LPDDR5 read longer contiguous runs. The sub-grid shape, variant and tile width are chosen by the kernel's own
cost estimate (compute per PE, memory traffic after multicast, LPDDR5 run efficiency), as a compiler would.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

from mtiasim.dtypes import DType
from mtiasim.errors import CapacityError, UsageError
from mtiasim.hw import Chip
from mtiasim.hw.lpddr5 import dram_timing
from mtiasim.hw.peaks import dpe_macs_per_cycle, sram_bytes_per_s
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
    SeOp,
    TensorDecl,
    TileStream,
    Transfer,
    loop,
)
from mtiasim.isa.commands import EPILOGUE_ACTIVATIONS
from mtiasim.kernels.common import Region, cb_layout, cdiv, split

CB_A, CB_B, CB_C, CB_BIAS, CB_SCALE, CB_POST_BIAS, CB_ROW_SCALE = 0, 1, 2, 3, 4, 5, 6
STREAM_DEPTH_TILES = 4
OUT_DEPTH_TILES = 2
DPE_DTYPES = (DType.INT8, DType.FP16, DType.BF16)
VARIANTS = ("ws", "is", "os")
TILE_K_CHOICES = (32, 64, 128, 256)
# what a MatMul's epilogue can apply (the operator set's epilogue activations)
ACTIVATIONS = {"none": None, **{a.value: a for a in sorted(EPILOGUE_ACTIVATIONS)}}


@dataclass(frozen=True)
class GemmMapping:
    """Rows of the sub-grid: `rows_m` x `rows_n` groups; columns: `cols_n` groups of `k_split` PEs."""

    rows_m: int
    rows_n: int
    cols_n: int
    k_split: int
    variant: str = "ws"
    tile_k: int = 32

    @property
    def rows(self) -> int:
        return self.rows_m * self.rows_n

    @property
    def cols(self) -> int:
        return self.cols_n * self.k_split

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.rows}x{self.cols} PEs (M over {self.rows_m}, N over "
            f"{self.rows_n}x{self.cols_n}, K over {self.k_split}), tiles 64x{self.tile_k}"
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


def tiles(chip: Chip, tile_k: int | None = None) -> tuple[int, int, int]:
    """Tile sizes (m, n, k): 2x2 DPE blocks of output per accumulator set, `tile_k` (default one block) deep."""
    d = chip.dpe
    return 2 * d.block_m, 2 * d.block_n, tile_k or d.block_k


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


def _out_cb_bytes(chip: Chip, out_dtype: DType, bias: int) -> int:
    """Output buffer plus `bias` buffers of [1, 64] fp32 vectors (bias, scales; a bool counts as 0 or 1)."""
    tm, tn, _tk = tiles(chip)
    return OUT_DEPTH_TILES * tm * tn * out_dtype.itemsize + OUT_DEPTH_TILES * tn * 4 * int(bias)


def stream_depth(chip: Chip, tile_bytes: int, streams: int, reserved: int) -> int:
    """Tiles per streaming CB: four (double buffering with slack) if they fit, else two, else none."""
    for depth in (STREAM_DEPTH_TILES, 2):
        if streams * depth * tile_bytes + reserved <= chip.local_memory.bytes - 256:
            return depth
    return 0


def _resident_blocks(chip: Chip, k_steps: int, tile_k: int, dtype: DType, out_dtype: DType, bias: int) -> int:
    """How many 64-wide blocks of an operand k_steps x tile_k deep fit the local store next to a 2-deep
    stream of the other operand and the output buffers (A and W blocks have the same size)."""
    tm, tn, _ = tiles(chip)
    reserved = 2 * tm * tile_k * dtype.itemsize + _out_cb_bytes(chip, out_dtype, bias) + 256
    per_block = tn * tile_k * k_steps * dtype.itemsize
    return max(0, (chip.local_memory.bytes - reserved) // per_block)


def ws_chunk_blocks(chip: Chip, k_steps: int, tile_k: int, dtype: DType, out_dtype: DType, bias: int) -> int:
    """How many n-blocks of a W slice fit the local store at once (a weight-stationary chunk)."""
    return _resident_blocks(chip, k_steps, tile_k, dtype, out_dtype, bias)


def is_blocks_resident(
    chip: Chip, k_steps: int, tile_k: int, dtype: DType, out_dtype: DType, bias: int
) -> int:
    """How many 64-row A blocks an activation-stationary PE holds at once: 2 (double buffered), 1 or 0."""
    return int(min(2, _resident_blocks(chip, k_steps, tile_k, dtype, out_dtype, bias)))


def memory_bytes_per_s(chip: Chip, level: Level, run_bytes: float) -> float:
    """What a stream of `run_bytes`-long contiguous accesses gets from a memory level (the kernel's model)."""
    if level == Level.SRAM:
        return sram_bytes_per_s(chip)
    d = chip.dram
    return dram_timing(chip).run_bytes_per_s(run_bytes, d.channels, d.interleave_bytes)


def _read_s(chip: Chip, decl_level: Level, cached: bool, total: float, distinct: float, run: float) -> float:
    """Time to read `total` bytes of which `distinct` are first touches: SRAM, LPDDR5, or LPDDR5 through the
    SRAM cache (first touches from LPDDR5, every byte through the slices in whole cache lines)."""
    if decl_level == Level.SRAM:
        return total / sram_bytes_per_s(chip)
    if not cached:
        return total / memory_bytes_per_s(chip, Level.DRAM, run)
    lines = max(1.0, chip.sram.cache_line_bytes / max(run, 1.0))
    return max(distinct / memory_bytes_per_s(chip, Level.DRAM, run), total * lines / sram_bytes_per_s(chip))


@functools.lru_cache(maxsize=4096)
def _most_blocks(total: int, parts: int, quantum: int) -> tuple[int, bool]:
    """(the most `quantum`-blocks in one range, whether a range is empty) of `split(total, parts, quantum)`:
    what a mapping's estimate needs of its splits (the search asks for the same splits many times)."""
    ranges = split(total, parts, quantum)
    return max(cdiv(hi - lo, quantum) for lo, hi in ranges), any(hi <= lo for lo, hi in ranges)


def _estimate_s(
    chip: Chip,
    mapping: GemmMapping,
    M: int,
    K: int,
    N: int,
    dtype: DType,
    out_dtype: DType,
    levels: tuple[Level, Level],
    cached: bool = False,
    vectors: int = 0,
) -> float:
    """The kernel's own cost estimate of a mapping (not the engine's timing); inf where the mapping does not
    fit (its tiles or resident blocks do not fit the local store next to the output and `vectors` [1, 64]
    vector buffers: bias, scales)."""
    tm, tn, tk = tiles(chip, mapping.tile_k)
    kb, k_empty = _most_blocks(K, mapping.k_split, tk)
    if k_empty:
        return math.inf
    mb, _ = _most_blocks(M, mapping.rows_m, tm)
    nb, _ = _most_blocks(N, mapping.rows_n * mapping.cols_n, tn)
    if mb == 0 or nb == 0:
        return math.inf
    item = dtype.itemsize
    if stream_depth(chip, tm * tk * item, 2, _out_cb_bytes(chip, out_dtype, vectors)) == 0:
        return math.inf
    block_cycles = (
        4 * chip.dpe.block_m * chip.dpe.block_n * chip.dpe.block_k / dpe_macs_per_cycle(chip, dtype)
    )
    compute = mb * nb * kb * (tk / chip.dpe.block_k) * block_cycles / chip.hz
    run = K * item if tk >= K else tk * item
    a_bytes, w_bytes = M * K * item, N * K * item
    a_once = a_bytes * mapping.rows_n  # each row group of PEs sharing an m-range reads it

    def a_read(times: float) -> float:
        return _read_s(chip, levels[0], cached, a_once * times, a_bytes, run)

    def w_read(times: float) -> float:
        return _read_s(chip, levels[1], cached, w_bytes * times, w_bytes, run)

    fi = mb * nb * kb * (tm + tn) * tk * item / (chip.noc.fi_bytes_per_cycle * chip.hz)
    pes = mapping.rows * mapping.cols
    fixed = (
        pes * chip.dispatch.per_pe_ns * 1e-9
        + (mapping.k_split - 1)
        * (chip.reduction.hop_latency_cycles + tm * tn * 4 / chip.reduction.link_bytes_per_cycle)
        / chip.hz
    )
    sync = 2 * chip.sram.latency_cycles / chip.hz
    if mapping.variant == "os":
        return max(compute, a_read(nb) + w_read(mb), fi) + fixed
    if mapping.variant == "is":
        held = is_blocks_resident(chip, kb, tk, dtype, out_dtype, vectors)
        if held == 0:
            return math.inf
        a_block = a_read(1) / max(1, mb)
        return max(compute, a_read(1) + w_read(mb), fi) + (a_block + sync) * (mb if held == 1 else 1) + fixed
    per_chunk = ws_chunk_blocks(chip, kb, tk, dtype, out_dtype, vectors)
    if per_chunk == 0:
        return math.inf
    chunks = cdiv(nb, per_chunk)
    return w_read(1) + max(compute, a_read(nb), fi) + fixed + chunks * sync


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
    cached: bool = False,
    vectors: int = 0,
) -> GemmMapping:
    """The partition (and tile width) with the best kernel estimate for a loop structure, among those that fit
    the local store (with `vectors` [1, 64] fp32 vector buffers beside the output: bias, scales).

    Variant `auto` is the v1 library's FC: weight-stationary with one-block tiles, wherever the tensors sit
    (ISCA'23's SRAM and LPDDR5 measurements both follow it). Where no weight-stationary partition fits (a
    64-wide W block of the longest k-range the grid's columns allow exceeds the local store), it takes the
    best-estimated mapping of the other loop structures and tile widths. `is`, `os` and wider tiles are
    alternatives a kernel writer can ask for.
    """
    if variant not in (*VARIANTS, "auto"):
        raise UsageError(f"unknown GEMM variant {variant!r} (known: auto, {', '.join(VARIANTS)})")
    args = (chip, M, K, N, dtype, out_dtype, levels, region)
    if variant != "auto":
        best = _choose(*args, variant, cached, None, vectors)
    else:
        best = _choose(*args, "ws", cached, (chip.dpe.block_k,), vectors)
        if best is None:
            found = [_choose(*args, v, cached, None, vectors) for v in VARIANTS if v != "ws"]
            best = min((f for f in found if f is not None), default=None, key=lambda f: f[:2])
    if best is None:
        store = f"the {chip.local_memory.bytes / 1024:g} KiB local store on {region.rows}x{region.cols} PEs"
        if variant != "auto":
            raise CapacityError(
                f"GEMM {M}x{K}x{N} {dtype.value}: no {variant} mapping fits {store}; use variant auto (it falls "
                f"back to the loop structures that fit) or more PE columns (a longer K split)"
            )
        tm, tn, tk = tiles(chip)
        need = 2 * 2 * tm * tk * dtype.itemsize + _out_cb_bytes(chip, out_dtype, vectors) + 256
        raise CapacityError(
            f"GEMM {M}x{K}x{N} {dtype.value}: no mapping fits {store} (the smallest, streamed {tm}x{tk} tiles "
            f"need {need / 1024:.1f} KiB); give the chip a larger local store"
        )
    return best[2]


def _choose(
    chip, M, K, N, dtype, out_dtype, levels, region, variant, cached, widths=None, vectors=0
) -> tuple[float, int, GemmMapping] | None:
    """(estimate, PEs, mapping) of the best mapping of `variant` that fits, None if none does."""
    if widths is None:
        widths = (
            (chip.dpe.block_k,)
            if Level.DRAM not in levels
            else tuple(w for w in TILE_K_CHOICES if w % chip.dpe.block_k == 0)
        )
    best: tuple[float, int, GemmMapping] | None = None
    for tile_k in widths:
        for rows_m, rows_n in itertools.product(range(1, region.rows + 1), repeat=2):
            if rows_m * rows_n > region.rows:
                continue
            for k_split, cols_n in itertools.product(range(1, region.cols + 1), repeat=2):
                if k_split * cols_n > region.cols:
                    continue
                mapping = GemmMapping(rows_m, rows_n, cols_n, k_split, variant, tile_k)
                est = _estimate_s(chip, mapping, M, K, N, dtype, out_dtype, levels, cached, vectors)
                key = (est * (1 + 1e-9), mapping.rows * mapping.cols, mapping)
                if best is None or key[:2] < best[:2]:
                    best = key
    if best is None or not math.isfinite(best[0]):
        return None
    return best


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
    out_scales: TensorDecl | None = None,
    activation: str = "none",
    row_scales: TensorDecl | None = None,
    post_bias: TensorDecl | None = None,
    out_zero_point: int = 0,
) -> Job:
    """The job computing ``c = quantize(act((a @ w.T + bias) * row_scales * out_scales + post_bias))`` on a
    sub-grid of `region` (default: the whole grid), as `isa.MatMul`'s epilogue defines it. `bias` is in the
    accumulator's type (int32 or fp32), added before scaling; `out_scales` and `post_bias` are [1, N] fp32
    per-column multipliers and float biases, `row_scales` an [M, 1] fp32 per-row multiplier; `activation` one
    of none, relu, sigmoid, tanh; `out_scale` and `out_zero_point` quantize an integer output."""
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
    if activation not in ACTIVATIONS:
        raise UsageError(f"{name}: unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
    for what, vec, want in (("out_scales", out_scales, (1, N)), ("post_bias", post_bias, (1, N)),
                            ("row_scales", row_scales, (M, 1))):  # fmt: skip
        if vec is not None and (vec.shape != want or vec.dtype != DType.FP32):
            raise UsageError(
                f"{name}: {what} must be {list(want)} fp32, got {list(vec.shape)} {vec.dtype.value}"
            )
    if out_scale is not None and not (math.isfinite(out_scale) and out_scale > 0):
        raise UsageError(f"{name}: out_scale must be a positive finite number, got {out_scale}")
    if (
        dtype == DType.INT8
        and c.dtype in (DType.INT8, DType.UINT8)
        and out_scale is None
        and out_scales is None
    ):
        raise UsageError(f"{name}: an int8 output needs a requantization scale")
    if bias is not None and (bias.shape != (1, N) or bias.dtype != acc):
        raise UsageError(
            f"{name}: bias must be [1, {N}] {acc.value}, got {list(bias.shape)} {bias.dtype.value}"
        )
    cached = a.cached or w.cached
    # [1, 64] (or [64, 1]) fp32 vector buffers beside the output: bias, scales, row scales, float bias
    vectors = sum(v is not None for v in (bias, out_scales, row_scales, post_bias))
    mapping = mapping or choose_mapping(
        chip, M, K, N, dtype, c.dtype, (a.level, w.level), region, variant, cached, vectors
    )
    if mapping.rows > region.rows or mapping.cols > region.cols:
        raise UsageError(f"{name}: mapping {mapping} does not fit region {region}")
    epilogue = _Epilogue(out_scales, ACTIVATIONS[activation], row_scales, post_bias, out_zero_point)
    return _Builder(chip, name, a, w, c, out_scale, bias, region, mapping, acc, epilogue).build()


@dataclass(frozen=True)
class _Epilogue:
    scales: TensorDecl | None = None
    activation: SeOp | None = None
    row_scales: TensorDecl | None = None
    post_bias: TensorDecl | None = None
    out_zero_point: int = 0


class _Builder:
    def __init__(
        self, chip, name, a, w, c, out_scale, bias, region, mapping, acc, epilogue=_Epilogue()
    ) -> None:
        self.chip, self.name, self.a, self.w, self.c = chip, name, a, w, c
        self.out_scale, self.bias, self.region, self.mapping, self.acc = out_scale, bias, region, mapping, acc
        self.scales, self.activation = epilogue.scales, epilogue.activation
        self.epilogue = epilogue
        # [1, 64] fp32 vector buffers a PE may hold next to its output buffer (bias, scales...)
        self.vectors = (bias is not None) + sum(
            v is not None for v in (epilogue.scales, epilogue.row_scales, epilogue.post_bias)
        )
        self.tm, self.tn, self.tk = tiles(chip, mapping.tile_k)
        M, K = a.shape
        N = w.shape[0]
        self.parts = _parts(mapping, M, K, N, self.tm, self.tn, self.tk)
        self.active = {rc: p for rc, p in self.parts.items() if p.m[1] > p.m[0] and p.n[1] > p.n[0]}
        self.item = a.dtype.itemsize
        # the k-blocks of the deepest k-range of any PE (the chunking of weight-stationary W follows it)
        self.deepest_k_blocks = max(q.blocks(self.tm, self.tn, self.tk)[2] for q in self.parts.values())

    # streams ---------------------------------------------------------------------------------------

    def a_stream(self, p: _Part, m0: int, mb: int, n_repeat: int) -> TileStream:
        _mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        return TileStream(
            self.a.name,
            (self.tm, self.tk),
            loop((m0, p.k[0]), (mb, self.tm, 0), (n_repeat, 0, 0), (kb, 0, self.tk)),
        )

    def w_stream(self, p: _Part, n0: int, nb: int, m_repeat: int) -> TileStream:
        _mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        return TileStream(
            self.w.name,
            (self.tn, self.tk),
            loop((n0, p.k[0]), (m_repeat, 0, 0), (nb, self.tn, 0), (kb, 0, self.tk)),
        )

    def c_stream(self, p: _Part, m0: int, mb: int, n0: int, nb: int) -> TileStream:
        return TileStream(self.c.name, (self.tm, self.tn), loop((m0, n0), (mb, self.tm, 0), (nb, 0, self.tn)))

    def vector_stream(self, decl: TensorDecl, mb: int, n0: int, nb: int) -> TileStream:
        """A [1, N] vector's [1, 64] tiles, one per output block (m outer, n inner)."""
        return TileStream(decl.name, (1, self.tn), loop((0, n0), (mb, 0, 0), (nb, 0, self.tn)))

    def row_stream(self, decl: TensorDecl, m0: int, mb: int, nb: int) -> TileStream:
        """An [M, 1] vector's [64, 1] tiles, one per output block (m outer, n inner)."""
        return TileStream(decl.name, (self.tm, 1), loop((m0, 0), (mb, self.tm, 0), (nb, 0, 0)))

    def groups(self, key_fn) -> dict[tuple, list[PeId]]:
        """PEs that issue the identical stream in the same row or column."""
        out: dict[tuple, list[PeId]] = {}
        for rc, p in self.active.items():
            for key in key_fn(rc, p):
                out.setdefault(key, []).append(self.region.pe(*rc))
        return out

    @staticmethod
    def multicast(axis: str, members: list[PeId]) -> Multicast | None:
        return Multicast(axis, tuple(members)) if len(members) > 1 else None

    # common pieces --------------------------------------------------------------------------------

    def kpart(self, rc: tuple[int, int]) -> int:
        return rc[1] % self.mapping.k_split

    def last(self, rc: tuple[int, int]) -> bool:
        return self.kpart(rc) == self.mapping.k_split - 1

    def matmul(self, rc, p: _Part, mb: int, nb: int, a_mode: Operand, b_mode: Operand) -> MatMul:
        _mb, _nb, kb = p.blocks(self.tm, self.tn, self.tk)
        kpart, last = self.kpart(rc), self.last(rc)
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
            a_mode=a_mode,
            b_mode=b_mode,
            bias_cb=CB_BIAS if self.bias is not None and kpart == 0 else None,
            reduce_in=Direction.EAST if kpart > 0 else None,
            reduce_out=None if last else Direction.EAST,
            out_cb=CB_C if last else None,
            out_dtype=self.c.dtype if last else None,
            out_scale=self.out_scale if last else None,
            scale_cb=CB_SCALE if self.scales is not None and last else None,
            activation=self.activation if last else None,
            row_scale_cb=CB_ROW_SCALE if self.epilogue.row_scales is not None and last else None,
            post_bias_cb=CB_POST_BIAS if self.epilogue.post_bias is not None and last else None,
            out_zero_point=self.epilogue.out_zero_point if last else 0,
        )

    def program(self, rc: tuple[int, int], a_bytes: int, w_bytes: int) -> PeProgram:
        pe = self.region.pe(*rc)
        sizes = {CB_A: a_bytes, CB_B: w_bytes}
        if self.last(rc):
            sizes[CB_C] = OUT_DEPTH_TILES * self.tm * self.tn * self.c.dtype.itemsize
        if self.bias is not None and self.kpart(rc) == 0:
            sizes[CB_BIAS] = OUT_DEPTH_TILES * self.tn * self.acc.itemsize
        if self.scales is not None and self.last(rc):
            sizes[CB_SCALE] = OUT_DEPTH_TILES * self.tn * DType.FP32.itemsize
        if self.epilogue.post_bias is not None and self.last(rc):
            sizes[CB_POST_BIAS] = OUT_DEPTH_TILES * self.tn * DType.FP32.itemsize
        if self.epilogue.row_scales is not None and self.last(rc):
            sizes[CB_ROW_SCALE] = OUT_DEPTH_TILES * self.tm * DType.FP32.itemsize
        return PeProgram(pe, cb_layout(self.chip, pe, sizes, self.name), ([], []))

    def tail(self, prog: PeProgram, rc, p: _Part, m0: int, mb: int, n0: int, nb: int) -> None:
        """The output DMA after a MatMul over [m0, +mb blocks) x [n0, +nb blocks), on the chain's last PE."""
        if self.last(rc):
            prog.cores[1].append(DmaOut(CB_C, self.c_stream(p, m0, mb, n0, nb)))

    def bias_load(self, prog: PeProgram, rc, p: _Part, m0: int, mb: int, n0: int, nb: int) -> None:
        """The bias tiles (first PE of the chain) and scale tiles (last PE) of a MatMul's blocks."""
        if self.bias is not None and self.kpart(rc) == 0:
            prog.cores[0].append(DmaIn.one(CB_BIAS, self.vector_stream(self.bias, mb, n0, nb)))
        if self.scales is not None and self.last(rc):
            prog.cores[0].append(DmaIn.one(CB_SCALE, self.vector_stream(self.scales, mb, n0, nb)))
        if self.epilogue.post_bias is not None and self.last(rc):
            prog.cores[0].append(
                DmaIn.one(CB_POST_BIAS, self.vector_stream(self.epilogue.post_bias, mb, n0, nb))
            )
        if self.epilogue.row_scales is not None and self.last(rc):
            prog.cores[0].append(
                DmaIn.one(CB_ROW_SCALE, self.row_stream(self.epilogue.row_scales, m0, mb, nb))
            )

    def build(self) -> Job:
        build = {"ws": self._build_ws, "os": self._build_os, "is": self._build_is}[self.mapping.variant]
        pes = build()
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

    def depth(self) -> int:
        reserved = _out_cb_bytes(self.chip, self.c.dtype, self.vectors)
        d = stream_depth(self.chip, self.tm * self.tk * self.item, 2, reserved)
        if d == 0:
            raise UsageError(f"{self.name}: 64x{self.tk} tiles do not fit the local store twice over")
        return d

    # output-stationary streaming -----------------------------------------------------------------

    def _build_os(self) -> dict[PeId, PeProgram]:
        tm, tn, tk = self.tm, self.tn, self.tk
        depth = self.depth()
        pes = {}

        def streams(p):
            mb, nb, _kb = p.blocks(tm, tn, tk)
            return self.a_stream(p, p.m[0], mb, nb), self.w_stream(p, p.n[0], nb, mb)

        a_groups = self.groups(lambda rc, p: [(rc[0], streams(p)[0])])
        w_groups = self.groups(lambda rc, p: [(rc[1], streams(p)[1])])
        for rc, p in self.active.items():
            mb, nb, _kb = p.blocks(tm, tn, tk)
            prog = self.program(rc, depth * tm * tk * self.item, depth * tn * tk * self.item)
            sa, sw = streams(p)
            prog.cores[0].append(
                DmaIn(
                    (
                        Transfer(CB_A, sa, self.multicast("row", a_groups[(rc[0], sa)])),
                        Transfer(CB_B, sw, self.multicast("col", w_groups[(rc[1], sw)])),
                    )
                )
            )
            self.bias_load(prog, rc, p, p.m[0], mb, p.n[0], nb)
            prog.cores[1].append(self.matmul(rc, p, mb, nb, Operand.STREAM, Operand.STREAM))
            self.tail(prog, rc, p, p.m[0], mb, p.n[0], nb)
            pes[prog.pe] = prog
        return pes

    # weight-stationary, chunked ------------------------------------------------------------------

    def _chunks(self, p: _Part) -> list[tuple[int, int]]:
        """(first n, n-blocks) of each W chunk a PE holds in turn. Every PE of a K chain cuts its n-range into
        the same chunks, sized for the chain's deepest k-range: the partial blocks a PE reduces into the next
        are a chunk's, so a shallower PE cutting larger chunks would hand on blocks its neighbour does not
        expect."""
        _mb, nb, _kb = p.blocks(self.tm, self.tn, self.tk)
        kb = self.deepest_k_blocks
        per = ws_chunk_blocks(self.chip, kb, self.tk, self.a.dtype, self.c.dtype, self.vectors)
        if per == 0:
            raise UsageError(
                f"{self.name}: a {self.tn}-wide W block {kb * self.tk} deep does not fit the local store; "
                f"split K further (mapping {self.mapping.describe()})"
            )
        return [(p.n[0] + q * self.tn, min(per, nb - q)) for q in range(0, nb, per)]

    def _build_ws(self) -> dict[PeId, PeProgram]:
        tm, tn, tk = self.tm, self.tn, self.tk
        chunks = {rc: self._chunks(p) for rc, p in self.active.items()}

        def a_of(p, n):
            mb, _nb, _kb = p.blocks(tm, tn, tk)
            return self.a_stream(p, p.m[0], mb, n)

        a_groups = self.groups(
            lambda rc, p: [(rc[0], q, a_of(p, n)) for q, (_n0, n) in enumerate(chunks[rc])]
        )
        w_groups = self.groups(
            lambda rc, p: [(rc[1], q, self.w_stream(p, n0, n, 1)) for q, (n0, n) in enumerate(chunks[rc])]
        )
        pes = {}
        for rc, p in self.active.items():
            mb, _nb, kb = p.blocks(tm, tn, tk)
            most = max(n for _n0, n in chunks[rc])
            prog = self.program(rc, 2 * tm * tk * self.item, most * tn * tk * kb * self.item)
            core0, core1 = prog.cores
            for q, (n0, n) in enumerate(chunks[rc]):
                sw = self.w_stream(p, n0, n, 1)
                core0.append(DmaIn.one(CB_B, sw, self.multicast("col", w_groups[(rc[1], q, sw)])))
                core0.append(Barrier("cores"))
                core1.append(Barrier("cores"))
                sa = a_of(p, n)
                core0.append(DmaIn.one(CB_A, sa, self.multicast("row", a_groups[(rc[0], q, sa)])))
                self.bias_load(prog, rc, p, p.m[0], mb, n0, n)
                core1.append(self.matmul(rc, p, mb, n, Operand.STREAM, Operand.RESIDENT))
                self.tail(prog, rc, p, p.m[0], mb, n0, n)
                core1.append(CbPop(CB_B, n * kb))
                core0.append(Barrier("cores"))
                core1.append(Barrier("cores"))
            pes[prog.pe] = prog
        return pes

    # activation-stationary ---------------------------------------------------------------------

    def _build_is(self) -> dict[PeId, PeProgram]:
        tm, tn, tk = self.tm, self.tn, self.tk
        first = next(iter(self.active.values()))
        kb0 = first.blocks(tm, tn, tk)[2]
        held = is_blocks_resident(self.chip, kb0, tk, self.a.dtype, self.c.dtype, self.vectors)
        if held == 0:
            raise UsageError(f"{self.name}: a 64-row A block {kb0 * tk} deep does not fit the local store")

        def blocks_of(p):
            mb, nb, _kb = p.blocks(tm, tn, tk)
            return [(p.m[0] + i * tm, p.n[0], nb) for i in range(mb)]

        a_groups = self.groups(
            lambda rc, p: [
                (rc[0], i, self.a_stream(p, m0, 1, 1)) for i, (m0, _n0, _nb) in enumerate(blocks_of(p))
            ]
        )
        w_groups = self.groups(
            lambda rc, p: [
                (rc[1], i, self.w_stream(p, n0, nb, 1)) for i, (_m0, n0, nb) in enumerate(blocks_of(p))
            ]
        )
        pes = {}
        for rc, p in self.active.items():
            _mb, _nb, kb = p.blocks(tm, tn, tk)
            prog = self.program(rc, held * tm * tk * kb * self.item, 2 * tn * tk * self.item)
            core0, core1 = prog.cores
            for i, (m0, n0, nb) in enumerate(blocks_of(p)):
                sa = self.a_stream(p, m0, 1, 1)
                core0.append(DmaIn.one(CB_A, sa, self.multicast("row", a_groups[(rc[0], i, sa)])))
                if held == 1:
                    core0.append(Barrier("cores"))
                    core1.append(Barrier("cores"))
                sw = self.w_stream(p, n0, nb, 1)
                core0.append(DmaIn.one(CB_B, sw, self.multicast("col", w_groups[(rc[1], i, sw)])))
                self.bias_load(prog, rc, p, m0, 1, n0, nb)
                core1.append(self.matmul(rc, p, 1, nb, Operand.RESIDENT, Operand.STREAM))
                self.tail(prog, rc, p, m0, 1, n0, nb)
                core1.append(CbPop(CB_A, kb))
                if held == 1:
                    core0.append(Barrier("cores"))
                    core1.append(Barrier("cores"))
            pes[prog.pe] = prog
        return pes
