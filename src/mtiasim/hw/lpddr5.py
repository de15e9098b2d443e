"""LPDDR5 channel timing from the device parameters of the preset (JESD209-5 class).

One channel moves whole bursts (BL16 x 16 bit = 32 B) on its data bus. An access whose page is not open needs a
row activation: the channel starts at most one per max(tRRD, tFAW / 4), each bank one per tRC = tRAS + tRP, and
these overlap the bus, so a stream's channel time is the largest of its bus, activation and bank times. All-bank
refresh takes tRFC out of every tREFI; writes pay a read->write and a write->read bus turnaround per batch the
controller drains. Stream efficiency, random-access rate and row-hit behaviour all follow from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtiasim.hw.chip import Chip
from mtiasim.hw.peaks import dram_channel_bytes_per_s


@dataclass(frozen=True)
class DramTiming:
    """An LPDDR5 channel's costs, derived from the device parameters (JESD209-5 class) in the preset."""

    rate: float  # peak data rate of one channel, bytes/s
    burst_s: float  # data-bus time of one burst (BL16 x 16 bit = 32 B)
    act_s: float  # the least channel time per activation: max(tRRD, tFAW / 4)
    rc_s: float  # a bank's row cycle tRC = tRAS + tRP
    banks: int
    refresh: float  # channel time / useful time under all-bank refresh: 1 / (1 - tRFC / tREFI)
    turnaround_s: float  # per written burst: a read->write and a write->read turnaround per drained batch

    def seconds(
        self, bursts: np.ndarray, activations: np.ndarray, write: bool = False, banks: float | None = None
    ) -> np.ndarray:
        """Channel time of `bursts` burst bytes needing `activations` row activations: the bus, the
        activation rate and the banks' row cycles overlap, so the largest of them counts; refresh stretches
        it, and writes add their share of bus turnarounds."""
        n_bursts = np.asarray(bursts, dtype=np.float64) / self.burst_bytes
        acts = np.asarray(activations, dtype=np.float64)
        bank_s = self.rc_s / float(banks if banks else self.banks)
        t = np.maximum(n_bursts * self.burst_s, acts * max(self.act_s, bank_s))
        if write:
            t = t + n_bursts * self.turnaround_s
        return t * self.refresh

    @property
    def burst_bytes(self) -> float:
        return self.burst_s * self.rate

    def efficiency(self, burst_runs: float, write: bool = False) -> float:
        """Fraction of the peak a stream of accesses of `burst_runs` bursts, each opening a row, reaches."""
        b = np.array([burst_runs * self.burst_bytes])
        return float(burst_runs * self.burst_s / self.seconds(b, np.array([1.0]), write)[0])

    def run_bytes_per_s(self, run_bytes: float, channels: int, interleave_bytes: int) -> float:
        """What a stream of `run_bytes`-long accesses, each opening a row on its channel, gets from all
        channels (a run is cut at the interleave granule; every piece is an access of its own)."""
        piece = max(1.0, min(float(run_bytes), float(interleave_bytes)))
        bursts = float(np.ceil(piece / self.burst_bytes))
        return (
            channels * piece / float(self.seconds(np.array([bursts * self.burst_bytes]), np.array([1.0]))[0])
        )


def dram_timing(chip: Chip) -> DramTiming:
    d = chip.dram
    rate = dram_channel_bytes_per_s(chip)
    return DramTiming(
        rate=rate,
        burst_s=d.burst_bytes / rate,
        act_s=max(d.t_rrd_ns, d.t_faw_ns / 4) * 1e-9,
        rc_s=(d.t_ras_ns + d.t_rp_ns) * 1e-9,
        banks=d.banks_per_channel,
        refresh=1.0 / (1.0 - d.t_rfc_ns / d.t_refi_ns),
        turnaround_s=(d.read_to_write_ns + d.write_to_read_ns) * 1e-9 / d.write_batch,
    )
