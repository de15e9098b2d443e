"""The timing model's construction: vectorized pieces equal their per-tile definitions, kept sums stay fresh (issue 11).

`isa.memory.stream_runs` builds the runs of all sampled tiles at once and `stream_bytes` sums clipped tiles in
closed form; `memmodel.hashed_target` folds a known number of times and `_pieces` passes one-granule runs
through. Each is checked here, on generated tensors and tile streams, against the definition written out
tile by tile (loops over the tile origins), exactly; so are the SRAM slice bytes of many streams measured in one
pass (against each stream's runs cut one by one), loop samples and a gather's cache lines. A flow's bundle sums,
kept with its `Work` across a compiled model's calls, must not outlive the jobs that change from call to call
(checked with a planted stale cache).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine.memmodel import _fold_table, _pieces, hashed_target, tile_slice_bytes
from mtiasim.hw import load_chip
from mtiasim.isa.memory import (
    Level,
    TensorDecl,
    TileLoop,
    TileStream,
    stream_bytes,
    stream_runs,
    tile_runs,
)

DTYPES = (DType.INT8, DType.FP16, DType.FP32)


@st.composite
def streams(draw) -> tuple[TensorDecl, TileStream]:
    rows = draw(st.integers(1, 200))
    cols = draw(st.integers(1, 200))
    dtype = draw(st.sampled_from(DTYPES))
    pad = draw(st.sampled_from((0, 0, 8, 96)))  # packed rows, or a row pitch with padding
    pitch = cols * dtype.itemsize + pad if pad else None
    decl = TensorDecl(
        "T", (rows, cols), dtype, Level.SRAM, draw(st.integers(0, 1 << 20)), row_pitch_bytes=pitch
    )
    tile = (draw(st.integers(1, 80)), draw(st.sampled_from((cols, *range(1, 81)))))
    dims = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("row", "col", "both", "none")))
        dr = draw(st.integers(-tile[0], 2 * tile[0])) if kind in ("row", "both") else 0
        dc = draw(st.integers(-tile[1], 2 * tile[1])) if kind in ("col", "both") else 0
        dims.append((draw(st.integers(1, 12)), dr, dc))
    base = (draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1)))
    return decl, TileStream("T", tile, TileLoop(base, tuple(dims)))


def runs_by_tile(decl: TensorDecl, stream: TileStream, sample: np.ndarray) -> tuple[list[int], list[int]]:
    """The runs of the tiles at `sample` origins, one tile at a time: a tile covering whole rows of a packed
    tensor is one run, any other tile one run per row."""
    item = decl.dtype.itemsize
    starts, lengths = [], []
    for r0, c0 in sample.tolist():
        nr = max(0, min(r0 + stream.tile[0], decl.rows) - r0)
        nc = max(0, min(c0 + stream.tile[1], decl.cols) - c0)
        if nr == 0:
            continue
        base = decl.address + r0 * decl.pitch + c0 * item
        if nc == decl.cols and decl.contiguous:
            starts.append(base)
            lengths.append(nr * nc * item)
        else:
            starts += [base + i * decl.pitch for i in range(nr)]
            lengths += [nc * item] * nr
    return starts, lengths


@settings(max_examples=300)
@given(streams(), st.sampled_from((4, 16, 256)))
def test_stream_runs_match_tile_by_tile(case, max_tiles):
    decl, stream = case
    runs = stream_runs(decl, stream, max_sample_tiles=max_tiles)
    sample, scale = stream.loop.sample(max_tiles)
    starts, lengths = runs_by_tile(decl, stream, sample)
    assert runs.sample_starts.tolist() == starts
    assert runs.sample_lengths.tolist() == lengths
    assert runs.sample_scale == scale
    assert runs.bytes == float(sum(lengths)) * scale
    assert runs.n_runs == float(len(lengths)) * scale


@settings(max_examples=300)
@given(streams())
def test_stream_bytes_match_tile_by_tile(case):
    decl, stream = case
    total = 0
    for r0, c0 in stream.loop.origins().tolist():
        nr = max(0, min(r0 + stream.tile[0], decl.rows) - r0)
        nc = max(0, min(c0 + stream.tile[1], decl.cols) - c0)
        total += nr * nc
    assert stream_bytes(decl, stream) == total * decl.dtype.itemsize


@given(streams(), st.sampled_from((1, 4, 16, 256)))
def test_loop_sample_is_the_loop_written_out(case, max_tiles):
    """Origins in loop order (the innermost loop fastest); a longer loop is sampled at evenly spread indices."""
    _decl, stream = case
    lp = stream.loop
    origins = [lp.base]
    for count, dr, dc in lp.dims:
        origins = [(r + i * dr, c + i * dc) for r, c in origins for i in range(count)]
    sample, scale = lp.sample(max_tiles)
    if len(origins) > max_tiles:
        pick = np.linspace(0, len(origins) - 1, max_tiles).round().astype(np.int64).tolist()
        assert sample.tolist() == [list(origins[i]) for i in pick] and scale == len(origins) / max_tiles
    else:
        assert sample.tolist() == [list(o) for o in origins] and scale == 1.0
    assert lp.origins().tolist() == [list(o) for o in origins]


CHIP = load_chip("mtia-v1")


def slice_bytes_run_by_run(decl: TensorDecl, stream: TileStream, max_tiles: int) -> np.ndarray:
    """SRAM slice bytes of a stream's sampled runs, cut one run at a time at interleave granules: each piece
    moves whole access granules on the slice its granule hashes to (the runs alone, scaled to the stream)."""
    s = CHIP.sram
    sample, scale = stream.loop.sample(max_tiles)
    starts, lengths = runs_by_tile(decl, stream, sample)
    out = np.zeros(s.slices)
    for start, n in zip(starts, lengths, strict=True):
        g = start // s.interleave_bytes
        while g <= (start + n - 1) // s.interleave_bytes:  # a zero-length run inside a granule is a piece
            p0, p1 = max(start, g * s.interleave_bytes), min(start + n, (g + 1) * s.interleave_bytes)
            eff = (-(-p1 // s.access_bytes) - p0 // s.access_bytes) * s.access_bytes
            out[int(fold(np.array([g]), s.slices)[0])] += eff
            g += 1
    return out * scale


@st.composite
def placed_streams(draw) -> tuple[TensorDecl, TileStream]:
    """`streams` whose tiles start at row and column 0 or after (as resolve checks), the tensor anywhere in the
    SRAM or past its end."""
    decl, stream = draw(streams())
    lp = stream.loop
    low = [sum(min(0, (n - 1) * step[k]) for n, *step in lp.dims) for k in (0, 1)]
    base = (lp.base[0] - low[0], lp.base[1] - low[1])
    top = CHIP.sram.bytes
    address = draw(
        st.sampled_from((draw(st.integers(0, 1 << 20)), top - (1 << 14) + draw(st.integers(0, 99))))
    )
    decl = TensorDecl(
        decl.name, decl.shape, decl.dtype, decl.level, address, row_pitch_bytes=decl.row_pitch_bytes
    )
    return decl, TileStream(stream.tensor, stream.tile, TileLoop(base, lp.dims))


@settings(max_examples=200)
@given(st.lists(placed_streams(), min_size=1, max_size=6), st.sampled_from((4, 256)))
def test_tile_slice_bytes_equal_each_stream_run_by_run(cases, max_tiles):
    """All streams in one pass (runs a multiple of the granules apart cut once, their pieces repeated) equal
    each stream's runs cut one by one, exactly."""
    got = tile_slice_bytes(CHIP, tile_runs(cases, max_tiles))
    for row, (decl, stream) in zip(got, cases, strict=True):
        assert row.tolist() == slice_bytes_run_by_run(decl, stream, max_tiles).tolist()


@given(st.sampled_from((2, 4, 16, 64, 12)), st.integers(1, 5000))
def test_fold_table_is_hashed_target(n, size):
    g = np.arange(size, dtype=np.int64)
    assert _fold_table(n, size).tolist() == hashed_target(g, n).tolist()


def fold(g: np.ndarray, n: int) -> np.ndarray:
    """XOR of the base-n digits of every granule index, digit by digit until none is left."""
    out = []
    for x in g.tolist():
        h = x % n
        while x >= n:
            x //= n
            h ^= x % n
        out.append(h)
    return np.array(out, dtype=np.int64)


@given(st.lists(st.integers(0, 1 << 40), max_size=50), st.sampled_from((2, 4, 16, 64)))
def test_hashed_target_folds_every_digit(granules, n):
    g = np.array(granules, dtype=np.int64)
    assert hashed_target(g, n).tolist() == fold(g, n).tolist()


@given(
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 700)), max_size=40), st.sampled_from((64, 256))
)
def test_pieces_cut_runs_at_granules(runs, granule):
    starts = np.array([s for s, _ in runs], dtype=np.int64)
    lengths = np.array([n for _, n in runs], dtype=np.int64)
    want = []
    for s, n in runs:
        g = s // granule
        while True:  # a zero-length run inside a granule is a piece of its own, at a boundary none
            if g > (s + n - 1) // granule:
                break
            want.append((g, max(s, g * granule), min(s + n, (g + 1) * granule)))
            g += 1
    g, p0, p1 = _pieces(starts, lengths, granule)
    assert list(zip(g.tolist(), p0.tolist(), p1.tolist(), strict=True)) == want


def test_stale_bundle_sums_across_calls_are_caught(monkeypatch):
    """A flow's bundle sums are kept with its `Work`, which a compiled model reuses only for jobs that do not
    change. Planted bug: sums kept per compiled model by the flows' node ids (the per-call gathers keep their
    ids while their rows change): the calls no longer equal fresh models."""
    from tests.test_compile_once import _calls_match_fresh_models

    from mtiasim.engine import timing

    def by_node(self, mem, channels):
        key = ("bundle sums", tuple(p.key for i in mem for p in self.works[i].parts))
        kept = self.memo.works  # one dict per compiled model, across its calls
        if key not in kept:
            kept[key] = timing._bundle_sums([self.works[i] for i in mem], channels)
        return kept[key]

    assert _calls_match_fresh_models()
    monkeypatch.setattr(timing.TimingModel, "_flow_sums", by_node)
    assert not _calls_match_fresh_models()


@given(
    st.integers(0, 1 << 16),
    st.integers(1, 300),
    st.sampled_from((0, 4, 64)),
    st.lists(st.integers(0, 99), max_size=40),
    st.sampled_from((64, 128)),
)
def test_row_lines_are_each_rows_lines_in_order(address, cols, pad, rows, line):
    """The cache lines a gather's rows touch, row after row (a grid of rows that all touch as many lines, or a
    ragged one), against the lines of each row written out."""
    from mtiasim.engine.work import _row_lines

    decl = TensorDecl("E", (100, cols), DType.INT8, Level.DRAM, address, row_pitch_bytes=cols + pad)
    want_lines, want_rows = [], []
    for pos, r in enumerate(rows):
        start = address + r * decl.pitch
        for ln in range(start // line, (start + cols - 1) // line + 1):
            want_lines.append(ln)
            want_rows.append(pos)
    lines, row_pos = _row_lines(decl, np.array(rows, dtype=np.int64), line)
    assert lines.tolist() == want_lines and row_pos.tolist() == want_rows
