"""TBE row formats (FBGEMM int8/int4, ATen int8/int4, fp16, fp32), max pooling, windows of a wider output, vs
torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.engine import numerics as nx
from mtiasim.engine.resolve import resolve
from mtiasim.engine.resources import resource_map
from mtiasim.engine.work import WorkModel
from mtiasim.errors import UsageError
from mtiasim.hw import load_chip
from mtiasim.indices import offsets_from_lengths
from mtiasim.isa import Level, MemoryPlan, PoolMode, Program, RowFormat, SePool
from mtiasim.kernels.tbe import tbe_job

CHIP = load_chip("mtia-v1")


def plan():
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def stored_rows(weights: np.ndarray, fmt: RowFormat) -> np.ndarray:
    if fmt == RowFormat.INT8_FBGEMM:
        return nx.fbgemm_rows_quantize(weights)
    if fmt == RowFormat.INT8_ATEN:
        return torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(weights)).numpy()
    if fmt.bits == 4:  # ATen's prepack; FBGEMM's TBE rows hold the same bytes with scale and bias first
        aten = torch.ops.quantized.embedding_bag_4bit_prepack(torch.from_numpy(weights)).numpy()
        return aten if fmt == RowFormat.INT4_ATEN else np.concatenate([aten[:, -4:], aten[:, :-4]], axis=1)
    return weights.astype(fmt.dtype.numpy)


def lookups(rng, table_rows, batch, max_len):
    t = len(table_rows)
    lengths = rng.integers(0, max_len + 1, size=t * batch)
    idx = np.concatenate(
        [rng.integers(0, table_rows[i], int(lengths[i * batch : (i + 1) * batch].sum())) for i in range(t)]
    ).astype(np.int32)
    return lengths, offsets_from_lengths(lengths), idx


def run_tbe(
    table_np, fmt, table_rows, batch, dim, offsets, idx, mode, psw=None, out_dt=DType.FP32, pad=(0, 0)
):
    """Pool into a column window [batch, T*dim] of a wider output (pad columns left and right of it)."""
    t = len(table_rows)
    p = plan()
    tab = p.add("tables", table_np.shape, fmt.dtype, Level.DRAM, cached=True)
    n = max(idx.size, 1)
    ind = p.add("indices", (n,), DType.INT32, Level.SRAM)
    wts = p.add("w", (n,), DType.FP32, Level.SRAM) if psw is not None else None
    wide = p.add("wide", (batch, pad[0] + t * dim + pad[1]), out_dt, Level.SRAM)
    out = p.alias("out", wide, (batch, t * dim), col_offset=pad[0]) if pad != (0, 0) else wide
    job = tbe_job(
        CHIP,
        "tbe",
        tab,
        ind,
        out,
        offsets=offsets,
        table_rows=table_rows,
        batch=batch,
        dim=dim,
        mode=mode,
        weights=wts,
        row_format=fmt,
    )
    inputs = {"tables": table_np, "indices": np.resize(idx, n)}
    if psw is not None:
        inputs["w"] = np.resize(psw, n)
    res = execute(Program("t", p.tensors, [job]), CHIP, mode="both", inputs=inputs)
    assert res.timing.seconds > 0
    wide_out = res.outputs["wide"]
    assert not wide_out[:, : pad[0]].any() and not wide_out[:, pad[0] + t * dim :].any()
    return wide_out[:, pad[0] : pad[0] + t * dim]


def torch_bags(offsets, idx, table_rows, batch, fn):
    """Per table, fn(indices into the stacked table, per-bag offsets, slice of lookups) -> [batch, dim]."""
    starts = np.concatenate([[0], np.cumsum(table_rows)[:-1]])
    cols = []
    for i in range(len(table_rows)):
        o = offsets[i * batch : (i + 1) * batch + 1]
        ix = torch.from_numpy(idx[o[0] : o[-1]].astype(np.int64) + starts[i])
        off = torch.from_numpy((o[:-1] - o[0]).astype(np.int64))
        cols.append(fn(ix, off, slice(int(o[0]), int(o[-1]))))
    return torch.cat(cols, dim=1)


common = (
    st.integers(1, 24),  # batch
    st.lists(st.integers(1, 200), min_size=1, max_size=3),  # rows per table
    st.sampled_from([1, 4, 13, 33, 64, 100]),  # dim, ragged included
    st.integers(0, 1000),
)


@given(*common, st.booleans(), st.sampled_from([(0, 0), (3, 5)]))
@settings(max_examples=30)
def test_aten_int8_rows_match_torch_quantized_bit_exact(batch, table_rows, dim, seed, weighted, pad):
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((sum(table_rows), dim)) * 2).astype(np.float32)
    packed = stored_rows(weights, RowFormat.INT8_ATEN)
    assert np.array_equal(packed, nx.aten_rows_quantize(weights))  # our prepack is torch's, byte for byte
    lengths, offsets, idx = lookups(rng, table_rows, batch, 9)
    psw = rng.random(idx.size).astype(np.float32) if weighted else None
    t_packed = torch.from_numpy(packed)

    def ref(ix, off, sl):
        w = torch.from_numpy(psw[sl]) if weighted else None
        return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(t_packed, ix, off, False, 0, False, w)

    got = run_tbe(
        packed, RowFormat.INT8_ATEN, table_rows, batch, dim, offsets, idx, PoolMode.SUM, psw, pad=pad
    )
    assert np.array_equal(got, torch_bags(offsets, idx, table_rows, batch, ref).numpy())
    # mean: torch's quantized op ignores mode=1 and returns the sum; mtiasim divides that sum by the length
    got = run_tbe(packed, RowFormat.INT8_ATEN, table_rows, batch, dim, offsets, idx, PoolMode.MEAN)
    total = torch_bags(offsets, idx, table_rows, batch, _unweighted(t_packed)).numpy()
    n = np.maximum(lengths.reshape(len(table_rows), batch).T, 1).astype(np.float32)
    assert np.array_equal(got, (total.reshape(batch, -1, dim) / n[:, :, None]).reshape(batch, -1))


def _unweighted(t_packed):
    def ref(ix, off, sl):
        return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            t_packed, ix, off, False, 0, False, None
        )

    return ref


@given(
    st.integers(1, 24),
    st.lists(st.integers(1, 200), min_size=1, max_size=3),
    st.sampled_from([2, 4, 14, 32, 100]),  # ATen's 4-bit rows hold an even dim
    st.integers(0, 1000),
    st.booleans(),
    st.sampled_from([(0, 0), (3, 5)]),
)
@settings(max_examples=25)
def test_int4_rows_match_torch_quantized_bit_exact(batch, table_rows, dim, seed, weighted, pad):
    """ATen's and FBGEMM's 4-bit rows pool as torch.ops.quantized.embedding_bag_4bit_rowwise_offsets (the
    FBGEMM CPU kernel behind both), bit for bit."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((sum(table_rows), dim)) * 2).astype(np.float32)
    aten = stored_rows(weights, RowFormat.INT4_ATEN)
    assert aten.shape[1] == RowFormat.INT4_ATEN.row_cols(dim) == dim // 2 + 4
    _lengths, offsets, idx = lookups(rng, table_rows, batch, 9)
    psw = rng.random(idx.size).astype(np.float32) * 3 if weighted else None
    t_packed = torch.from_numpy(aten)

    def ref(ix, off, sl):
        w = torch.from_numpy(psw[sl]) if weighted else None
        return torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(t_packed, ix, off, False, 0, False, w)

    expect = torch_bags(offsets, idx, table_rows, batch, ref).numpy()
    for fmt in (RowFormat.INT4_ATEN, RowFormat.INT4_FBGEMM):
        rows = stored_rows(weights, fmt)
        got = run_tbe(rows, fmt, table_rows, batch, dim, offsets, idx, PoolMode.SUM, psw, pad=pad)
        assert np.array_equal(got, expect), fmt
    # max pools the rows as torch unpacks them
    table = torch.ops.quantized.embedding_bag_4bit_unpack(t_packed)
    assert np.array_equal(nx.rows_to_float(aten, RowFormat.INT4_ATEN, dim), table.numpy())
    got = run_tbe(aten, RowFormat.INT4_ATEN, table_rows, batch, dim, offsets, idx, PoolMode.MAX)
    expect = torch_bags(
        offsets, idx, table_rows, batch, lambda ix, off, sl: F.embedding_bag(ix, table, off, mode="max")
    )
    assert np.array_equal(got, expect.numpy())


def test_int4_nibbles_low_first():
    """Element 2i sits in the low nibble of byte i, as torch's 4-bit prepack writes it."""
    w = torch.tensor([[0.0, 15.0, 15.0, 0.0, 5.0, 10.0]])
    packed = torch.ops.quantized.embedding_bag_4bit_prepack(w).numpy()
    assert packed[0, :3].tolist() == [0xF0, 0x0F, 0xA5]
    q, scale, bias = nx.quantized_rows_split(packed, RowFormat.INT4_ATEN, 6)
    assert q.tolist() == [[0, 15, 15, 0, 5, 10]] and scale[0, 0] == 1.0 and bias[0, 0] == 0.0


@given(
    *common,
    st.sampled_from([RowFormat.FP16, RowFormat.FP32]),
    st.sampled_from(["sum", "mean", "max"]),
    st.booleans(),
    st.sampled_from([DType.FP16, DType.FP32]),
)
@settings(max_examples=40)
def test_float_rows_match_torch_embedding_bag(batch, table_rows, dim, seed, fmt, mode, weighted, out_dt):
    """Bit-exact against F.embedding_bag on the rows in fp32 (fp32 accumulation), cast to the output dtype."""
    weighted = weighted and mode == "sum"
    rng = np.random.default_rng(seed)
    rows = stored_rows((rng.standard_normal((sum(table_rows), dim)) * 2).astype(np.float32), fmt)
    lengths, offsets, idx = lookups(rng, table_rows, batch, 12)
    psw = rng.random(idx.size).astype(np.float32) if weighted else None
    w32 = torch.from_numpy(rows.astype(np.float32))

    def ref(ix, off, sl):
        w = torch.from_numpy(psw[sl]) if weighted else None
        return F.embedding_bag(ix, w32, off, mode=mode, per_sample_weights=w)

    got = run_tbe(rows, fmt, table_rows, batch, dim, offsets, idx, PoolMode(mode), psw, out_dt, pad=(2, 0))
    expect = torch_bags(offsets, idx, table_rows, batch, ref).to(
        {DType.FP16: torch.float16}.get(out_dt, torch.float32)
    )
    assert np.array_equal(got, expect.numpy())
    if fmt == RowFormat.FP16 and out_dt == DType.FP16 and not weighted:
        # torch on the fp16 table itself rounds the sum to fp16 before a mean divides it: within one fp16 step
        w16 = torch.from_numpy(rows)

        def native(ix, off, sl):
            return F.embedding_bag(ix, w16, off, mode=mode)

        direct = torch_bags(offsets, idx, table_rows, batch, native).float().numpy()
        step = np.spacing(np.abs(direct).astype(np.float16)).astype(np.float32)
        assert (np.abs(got.astype(np.float32) - direct) <= step * (1 if mode == "mean" else 0)).all()


@given(*common, st.sampled_from([RowFormat.INT8_FBGEMM, RowFormat.INT8_ATEN]))
@settings(max_examples=25)
def test_max_pooling_of_int8_rows(batch, table_rows, dim, seed, fmt):
    """Max over the dequantized rows (empty bags 0), as F.embedding_bag(mode='max') on the dequantized table."""
    rng = np.random.default_rng(seed)
    packed = stored_rows(rng.standard_normal((sum(table_rows), dim)).astype(np.float32), fmt)
    if fmt == RowFormat.INT8_ATEN:
        table = torch.ops.quantized.embedding_bag_byte_unpack(torch.from_numpy(packed))
    else:
        table = torch.from_numpy(nx.fbgemm_rows_dequantize(packed, dim))
    _lengths, offsets, idx = lookups(rng, table_rows, batch, 7)
    got = run_tbe(packed, fmt, table_rows, batch, dim, offsets, idx, PoolMode.MAX)

    def ref(ix, off, sl):
        return F.embedding_bag(ix, table, off, mode="max")

    assert np.array_equal(got, torch_bags(offsets, idx, table_rows, batch, ref).numpy())


def test_fbgemm_rows_keep_their_numerics_in_a_window():
    rng = np.random.default_rng(2)
    table_rows, batch, dim = [50, 70], 9, 24
    packed = stored_rows(rng.standard_normal((120, dim)).astype(np.float32), RowFormat.INT8_FBGEMM)
    _lengths, offsets, idx = lookups(rng, table_rows, batch, 6)
    plain = run_tbe(packed, RowFormat.INT8_FBGEMM, table_rows, batch, dim, offsets, idx, PoolMode.SUM)
    window = run_tbe(
        packed, RowFormat.INT8_FBGEMM, table_rows, batch, dim, offsets, idx, PoolMode.SUM, pad=(7, 1)
    )
    assert np.array_equal(plain, window)
    deq = torch.from_numpy(nx.fbgemm_rows_dequantize(packed, dim))
    ref = torch_bags(
        offsets, idx, table_rows, batch, lambda ix, off, sl: F.embedding_bag(ix, deq, off, mode="sum")
    )
    assert np.allclose(plain, ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fmt", "dtype", "cols", "message"),
    [
        (RowFormat.INT8_ATEN, DType.UINT8, 20, r"int8_aten rows of dim 16 are uint8 \[rows, 24\]"),
        (RowFormat.FP32, DType.FP16, 16, r"fp32 rows of dim 16 are fp32 \[rows, 16\]"),
        (RowFormat.INT8_FBGEMM, DType.UINT8, 24, r"int8_fbgemm rows of dim 16 are uint8 \[rows, 20\]"),
        (RowFormat.INT4_ATEN, DType.UINT8, 20, r"int4_aten rows of dim 16 are uint8 \[rows, 12\]"),
        (RowFormat.INT4_FBGEMM, DType.FP16, 12, r"int4_fbgemm rows of dim 16 are uint8 \[rows, 12\]"),
    ],
)
def test_table_must_match_its_row_format(fmt, dtype, cols, message):
    p = plan()
    tab = p.add("T", (10, cols), dtype, Level.SRAM)
    ind = p.add("I", (4,), DType.INT32, Level.SRAM)
    out = p.add("O", (2, 16), DType.FP32, Level.SRAM)
    with pytest.raises(UsageError, match=r"^tbe: table 'T' is .*; " + message + "$"):
        tbe_job(
            CHIP,
            "tbe",
            tab,
            ind,
            out,
            offsets=np.array([0, 2, 4]),
            table_rows=[10],
            batch=2,
            dim=16,
            row_format=fmt,
        )


def test_max_pooling_takes_no_weights():
    p = plan()
    tab = p.add("T", (10, 16), DType.FP32, Level.SRAM)
    ind, w = p.add("I", (4,), DType.INT32, Level.SRAM), p.add("W", (4,), DType.FP32, Level.SRAM)
    out = p.add("O", (2, 16), DType.FP32, Level.SRAM)
    with pytest.raises(UsageError, match=r"^tbe: per-sample weights need sum or mean pooling, not max$"):
        tbe_job(
            CHIP,
            "tbe",
            tab,
            ind,
            out,
            offsets=np.array([0, 2, 4]),
            table_rows=[10],
            batch=2,
            dim=16,
            mode=PoolMode.MAX,
            weights=w,
            row_format=RowFormat.FP32,
        )


# ------------------------------------------------------------------------------------------------ timing


def _tbe_timing(fmt: RowFormat, dim=64, batch=256, pooling=20, rows=100_000, level=Level.DRAM):
    rng = np.random.default_rng(0)
    p = plan()
    tab = p.add("T", (rows, fmt.row_cols(dim)), fmt.dtype, level, cached=level == Level.DRAM)
    lengths = np.full(batch, pooling)
    idx = rng.integers(0, rows, batch * pooling).astype(np.int32)
    ind = p.add("I", (idx.size,), DType.INT32, Level.SRAM)
    out = p.add("O", (batch, dim), DType.FP16, Level.SRAM)
    job = tbe_job(
        CHIP,
        "tbe",
        tab,
        ind,
        out,
        offsets=offsets_from_lengths(lengths),
        table_rows=[rows],
        batch=batch,
        dim=dim,
        row_format=fmt,
    )
    res = execute(Program("t", p.tensors, [job]), CHIP, inputs={"I": idx})
    return res.timing.seconds, res.timing.counters


def test_tbe_row_bytes_follow_the_format():
    dim = 64
    for fmt in RowFormat:
        _s, counters = _tbe_timing(fmt, dim=dim, batch=64, pooling=4, rows=1000, level=Level.SRAM)
        lookups_ = 64 * 4
        assert counters["sram_read_bytes"] >= lookups_ * fmt.row_bytes(dim)
        assert counters["ls_read_bytes"] >= lookups_ * fmt.row_bytes(dim)


@pytest.mark.parametrize("level", [Level.SRAM, Level.DRAM])
@pytest.mark.parametrize("dim", [64, 256])
def test_more_row_bytes_never_take_less_time(level, dim):
    """Same work, more bytes: FBGEMM (dim + 4) <= ATen (dim + 8) and fp16 <= fp32. Across the int8 and float
    families the dequantize cost and the 128 B cache lines (an int8 row of 68 B often straddles two) weigh in;
    where LPDDR5 bytes dominate (dim 256: 260 B vs 512 B rows) int8 rows are faster."""
    t = {fmt: _tbe_timing(fmt, dim=dim, level=level)[0] for fmt in RowFormat}
    assert t[RowFormat.INT8_FBGEMM] <= t[RowFormat.INT8_ATEN] * (1 + 1e-9)
    assert t[RowFormat.FP16] <= t[RowFormat.FP32]
    assert t[RowFormat.INT4_FBGEMM] == t[RowFormat.INT4_ATEN]  # the same bytes in another order
    if level == Level.DRAM and dim == 256:
        assert t[RowFormat.INT8_ATEN] < t[RowFormat.FP16]
        assert t[RowFormat.INT4_FBGEMM] < t[RowFormat.INT8_FBGEMM]  # about half the LPDDR5 bytes


def test_float_rows_skip_the_dequantize_cost():
    def pool_work(fmt):
        rng = np.random.default_rng(1)
        p = plan()
        p.add("T", (500, fmt.row_cols(64)), fmt.dtype, Level.SRAM)
        idx = rng.integers(0, 500, 640).astype(np.int32)
        p.add("I", (640,), DType.INT32, Level.SRAM)
        out = p.add("O", (32, 64), DType.FP16, Level.SRAM)
        job = tbe_job(
            CHIP,
            "tbe",
            p.tensors["T"],
            p.tensors["I"],
            out,
            offsets=offsets_from_lengths(np.full(32, 20)),
            table_rows=[500],
            batch=32,
            dim=64,
            row_format=fmt,
        )
        prg = Program("t", p.tensors, [job])
        resolved = resolve(prg, CHIP)
        wm = WorkModel(prg, resolved, CHIP, resource_map(CHIP), {"I": idx})
        return sum(wm.work(n).busy_s for n in resolved.nodes if isinstance(n.cmd, SePool))

    busy = {fmt: pool_work(fmt) for fmt in RowFormat}
    assert busy[RowFormat.INT8_FBGEMM] == busy[RowFormat.INT8_ATEN]
    assert busy[RowFormat.FP16] < busy[RowFormat.FP32] < busy[RowFormat.INT8_FBGEMM]
    # 4-bit rows: one more op per element (the nibble unpack) than int8 rows
    assert busy[RowFormat.INT4_FBGEMM] == busy[RowFormat.INT4_ATEN] > busy[RowFormat.INT8_FBGEMM]
