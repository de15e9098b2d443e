"""Where the bytes of an access pattern land, and what they cost there.

Addresses are interleaved across the SRAM slices and across the LPDDR5 channels in fixed granules, the target
chosen by an XOR-fold of the granule index (as memory systems hash to keep strided streams from piling onto one
slice; the hash is assumed, the interleaving published). A run of contiguous bytes is cut at granule
boundaries; each piece occupies its slice or channel:

- an SRAM slice moves whole access granules, so a short or misaligned run costs more than its bytes;
- in cache mode the slices cache the addresses of their own memory controller (ISCA'23: 4 slices per
  controller), so a line's slice is one of the 4 on the side of its LPDDR5 channel;
- an LPDDR5 channel is timed from the device's JESD209-5 parameters (`DramTiming`): the data bus moves whole
  bursts; a piece whose page is not open needs a row activation, and the channel can start at most one
  activation per max(tRRD, tFAW / 4), each bank one per tRC = tRAS + tRP; all-bank refresh takes tRFC out of
  every tREFI; writes pay the read/write bus turnarounds once per batch the controller drains. A stream's
  channel time is the largest of its bus, activation and bank times (they overlap), plus refresh and
  turnarounds: efficiency, random-access rate and row-hit behaviour follow from these, nothing is fitted.

Inputs are samples of runs (start address, length) in access order, with the factor that scales them to the
whole pattern; outputs are effective bytes per slice or channel (channel time x the channel's peak rate).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mtiasim.hw import Chip
from mtiasim.hw.lpddr5 import DramTiming, dram_timing
from mtiasim.isa.memory import TileRuns

__all__ = ["DramTiming", "dram_timing"]


def _pieces(
    starts: np.ndarray, lengths: np.ndarray, granule: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut runs at granule boundaries: (granule index, piece start, piece end) per piece, in order."""
    g, p0, p1, _run_of = _cut(starts, lengths, granule)
    return g, p0, p1


def _cut(
    starts: np.ndarray, lengths: np.ndarray, granule: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """`_pieces`, and the run of every piece (None where every run is one piece)."""
    starts = starts.astype(np.int64)
    ends = starts + lengths.astype(np.int64)
    g0 = starts // granule
    g1 = (ends - 1) // granule
    if starts.size and (g1 == g0).all():  # every run inside one granule: the runs are the pieces
        return g0, starts, ends, None
    counts = (g1 - g0 + 1).clip(min=0)
    total = int(counts.sum())
    if total == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z
    run_of = np.repeat(np.arange(starts.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    g = g0[run_of] + (np.arange(total) - first)
    p0 = np.maximum(starts[run_of], g * granule)
    p1 = np.minimum(ends[run_of], (g + 1) * granule)
    return g, p0, p1, run_of


def hashed_target(granule: np.ndarray, n: int) -> np.ndarray:
    """XOR-fold the granule index into [0, n) (n a power of two; otherwise plain modulo)."""
    g = np.asarray(granule, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(g)
    if n & (n - 1):
        return g % n
    bits = n.bit_length() - 1
    # one fold per `bits` bits of the largest granule (at least one)
    top = int(g.max()) if g.size else 0
    h = g & (n - 1)
    for _ in range(1, max(1, -(-top.bit_length() // bits))):
        g = g >> bits
        h ^= g & (n - 1)
    return h


def sram_slice_bytes(
    chip: Chip, starts: np.ndarray, lengths: np.ndarray, scale: float, granule: int | None = None
) -> np.ndarray:
    """Effective bytes per SRAM slice (rounded to access granules) for the sampled runs of a scratchpad
    tensor, scaled to the whole."""
    s = chip.sram
    g, p0, p1 = _pieces(starts, lengths, s.interleave_bytes)
    if not g.size:
        return np.zeros(s.slices, dtype=np.float64)
    eff = _access_bytes(p0, p1, granule or s.access_bytes)
    return np.bincount(hashed_target(g, s.slices), weights=eff.astype(np.float64), minlength=s.slices) * scale


SLICE_PASS_ACCESSES = 1 << 16  # granule accesses `tile_slice_bytes` takes per pass (its arrays stay in cache)


def tile_slice_bytes(chip: Chip, tiles: TileRuns) -> np.ndarray:
    """`sram_slice_bytes` of every stream of `tiles` (one row of slices per stream). Runs a whole number of
    interleave and access granules apart are cut alike: a group of them (`_aligned_groups`) cuts its first run
    only and repeats its pieces that many granules further on for the others. Each row equals the stream's
    runs cut one by one (effective bytes are whole access granules, whose sums are exact in any order)."""
    s = chip.sram
    slices_out = np.zeros(tiles.scale.size * s.slices, dtype=np.float64)
    first, pitch, runs, tile = _aligned_groups(tiles, math.lcm(s.interleave_bytes, s.access_bytes))
    g, p0, p1, piece_of = _cut(first, tiles.run_bytes[tile], s.interleave_bytes)
    group = np.arange(first.size) if piece_of is None else piece_of
    eff = _access_bytes(p0, p1, s.access_bytes).astype(np.float64)
    granule_step = pitch[group] // s.interleave_bytes
    bin0 = tiles.stream_of()[tile[group]] * s.slices
    repeats = runs[group]
    for r in np.unique(repeats).tolist():
        if r == 0:
            continue
        k = np.arange(r, dtype=np.int64)
        at = np.nonzero(repeats == r)[0]
        per_pass = max(1, SLICE_PASS_ACCESSES // r)
        for lo in range(0, at.size, per_pass):
            sel = at[lo : lo + per_pass]
            granules = g[sel][:, None] + granule_step[sel][:, None] * k[None, :]
            bins = _slice_target(chip, granules) + bin0[sel][:, None]
            slices_out += np.bincount(
                bins.reshape(-1), weights=np.repeat(eff[sel], r), minlength=slices_out.size
            )
    return slices_out.reshape(-1, s.slices) * tiles.scale[:, None]


def _aligned_groups(tiles: TileRuns, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tiles' runs in groups whose runs lie a multiple of `step` bytes apart: a tile whose pitch is not one
    splits into q = step / gcd(pitch, step) groups, of its runs j, j + q, j + 2q... (at most one group per
    run). Per group: its first run's start, the bytes between its runs, its runs, its tile."""
    q = step // np.gcd(tiles.pitch, step)
    groups = np.minimum(q, tiles.runs)
    tile = np.repeat(np.arange(groups.size), groups)
    j = np.arange(tile.size, dtype=np.int64) - np.repeat(np.cumsum(groups) - groups, groups)
    q_t, pitch_t = q[tile], tiles.pitch[tile]
    first = tiles.first[tile] + j * pitch_t
    runs = (tiles.runs[tile] - j + q_t - 1) // q_t
    return first, q_t * pitch_t, runs, tile


def _access_bytes(p0: np.ndarray, p1: np.ndarray, access: int) -> np.ndarray:
    """Bytes an SRAM slice moves for the pieces [p0, p1): whole access granules."""
    return (-(-p1 // access) - p0 // access) * access


def _slice_target(chip: Chip, granule: np.ndarray) -> np.ndarray:
    """`hashed_target` of SRAM granules onto the slices, looked up in a table of the whole SRAM's granules."""
    s = chip.sram
    size = s.bytes // s.interleave_bytes
    if granule.size and (granule.min() < 0 or granule.max() >= size):
        return hashed_target(granule, s.slices)
    return _fold_table(s.slices, size)[granule]


@functools.lru_cache(maxsize=8)
def _fold_table(n: int, size: int) -> np.ndarray:
    """`hashed_target(g, n)` of every granule g below `size`. For n a power of two, built digit by digit: the
    fold of q * n + d is the fold of q XOR d."""
    if n <= 1 or n & (n - 1):
        table = hashed_target(np.arange(size, dtype=np.int64), n)
    else:
        small = np.min_scalar_type(n - 1)  # a small table: quick to build, kept in cache when looked up
        table = np.zeros(1, dtype=small)
        digits = np.arange(n, dtype=small)
        while table.size < size:
            table = (table[:, None] ^ digits[None, :]).reshape(-1)
        table = table[:size].copy()
    table.setflags(write=False)
    return table


def cache_slice(chip: Chip, address: np.ndarray) -> np.ndarray:
    """The cache slice that holds an LPDDR5 address: one of the `cache_slices_per_controller` slices of the
    controller (grid side) its channel belongs to, chosen by a hash of the address above the channel bits."""
    s, d = chip.sram, chip.dram
    g = np.asarray(address, dtype=np.int64) // d.interleave_bytes
    channel = hashed_target(g, d.channels)
    per = s.cache_slices_per_controller
    controllers = s.slices // per
    side = channel * controllers // d.channels
    return side * per + hashed_target(g // d.channels, per)


def cache_slice_bytes(chip: Chip, starts: np.ndarray, lengths: np.ndarray, scale: float) -> np.ndarray:
    """Bytes per cache slice of runs read or written through the SRAM cache: every line a run touches is read
    from (or written into) its slice whole."""
    line = chip.sram.cache_line_bytes
    lines, _ = run_lines(starts, lengths, line)
    n = chip.sram.slices
    if not lines.size:
        return np.zeros(n, dtype=np.float64)
    return np.bincount(cache_slice(chip, lines * line), minlength=n).astype(np.float64) * float(line) * scale


def run_lines(starts: np.ndarray, lengths: np.ndarray, line: int) -> tuple[np.ndarray, np.ndarray]:
    """Line ids touched by each run, in order (a run straddling a line boundary touches both lines), and the
    run each line access belongs to."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = starts + np.asarray(lengths, dtype=np.int64)
    l0, l1 = starts // line, (ends - 1) // line
    counts = (l1 - l0 + 1).clip(min=0)
    run_of = np.repeat(np.arange(starts.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    lines = l0[run_of] + (np.arange(int(counts.sum())) - first)
    return lines.astype(np.int64), run_of


# ------------------------------------------------------------------------------------------------ LPDDR5


def dram_location(chip: Chip, address: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel, bank, page) of LPDDR5 addresses: the channel by the XOR-hashed interleave granule, then the
    channel-local address mapped row:bank:column (the bank optionally XOR-hashed with the row bits)."""
    d = chip.dram
    a = np.asarray(address, dtype=np.int64)
    g = a // d.interleave_bytes
    channel = hashed_target(g, d.channels)
    local = (g // d.channels) * d.interleave_bytes + a % d.interleave_bytes
    page = local // d.page_bytes
    bank = page % d.banks_per_channel
    if d.bank_hash == "xor":
        bank = hashed_target(page, d.banks_per_channel)
    return channel, bank, page


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
    channel, _bank, page = dram_location(chip, p0)
    b = d.burst_bytes
    bursts = np.bincount(
        channel, weights=((-(-p1 // b) - p0 // b) * b).astype(np.float64), minlength=d.channels
    )
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


def dram_transactions(chip: Chip, starts: np.ndarray, lengths: np.ndarray, scale: float) -> np.ndarray:
    """Transactions per LPDDR5 channel: each piece of a run on a channel is cut into transactions of at most
    `transaction_bytes` (a shorter piece is a transaction of its own), scaled to the whole."""
    d = chip.dram
    g, p0, p1 = _pieces(starts, lengths, d.interleave_bytes)
    if not g.size:
        return np.zeros(d.channels, dtype=np.float64)
    t = d.transaction_bytes
    n = -(-(p1 - p0) // t)
    return (
        np.bincount(hashed_target(g, d.channels), weights=n.astype(np.float64), minlength=d.channels) * scale
    )


def row_hit_survival(chip: Chip, streams: int) -> float:
    """Chance that a stream's open page is still open when it returns, with `streams` streams sharing the
    channels' banks (each other stream's access in between lands on a random bank)."""
    return (1.0 - 1.0 / chip.dram.banks_per_channel) ** max(0, streams - 1)


def dram_effective_bytes(
    chip: Chip,
    bursts: np.ndarray,
    activations: np.ndarray,
    write: bool = False,
    banks: float | None = None,
) -> np.ndarray:
    """Channel time (bus, activations, row cycles, refresh, turnarounds) expressed in bytes at the channel's
    peak rate."""
    t = dram_timing(chip)
    return t.seconds(bursts, activations, write, banks) * t.rate


def dram_channel_bytes(
    chip: Chip,
    starts: np.ndarray,
    lengths: np.ndarray,
    scale: float,
    random_rows: bool = False,
    streams: int = 1,
    write: bool = False,
) -> np.ndarray:
    """Effective channel bytes per LPDDR5 channel of a pattern sharing the memory with `streams` streams."""
    bursts, alone, interleaved = dram_channel_parts(chip, starts, lengths, scale, random_rows)
    keep = row_hit_survival(chip, streams)
    return dram_effective_bytes(chip, bursts, alone + (interleaved - alone) * (1 - keep), write)
