"""The kinds of kernel op (`lower.KOp.kind`): one member per kernel invocation the lowering can emit.

A `StrEnum`, so a kind compares equal to (and prints as) its name. `lookup`, `cat` and `slice` exist inside
the lowering only (lookups are grouped into `tbe` ops, cats laid out in place, slices made views or copies);
every other kind reaches code generation and has one record in `compiler.kernel_table.KERNELS`.
"""

from __future__ import annotations

from enum import StrEnum


class KernelKind(StrEnum):
    GEMM = "gemm"  # an FC: [M, K] x [N, K]^T with its epilogue (bias, scales, activation, quantization)
    TBE = "tbe"  # a batched embedding lookup: several tables of one row format and dim in one job
    BMM = "bmm"  # batched matmul
    ATTENTION = "attention"  # softmax(scale q k^T + mask) v per (batch, head) and query band, in a PE's store
    ELTWISE = "eltwise"  # an SE elementwise operator (unary, or binary with broadcast)
    QUANTIZE = "quantize"  # per-tensor quantization with a fixed scale and zero point
    DEQUANTIZE = "dequantize"
    QUANTIZE_ROWS = "quantize_rows"  # symmetric int8 per row, with the rows' scales
    GATHER = "gather"  # a constant column gather
    TRANSPOSE = "transpose"
    COPY = "copy"  # a contiguous copy, or a window of the source's bytes seen as another grid
    REDUCE = "reduce"  # a row reduction (sum, mean, max, min)
    HOST_CALL = "host_call"  # an op without a kernel, run by the host CPU (fallback="host")
    JAGGED_TO_DENSE = "jagged_to_dense"  # jagged rows to padded dense by DMA, placed by the call's offsets
    DENSE_TO_JAGGED = "dense_to_jagged"  # padded dense back to jagged rows by DMA
    IM2COL = "im2col"  # a 1-D convolution's columns, by DMA (the GEMM then runs the convolution)
    ROW_GATHER = "row_gather"  # rows picked by index data, by DMA
    ROW_SCATTER = "row_scatter"  # a copy with rows written (or added) where index data says, by DMA
    LOOKUP = "lookup"  # one table's lookup, before grouping into `tbe`
    CAT = "cat"  # a concatenation, before layout
    SLICE = "slice"  # a column slice, before layout


# kinds that the lowering resolves itself: they never reach code generation
LOWERING_ONLY = frozenset({KernelKind.LOOKUP, KernelKind.CAT, KernelKind.SLICE})
