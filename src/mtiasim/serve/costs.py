"""What one batch costs on one card, from the engine: the workload compiled for a bucket batch size and run
through `mtiasim.run.workload.run_workload` (full-size virtual tables, one warm-up batch of other requests, then
the measured batch), cached per bucket in this process.

A batch of n samples is padded up to the smallest bucket that holds it (buckets: powers of two from
`MIN_BUCKET` to the largest batch) and costs what that bucket costs: the engine's latency of the compiled batch
size, never an interpolation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mtiasim.errors import UsageError
from mtiasim.hw import Chip
from mtiasim.power import power_report

MIN_BUCKET = 256


@dataclass(frozen=True)
class BatchCost:
    """One compiled batch size on one card."""

    batch: int
    host_s: float  # the host's part of the call (index bookkeeping, packing), on one host core
    device_s: float  # the device program
    h2d_bytes: int  # inputs across PCIe
    d2h_bytes: int  # outputs back
    card_dynamic_j: float  # the card's energy for the call above what it draws idle over the same time
    simulator_s: float  # what the engine run took here (compile, warm-up, run)


def buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two from MIN_BUCKET up to `max_batch` (itself a power of two, at least MIN_BUCKET)."""
    if max_batch < MIN_BUCKET or max_batch & (max_batch - 1):
        raise UsageError(f"--max-batch {max_batch}: must be a power of two >= {MIN_BUCKET}")
    out, b = [], MIN_BUCKET
    while b <= max_batch:
        out.append(b)
        b *= 2
    return tuple(out)


C = TypeVar("C")  # what one bucket's cost is


class BucketCosts(Generic[C]):
    """A cost per bucket batch size, computed by `_run` on first use and kept; the engine settings every bucket
    shares. `BatchCosts` (the whole model on one card) and `serve.sharded.ShardedCosts` fill in `_run`."""

    def __init__(
        self,
        workload: str,
        chip: Chip,
        *,
        precision: str,
        fidelity: str,
        seed: int,
        max_batch: int,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.workload = workload
        self.chip = chip
        self.precision = precision
        self.fidelity = fidelity
        self.seed = seed
        self.buckets = buckets(max_batch)
        self.progress = progress
        self._cache: dict[int, C] = {}
        # what a card draws doing nothing: static chip power through its regulators, LPDDR5 background, board
        self.idle_card_w = power_report(chip, {}, 1.0).card_power_w

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, samples: int) -> int:
        for b in self.buckets:
            if samples <= b:
                return b
        raise UsageError(f"a batch of {samples} samples is above the largest bucket ({self.max_batch})")

    def cost(self, bucket: int) -> C:
        if bucket not in self._cache:
            self._cache[bucket] = self._run(bucket)
        return self._cache[bucket]

    @property
    def computed(self) -> dict[int, C]:
        return dict(sorted(self._cache.items()))

    def _run(self, batch: int) -> C:
        raise NotImplementedError


class BatchCosts(BucketCosts[BatchCost]):
    """The engine's cost of the whole model at each bucket (a replicated model: one card runs a batch)."""

    def _run(self, batch: int) -> BatchCost:
        from mtiasim.run.workload import run_workload

        if self.progress is not None:
            self.progress(f"engine: batch {batch}")
        res = run_workload(
            self.workload,
            batch=batch,
            chip=self.chip,
            precision=self.precision,
            fidelity=self.fidelity,
            seed=self.seed,
            warmup=1,
        )
        return batch_cost(batch, res, self.idle_card_w, sum(res["simulator_s"].values()))


def batch_cost(batch: int, res: dict, idle_card_w: float, simulator_s: float) -> BatchCost:
    """A run's JSON (`CompiledModel.report.to_json()`, as `run_workload` returns it) as a BatchCost."""
    latency_s = res["latency_us"] * 1e-6
    # serving times the host CPU and the PCIe transfers itself: the card's share is the rest of the timeline
    busy = res["host_busy_us"]
    host_s = busy["host_cpu"] * 1e-6
    return BatchCost(
        batch=batch,
        host_s=host_s,
        device_s=latency_s - host_s - (busy["host_link_in"] + busy["host_link_out"]) * 1e-6,
        h2d_bytes=int(res["h2d_bytes"]),
        d2h_bytes=int(res["d2h_bytes"]),
        card_dynamic_j=max(0.0, res["card_energy_j"] - idle_card_w * latency_s),
        simulator_s=simulator_s,
    )
