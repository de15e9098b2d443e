"""`mtiasim bench tbe`: a table-batched EmbeddingBag over int8 tables in FBGEMM's layout.

Defaults follow ISCA'23's set-up where it is known: 8-bit rows, LPDDR5 tables reached through the SRAM in cache
mode, fixed pooling, uniform indices (Glow's TBEBench draws them uniformly). What the paper does not say is
assumed: one table (`DEFAULT_TABLES`), and a throughput measurement: `DEFAULT_JOBS` batches (more where two jobs
need more), each with its own indices, and the steady-state time per batch is reported. TBEBench keeps several launches in flight
(`numAsyncLaunches`): the PEs run the queued launches' kernels one after another, each PE going on with its
next bags without waiting for the whole grid or a new launch. That is modelled as `in_flight` batches
(`LAUNCHES_IN_FLIGHT` by default; the paper does not give it) in one job: one launch and one end of job per
`in_flight` batches, the row buffer and each PE's pipeline running on from one batch to the next. The SRAM
cache starts in the steady state of the index distribution (``warm="distribution"``), or warm with the first
batch itself (``"same"``), or cold.

JSON: ``seconds`` (per batch), ``gbps`` = bytes of embedding rows read (lookups x (dim + 4)) / seconds,
``lookups`` (per batch), ``cache_hit_rate``, ``bound``; the attribution and the counters are per batch too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtiasim.bench.cache_state import steady_state_lines
from mtiasim.bench.core import (
    LAUNCHES_IN_FLIGHT,
    Prepared,
    base_fields,
    check_run,
    check_seed,
    memory_plan,
    positive,
    resolve_chip,
    timing_fields,
)
from mtiasim.dtypes import DType
from mtiasim.engine.numerics import fbgemm_rows_dequantize, fbgemm_rows_quantize
from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.indices import IndexDistribution, draw_indices, fixed_lengths, offsets_from_lengths
from mtiasim.isa import Level, PoolMode, Program
from mtiasim.kernels.tbe import tbe_job

DEFAULT_TABLES = 1
DEFAULT_JOBS = 8
TBE_PLACEMENTS = ("cache", "sram", "dram")
WARM = ("distribution", "same", "cold")
FUNCTIONAL_TABLE_LIMIT_BYTES = 2 << 30


def bench_tbe(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return prepare_tbe(*args, **kwargs).run()


def prepare_tbe(
    batch: int,
    pooling: int,
    rows: int,
    dim: int,
    tables: int = DEFAULT_TABLES,
    placement: str = "cache",
    distribution: str = "uniform",
    alpha: float = 1.05,
    weighted: bool = False,
    pool_mode: str = "sum",
    warm: str = "distribution",
    chip: str | Chip = "mtia-v1",
    fidelity: str = "event",
    mode: str = "timing",
    seed: int = 0,
    jobs: int = DEFAULT_JOBS,
    in_flight: int = LAUNCHES_IN_FLIGHT,
) -> Prepared:
    batch, dim = positive("batch", batch), positive("dim", dim, 1 << 16)
    seed = check_seed(seed)
    rows, tables = positive("rows", rows, 1 << 34), positive("tables", tables, 4096)
    pooling, jobs = positive("pooling", pooling, 1 << 16), positive("jobs", jobs, 1024)
    # the batches of the launches in flight run as one job, of `per_job` batches stacked into one; a
    # throughput measurement (jobs > 1) needs two jobs at least, whose completions' spacing it reports
    per_job = min(positive("in-flight", in_flight, 1024), jobs)
    n_jobs = max(jobs // per_job, 2 if jobs > 1 else 1)
    if placement not in TBE_PLACEMENTS:
        raise UsageError(
            f"--placement: unknown TBE placement {placement!r} (known: {', '.join(TBE_PLACEMENTS)})"
        )
    if warm not in WARM:
        raise UsageError(f"--warm: unknown cache warm-up {warm!r} (known: {', '.join(WARM)})")
    try:
        pmode = PoolMode(pool_mode)
    except ValueError:
        known = ", ".join(m.value for m in PoolMode)
        raise UsageError(f"--pool-mode: unknown pooling {pool_mode!r} (known: {known})") from None
    if weighted and pmode == PoolMode.MAX:
        raise UsageError("--weighted: per-sample weights need --pool-mode sum or mean, not max")
    dist = IndexDistribution(distribution, alpha)
    check_run(mode, fidelity)
    chip_ = resolve_chip(chip)
    row_bytes = dim + 4
    plan = memory_plan(chip_)
    lvl = Level.SRAM if placement == "sram" else Level.DRAM
    table_rows = [rows] * tables
    table = plan.add("tables", (rows * tables, row_bytes), DType.UINT8, lvl, cached=placement == "cache")
    samples = batch * per_job  # a job's samples: its batches one after another
    lengths = fixed_lengths(tables, samples, pooling)
    offsets = offsets_from_lengths(lengths)
    n_idx = int(offsets[-1])
    starts = np.concatenate([[0], np.cumsum(table_rows)[:-1]]).astype(np.int64)
    row_start = np.repeat(starts, lengths.reshape(tables, samples).sum(axis=1))
    # one job per `per_job` batches, back to back, each batch with its own indices (fresh requests)
    job_list, job_indices, names = [], [], []
    rng = np.random.default_rng((seed, 2))
    inputs: dict[str, np.ndarray] = {}
    for j in range(n_jobs):
        sfx = f"#{j}" if n_jobs > 1 else ""
        names.append(sfx)
        idx = plan.add("indices" + sfx, (n_idx,), DType.INT32, Level.SRAM)
        wts = plan.add("weights" + sfx, (n_idx,), DType.FP32, Level.SRAM) if weighted else None
        out = plan.add("out" + sfx, (samples, tables * dim), DType.FP16, Level.SRAM)
        job_list.append(
            tbe_job(
                chip_,
                "tbe" + sfx,
                table,
                idx,
                out,
                offsets=offsets,
                table_rows=table_rows,
                batch=samples,
                dim=dim,
                mode=pmode,
                weights=wts,
            )
        )
        ind = draw_indices(table_rows, lengths, samples, dist, (seed, 0, j))
        job_indices.append(ind)
        inputs["indices" + sfx] = ind.astype(np.int32)
        if weighted:
            inputs["weights" + sfx] = rng.random(n_idx, dtype=np.float32)
    program = Program(f"tbe B{batch} L{pooling} R{rows} D{dim} T{tables}", plan.tensors, job_list)
    if placement == "cache" and warm == "same":
        program.cache_history[table.name] = job_indices[0] + row_start
    elif placement == "cache" and warm == "distribution":
        sram_used = sum(t.nbytes for t in plan.tensors.values() if t.level == Level.SRAM)
        line = chip_.sram.cache_line_bytes
        # LRU per set keeps each set's most recent lines: draw the recency list of twice the capacity, so
        # that every set finds its ways' worth of lines in it (the engine keeps the newest of each set)
        program.cache_state = steady_state_lines(
            table, table_rows, dist, 2 * ((chip_.sram.bytes - sram_used) // line), line, (seed, 1)
        )
    if mode != "timing":
        if table.nbytes > FUNCTIONAL_TABLE_LIMIT_BYTES:
            raise UsageError(
                f"functional TBE needs the whole {table.nbytes / 2**30:.1f} GiB table in memory "
                f"(limit {FUNCTIONAL_TABLE_LIMIT_BYTES / 2**30:.0f} GiB): lower --rows or --tables, or use --mode timing"
            )
        inputs["tables"] = fbgemm_rows_quantize(rng.standard_normal((rows * tables, dim)).astype(np.float32))

    def summarize(result) -> dict[str, Any]:
        res: dict[str, Any] = {
            "kind": "tbe",
            "batch": batch,
            "pooling": pooling,
            "rows": rows,
            "dim": dim,
            "tables": tables,
            "placement": placement,
            "distribution": distribution,
            "pool_mode": pmode.value,
            "weighted": weighted,
        }
        res.update(base_fields(chip_, mode, fidelity))
        res.update(_per_batch(timing_fields(result, chip_), per_job))
        res["lookups"] = n_idx // per_job
        res["row_bytes_read"] = float(n_idx // per_job * row_bytes)
        res["gbps"] = n_idx * row_bytes / per_job / res["seconds"] / 1e9 if res["seconds"] else None
        counters = res.get("counters", {})
        if counters.get("gathered_rows"):
            res["cache_hit_rate"] = counters.get("cache_hit_rows", 0.0) / counters["gathered_rows"]
        if result.outputs is not None:
            sfx = names[-1]
            rows_read = job_indices[-1] + row_start
            res["check"] = _check(
                inputs, sfx, result.outputs["out" + sfx], rows_read, lengths, tables, samples, dim, pmode
            )
        return res

    return Prepared(chip_, program, inputs, mode, fidelity, summarize)


def _per_batch(fields: dict[str, Any], per_job: int) -> dict[str, Any]:
    """The timing fields of a job of `per_job` batches, per batch (seconds, attribution, counters)."""
    out = dict(fields)
    if out.get("seconds") is not None:
        out["seconds"] = out["seconds"] / per_job
    for key in ("attribution_us", "attribution_detail_us"):
        if key in out:
            out[key] = {k: round(v / per_job, 4) for k, v in out[key].items()}
    if "counters" in out:
        out["counters"] = {k: v / per_job for k, v in out["counters"].items()}
    out["batches_per_job"] = per_job
    return out


def _check(inputs, sfx, got, rows, lengths, tables, batch, dim, mode) -> dict[str, Any]:
    """The pooled rows (fp16, see `out` above) against float64 pooling of the same dequantized rows."""
    from mtiasim.runtime.bounds import (  # torch: functional runs only
        accumulation_bound,
        bound_check,
        stored_bound,
    )

    vals = fbgemm_rows_dequantize(inputs["tables"][rows], dim).astype(np.float64)
    if "weights" + sfx in inputs:
        vals = vals * inputs["weights" + sfx].astype(np.float64)[:, None]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ref = np.zeros((tables * batch, dim))  # an empty bag pools to zeros in every mode
    nz = lengths > 0
    if mode == PoolMode.MAX:
        ref[nz] = np.maximum.reduceat(vals, starts[nz], axis=0)
    else:
        ref[nz] = np.add.reduceat(vals, starts[nz], axis=0)
    if mode == PoolMode.MEAN:
        ref[nz] /= lengths[nz, None]
    ref = ref.reshape(tables, batch, dim).transpose(1, 0, 2).reshape(batch, tables * dim)
    # docs/numerics.md: rows dequantized in FP32 (exact here: the reference uses the same values), summed in
    # FP32 in bag order, stored as the output dtype
    if mode == PoolMode.MAX:
        e = np.zeros_like(ref)
    else:
        mags = np.zeros((tables * batch, dim))
        if nz.any():
            mags[nz] = np.add.reduceat(np.abs(vals), starts[nz], axis=0)
        if mode == PoolMode.MEAN:
            mags[nz] /= lengths[nz, None]
        mags = mags.reshape(tables, batch, dim).transpose(1, 0, 2).reshape(batch, tables * dim)
        e = accumulation_bound(mags, int(lengths.max(initial=0)))
    return bound_check(got, ref, stored_bound(e, np.abs(ref), DType.FP16), "float64 dequantize + pool")
