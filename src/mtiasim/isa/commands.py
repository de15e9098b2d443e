"""The PE command set: what a PE's two RISC-V cores issue to its Command Processor.

A command may stand for a whole tile loop (as in the ISCA'23 FC pseudo-code): `DmaIn` moves a stream of tiles,
`MatMul` runs the k-loop of several output blocks. So the number of commands grows with PEs and operators, not
with MACs, while the engine still charges the cores for issuing every iteration.

Data moves through circular buffers (CBs) in a PE's local store. A CB is a FIFO of tiles: producers (DMA, DPE
via the RE, SE, MLU) push tiles, consumers read them. A consumer in `stream` mode pops each tile after use; in
`resident` mode it reads tiles by index without popping (stationary operands), and a later `CbPop` frees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from mtiasim.dtypes import DType
from mtiasim.isa.memory import TileStream
from mtiasim.opset import ELEMENTWISE
from mtiasim.opset import EPILOGUE_ACTIVATIONS as OPSET_EPILOGUE

PeId = tuple[int, int]
"""A PE by its (row, col) in the chip grid."""


class Direction(StrEnum):
    """Directions of the reduction network, which only runs north->south and west->east."""

    EAST = "east"
    SOUTH = "south"

    def step(self, pe: PeId) -> PeId:
        r, c = pe
        return (r, c + 1) if self is Direction.EAST else (r + 1, c)


class Operand(StrEnum):
    """How a compute command reads a CB: consume tiles in order, or index tiles that stay in the CB."""

    STREAM = "stream"
    RESIDENT = "resident"


@dataclass(frozen=True, slots=True)
class Multicast:
    """Identical requests of PEs on one row or one column, coalesced by the NoC into one memory read."""

    axis: str  # "row" or "col"
    members: tuple[PeId, ...]


@dataclass(frozen=True, slots=True)
class Transfer:
    """One tile stream of a DMA loop, from global memory into a CB of the issuing PE."""

    cb: int
    stream: TileStream
    multicast: Multicast | None = None


# ---------------------------------------------------------------------------------------------- DMA commands


@dataclass(frozen=True, slots=True)
class DmaIn:
    """A DMA loop: each iteration moves the next tile of every transfer into its CB (SRAM/DRAM -> LS)."""

    transfers: tuple[Transfer, ...]

    @staticmethod
    def one(cb: int, stream: TileStream, multicast: Multicast | None = None) -> DmaIn:
        return DmaIn((Transfer(cb, stream, multicast),))

    @property
    def iterations(self) -> int:
        return self.transfers[0].stream.n_tiles


@dataclass(frozen=True, slots=True)
class DmaOut:
    """A DMA loop that pops tiles from a CB and writes them to global memory (ragged edges are clipped)."""

    cb: int
    stream: TileStream


@dataclass(frozen=True, slots=True)
class DmaGather:
    """Embedding-row gather: for each index, the core computes the row address and issues one row DMA.

    Pushes `count` tiles of shape [1, row elements] (the table's rows, e.g. FBGEMM int8 rows with their fp16
    scale and bias at the head) into `cb`. Indices are ``indices[start : start + count]``; a row index is
    offset by ``table_row_offset`` (the table's first row inside a batched table tensor).
    """

    cb: int
    table: str
    indices: str
    start: int
    count: int
    table_row_offset: int = 0


@dataclass(frozen=True, slots=True)
class DmaScatter:
    """Indexed row write, memory to memory (the mirror of `DmaGather`). For k = 0, 1, ... in order, the row
    ``r = indices[start + k] + table_row_offset`` of `table`, if ``row_lo <= r < row_hi`` (None: the table's
    end), gets row ``src_row0 + k * src_step`` of `src` (a step of 0 writes one row everywhere): written (of a
    duplicate row the later index wins) or, with `accumulate`, added by the SE in FP32,
    ``row = f32(row + f32(src row))``, so duplicates sum in index order (the table is then fp32).

    v1 has no indexed DMA: the core scans the indices with its vector unit, and for each row in range issues
    the DMA of the src row into the local store, of the table row too when adding, and of the result back.
    Indices outside the range are skipped: the PE owning those rows writes them, so every row is written in
    index order whatever the PEs' timing.
    """

    src: str
    table: str
    indices: str
    start: int
    count: int
    table_row_offset: int = 0
    src_row0: int = 0
    src_step: int = 1
    row_lo: int = 0
    row_hi: int | None = None
    accumulate: bool = False


@dataclass(frozen=True, slots=True)
class DmaPeer:
    """A DMA loop that pops tiles from another PE's CB (over the NoC) into a CB of this PE."""

    cb: int
    src_pe: PeId
    src_cb: int
    n_tiles: int


# --------------------------------------------------------------------------------------- compute commands


@dataclass(frozen=True, slots=True)
class MatMul:
    """A DPE + RE loop over output blocks: ``for im in m_blocks: for jn in n_blocks: acc = bias; for s in
    steps: acc += A(im, s) @ B(jn, s).T``; then the block goes to the next PE (`reduce_out`) or, converted to
    `out_dtype`, to `out_cb`.

    The DPE dots rows with rows: A tiles are [tile_m, tile_k] and B tiles [tile_n, tile_k], both k-innermost
    (B is a weight in nn.Linear's [out, in] layout). In `stream` mode a CB delivers one tile per use, in
    iteration order (m outer, n inner, step innermost). In `resident` mode A(im, s) is tile ``im*steps + s`` and
    B(jn, s) tile ``jn*steps + s`` from the CB head; they are not popped. `reduce_in` adds the partial block
    arriving over the reduction network from the upstream PE (west of an EAST chain, north of a SOUTH chain).
    Epilogue (only where the block is converted, i.e. with `out_cb`), each element of a block (m its row, n
    its column, acc including the integer bias and partials), every step in FP32:

    - ``v = float32(acc)`` (an INT32 sum converts exactly below 2^24; beyond it wraps past 2^31 as the RE's
      adder and rounds to FP32);
    - ``v = v * row_scale[m]`` with `row_scale_cb` (one [tile_m, 1] fp32 tile per block: dynamic per-row
      activation scales), then ``v = v * scale[n]`` with `scale_cb` (one [1, tile_n] fp32 tile per block:
      per-channel dequantization), then ``v = v + post_bias[n]`` with `post_bias_cb` (one [1, tile_n] fp32
      tile per block: a float bias after scaling);
    - ``v = max(v, 0)`` (RELU) or the SE's LUT of sigmoid/tanh (as `SeMap`);
    - an integer `out_dtype` is quantized with `out_scale` and `out_zero_point` exactly as `SeMap` QUANTIZE
      (``round_half_even(v * float32(1/out_scale)) + zero_point``, saturated; without `out_scale` the scale is
      1); a float `out_dtype` is a round-to-nearest-even cast.

    The RE's output path applies it per block, pipelined with the DPE's next block, at the SE's FP32 rate
    (`engine.work.epilogue_ops_per_element`).
    """

    a_cb: int
    b_cb: int
    dtype: DType
    m_blocks: int
    n_blocks: int
    steps: int
    tile_m: int
    tile_n: int
    tile_k: int
    a_mode: Operand = Operand.STREAM
    b_mode: Operand = Operand.STREAM
    bias_cb: int | None = None
    reduce_in: Direction | None = None
    reduce_out: Direction | None = None
    out_cb: int | None = None
    out_dtype: DType | None = None
    out_scale: float | None = None
    scale_cb: int | None = None
    activation: SeOp | None = None
    row_scale_cb: int | None = None
    post_bias_cb: int | None = None
    out_zero_point: int = 0

    @property
    def epilogue_vectors(self) -> int:
        """Scale/bias tiles the epilogue reads per block."""
        return (self.scale_cb is not None) + (self.row_scale_cb is not None) + (self.post_bias_cb is not None)

    @property
    def blocks(self) -> int:
        return self.m_blocks * self.n_blocks

    @property
    def acc_dtype(self) -> DType:
        return DType.INT32 if self.dtype == DType.INT8 else DType.FP32


# SIMD Engine operations: data movement and (de)quantization, then every elementwise operator of the operator
# set (`mtiasim.opset.ELEMENTWISE`, which says how each is computed: IEEE FP32, an SE lookup table, or the
# FP32 math library)
SeOp = StrEnum(
    "SeOp",
    [(n, n.lower()) for n in ("COPY", "CAST", "QUANTIZE", "DEQUANTIZE")]
    + [(k.name, k.value) for k in ELEMENTWISE],
)
SeOp.__doc__ = (
    "SIMD Engine elementwise operations (the operator set's elementwise operators and conversions)."
)

BINARY_SE_OPS = frozenset(SeOp(k.value) for k, e in ELEMENTWISE.items() if e.arity == 2)
EPILOGUE_ACTIVATIONS = frozenset(SeOp(k.value) for k in OPSET_EPILOGUE)


@dataclass(frozen=True, slots=True)
class SeMap:
    """An SE loop over `n_tiles` tiles: ``dst = op(src[, src2])``, converting to `out_dtype`.

    Quantize: ``q = saturate(round_half_even(float32(x) * float32(1/scale)) + zero_point)``, NaN -> zero_point.
    Dequantize: ``(q - zero_point) * scale``. If `scale_cb` is set, the scale and zero point come from the 1x2
    tile [min, max] at its head (dynamic quantization: asymmetric int8 covering [min(min, 0), max(max, 0)]);
    the tile stays (free it with CbPop). If `row_scale_cb` is set, tile i is quantized (symmetric, zero point
    0) with the per-row scales of [rows, 1] tile ``i // row_scale_period`` of that CB, which stay resident
    (free them with CbPop or a DmaOut).

    Binary ops read `src2`: with ``src2_period == 0`` one tile per tile of `src`, popped; with ``src2_period =
    p > 0`` the first p tiles of `src2` stay resident and tile i of `src` pairs with tile ``i % p`` (free them
    with CbPop). A [1, c] second-operand tile is broadcast over the rows of an [r, c] tile (row broadcast), an
    [r, 1] tile over its columns (column broadcast: a per-row value such as a row's max or sum).
    """

    op: SeOp
    src: int
    dst: int
    n_tiles: int
    out_dtype: DType
    src2: int | None = None
    scale: float = 1.0
    zero_point: int = 0
    scale_cb: int | None = None
    src2_period: int = 0
    row_scale_cb: int | None = None
    row_scale_period: int = 0
    params: tuple[
        tuple[str, Any], ...
    ] = ()  # an operator's constants (leaky_relu slope, clamp bounds, alpha...)


@dataclass(frozen=True, slots=True)
class SeRowScale:
    """An SE reduction for dynamic per-row quantization: every `band` consecutive tiles of `src` (popped) are
    one band of rows across the tensor's columns; for each band one [rows, 1] fp32 tile of symmetric int8
    scales goes to `dst`: ``s = float32(max |finite x| of the row) * float32(1/127)``, 1 for a row of zeros."""

    src: int
    dst: int
    n_tiles: int
    band: int


@dataclass(frozen=True, slots=True)
class HostCall:
    """An operator the chip has no kernel for, run by the host CPU (an explicit fallback): the core hands the
    tensors `reads` to the host over PCIe, waits while the host computes and takes `writes` back. `seconds` is
    that round trip (both transfers and the host's work), set by the compiler; `fn` computes the outputs from
    the inputs (2-D arrays of their declared shapes and dtypes) in a functional run."""

    op: str
    fn: Callable[..., tuple[np.ndarray, ...]] = field(compare=False, hash=False, repr=False)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    seconds: float = 0.0


class HostSide(StrEnum):
    """A host-side resource of the card a chip sits on (`engine.resources`)."""

    LINK_IN = "host_link_in"  # the card's PCIe link, host -> device
    LINK_OUT = "host_link_out"  # the card's PCIe link, device -> host (full duplex: its own direction)
    CPU = "host_cpu"  # the host CPU's work for this chip (pre- and post-processing)


@dataclass(frozen=True, slots=True)
class HostTransfer:
    """Work on one host-side resource, a flow like a DMA: `nbytes` over the host link (input or output DMA
    between host memory and the device), or the host CPU's work expressed in bytes of its copy rate (a cost of
    s seconds at the CPU's full rate is s x `host.cpu_copy_gbps` bytes). Transfers on one resource divide its
    bandwidth. `latency_s` (the link's round trip) is paid once, uncontended. `what` names it."""

    side: HostSide
    nbytes: float
    latency_s: float = 0.0
    what: str = ""


class ReduceOp(StrEnum):
    """What an SE row reduction computes."""

    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    MIN = "min"


@dataclass(frozen=True, slots=True)
class SeRowReduce:
    """An SE row reduction: every `band` consecutive tiles of `src` (popped) are one band of rows across a
    tensor of `cols` columns (lanes past `cols` in the band's last tile are masked); for each band one [rows, 1]
    tile of `out_dtype` goes to `dst`. Sum: FP32 accumulation in column order; mean: that sum divided
    by `cols` in FP32; max/min: NaN if the row holds one. Rounded once to `out_dtype`.

    With `keep` the source tiles are read in place and stay in `src` (resident, as a MatMul's stationary
    operand: a later command reads them again; free them with a CbPop or a popping reader)."""

    src: int
    dst: int
    n_tiles: int
    band: int
    op: ReduceOp
    cols: int
    out_dtype: DType
    keep: bool = False


@dataclass(frozen=True, slots=True)
class SeMinMax:
    """An SE reduction over `n_tiles` tiles (popped); pushes one [1, 2] fp32 tile [min, max] into `dst`."""

    src: int
    dst: int
    n_tiles: int


class PoolMode(StrEnum):
    """EmbeddingBag pooling; an empty bag pools to zeros in every mode (as torch's embedding_bag)."""

    SUM = "sum"
    MEAN = "mean"
    MAX = "max"


class RowFormat(StrEnum):
    """How an embedding table stores a row of `dim` values.

    - INT8_FBGEMM: uint8 [dim + 4]: fp16 scale, fp16 bias at the head, then dim bytes; ``x = q*scale + bias``.
    - INT8_ATEN: uint8 [dim + 8]: dim bytes, then fp32 scale and fp32 bias at the tail, as
      ``torch.ops.quantized.embedding_bag_byte_prepack`` writes them; ``x = q*scale + bias``.
    - INT4_FBGEMM: uint8 [4 + ceil(dim/2)]: fp16 scale, fp16 bias at the head, then two 4-bit values per byte
      (element 2i in the low nibble), as FBGEMM TBE's ``SparseType.INT4`` rows (without their row padding).
    - INT4_ATEN: uint8 [ceil(dim/2) + 4]: the packed 4-bit values, then fp16 scale and fp16 bias at the tail,
      as ``torch.ops.quantized.embedding_bag_4bit_prepack`` writes them.
    - FP16, FP32: the dim values themselves.
    """

    INT8_FBGEMM = "int8_fbgemm"
    INT8_ATEN = "int8_aten"
    INT4_FBGEMM = "int4_fbgemm"
    INT4_ATEN = "int4_aten"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def dtype(self) -> DType:
        return {RowFormat.FP16: DType.FP16, RowFormat.FP32: DType.FP32}.get(self, DType.UINT8)

    @property
    def bits(self) -> int:
        """Bits of one stored value: 4 or 8 for quantized rows, 16 or 32 for float rows."""
        return {RowFormat.INT4_FBGEMM: 4, RowFormat.INT4_ATEN: 4, RowFormat.FP16: 16, RowFormat.FP32: 32}.get(
            self, 8
        )

    @property
    def is_quantized(self) -> bool:
        """Integer rows with a per-row scale and bias (dequantized on the SE)."""
        return self.dtype == DType.UINT8

    @property
    def qparams_dtype(self) -> DType:
        """The dtype of a quantized row's scale and bias."""
        return DType.FP32 if self == RowFormat.INT8_ATEN else DType.FP16

    def row_cols(self, dim: int) -> int:
        """Elements of one stored row (of `dtype`)."""
        if not self.is_quantized:
            return dim
        return -(-dim * self.bits // 8) + 2 * self.qparams_dtype.itemsize

    def dim_of(self, cols: int) -> int:
        """The dim of rows of `cols` stored elements (4-bit rows: the even dim, as ATen's ops assume)."""
        if not self.is_quantized:
            return cols
        return (cols - 2 * self.qparams_dtype.itemsize) * 8 // self.bits

    def layout(self, dim: int) -> tuple[slice, slice]:
        """(packed values, scale and bias): the byte ranges of a quantized row of `dim` values."""
        qparams = 2 * self.qparams_dtype.itemsize
        values = self.row_cols(dim) - qparams
        if self in (RowFormat.INT8_FBGEMM, RowFormat.INT4_FBGEMM):  # scale and bias at the head
            return slice(qparams, qparams + values), slice(0, qparams)
        return slice(0, values), slice(values, values + qparams)

    def row_bytes(self, dim: int) -> int:
        return self.row_cols(dim) * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class SePool:
    """EmbeddingBag pooling on the SE: convert rows of `row_format` to fp32 (dequantize int8/int4 rows) and
    accumulate (or take the max of) them into bags, at most `accumulate_max_rows` rows per SE command.

    `lengths` gives the rows of each bag (rows arrive in `src` in bag order); one [1, dim] tile per bag goes to
    `dst` in `out_dtype`. Per-sample weights (fp32) are ``weights[weights_start : ...]`` if `weights` is set
    (sum and mean only). Numerics per format: see `mtiasim.engine.numerics.pool_rows`.
    """

    src: int
    dst: int
    lengths: tuple[int, ...]
    dim: int
    mode: PoolMode
    out_dtype: DType
    weights: str | None = None
    weights_start: int = 0
    row_format: RowFormat = RowFormat.INT8_FBGEMM

    @property
    def rows(self) -> int:
        return sum(self.lengths)


@dataclass(frozen=True, slots=True)
class MluTranspose:
    """MLU loop: each [r, c] tile of `src` becomes a [c, r] tile in `dst`."""

    src: int
    dst: int
    n_tiles: int


@dataclass(frozen=True, slots=True)
class MluConcat:
    """MLU loop: the i-th tiles of every source CB are joined along `axis` (0 rows, 1 columns) into one tile."""

    srcs: tuple[int, ...]
    dst: int
    n_tiles: int
    axis: int = 1


@dataclass(frozen=True, slots=True)
class MluReshape:
    """MLU loop: each tile is reshaped (same elements, row-major) to `shape`."""

    src: int
    dst: int
    n_tiles: int
    shape: tuple[int, int]


# -------------------------------------------------------------------------------- CB and sync commands


@dataclass(frozen=True, slots=True)
class CbPop:
    """Move a CB's read pointer past `n` tiles (frees resident operands)."""

    cb: int
    n: int


@dataclass(frozen=True, slots=True)
class Barrier:
    """Synchronise: scope 'cores' waits for the PE's other core; scope 'group' for every PE of `group`.

    Every command issued before the barrier (by the cores taking part) completes before any command after it.
    """

    scope: str  # "cores" or "group"
    group: str | None = None


@dataclass(frozen=True, slots=True)
class CoreWork:
    """Scalar or vector code on the issuing core itself (address arithmetic, control), in core cycles."""

    cycles: float
    what: str = ""


Command = (
    DmaIn
    | DmaOut
    | DmaGather
    | DmaScatter
    | DmaPeer
    | MatMul
    | SeMap
    | SeMinMax
    | SeRowScale
    | SeRowReduce
    | HostCall
    | HostTransfer
    | SePool
    | MluTranspose
    | MluConcat
    | MluReshape
    | CbPop
    | Barrier
    | CoreWork
)


@dataclass(frozen=True, slots=True)
class CbDecl:
    """A circular buffer: an id and a byte range of the PE's local store."""

    cb: int
    offset_bytes: int
    size_bytes: int


@dataclass(slots=True)
class PeProgram:
    """What one PE runs in a job: its CBs and the command list of each of its two cores."""

    pe: PeId
    cbs: tuple[CbDecl, ...]
    cores: tuple[list[Command], list[Command]] = field(default_factory=lambda: ([], []))
