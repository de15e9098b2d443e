"""`mtiasim bench gemm`: one FC/GEMM ``C[M, N] = A[M, K] @ W[N, K].T`` on the chip.

Launches in flight. Glow's GemmBench keeps `numAsyncLaunches` launches in flight, each with a new execution
context: its own input A and output C, while the weights W are constants loaded once with the network. The
benchmark places them in that order: A, W and C of the first launch where asked (an error if they do not fit),
then each further launch's A and C, in the SRAM's scratchpad while they fit and otherwise in LPDDR5, reached
through the SRAM in cache mode (whose capacity is what the scratchpad leaves). The launches run one after
another; those placed alike take the same time, so one job per placement is simulated and ``seconds`` is the
mean time per launch (`in_flight`: `LAUNCHES_IN_FLIGHT` by default, as for TBE; not published). ``launches``
lists the placements, how many launches each has and its time.

The FC has a bias (`bias`), as GemmBench's and Int8GemmBench's do: a [1, N] constant in the accumulator's type
(int32 for int8), resident with W, so it takes its bytes of the scratchpad. Its add is not simulated: v1's FC
kernel preloads it into the reduction engine's accumulators (ISCA'23), taken as free; `gemm_job`'s bias
stream (one DMA command per output block) would cost a compute-bound FC ~4 % of its time, which the fits of
the calibrated constants reject (docs/memory.md §4).

JSON: ``seconds``, ``tops`` (2*M*N*K / seconds / 1e12), ``macs``, ``bound`` and the mapping, attribution and
counters. In functional modes the result is also checked against an integer (int8) or float64 reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mtiasim.bench.core import (
    LAUNCHES_IN_FLIGHT,
    Prepared,
    base_fields,
    check_run,
    check_seed,
    job_spans_s,
    level,
    memory_plan,
    positive,
    resolve_chip,
    timing_fields,
)
from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.isa import Level, MemoryPlan, Program, TensorDecl
from mtiasim.kernels.common import Region
from mtiasim.kernels.gemm import DPE_DTYPES, VARIANTS, choose_mapping, gemm_job

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
    in_flight: int = LAUNCHES_IN_FLIGHT,
    bias: bool = True,
) -> Prepared:
    m, k, n = positive("m", m), positive("k", k), positive("n", n)
    in_flight = positive("in-flight", in_flight, 1024)
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
    # GemmBench's FC has a bias: a constant [N] vector in the accumulator's type, loaded with W
    acc = DType.INT32 if dt == DType.INT8 else DType.FP32
    if bias:
        plan.add("bias", (1, n), acc, lvl, cached=cached)
    contexts = [(a, c)] + [
        (_place(plan, f"A@{i}", (m, k), dt, lvl, cached), _place(plan, f"C@{i}", (m, n), odt, lvl, cached))
        for i in range(1, in_flight)
    ]
    scale = int8_out_scale(k) if odt == DType.INT8 else None
    groups: dict[tuple[str, ...], list[tuple[TensorDecl, TensorDecl]]] = {}
    for ctx in contexts:
        groups.setdefault(tuple(_where(t) for t in ctx), []).append(ctx)
    jobs, launches, mappings = [], [], []
    for key, members in groups.items():
        ga, gc = members[0]
        mapping = choose_mapping(chip_, m, k, n, dt, odt, (ga.level, w.level), Region.whole(chip_), variant,
                                 ga.cached or w.cached)  # fmt: skip
        name = "gemm" if not jobs else f"gemm (A {key[0]}, C {key[1]})"
        jobs.append(gemm_job(chip_, name, ga, w, gc, out_scale=scale, mapping=mapping))
        launches.append(len(members))
        mappings.append(mapping)
    program = Program(f"gemm {m}x{k}x{n} {dt.value}", plan.tensors, jobs)
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
        if bias:
            inputs["bias"] = np.zeros((1, n), dtype=acc.numpy)  # resident; its add is not simulated
        # every launch multiplies the same input
        inputs.update({ga.name: inputs["A"] for ga, _ in (members[0] for members in groups.values())})

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
        out["in_flight"] = in_flight
        out["bias"] = bias
        out.update(timing_fields(result, chip_, launches if len(jobs) > 1 else None))
        macs = float(m) * n * k
        out["macs"] = macs
        out["tops"] = 2 * macs / out["seconds"] / 1e12 if out["seconds"] else None
        out["mapping"] = mappings[0].describe()
        out["launches"] = _launches(groups, mappings, result)
        if result.outputs is not None:
            out["check"] = _check(inputs, result.outputs["C"], dt, odt, scale)
        return out

    return Prepared(chip_, program, inputs, mode, fidelity, summarize)


def _place(
    plan: MemoryPlan, name: str, shape: tuple[int, int], dt: DType, lvl: Level, cached: bool
) -> TensorDecl:
    """A further launch's tensor: where the first launch's is while it fits there, else LPDDR5 through the SRAM
    cache."""
    if lvl == Level.SRAM and not plan.fits(lvl, shape[0] * shape[1] * dt.itemsize):
        return plan.add(name, shape, dt, Level.DRAM, cached=True)
    return plan.add(name, shape, dt, lvl, cached=cached)


def _where(t: TensorDecl) -> str:
    return t.level.value + (" (cache)" if t.cached else "")


def _launches(groups, mappings, result) -> list[dict[str, Any]]:
    """Per placement of the launches in flight: the placement, how many launches, the mapping and the time of
    its job (the spacing of its completion from the previous job's)."""
    out = []
    spans = job_spans_s(result)
    for i, ((wa, wc), members) in enumerate(groups.items()):
        row: dict[str, Any] = {"a": wa, "c": wc, "launches": len(members), "mapping": mappings[i].describe()}
        if spans:
            row["seconds"] = spans[i]
        out.append(row)
    return out


def _check(inputs, got: np.ndarray, dt: DType, odt: DType, scale: float | None) -> dict[str, Any]:
    from mtiasim.runtime.bounds import (  # torch: functional runs only
        accumulation_bound,
        bound_check,
        stored_bound,
    )

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
