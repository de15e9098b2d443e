"""BatchMatMul ``C[i] = A[i] @ B[i].T`` for A [m, M, K] and B [m, N, K] (C: [m, M, N]): DLRM's dot interaction
``Z = X @ X.T`` of per-sample feature matrices, attention's scores and mixes, cross nets' per-sample products.

Each PE takes whole batches. Per batch, core 0 DMAs the batch's A and B tiles (up to 64x32) into the local
store, where they stay while core 1 runs the DPE over every output block of the batch (up to 64x64, dividing
M and N so no block straddles two batches) (operands resident, read
once from memory), then frees them and DMAs the blocks out. A batch whose operands do not fit two at a time
in the local store streams them instead (re-read per block).
"""

from __future__ import annotations

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import (
    CbPop,
    DmaIn,
    DmaOut,
    Job,
    MatMul,
    Operand,
    PeProgram,
    TensorDecl,
    TileLoop,
    TileStream,
    Transfer,
)
from mtiasim.kernels.common import Region, cb_layout, cdiv, split
from mtiasim.kernels.gemm import DPE_DTYPES, tiles
from mtiasim.kernels.layout import largest_divisor

CB_A, CB_B, CB_C = 0, 1, 2
DEPTH = 4


def _dims(*d):
    return tuple(x for x in d if x[0] > 1)


def bmm_job(
    chip: Chip, name: str, a: TensorDecl, b: TensorDecl, c: TensorDecl, *, region: Region | None = None
) -> Job:
    """``C[i] = A[i] @ B[i].T`` for A [m, M, K], B [m, N, K], C [m, M, N]."""
    region = region or Region.whole(chip)
    region.check(chip)
    ok = (
        len(a.shape) == len(b.shape) == len(c.shape) == 3
        and a.shape[0] == b.shape[0]
        and a.shape[2] == b.shape[2]
    )
    if not ok or c.shape != (a.shape[0], a.shape[1], b.shape[1]):
        raise UsageError(
            f"{name}: batchmatmul takes A [m, M, K], B [m, N, K] and writes C [m, M, N]; got {a.shape}, "
            f"{b.shape}, {c.shape}"
        )
    if a.dtype not in DPE_DTYPES or b.dtype != a.dtype:
        raise UsageError(f"{name}: the DPE multiplies int8, fp16 or bf16 operands of one dtype")
    m, rows_a, k = a.shape
    rows_b = b.shape[1]
    tm0, tn0, tk = tiles(chip)
    tm = largest_divisor(rows_a, tm0)  # blocks must not straddle two batches
    tn = largest_divisor(rows_b, tn0)
    steps = cdiv(k, tk)
    mb, nb = rows_a // tm, rows_b // tn
    item = a.dtype.itemsize
    per_batch = (mb * tm + nb * tn) * steps * tk * item
    out_bytes = 2 * tm * tn * c.dtype.itemsize
    resident = 2 * per_batch + out_bytes <= chip.local_memory.bytes - 1024
    pe_list = [region.pe(r, cc) for r in range(region.rows) for cc in range(region.cols)]
    pes = {}
    for pe, (b0, b1) in zip(pe_list, split(m, len(pe_list), 1), strict=False):
        nb_batch = b1 - b0
        if nb_batch <= 0:
            continue
        depth_a = 2 * mb * steps * tm * tk * item if resident else DEPTH * tm * tk * item
        depth_b = 2 * nb * steps * tn * tk * item if resident else DEPTH * tn * tk * item
        sizes = {CB_A: depth_a, CB_B: depth_b, CB_C: out_bytes}
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        sc = TileStream(
            c.name,
            (tm, tn),
            TileLoop((b0 * rows_a, 0), _dims((nb_batch, rows_a, 0), (mb, tm, 0), (nb, 0, tn))),
        )
        if resident:
            for bi in range(b0, b1):
                sa = TileStream(
                    a.name, (tm, tk), TileLoop((bi * rows_a, 0), _dims((mb, tm, 0), (steps, 0, tk)))
                )
                sb = TileStream(
                    b.name, (tn, tk), TileLoop((bi * rows_b, 0), _dims((nb, tn, 0), (steps, 0, tk)))
                )
                # A and B have different tile counts when M and N split into different block counts
                prog.cores[0].extend([DmaIn.one(CB_A, sa), DmaIn.one(CB_B, sb)])
                prog.cores[1].append(
                    MatMul(
                        CB_A,
                        CB_B,
                        a.dtype,
                        mb,
                        nb,
                        steps,
                        tm,
                        tn,
                        tk,
                        a_mode=Operand.RESIDENT,
                        b_mode=Operand.RESIDENT,
                        out_cb=CB_C,
                        out_dtype=c.dtype,
                    )
                )
                prog.cores[1].append(CbPop(CB_A, mb * steps))
                prog.cores[1].append(CbPop(CB_B, nb * steps))
        else:
            sa = TileStream(
                a.name,
                (tm, tk),
                TileLoop(
                    (b0 * rows_a, 0), _dims((nb_batch, rows_a, 0), (mb, tm, 0), (nb, 0, 0), (steps, 0, tk))
                ),
            )
            sb = TileStream(
                b.name,
                (tn, tk),
                TileLoop(
                    (b0 * rows_b, 0), _dims((nb_batch, rows_b, 0), (mb, 0, 0), (nb, tn, 0), (steps, 0, tk))
                ),
            )
            prog.cores[0].append(DmaIn((Transfer(CB_A, sa), Transfer(CB_B, sb))))
            for _ in range(nb_batch):
                prog.cores[1].append(
                    MatMul(CB_A, CB_B, a.dtype, mb, nb, steps, tm, tn, tk, out_cb=CB_C, out_dtype=c.dtype)
                )
        prog.cores[1].append(DmaOut(CB_C, sc))
        pes[pe] = prog
    return Job(name, "batchmatmul", pes, work={"macs": float(m) * rows_a * rows_b * k})
