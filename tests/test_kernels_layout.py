"""Data movement and views: concat, copy, column gather, 2-D transpose, row-broadcast elementwise, casts, and
aliases (column windows, reshapes) shared by several jobs, against torch."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine import _memory, execute
from mtiasim.engine.resolve import resolve
from mtiasim.engine.timing import TimingModel
from mtiasim.errors import UsageError
from mtiasim.hw import load_chip
from mtiasim.indices import offsets_from_lengths
from mtiasim.isa import DmaIn, DmaOut, Level, MemoryPlan, Program, RowFormat, SeOp
from mtiasim.kernels.bmm import bmm_job
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import elementwise_job
from mtiasim.kernels.gemm import gemm_job
from mtiasim.kernels.layout import column_runs, concat_job, copy_job, gather_columns_job, transpose_job
from mtiasim.kernels.tbe import tbe_job

CHIP = load_chip("mtia-v1")
TORCH = {DType.FP16: torch.float16, DType.BF16: torch.bfloat16, DType.FP32: torch.float32}
regions = st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4)])


def plan():
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def run(tensors, jobs, inputs, mode="functional"):
    return execute(Program("t", tensors, list(jobs)), CHIP, mode=mode, inputs=inputs)


def as_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == DType.BF16.numpy:
        return torch.from_numpy(a.view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def as_numpy(t: torch.Tensor, dt: DType) -> np.ndarray:
    if dt == DType.BF16:
        return t.view(torch.int16).numpy().view(np.uint16).view(DType.BF16.numpy)
    return t.numpy()


# ------------------------------------------------------------------------------------------- elementwise


@given(
    st.tuples(st.integers(1, 200), st.integers(1, 300)),
    st.sampled_from(["add", "mul"]),
    st.sampled_from([DType.FP16, DType.FP32]),
    regions,
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_row_broadcast_binary_ops(shape, op, dt, region, seed):
    rng = np.random.default_rng(seed)
    x_np = (rng.standard_normal(shape) * 3).astype(dt.numpy)
    y_np = (rng.standard_normal((1, shape[1])) * 3).astype(np.float32)
    p = plan()
    x, y = p.add("X", shape, dt, Level.SRAM), p.add("Y", (1, shape[1]), DType.FP32, Level.SRAM)
    out = p.add("O", shape, dt, Level.SRAM)
    got = run(
        p.tensors, [elementwise_job(CHIP, op, SeOp(op), x, out, y=y, region=region)], {"X": x_np, "Y": y_np}
    )
    tx, ty = torch.from_numpy(x_np.astype(np.float32)), torch.from_numpy(y_np)
    ref = (tx + ty if op == "add" else tx * ty).to(TORCH[dt]).numpy()
    assert np.array_equal(got.outputs["O"], ref)


def test_row_broadcast_rereads_when_its_row_does_not_fit():
    # one PE, a 40000-wide fp32 row: its pieces do not fit the local store, one is re-read per tile
    shape = (9, 40000)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal(shape).astype(np.float32)
    y_np = rng.standard_normal((1, shape[1])).astype(np.float32)
    p = plan()
    x, y = p.add("X", shape, DType.FP32, Level.SRAM), p.add("Y", (1, shape[1]), DType.FP32, Level.SRAM)
    out = p.add("O", shape, DType.FP32, Level.SRAM)
    job = elementwise_job(CHIP, "add", SeOp.ADD, x, out, y=y, region=Region(0, 0, 1, 1))
    se = next(c for c in job.pes[(0, 0)].cores[1] if hasattr(c, "src2_period"))
    assert se.src2_period == 0
    res = run(p.tensors, [job], {"X": x_np, "Y": y_np}, mode="both")
    assert np.array_equal(res.outputs["O"], x_np + y_np)


def test_row_broadcast_reads_the_row_once_per_pe():
    shape = (4096, 512)
    p = plan()
    x, out = p.add("X", shape, DType.FP16, Level.SRAM), p.add("O", shape, DType.FP16, Level.SRAM)
    full, row = p.add("F", shape, DType.FP16, Level.SRAM), p.add("R", (1, 512), DType.FP16, Level.SRAM)
    bcast = execute(
        Program("b", p.tensors, [elementwise_job(CHIP, "b", SeOp.ADD, x, out, y=row)]), CHIP
    ).timing
    same = execute(
        Program("s", p.tensors, [elementwise_job(CHIP, "s", SeOp.ADD, x, out, y=full)]), CHIP
    ).timing
    x_bytes = math.prod(shape) * 2
    # every PE reads the pieces of its own columns once
    assert bcast.counters["sram_read_bytes"] <= x_bytes + CHIP.n_pes * 512 * 2
    assert same.counters["sram_read_bytes"] == 2 * x_bytes
    assert bcast.seconds <= same.seconds


FLOATS = [DType.FP16, DType.BF16, DType.FP32]


@given(
    st.tuples(st.integers(1, 150), st.integers(1, 200)),
    st.sampled_from(FLOATS),
    st.sampled_from(FLOATS),
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_float_casts_round_to_nearest_even(shape, src, dst, seed):
    rng = np.random.default_rng(seed)
    # values around the rounding points of every format, plus large and tiny magnitudes
    x32 = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 5, shape)).astype(np.float32)
    x_np = as_numpy(torch.from_numpy(x32).to(TORCH[src]), src)
    p = plan()
    x, out = p.add("X", shape, src, Level.SRAM), p.add("O", shape, dst, Level.SRAM)
    got = run(p.tensors, [elementwise_job(CHIP, "cast", SeOp.CAST, x, out)], {"X": x_np}).outputs["O"]
    ref = as_numpy(as_torch(x_np).to(TORCH[dst]), dst)
    assert got.dtype == dst.numpy and np.array_equal(got.view(np.uint8), ref.view(np.uint8))


@given(st.tuples(st.integers(1, 150), st.integers(1, 200)), st.sampled_from(FLOATS), st.integers(0, 1000))
@settings(max_examples=20)
def test_static_quantize(shape, src, seed):
    rng = np.random.default_rng(seed)
    x_np = as_numpy(torch.from_numpy((rng.standard_normal(shape) * 5).astype(np.float32)).to(TORCH[src]), src)
    p = plan()
    x, q = p.add("X", shape, src, Level.SRAM), p.add("Q", shape, DType.INT8, Level.SRAM)
    job = elementwise_job(CHIP, "q", SeOp.QUANTIZE, x, q, scale=0.037, zero_point=-5)
    got = run(p.tensors, [job], {"X": x_np}).outputs["Q"]
    tx = as_torch(x_np).float()
    ref = torch.clamp(torch.round(tx / torch.tensor(0.037, dtype=torch.float32)) - 5, -128, 127).to(
        torch.int8
    )
    assert np.array_equal(got, ref.numpy())


# -------------------------------------------------------------------------------------------------- layout


@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=6),
    st.integers(1, 200),
    st.sampled_from([(), (3,)]),
    regions,
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_concat_of_many_inputs(widths, rows, lead, region, seed):
    rng = np.random.default_rng(seed)
    lead = (*lead, rows)
    xs_np = [rng.standard_normal((*lead, w)).astype(np.float16) for w in widths]
    p = plan()
    xs = [p.add(f"X{i}", a.shape, DType.FP16, Level.SRAM) for i, a in enumerate(xs_np)]
    out = p.add("O", (*lead, sum(widths)), DType.FP16, Level.DRAM)
    res = run(
        p.tensors, [concat_job(CHIP, "c", xs, out, region=region)], {f"X{i}": a for i, a in enumerate(xs_np)}
    )
    assert np.array_equal(res.outputs["O"], torch.cat([torch.from_numpy(a) for a in xs_np], dim=-1).numpy())


def test_concat_keeps_its_two_input_form():
    p = plan()
    x, y = (
        p.add("X", (256, 128, 32), DType.FP16, Level.DRAM),
        p.add("Y", (256, 128, 32), DType.FP16, Level.DRAM),
    )
    o = p.add("O", (256, 128, 64), DType.FP16, Level.DRAM)
    old, new = concat_job(CHIP, "c", x, y, o), concat_job(CHIP, "c", [x, y], o)
    assert old.pes == new.pes and old.work == new.work
    with pytest.raises(
        UsageError, match=r"^c: concat of \(256, 128, 32\), \(256, 128, 32\) along the last dim"
    ):
        concat_job(CHIP, "c", [x, y], x)


def test_concat_of_more_inputs_than_buffers():
    rng = np.random.default_rng(4)
    widths = [int(w) for w in rng.integers(1, 40, 21)]
    xs_np = [rng.standard_normal((33, w)).astype(np.float32) for w in widths]
    p = plan()
    xs = [p.add(f"X{i}", a.shape, DType.FP32, Level.SRAM) for i, a in enumerate(xs_np)]
    out = p.add("O", (33, sum(widths)), DType.FP32, Level.SRAM)
    job = concat_job(CHIP, "c", xs, out)
    assert all(len(prog.cbs) <= CHIP.local_memory.max_circular_buffers for prog in job.pes.values())
    res = run(p.tensors, [job], {f"X{i}": a for i, a in enumerate(xs_np)}, mode="both")
    assert np.array_equal(res.outputs["O"], np.concatenate(xs_np, axis=1))


@given(
    st.integers(1, 150),
    st.integers(1, 120),
    st.integers(0, 30),
    st.integers(0, 30),
    regions,
    st.integers(0, 999),
)
@settings(max_examples=25)
def test_copy_between_column_windows(rows, width, left, right, region, seed):
    rng = np.random.default_rng(seed)
    src_np = rng.standard_normal((rows, left + width + right)).astype(np.float32)
    p = plan()
    src = p.add("S", src_np.shape, DType.FP32, Level.SRAM)
    dst = p.add("D", (rows, right + width + 3), DType.FP32, Level.SRAM)
    sw = p.alias("sw", src, (rows, width), col_offset=left)
    dw = p.alias("dw", dst, (rows, width), col_offset=right)
    res = run(p.tensors, [copy_job(CHIP, "copy", sw, dw, region=region)], {"S": src_np}, mode="both")
    expect = np.zeros(dst.shape, np.float32)
    expect[:, right : right + width] = src_np[:, left : left + width]
    assert np.array_equal(res.outputs["D"], expect)
    assert np.array_equal(res.outputs["dw"], src_np[:, left : left + width])


def lower_triangle(n: int) -> list[int]:
    """Strictly lower triangle of an n x n matrix, row-major (DLRM's dot interaction)."""
    return [i * n + j for i in range(n) for j in range(i)]


def test_column_runs_of_dlrm_interaction():
    runs = column_runs(lower_triangle(27))
    assert len(runs) == 26 and [w for _s, _d, w in runs] == list(range(1, 27))


@given(
    st.integers(1, 200),
    st.integers(1, 300),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=80),
    regions,
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_gather_columns(rows, cols, picks, region, seed):
    rng = np.random.default_rng(seed)
    columns = [c % cols for c in picks]
    x_np = rng.standard_normal((rows, cols)).astype(np.float16)
    p = plan()
    x, out = (
        p.add("X", (rows, cols), DType.FP16, Level.SRAM),
        p.add("O", (rows, len(columns)), DType.FP16, Level.SRAM),
    )
    job = gather_columns_job(CHIP, "g", x, out, columns, region=region)
    res = run(p.tensors, [job], {"X": x_np})
    assert np.array_equal(res.outputs["O"], torch.from_numpy(x_np)[:, torch.tensor(columns)].numpy())


def test_gather_columns_commands_do_not_grow_with_rows():
    cols = lower_triangle(27)
    for batch in (64, 4096):
        p = plan()
        x, out = (
            p.add("X", (batch, 729), DType.FP16, Level.SRAM),
            p.add("O", (batch, 351), DType.FP16, Level.SRAM),
        )
        job = gather_columns_job(CHIP, "g", x, out, cols)
        dmas = sum(
            isinstance(c, DmaIn | DmaOut) for prog in job.pes.values() for core in prog.cores for c in core
        )
        assert dmas <= 2 * (CHIP.n_pes + 26)  # about 2 x max(PEs, runs), however many rows


@given(
    st.integers(1, 300), st.integers(1, 300), st.sampled_from([DType.FP16, DType.FP32, DType.INT8]), regions
)
@settings(max_examples=25)
def test_transpose_2d_ragged(m, n, dt, region):
    rng = np.random.default_rng(m * 1000 + n)
    x_np = rng.integers(-100, 100, (m, n)).astype(dt.numpy)
    p = plan()
    x, xt = p.add("X", (m, n), dt, Level.SRAM), p.add("XT", (n, m), dt, Level.DRAM)
    res = run(p.tensors, [transpose_job(CHIP, "t", x, xt, region=region)], {"X": x_np}, mode="both")
    assert np.array_equal(res.outputs["XT"], x_np.T)


# ------------------------------------------------------------------------------------------------- aliases


def test_gemm_and_tbe_fill_windows_of_one_output_then_a_reshape_feeds_a_third_job():
    """out[B, 48 + 2*24] = cat(gemm, tbe); a reshape alias [B*4, 24] of it goes through ReLU."""
    rng = np.random.default_rng(7)
    b, k, n, dim, table_rows = 37, 50, 48, 24, [60, 90]
    a_np = rng.integers(-128, 128, (b, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    s_np = rng.uniform(1e-3, 3e-3, (1, n)).astype(np.float32)
    tab_np = rng.standard_normal((sum(table_rows), dim)).astype(np.float32)
    lengths = rng.integers(0, 6, 2 * b)
    offsets = offsets_from_lengths(lengths)
    idx = np.concatenate(
        [rng.integers(0, table_rows[t], int(lengths[t * b : (t + 1) * b].sum())) for t in range(2)]
    ).astype(np.int32)
    p = plan()
    a, w = p.add("A", (b, k), DType.INT8, Level.SRAM), p.add("W", (n, k), DType.INT8, Level.DRAM)
    s = p.add("s", (1, n), DType.FP32, Level.SRAM)
    tab = p.add("T", tab_np.shape, DType.FP32, Level.DRAM, cached=True)
    ind = p.add("I", (idx.size,), DType.INT32, Level.SRAM)
    out = p.add("out", (b, n + 2 * dim), DType.FP32, Level.SRAM)
    used = dict(p.used)
    dense = p.alias("dense", out, (b, n))
    sparse = p.alias("sparse", out, (b, 2 * dim), col_offset=n)
    flat = p.alias("flat", out, (b * 4, (n + 2 * dim) // 4))
    assert p.used == used and sparse.address == out.address + n * 4 and sparse.pitch == out.pitch
    assert flat.base == dense.base == "out" and flat.contiguous and not sparse.contiguous
    act = p.add("act", flat.shape, DType.FP32, Level.SRAM)
    jobs = [
        gemm_job(CHIP, "fc", a, w, dense, out_scales=s, region=Region(0, 0, 4, 8)),
        tbe_job(
            CHIP,
            "tbe",
            tab,
            ind,
            sparse,
            offsets=offsets,
            table_rows=table_rows,
            batch=b,
            dim=dim,
            row_format=RowFormat.FP32,
            region=Region(4, 0, 4, 8),
        ),
        elementwise_job(CHIP, "relu", SeOp.RELU, flat, act),
    ]
    jobs[2].deps = ("fc", "tbe")
    res = run(p.tensors, jobs, {"A": a_np, "W": w_np, "s": s_np, "T": tab_np, "I": idx}, mode="both")
    fc = (torch.from_numpy(a_np).long() @ torch.from_numpy(w_np).long().T).to(
        torch.float32
    ) * torch.from_numpy(s_np)
    starts = [0, table_rows[0]]
    pooled = []
    for t in range(2):
        o = offsets[t * b : (t + 1) * b + 1]
        ix = torch.from_numpy(idx[o[0] : o[-1]].astype(np.int64) + starts[t])
        pooled.append(
            F.embedding_bag(ix, torch.from_numpy(tab_np), torch.from_numpy(o[:-1] - o[0]), mode="sum")
        )
    expect = torch.cat([fc, *pooled], dim=1)
    assert np.array_equal(res.outputs["out"], expect.numpy())
    assert np.array_equal(res.outputs["act"], torch.relu(expect.reshape(b * 4, -1)).numpy())
    timing = {j.name: j for j in res.timing.jobs}
    assert timing["relu"].start_s >= max(timing["fc"].end_s, timing["tbe"].end_s)


def test_dlrm_interaction_by_views():
    """Z = X @ X.T per sample, viewed [B, 27*27]; its lower triangle gathered next to the dense features."""
    rng = np.random.default_rng(11)
    b, f, d = 19, 27, 16
    x_np = rng.standard_normal((b, f, d)).astype(np.float16)
    p = plan()
    x = p.add("X", (b, f, d), DType.FP16, Level.SRAM)
    z = p.add("Z", (b, f, f), DType.FP32, Level.SRAM)
    z2 = p.alias("Z2", z, (b, f * f))
    dense = p.add("dense", (b, d), DType.FP32, Level.SRAM)
    out = p.add("R", (b, d + 351), DType.FP32, Level.SRAM)
    left, right = p.alias("R0", out, (b, d)), p.alias("R1", out, (b, 351), col_offset=d)
    jobs = [
        bmm_job(CHIP, "bmm", x, x, z),
        gather_columns_job(CHIP, "tri", z2, right, lower_triangle(f)),
        copy_job(CHIP, "dense", dense, left),
    ]
    jobs[1].deps = ("bmm",)
    dense_np = rng.standard_normal((b, d)).astype(np.float32)
    res = run(p.tensors, jobs, {"X": x_np, "dense": dense_np}, mode="both")
    tx = torch.from_numpy(x_np).float()
    zz = torch.bmm(tx, tx.transpose(1, 2))
    li, lj = torch.tril_indices(f, f, offset=-1)
    expect = torch.cat([torch.from_numpy(dense_np), zz[:, li, lj]], dim=1).numpy()
    got = res.outputs["R"]
    assert np.array_equal(got[:, :d], expect[:, :d])
    assert np.allclose(got[:, d:], expect[:, d:], rtol=1e-5, atol=1e-4)
    assert np.array_equal(got[:, d:], res.outputs["Z"].reshape(b, -1)[:, lower_triangle(f)])


def test_alias_rules():
    p = plan()
    base = p.add("B", (10, 12), DType.FP16, Level.SRAM)
    p.add("P", (10, 12), DType.FP16, Level.SRAM, row_pitch_bytes=64)
    win = p.alias("win", base, (10, 5), col_offset=7)
    assert win.address == base.address + 14 and win.pitch == 24 and win.base == "B"
    inner = p.alias("inner", win, (10, 2), col_offset=1)
    assert inner.base == "B" and inner.address == base.address + 16
    with pytest.raises(
        UsageError, match=r"^alias 'x': \[10, 6\] at column 7 is neither a reshape nor a column window"
    ):
        p.alias("x", base, (10, 6), col_offset=7)
    with pytest.raises(
        UsageError, match=r"^alias 'y': a reshape of 'win' to \(5, 10\) needs a contiguous base"
    ):
        p.alias("y", win, (5, 10))
    with pytest.raises(UsageError, match=r"^alias 'z': a reshape of 'P' to \(120,\) needs a contiguous base"):
        p.alias("z", "P", (120,))
    with pytest.raises(UsageError, match=r"^alias 'w': unknown base tensor 'nope'$"):
        p.alias("w", "nope", (1,))
    with pytest.raises(UsageError, match=r"^tensor 'win' is declared twice$"):
        p.alias("win", base, (120,))
    with pytest.raises(UsageError, match=r"^input 'win' is an alias of 'B': give the data for 'B'$"):
        execute(
            Program("t", p.tensors, []),
            CHIP,
            mode="functional",
            inputs={"win": np.zeros((10, 5), np.float16)},
        )


def test_writes_through_an_alias_are_seen_through_its_base():
    p = plan()
    base = p.add("B", (4, 6), DType.FP32, Level.SRAM)
    p.alias("w", base, (4, 3), col_offset=2)
    p.alias("r", base, (8, 3))
    # a buffer no input fills starts as zeros, writable (an input no command writes would be a read-only view)
    mem = _memory(Program("t", p.tensors, []), {})
    mem["B"][...] = np.arange(24, dtype=np.float32).reshape(4, 6)
    mem["w"][1, 0] = -1.0
    assert mem["B"][1, 2] == -1.0 and mem["r"][2, 2] == -1.0
    mem["B"][3, 4] = 99.0  # flat element 22
    assert mem["w"][3, 2] == 99.0 and mem["r"][7, 1] == 99.0


def test_aliases_take_no_sram_from_the_cache():
    # the SRAM cache's capacity is what SRAM tensors leave free: aliases of them must not count twice
    def seconds(with_alias: bool) -> float:
        p = plan()
        big = p.add("big", (8192, 8192), DType.INT8, Level.SRAM)  # 64 MiB of the 128 MiB
        if with_alias:
            p.alias("big2", big, (8192 * 8192,))
        x = p.add("X", (2048, 4096), DType.FP16, Level.DRAM, cached=True)
        y = p.add("Y", (2048, 4096), DType.FP16, Level.SRAM)
        jobs = [elementwise_job(CHIP, "a", SeOp.RELU, x, y), elementwise_job(CHIP, "b", SeOp.TANH, x, y)]
        jobs[1].deps = ("a",)
        return execute(Program("t", p.tensors, jobs), CHIP).timing.seconds

    assert seconds(True) == seconds(False)


def test_windows_of_a_cached_tensor_share_its_first_touches():
    """Jobs reading halves of one cached LPDDR5 tensor through windows: its bytes are first touched once, as
    if the whole tensor were read (the miss fraction is kept per buffer, not per alias)."""

    def misses(split: bool) -> dict[str, float]:
        p = plan()
        x = p.add("X", (2048, 2048), DType.FP16, Level.DRAM, cached=True)
        y = p.add("Y", (2048, 2048), DType.FP16, Level.SRAM)
        if split:
            parts = [p.alias(f"x{i}", x, (2048, 1024), col_offset=1024 * i) for i in range(2)]
            outs = [p.alias(f"y{i}", y, (2048, 1024), col_offset=1024 * i) for i in range(2)]
            jobs = [elementwise_job(CHIP, f"j{i}", SeOp.RELU, parts[i % 2], outs[i % 2]) for i in range(4)]
        else:
            jobs = [elementwise_job(CHIP, f"j{i}", SeOp.RELU, x, y) for i in range(2)]
        for prev, job in zip(jobs, jobs[1:], strict=False):
            job.deps = (prev.name,)
        prg = Program("t", p.tensors, jobs)
        return TimingModel(prg, resolve(prg, CHIP), CHIP, {}).memo.dense_miss

    whole, halves = misses(False), misses(True)
    assert set(halves) == {"X"} and halves["X"] == pytest.approx(whole["X"]) and whole["X"] < 1.0
