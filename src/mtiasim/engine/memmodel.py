"""Where the bytes of an access pattern land, and what they cost there.

Addresses are interleaved across the SRAM slices and across the LPDDR5 channels in fixed granules, the target
chosen by an XOR-fold of the granule index (as memory systems hash to keep strided streams from piling onto one
slice; the hash is assumed, the interleaving published). A run of
contiguous bytes is cut at granule boundaries; each piece occupies its slice or channel:

- an SRAM slice moves whole access granules, so a short or misaligned run costs more than its bytes;
- an LPDDR5 channel moves whole bursts, and every switch to another DRAM page costs a row activation
  (``activate_ns`` of channel time that bank parallelism does not hide); a long stream also loses
  ``1 - stream_efficiency`` to refresh and bus turnarounds.

Inputs are samples of runs (start address, length) in access order, with the factor that scales them to the
whole pattern; outputs are effective bytes per slice or channel.
"""

from __future__ import annotations

import numpy as np

from mtiasim.hw import Chip
from mtiasim.hw.peaks import dram_channel_bytes_per_s


def _pieces(
    starts: np.ndarray, lengths: np.ndarray, granule: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut runs at granule boundaries: (granule index, piece start, piece end) per piece, in order."""
    starts = starts.astype(np.int64)
    ends = starts + lengths.astype(np.int64)
    g0 = starts // granule
    g1 = (ends - 1) // granule
    counts = (g1 - g0 + 1).clip(min=0)
    total = int(counts.sum())
    if total == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    run_of = np.repeat(np.arange(starts.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    g = g0[run_of] + (np.arange(total) - first)
    p0 = np.maximum(starts[run_of], g * granule)
    p1 = np.minimum(ends[run_of], (g + 1) * granule)
    return g, p0, p1


def hashed_target(granule: np.ndarray, n: int) -> np.ndarray:
    """XOR-fold the granule index into [0, n) (n a power of two; otherwise plain modulo)."""
    g = np.asarray(granule, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(g)
    if n & (n - 1):
        return g % n
    bits = n.bit_length() - 1
    h = np.zeros_like(g)
    while True:
        h ^= g & (n - 1)
        g = g >> bits
        if not g.any():
            return h


def sram_slice_bytes(
    chip: Chip, starts: np.ndarray, lengths: np.ndarray, scale: float, granule: int | None = None
) -> np.ndarray:
    """Effective bytes per SRAM slice (rounded to access granules, or to cache lines in cache mode) for the
    sampled runs, scaled to the whole."""
    s = chip.sram
    g, p0, p1 = _pieces(starts, lengths, s.interleave_bytes)
    out = np.zeros(s.slices, dtype=np.float64)
    if g.size:
        a = granule or s.access_bytes
        eff = (-(-p1 // a) - p0 // a) * a
        np.add.at(out, hashed_target(g, s.slices), eff.astype(np.float64))
    return out * scale


def dram_channel_parts(
    chip: Chip, starts: np.ndarray, lengths: np.ndarray, scale: float, random_rows: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(burst bytes, activations alone, activations interleaved) per LPDDR5 channel, scaled to the whole.

    Alone, a stream keeps a page open while its next accesses stay in it (activations = page changes in the
    stream's own order on each channel). Interleaved with many other streams, every access opens each page it
    touches (a page left open is closed by others before the stream comes back). The timing engine blends the
    two by how many streams share the memory. `random_rows` accesses (embedding rows, cache fills) are
    independent: both counts are per access.
    """
    d = chip.dram
    g, p0, p1 = _pieces(starts, lengths, d.interleave_bytes)
    zeros = np.zeros(d.channels, dtype=np.float64)
    if not g.size:
        return zeros, zeros.copy(), zeros.copy()
    channel = hashed_target(g, d.channels)
    local = (g // d.channels) * d.interleave_bytes + (p0 % d.interleave_bytes)
    page = local // d.page_bytes
    b = d.burst_bytes
    bursts = np.zeros(d.channels, dtype=np.float64)
    np.add.at(bursts, channel, ((-(-p1 // b) - p0 // b) * b).astype(np.float64))
    # interleaved: each access (run) opens every (channel, page) it touches once
    new_run = np.ones(g.size, dtype=bool)
    new_run[1:] = p0[1:] != p1[:-1]
    run = np.cumsum(new_run)
    key = (run.astype(np.int64) * d.channels + channel) * (int(page.max()) + 1) + page
    _u, first = np.unique(key, return_index=True)
    interleaved = np.bincount(channel[first], minlength=d.channels).astype(np.float64)
    if random_rows:
        alone = interleaved
    else:
        order = np.argsort(channel, kind="stable")
        ch_sorted, pg_sorted = channel[order], page[order]
        new = np.ones(g.size, dtype=bool)
        new[1:] = (ch_sorted[1:] != ch_sorted[:-1]) | (pg_sorted[1:] != pg_sorted[:-1])
        alone = np.bincount(ch_sorted[new], minlength=d.channels).astype(np.float64)
    return bursts * scale, alone * scale, np.maximum(interleaved, alone) * scale


def row_hit_survival(chip: Chip, streams: int) -> float:
    """Chance that a stream's open page is still open when it returns, with `streams` streams sharing the
    channels' banks (each other stream's access in between lands on a random bank)."""
    return (1.0 - 1.0 / chip.dram.banks_per_channel) ** max(0, streams - 1)


def dram_effective_bytes(chip: Chip, bursts: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """Channel time expressed in bytes: bursts plus activation time, divided by the stream efficiency."""
    d = chip.dram
    act_bytes = d.activate_ns * 1e-9 * dram_channel_bytes_per_s(chip)
    return (bursts + activations * act_bytes) / d.stream_efficiency


def dram_channel_bytes(
    chip: Chip,
    starts: np.ndarray,
    lengths: np.ndarray,
    scale: float,
    random_rows: bool = False,
    streams: int = 1,
) -> np.ndarray:
    """Effective channel bytes (bursts + activation time + stream losses) per LPDDR5 channel."""
    bursts, alone, interleaved = dram_channel_parts(chip, starts, lengths, scale, random_rows)
    keep = row_hit_survival(chip, streams)
    return dram_effective_bytes(chip, bursts, alone + (interleaved - alone) * (1 - keep))
