"""`mtiasim bench gemm`: one FC/GEMM ``C[M, N] = A[M, K] @ W[N, K].T`` on the chip.

JSON: ``seconds``, ``tops`` (2*M*N*K / seconds / 1e12), ``macs``, ``bound`` and the mapping, attribution and
counters. In functional modes the result is also checked against an integer (int8) or float64 reference.
"""

from __future__ import annotations

import math
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
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import Program
from mtiasim.kernels.common import Region
from mtiasim.kernels.gemm import DPE_DTYPES, VARIANTS, choose_mapping, gemm_job
from mtiasim.runtime.bounds import accumulation_bound, bound_check, stored_bound

DEFAULT_OUT = {DType.INT8: DType.INT8, DType.FP16: DType.FP16, DType.BF16: DType.BF16}


def int8_out_scale(k: int) -> float:
    """The output quantization scale (accumulator units per int8 step) that maps +-3 sigma of a K-long dot
    product of uniform int8 onto int8."""
    sigma = (128.0**2 / 3.0) * math.sqrt(k)
    return 3.0 * sigma / 127.0


def bench_gemm(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return prepare_gemm(*args, **kwargs).run()


def prepare_gemm(
    m: int,
    k: int,
    n: int,
    dtype: str = "int8",
    placement: str = "sram",
    chip: str | Chip = "mtia-v1",
    fidelity: str = "event",
    mode: str = "timing",
    out_dtype: str | None = None,
    variant: str = "auto",
    seed: int = 0,
) -> Prepared:
    m, k, n = positive("m", m), positive("k", k), positive("n", n)
    seed = check_seed(seed)
    dt = DType.parse(dtype, "--dtype")
    if dt not in DPE_DTYPES:
        raise UsageError(f"--dtype: the DPE multiplies int8, fp16 or bf16, not {dtype}")
    if variant not in (*VARIANTS, "auto"):
        raise UsageError(f"--variant: unknown GEMM variant {variant!r} (known: auto, {', '.join(VARIANTS)})")
    lvl, cached = level(placement, dram_cached=True)
    check_run(mode, fidelity)
    chip_ = resolve_chip(chip)
    odt = DType.parse(out_dtype, "--out-dtype") if out_dtype else DEFAULT_OUT[dt]
    allowed = (DType.INT8, DType.INT32) if dt == DType.INT8 else (dt, DType.FP32)
    if odt not in allowed:
        raise UsageError(
            f"--out-dtype: a {dt.value} GEMM writes {' or '.join(a.value for a in allowed)}, not {odt.value}"
        )
    plan = memory_plan(chip_)
    a = plan.add("A", (m, k), dt, lvl, cached=cached)
    w = plan.add("W", (n, k), dt, lvl, cached=cached)
    c = plan.add("C", (m, n), odt, lvl, cached=cached)
    scale = int8_out_scale(k) if odt == DType.INT8 else None
    mapping = choose_mapping(chip_, m, k, n, dt, odt, (lvl, lvl), Region.whole(chip_), variant, cached)
    job = gemm_job(chip_, "gemm", a, w, c, out_scale=scale, mapping=mapping)
    program = Program(f"gemm {m}x{k}x{n} {dt.value}", plan.tensors, [job])
    inputs: dict[str, np.ndarray] = {}
    if mode != "timing":
        rng = np.random.default_rng(seed)
        if dt == DType.INT8:
            inputs = {
                "A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                "W": rng.integers(-128, 128, (n, k), dtype=np.int8),
            }
        else:
            inputs = {
                "A": rng.standard_normal((m, k)).astype(dt.numpy),
                "W": rng.standard_normal((n, k)).astype(dt.numpy),
            }

    def summarize(result) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "gemm",
            "m": m,
            "k": k,
            "n": n,
            "dtype": dt.value,
            "out_dtype": odt.value,
        }
        out["placement"] = placement
        out["sram_cache"] = cached
        out.update(base_fields(chip_, mode, fidelity))
        out.update(timing_fields(result, chip_))
        macs = float(m) * n * k
        out["macs"] = macs
        out["tops"] = 2 * macs / out["seconds"] / 1e12 if out["seconds"] else None
        out["mapping"] = mapping.describe()
        if result.outputs is not None:
            out["check"] = _check(inputs, result.outputs["C"], dt, odt, scale)
        return out

    return Prepared(chip_, program, inputs, mode, fidelity, summarize)


def _check(inputs, got: np.ndarray, dt: DType, odt: DType, scale: float | None) -> dict[str, Any]:
    a, w = inputs["A"], inputs["W"]
    if dt == DType.INT8:
        # float64 BLAS is exact here (every partial sum is an integer below 2**53) and fast
        acc = (a.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64)
        # the RE converts the int32 sum to fp32 and multiplies by the fp32 reciprocal of the scale
        recip = np.float32(1.0 / scale) if scale else np.float32(1)
        ref = np.clip(np.rint(acc.astype(np.float32) * recip), -128, 127) if odt == DType.INT8 else acc
        err = float(np.abs(got.astype(np.int64) - ref.astype(np.int64)).max())
        return {
            "reference": "exact integer matmul (+ round half even, saturate)",
            "max_abs_err": err,
            "passed": err == 0.0,
        }
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    ref = a64 @ w64.T
    # docs/numerics.md: exact products, FP32 accumulation (K-split partials), the output stored as odt
    e = accumulation_bound(np.abs(a64) @ np.abs(w64).T, a.shape[1])
    return bound_check(got, ref, stored_bound(e, np.abs(ref), odt), "float64 matmul, numerics bound")
