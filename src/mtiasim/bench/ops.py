"""`mtiasim bench op NAME --m M --k K --n N`: the other operators ISCA'23 measured (Fig 13), on a [m, k, n]
tensor (the paper's set-up: m=256, k=128, n=32). The float side is fp32 for quantize and dequantize (DLRM
quantizes fp32 activations) and fp16 for the others, unless `--dtype` says otherwise.

Bytes counted for ``gbps`` (bytes / seconds), one read of every input and one write of every output:

| op | what it computes | bytes |
|---|---|---|
| batchmatmul | A[b] @ B[b].T, A and B [m, k, n] -> C [m, k, k] | 2*m*k*n*e + m*k*k*e |
| transpose | [m, k, n] -> [m, n, k] | 2*m*k*n*e |
| concat | two [m, k, n] -> [m, k, 2n] | 4*m*k*n*e |
| quantize | [m, k, n] -> int8, scale from the data (dynamic) | m*k*n*(e + 1) |
| dequantize | int8 [m, k, n] -> e | m*k*n*(1 + e) |
| tanh, sigmoid, relu, ... (every unary operator of `mtiasim.opset`) | elementwise | 2*m*k*n*e |

(e = bytes per element of `--dtype`). Dynamic quantization reads its input twice (min/max pass, then quantize);
only one read is counted.

`--placement dram` is the paper's set-up for these operators: tensors in LPDDR5 with the SRAM not caching them
(ISCA'23 §6.1: the DRAM-resident operators sit on the LPDDR5 roofline); `dram-cached` goes through the SRAM
cache instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtiasim.bench.core import (
    Prepared,
    base_fields,
    check_run,
    check_seed,
    level,
    memory_plan,
    positive,
    resolve_chip,
    timing_fields,
)
from mtiasim.dtypes import DType
from mtiasim.engine import numerics as nx
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import Level, Program, SeOp
from mtiasim.kernels.bmm import bmm_job
from mtiasim.kernels.elementwise import dynamic_quantize_job, elementwise_job
from mtiasim.kernels.layout import concat_job, transpose_job
from mtiasim.kernels.tiling import grid_loops, tile_shape
from mtiasim.opset import ELEMENTWISE, Kind

# the Fig 13 operators, then every unary elementwise operator of the operator set (tanh, sigmoid, relu, exp...)
UNARY = tuple(
    k.value
    for k, e in ELEMENTWISE.items()
    if e.arity == 1 and set(e.attrs) <= dict(e.defaults).keys() and e.rule != "fill"  # fill reads a mask
)
OPS = ("batchmatmul", "transpose", "concat", "quantize", "dequantize", *UNARY)
DEFAULT_DTYPE = {"quantize": "fp32", "dequantize": "fp32"}
DEQUANT_SCALE, DEQUANT_ZERO = 0.02, 3


def bench_op(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return prepare_op(*args, **kwargs).run()


def prepare_op(
    op: str,
    m: int = 256,
    k: int = 128,
    n: int = 32,
    placement: str = "sram",
    dtype: str | None = None,
    chip: str | Chip = "mtia-v1",
    fidelity: str = "event",
    mode: str = "timing",
    seed: int = 0,
) -> Prepared:
    if op not in OPS:
        raise UsageError(f"unknown op {op!r} (known: {', '.join(OPS)})")
    m, k, n = positive("m", m), positive("k", k), positive("n", n)
    seed = check_seed(seed)
    dt = DType.parse(dtype or DEFAULT_DTYPE.get(op, "fp16"), "--dtype")
    if dt not in (DType.FP16, DType.BF16, DType.FP32) and op != "batchmatmul":
        raise UsageError(f"--dtype: {op} runs on fp16, bf16 or fp32 data, not {dtype}")
    if op == "batchmatmul" and dt not in (DType.FP16, DType.BF16, DType.INT8):
        raise UsageError(f"--dtype: batchmatmul runs on the DPE: int8, fp16 or bf16, not {dtype}")
    lvl, cached = level(placement, dram_cached=False)
    check_run(mode, fidelity)
    chip_ = resolve_chip(chip)
    plan = memory_plan(chip_)
    e = dt.itemsize
    shape = (m, k, n)
    elems = m * k * n
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}

    def data(name: str, dtype: DType, shp) -> None:
        if mode == "timing":
            return
        if dtype == DType.INT8:
            inputs[name] = rng.integers(-128, 128, shp, dtype=np.int8)
        else:
            inputs[name] = (rng.standard_normal(shp) * 2).astype(dtype.numpy)

    if op == "batchmatmul":
        a, b = plan.add("A", shape, dt, lvl, cached=cached), plan.add("B", shape, dt, lvl, cached=cached)
        out_dt = DType.INT32 if dt == DType.INT8 else dt
        c = plan.add("C", (m, k, k), out_dt, lvl, cached=cached)
        job = bmm_job(chip_, op, a, b, c)
        nbytes = 2 * elems * e + m * k * k * out_dt.itemsize
        data("A", dt, shape)
        data("B", dt, shape)
    elif op == "transpose":
        x, y = plan.add("X", shape, dt, lvl, cached=cached), plan.add("Y", (m, n, k), dt, lvl, cached=cached)
        job = transpose_job(chip_, op, x, y)
        nbytes = 2 * elems * e
        data("X", dt, shape)
    elif op == "concat":
        x, y2 = plan.add("X", shape, dt, lvl, cached=cached), plan.add("X2", shape, dt, lvl, cached=cached)
        y = plan.add("Y", (m, k, 2 * n), dt, lvl, cached=cached)
        job = concat_job(chip_, op, x, y2, y)
        nbytes = 4 * elems * e
        data("X", dt, shape)
        data("X2", dt, shape)
    elif op == "quantize":
        x, y = (
            plan.add("X", shape, dt, lvl, cached=cached),
            plan.add("Y", shape, DType.INT8, lvl, cached=cached),
        )
        parts = len(grid_loops(x.rows, x.cols, tile_shape(x.rows, x.cols, e), chip_.n_pes))
        part = plan.add("partials", (parts, 2), DType.FP32, Level.SRAM)
        qp = plan.add("qparams", (1, 2), DType.FP32, Level.SRAM)
        job = dynamic_quantize_job(chip_, op, x, y, part, qp)
        nbytes = elems * (e + 1)
        data("X", dt, shape)
    elif op == "dequantize":
        x, y = (
            plan.add("X", shape, DType.INT8, lvl, cached=cached),
            plan.add("Y", shape, dt, lvl, cached=cached),
        )
        job = elementwise_job(chip_, op, SeOp.DEQUANTIZE, x, y, scale=DEQUANT_SCALE, zero_point=DEQUANT_ZERO)
        nbytes = elems * (1 + e)
        data("X", DType.INT8, shape)
    else:
        x, y = plan.add("X", shape, dt, lvl, cached=cached), plan.add("Y", shape, dt, lvl, cached=cached)
        job = elementwise_job(chip_, op, SeOp(op), x, y)
        nbytes = 2 * elems * e
        data("X", dt, shape)
    program = Program(f"{op} {m}x{k}x{n}", plan.tensors, [job])

    def summarize(result) -> dict[str, Any]:
        res: dict[str, Any] = {
            "kind": "op",
            "op": op,
            "m": m,
            "k": k,
            "n": n,
            "dtype": dt.value,
            "placement": placement,
            "sram_cache": cached,
        }
        res.update(base_fields(chip_, mode, fidelity))
        res.update(timing_fields(result, chip_))
        res["bytes"] = float(nbytes)
        res["gbps"] = nbytes / res["seconds"] / 1e9 if res["seconds"] else None
        if result.outputs is not None:
            res["check"] = _check(op, inputs, result.outputs, dt, chip_)
        return res

    return Prepared(chip_, program, inputs, mode, fidelity, summarize)


def _check(op: str, inputs, outputs, dt: DType, chip: Chip) -> dict[str, Any]:
    """Each op against numpy under the bound docs/numerics.md gives it (0 where the op is exact)."""
    from mtiasim.runtime.bounds import (  # torch: functional runs only
        accumulation_bound,
        bound_check,
        stored_bound,
    )

    if op == "batchmatmul":
        a, b = inputs["A"].astype(np.float64), inputs["B"].astype(np.float64)
        ref, got = np.einsum("bkn,bjn->bkj", a, b), outputs["C"]
        if dt == DType.INT8:
            return bound_check(got, ref, 0.0, "numpy, exact int8")
        e = accumulation_bound(np.einsum("bkn,bjn->bkj", np.abs(a), np.abs(b)), a.shape[-1])
        return bound_check(got, ref, stored_bound(e, np.abs(ref), dt), "numpy, numerics bound")
    if op == "transpose":
        return bound_check(outputs["Y"], inputs["X"].transpose(0, 2, 1), 0.0, "numpy, exact")
    if op == "concat":
        return bound_check(
            outputs["Y"], np.concatenate([inputs["X"], inputs["X2"]], axis=-1), 0.0, "numpy, exact"
        )
    if op == "quantize":
        lo, hi = (float(v) for v in outputs["qparams"].reshape(-1))
        x = inputs["X"].astype(np.float32)
        if lo != float(x.min()) or hi != float(x.max()):
            return {"reference": "numpy", "max_abs_err": float("inf"), "passed": False}
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = np.float32((hi - lo) / 255.0)
        zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
        return bound_check(outputs["Y"], nx.quantize(x, float(scale), zp), 0.0, "numpy, exact")
    if op == "dequantize":
        ref = nx.dequantize(inputs["X"], DEQUANT_SCALE, DEQUANT_ZERO).astype(dt.numpy)
        return bound_check(outputs["Y"], ref, 0.0, "numpy, exact")
    import torch

    spec = ELEMENTWISE[Kind(op)]
    x = torch.from_numpy(inputs["X"].astype(np.float64))
    ref = spec.torch(x).numpy()  # the exact function (float64)
    chip = spec.abs_error + spec.rel_error * np.abs(ref) + spec.in_rel_error * np.abs(x.numpy())
    bound = stored_bound(chip, np.abs(ref), dt)
    return bound_check(outputs["Y"], ref, bound, "PyTorch float64, numerics bound")
