"""Up-front limits of `run_workload`: the ranges of its integer arguments and the host memory a run would need.

A run that cannot finish should fail in a second with one line saying why, not after minutes of simulation or
by exhausting the host's memory. `check_host_memory` estimates the peak resident memory of a run from the
workload's shape (lookups and dense features per sample, materialized tables) and compares it with what the
host can give: MemAvailable of /proc/meminfo (and the cgroup's memory.max, in a container) plus what this
process already holds, or the cap `MTIASIM_MEMORY_LIMIT_GB` when it is set.

The estimate is calibrated on peak RSS measured with ``/usr/bin/time -v`` (x86-64 Linux, CPython 3.11,
torch 2.x; see the constants below) and errs on the high side: 1.4 to 2 times the measured peaks. Where the
host has more than MemAvailable says (or less), `MTIASIM_MEMORY_LIMIT_GB` sets the limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from mtiasim.errors import UsageError

MAX_BATCH = 1 << 20  # samples per batch
MAX_WARMUP = 1000  # warm-up batches
LIMIT_ENV = "MTIASIM_MEMORY_LIMIT_GB"
PROBE_BATCH = 64  # samples of the small build the estimate reads the workload's shape from

# peak RSS = BASE_BYTES + batch x (BAG_BYTES x tables + LOOKUP_BYTES x lookups + DENSE_BYTES x dense features
#                                  + DIM_BYTES x sum of embedding dims)
#   functional runs (--check, --mode both|functional) add TABLE_FACTOR x the materialized fp32 tables
#   + batch x (FUNCTIONAL_BAG_BYTES x tables + FUNCTIONAL_FLOP_BYTES x flops per sample).
# Fitted on peak RSS over the batch-1 run (/usr/bin/time -v), per sample, timing mode at batch 65536:
#   dlrm-kaggle 25.1 KB, dlrm-terabyte-10M 31.4 KB, dlrm-v2-mlperf 66.8 KB, dlrm-random-bench 106.8 KB;
#   --check at batch 16384: dlrm-kaggle 117 KB, dlrm-random-bench 190 KB, dlrm-v2-mlperf 1.13 MB, and at
#   batch 1 about 6-7x the materialized tables. The constants are the fits plus about 30 %.
BASE_BYTES = 1 << 30  # python, torch, torchrec, the compiled program (measured 0.39-0.61 GB at batch 1)
BAG_BYTES = 950  # per bag (sample x table): offsets, pooled rows, per-bag bookkeeping of the simulator
LOOKUP_BYTES = 200  # per lookup: index streams and their copies, the SRAM cache simulation
DENSE_BYTES = 110  # per dense input feature (the input, its quantized copy, the first layer's work)
DIM_BYTES = 8  # per embedding dim of a sample's pooled rows
TABLE_FACTOR = 8  # materialized fp32 tables, their int8 copies and the functional engine's working set
FUNCTIONAL_BAG_BYTES = 4300  # per bag, functional: gathered rows and their float copies
FUNCTIONAL_FLOP_BYTES = 0.043  # per flop of a sample, functional: the activations of both the chip and torch


def int_arg(flag: str, value: object, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi], or a UsageError naming `flag`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UsageError(f"{flag}: expected an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        valid = f">= {lo}" if hi is None else f"from {lo} to {hi:,}"
        raise UsageError(f"{flag}: must be {valid}, got {v:,}")
    return v


@dataclass(frozen=True)
class MemoryEstimate:
    need_bytes: int  # estimated peak resident memory of the run
    limit_bytes: int | None  # what the host can give this process (None: unknown, not checked)
    limit_source: str  # how the limit was found, for the message

    @property
    def fits(self) -> bool:
        return self.limit_bytes is None or self.need_bytes <= self.limit_bytes


def estimate_host_bytes(
    name: str,
    *,
    batch: int,
    seed: int = 0,
    max_rows: int | None = None,
    functional: bool = False,
    distribution: str = "uniform",
) -> int:
    """The estimated peak resident memory (bytes) of `run_workload(name, batch=batch, ...)`.

    The workload's shape comes from a build of `PROBE_BATCH` samples with virtual tables and no dense weights
    (cheap); its mean lookups per sample are scaled to `batch`.
    """
    from mtiasim import workloads

    probe = workloads.build(
        name,
        batch=min(batch, PROBE_BATCH),
        seed=seed,
        max_rows=max_rows,
        distribution=distribution,
        dense_weights=False,
    )
    dense = probe.example_inputs[0]
    features = int(dense.shape[1]) if getattr(dense, "ndim", 0) == 2 else 0
    per_sample = (
        BAG_BYTES * probe.tables
        + LOOKUP_BYTES * probe.lookups_per_sample
        + DENSE_BYTES * features
        + DIM_BYTES * sum(probe.embedding_dims)
    )
    if functional:
        per_sample += FUNCTIONAL_BAG_BYTES * probe.tables + FUNCTIONAL_FLOP_BYTES * probe.flops_per_sample
    need = BASE_BYTES + batch * per_sample
    if functional:
        need += TABLE_FACTOR * probe.table_bytes_fp32
    return int(need)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), if it has a limit."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            rel = next((ln.split(":", 2)[2].strip() for ln in fh if ln.startswith("0::")), None)
        if rel is None:
            return None
        folder = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(folder, "memory.max"), encoding="ascii") as fh:
            top = fh.read().strip()
        if top == "max":
            return None
        with open(os.path.join(folder, "memory.current"), encoding="ascii") as fh:
            return max(0, int(top) - int(fh.read().strip()))
    except (OSError, ValueError, IndexError):
        return None


def _own_rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def host_memory_limit() -> tuple[int | None, str]:
    """(bytes this process may grow to, how that was found); (None, ...) when the host does not say."""
    cap = os.environ.get(LIMIT_ENV)
    if cap:
        try:
            gb = float(cap)
        except ValueError:
            gb = float("nan")
        if not (math.isfinite(gb) and gb > 0):
            raise UsageError(f"{LIMIT_ENV}={cap!r}: expected a number of GB > 0")
        return int(gb * 1e9), f"{LIMIT_ENV}"
    free = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not free:
        return None, "unknown"
    return _own_rss() + min(free), "available"


def check_host_memory(
    name: str,
    *,
    batch: int,
    seed: int = 0,
    max_rows: int | None = None,
    functional: bool = False,
    distribution: str = "uniform",
) -> MemoryEstimate:
    """Refuse (UsageError) a run whose estimated peak memory exceeds what the host can give; else the estimate."""
    need = estimate_host_bytes(
        name, batch=batch, seed=seed, max_rows=max_rows, functional=functional, distribution=distribution
    )
    limit, source = host_memory_limit()
    est = MemoryEstimate(need, limit, source)
    if not est.fits:
        assert limit is not None
        what = "lower --max-rows or use a smaller batch" if functional and max_rows else "use a smaller batch"
        if source != LIMIT_ENV:
            what += f" (or set {LIMIT_ENV} to override the limit)"
        raise UsageError(
            f"--batch {batch}: {name} would need about {need / 1e9:.1f} GB of host memory "
            f"(limit {limit / 1e9:.1f} GB {source}); {what}"
        )
    return est
