"""BatchMatMul ``C[b] = A[b] @ B[b].T`` for A, B of shape [m, k, n] (C: [m, k, k]), as DLRM's dot interaction
``Z = X @ X.T`` of per-sample feature matrices.

Each PE takes whole batches. Per batch, core 0 DMAs the batch's A and B tiles (64x32) into the local store,
where they stay while core 1 runs the DPE over every 64x64 output block of the batch (operands resident, read
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
    region = region or Region.whole(chip)
    region.check(chip)
    if len(a.shape) != 3 or a.shape != b.shape or c.shape != (a.shape[0], a.shape[1], a.shape[1]):
        raise UsageError(
            f"{name}: batchmatmul takes A, B [m, k, n] and writes C [m, k, k]; got {a.shape}, {b.shape}, {c.shape}"
        )
    if a.dtype not in DPE_DTYPES or b.dtype != a.dtype:
        raise UsageError(f"{name}: the DPE multiplies int8, fp16 or bf16 operands of one dtype")
    m, k, n = a.shape
    tm0, _tn0, tk = tiles(chip)
    tm = largest_divisor(k, tm0)  # blocks must not straddle two batches
    steps = cdiv(n, tk)
    mb = k // tm
    item = a.dtype.itemsize
    tile_bytes = tm * tk * item
    per_batch = mb * steps * tile_bytes
    out_bytes = 2 * tm * tm * c.dtype.itemsize
    resident = 2 * (2 * per_batch) + out_bytes <= chip.local_memory.bytes - 1024
    pe_list = [region.pe(r, cc) for r in range(region.rows) for cc in range(region.cols)]
    pes = {}
    for pe, (b0, b1) in zip(pe_list, split(m, len(pe_list), 1), strict=False):
        nb_batch = b1 - b0
        if nb_batch <= 0:
            continue
        depth = 2 * per_batch if resident else DEPTH * tile_bytes
        sizes = {CB_A: depth, CB_B: depth, CB_C: out_bytes}
        prog = PeProgram(pe, cb_layout(chip, pe, sizes, name), ([], []))
        sc = TileStream(
            c.name, (tm, tm), TileLoop((b0 * k, 0), _dims((nb_batch, k, 0), (mb, tm, 0), (mb, 0, tm)))
        )
        if resident:
            for bi in range(b0, b1):
                sa = TileStream(a.name, (tm, tk), TileLoop((bi * k, 0), _dims((mb, tm, 0), (steps, 0, tk))))
                sb = TileStream(b.name, (tm, tk), TileLoop((bi * k, 0), _dims((mb, tm, 0), (steps, 0, tk))))
                prog.cores[0].append(DmaIn((Transfer(CB_A, sa), Transfer(CB_B, sb))))
                prog.cores[1].append(
                    MatMul(
                        CB_A,
                        CB_B,
                        a.dtype,
                        mb,
                        mb,
                        steps,
                        tm,
                        tm,
                        tk,
                        a_mode=Operand.RESIDENT,
                        b_mode=Operand.RESIDENT,
                        out_cb=CB_C,
                        out_dtype=c.dtype,
                    )
                )
                prog.cores[1].append(CbPop(CB_A, mb * steps))
                prog.cores[1].append(CbPop(CB_B, mb * steps))
        else:
            sa = TileStream(
                a.name,
                (tm, tk),
                TileLoop((b0 * k, 0), _dims((nb_batch, k, 0), (mb, tm, 0), (mb, 0, 0), (steps, 0, tk))),
            )
            sb = TileStream(
                b.name,
                (tm, tk),
                TileLoop((b0 * k, 0), _dims((nb_batch, k, 0), (mb, 0, 0), (mb, tm, 0), (steps, 0, tk))),
            )
            prog.cores[0].append(DmaIn((Transfer(CB_A, sa), Transfer(CB_B, sb))))
            for _ in range(nb_batch):
                prog.cores[1].append(
                    MatMul(CB_A, CB_B, a.dtype, mb, mb, steps, tm, tm, tk, out_cb=CB_C, out_dtype=c.dtype)
                )
        prog.cores[1].append(DmaOut(CB_C, sc))
        pes[pe] = prog
    return Job(name, "batchmatmul", pes, work={"macs": float(m) * k * k * n})
