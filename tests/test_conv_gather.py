"""1-D convolutions (im2col by DMA + the GEMM), gathers and scatters with index data (row gathers and writes by
DMA): each kernel against the spec written out here (docs/numerics.md: exact copies; added rows in FP32 in index
order, rounded once), its time against its closed form, and models with these ops anywhere, in fp16 and int8,
against eager PyTorch within the error bounds (and bit for bit where the spec says so)."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtiasim
from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.errors import UnsupportedOperatorError, UsageError
from mtiasim.frontend.reference_rows import gather_rows, im2col, scatter_rows
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import sram_bytes_per_s
from mtiasim.isa import DmaScatter, Job, Level, MemoryPlan, PeProgram, Program
from mtiasim.kernels.common import Region
from mtiasim.kernels.rows import Conv1d, Groups, gather_rows_job, im2col_job, scatter_rows_job

CHIP = load_chip("mtia-v1")
resolve_mod = importlib.import_module("mtiasim.engine.resolve")
regions = st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4)])
FLOATS = {DType.FP16: np.float16, DType.FP32: np.float32, DType.BF16: DType.BF16.numpy}


def plan() -> MemoryPlan:
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def run(p: MemoryPlan, job, inputs, mode="functional"):
    return execute(Program("t", p.tensors, [job]), CHIP, mode=mode, inputs=inputs)


def values(rng, shape, dtype: DType, extremes: bool = False) -> np.ndarray:
    """Random values of `dtype`, with NaN, +-Inf, the largest finite and subnormal values sprinkled in."""
    if dtype == DType.INT8:
        return rng.integers(-128, 128, shape).astype(np.int8)
    x = rng.standard_normal(shape) * 3
    if extremes and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, flat.size, min(flat.size, 6))
        flat[picks] = [np.nan, np.inf, -np.inf, 65504.0, -6e-8, 1e-7][: picks.size]
    return x.astype(FLOATS[dtype])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit patterns as values, NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" or a.dtype == DType.BF16.numpy:
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        return a.shape == b.shape and bool(((a32 == b32) | (np.isnan(a32) & np.isnan(b32))).all())
    return np.array_equal(a, b)


# ----------------------------------------------------------------------------------------------- im2col
def im2col_spec(x: np.ndarray, conv: Conv1d) -> np.ndarray:
    """The columns, element by element as the spec says: row (n, t), column k C + c holds
    x[n, t s + k d - pad_left, c], 0 outside."""
    n, length, c = x.shape
    lo = conv.out_length
    out = np.zeros((n * lo, conv.kernel * c), x.dtype)
    for i in range(n):
        for t in range(lo):
            for k in range(conv.kernel):
                src = t * conv.stride + k * conv.dilation - conv.pad[0]
                if 0 <= src < length:
                    out[i * lo + t, k * c : (k + 1) * c] = x[i, src]
    return out


@st.composite
def convs(draw):
    k, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    pad = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    length = draw(st.integers(max(1, (k - 1) * d + 1 - pad[0] - pad[1]), 40))
    channels = draw(st.sampled_from([1, 3, 8, 17, 64, 300]))
    return Conv1d(draw(st.integers(1, 4)), length, channels, k, draw(st.integers(1, 3)), d, pad)


@given(convs(), st.sampled_from([DType.FP16, DType.INT8, DType.FP32]), regions, st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_im2col_is_the_spec(conv, dtype, region, seed):
    rng = np.random.default_rng(seed)
    x_np = values(rng, (conv.n, conv.length, conv.channels), dtype, extremes=True)
    p = plan()
    x = p.add("X", conv.source_shape(), dtype, Level.SRAM)
    z = p.add("Z", (1, min(conv.channels, 256)), dtype, Level.SRAM)
    out = p.add("O", (conv.n * conv.out_length, conv.kernel * conv.channels), dtype, Level.SRAM)
    job = im2col_job(CHIP, "im2col", conv, x, z, out, region=region)
    zeros = np.zeros(z.shape, dtype.numpy)
    got = run(p, job, {"X": x_np.reshape(conv.source_shape()), "Z": zeros}).outputs["O"]
    want = im2col_spec(x_np, conv)
    assert same(got, want)
    # the reference interpreter's meaning is the same
    attrs = {"kernel": conv.kernel, "stride": conv.stride, "dilation": conv.dilation, "pad": conv.pad}
    ref = im2col(torch.from_numpy(x_np.astype(np.float32)), attrs).reshape(want.shape).numpy()
    assert same(ref, want.astype(np.float32))


def test_im2col_time_is_the_sram_rate():
    """The columns are bytes moved: each is read from x (or zero-filled) and written once, at the SRAM's
    rate; fixed costs (launch, latency) add a few microseconds."""
    for conv in (Conv1d(64, 512, 128, 3, 1, 1, (1, 1)), Conv1d(256, 200, 64, 5, 2, 1, (2, 2))):
        p = plan()
        x = p.add("X", conv.source_shape(), DType.FP16, Level.SRAM)
        z = p.add("Z", (1, min(conv.channels, 256)), DType.FP16, Level.SRAM)
        out = p.add("O", (conv.n * conv.out_length, conv.kernel * conv.channels), DType.FP16, Level.SRAM)
        t = run(p, im2col_job(CHIP, "im2col", conv, x, z, out), {}, mode="timing").timing.seconds
        sram_s = 2 * out.nbytes / sram_bytes_per_s(CHIP)
        assert sram_s <= t <= 1.25 * sram_s + 10e-6, (t, sram_s)


# ---------------------------------------------------------------------------------------------- gathers
@given(
    st.integers(1, 60),
    st.sampled_from([1, 7, 64, 300, 5000]),
    st.integers(1, 5),
    st.integers(1, 20),
    st.booleans(),
    st.sampled_from([DType.FP16, DType.BF16, DType.FP32, DType.INT8]),
    regions,
    st.integers(0, 99),
)
@settings(max_examples=40, deadline=None)
def test_gather_rows_is_the_spec(rows, width, groups, count, per_group, dtype, region, seed):
    """``out[g count + i] = x[g rows + idx[g step + i]]``: exact copies (NaN and Inf too), in groups."""
    rng = np.random.default_rng(seed)
    step = count if per_group else 0
    g = Groups(groups, count, step, rows)
    n_idx = (groups - 1) * step + count
    x_np = values(rng, (groups * rows, width), dtype, extremes=True)
    idx_np = rng.integers(0, rows, (1, n_idx))
    p = plan()
    x = p.add("X", (groups * rows, width), dtype, Level.SRAM)
    idx = p.add("I", (1, n_idx), DType.INT64, Level.SRAM)
    out = p.add("O", (groups * count, width), dtype, Level.SRAM)
    job = gather_rows_job(CHIP, "gather", x, idx, out, g, region=region, tensors=p.tensors)
    got = run(p, job, {"X": x_np, "I": idx_np}).outputs["O"]
    want = np.stack([x_np[j * rows + idx_np[0, j * step + i]] for j in range(groups) for i in range(count)])
    assert same(got, want)
    attrs = {"groups": groups, "count": count, "index_step": step, "row_step": rows}
    ref = gather_rows(torch.from_numpy(x_np.astype(np.float32)), torch.from_numpy(idx_np), attrs, "t")
    assert same(ref.numpy(), want.astype(np.float32))


def _row_s(hops: int) -> float:
    """A gathered row's time on one PE: the core's issue or the SRAM latency over the rows in flight."""
    latency = (CHIP.sram.latency_cycles + hops * CHIP.noc.hop_latency_cycles) / CHIP.hz
    return max(CHIP.core.cycles_per_gather_row / CHIP.hz, latency / CHIP.dma.outstanding_rows)


@pytest.mark.parametrize("n,width", [(20000, 64), (100000, 16)])
def test_gather_time_is_the_row_rate(n, width):
    """Rows picked by index are issued one by one by each PE's core (v1 has no indexed DMA, as for embedding
    rows): n / PEs rows at the issue rate or the latency over the rows in flight, whichever is slower."""
    p = plan()
    x = p.add("X", (50000, width), DType.FP16, Level.SRAM)
    idx = p.add("I", (1, n), DType.INT64, Level.SRAM)
    out = p.add("O", (n, width), DType.FP16, Level.SRAM)
    job = gather_rows_job(CHIP, "gather", x, idx, out, Groups(1, n), tensors=p.tensors)
    idx_np = np.random.default_rng(0).integers(0, 50000, (1, n))
    t = run(p, job, {"I": idx_np}, mode="timing").timing.seconds
    per_pe = math.ceil(n / CHIP.n_pes)
    edge = max(CHIP.grid.rows, CHIP.grid.cols) // 2
    assert per_pe * _row_s(1) <= t <= 1.3 * per_pe * _row_s(edge) + 10e-6, t


# --------------------------------------------------------------------------------------------- scatters
def scatter_spec(dst, idx, src, g: Groups, accumulate: bool, cols: int) -> np.ndarray:
    """One index after the other: a written row replaces the destination's (the later of a duplicate wins), an
    added one is summed in FP32 (``row = f32(row + f32(src))``), rounded once to dst's dtype at the end."""
    acc = dst.astype(np.float32) if accumulate else dst.copy()
    for j in range(g.groups):
        for i in range(g.count):
            r = j * g.row_step + int(idx[j * g.index_step + i])
            row = src[0 if src.shape[0] == 1 else j * g.count + i]
            if accumulate:
                acc[r, :cols] = (acc[r, :cols] + row.astype(np.float32)).astype(np.float32)
            else:
                acc[r, :cols] = row
    return acc.astype(dst.dtype)


@st.composite
def scatters(draw):
    groups, count = draw(st.integers(1, 4)), draw(st.integers(1, 30))
    rows = draw(st.integers(1, 40))
    width = draw(st.sampled_from([1, 5, 64, 700, 3000]))
    return (
        Groups(groups, count, count if draw(st.booleans()) else 0, rows),
        rows,
        width,
        draw(st.integers(1, width)),  # the columns written
        draw(st.booleans()),  # accumulate
        draw(st.booleans()),  # one row written at every index
        draw(st.sampled_from([DType.FP16, DType.BF16, DType.FP32])),
    )


def _scatter_case(g: Groups, rows, width, cols, accumulate, repeat, dtype, seed, region=None):
    rng = np.random.default_rng(seed)
    n_idx = (g.groups - 1) * g.index_step + g.count
    dst_np = values(rng, (g.groups * rows, width), dtype, extremes=not accumulate)
    src_np = values(rng, (1 if repeat else g.rows, cols), dtype)
    idx_np = rng.integers(0, rows, (1, n_idx))  # duplicates and all
    p = plan()
    dst = p.add("D", dst_np.shape, dtype, Level.SRAM)
    idx = p.add("I", idx_np.shape, DType.INT64, Level.SRAM)
    src = p.add("S", src_np.shape, dtype, Level.SRAM)
    out = p.add("O", dst_np.shape, dtype, Level.SRAM)
    scratch = p.add("F", dst_np.shape, DType.FP32, Level.SRAM)
    job = scatter_rows_job(CHIP, "scatter", dst, idx, src, out, g, accumulate=accumulate, scratch=scratch,
                           region=region, tensors=p.tensors)  # fmt: skip
    got = run(p, job, {"D": dst_np, "I": idx_np, "S": src_np}).outputs["O"]
    return got, (dst_np, idx_np[0], src_np)


@given(scatters(), regions, st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_scatter_rows_is_the_spec(case, region, seed):
    g, rows, width, cols, accumulate, repeat, dtype = case
    got, (dst, idx, src) = _scatter_case(g, rows, width, cols, accumulate, repeat, dtype, seed, region)
    want = scatter_spec(dst, idx, src, g, accumulate, cols)
    assert same(got, want)
    attrs = {"groups": g.groups, "count": g.count, "index_step": g.index_step, "row_step": rows,
             "cols": cols, "accumulate": accumulate}  # fmt: skip
    f32 = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    ref = scatter_rows(f32(dst), torch.from_numpy(idx), f32(src), attrs, "t")
    if accumulate:  # the reference's fp32 result, rounded once to the device's dtype, is the device's
        ref = ref.numpy().astype(dst.dtype).astype(np.float32)
        assert same(ref, got.astype(np.float32))
    else:
        assert same(ref.numpy(), got.astype(np.float32))


def test_added_rows_sum_in_index_order_like_torch():
    """Duplicates whose sum depends on the order (1e8 - 1e8 + 1 is 1 in FP32, but 0 the other way round):
    the device adds them in index order, as torch's CPU index_put_/scatter_add/index_add do, and overflows
    and NaNs propagate."""
    dst = np.zeros((3, 4), np.float32)
    src = np.array([[1e8] * 4, [-1e8] * 4, [1.0] * 4, [3e38] * 4, [3e38] * 4, [np.nan] * 4], np.float32)
    idx = np.array([0, 0, 0, 1, 1, 2])
    g = Groups(1, 6)
    p = plan()
    d, s, o = (
        p.add(name, a.shape, DType.FP32, Level.SRAM) for name, a in (("D", dst), ("S", src), ("O", dst))
    )
    i = p.add("I", (1, 6), DType.INT64, Level.SRAM)
    job = scatter_rows_job(CHIP, "add", d, i, s, o, g, accumulate=True, tensors=p.tensors)
    got = run(p, job, {"D": dst, "I": idx[None], "S": src}).outputs["O"]
    t = torch.from_numpy
    for want in (
        t(dst).index_put((t(idx),), t(src), accumulate=True),
        t(dst).index_add(0, t(idx), t(src)),
        t(dst).scatter_add(0, t(idx)[:, None].expand(-1, 4), t(src)),
    ):
        assert same(got, want.numpy())
    assert got[0, 0] == 1.0 and np.isinf(got[1]).all() and np.isnan(got[2]).all()


def test_a_planted_order_bug_is_caught(monkeypatch):
    """Adding duplicates in reverse order (a plausible kernel bug) breaks the spec test above."""
    real = resolve_mod._Resolver._dma_scatter

    def reversed_order(self, node, cmd, st):
        rows = self._indexed_rows("", cmd)
        if rows is None or not cmd.accumulate:
            return real(self, node, cmd, st)
        src, table = self._array(cmd.src), self._array(cmd.table)
        for k in reversed(range(cmd.count)):
            with np.errstate(over="ignore", invalid="ignore"):
                table[rows[k]] += src[cmd.src_row0 + k * cmd.src_step].astype(np.float32)

    monkeypatch.setitem(resolve_mod._HANDLERS, DmaScatter, reversed_order)
    with pytest.raises(AssertionError):
        test_added_rows_sum_in_index_order_like_torch()


@pytest.mark.parametrize("accumulate", [False, True])
def test_scatter_time_is_the_scan_and_the_rows(accumulate):
    """Each PE owns T / PEs rows: it copies them, scans the whole index list on its vector unit and writes the
    rows of its indices one by one (read, add and write back when adding): per PE the copy, then the scan
    and the rows at the issue rate or the latency over the rows in flight, whichever is slower."""
    n, rows, width = 20000, 5000, 64
    p = plan()
    dst = p.add("D", (rows, width), DType.FP16, Level.SRAM)
    idx = p.add("I", (1, n), DType.INT64, Level.SRAM)
    src = p.add("S", (n, width), DType.FP16, Level.SRAM)
    out = p.add("O", (rows, width), DType.FP16, Level.SRAM)
    scratch = p.add("F", (rows, width), DType.FP32, Level.SRAM)
    idx_np = np.random.default_rng(0).integers(0, rows, (1, n))
    job = scatter_rows_job(CHIP, "s", dst, idx, src, out, Groups(1, n), accumulate=accumulate, scratch=scratch,
                           tensors=p.tensors)  # fmt: skip
    t = run(p, job, {"I": idx_np}, mode="timing").timing.seconds
    share = math.ceil(rows / CHIP.n_pes)
    m = max(int(((idx_np >= r) & (idx_np < r + share)).sum()) for r in range(0, rows, share))
    hz, core = CHIP.hz, CHIP.core
    scan = n * 3 * 8 / CHIP.vector.int8_ops_per_cycle
    issue = (scan + m * (core.cycles_per_gather_row + (1 + accumulate) * core.cycles_per_command)) / hz
    edge = max(CHIP.grid.rows, CHIP.grid.cols) // 2

    def flight(hops):
        latency = (2 * CHIP.sram.latency_cycles + hops * CHIP.noc.hop_latency_cycles) / hz
        return m * latency / CHIP.dma.outstanding_rows + n * 8 * latency / (
            CHIP.dma.outstanding_requests * CHIP.dma.request_bytes
        )

    copy = (1 + 2 * accumulate) * 2 * rows * width * (2 + 2 * accumulate) / sram_bytes_per_s(CHIP)
    assert max(issue, flight(1)) <= t <= 1.3 * max(issue, flight(edge)) + copy + 10e-6, t


# ---------------------------------------------------------------------------------------------- models
class ConvNet(nn.Module):
    """An FC and a nonlinearity, the convolution, another nonlinearity and an FC (or the convolution alone)."""

    def __init__(self, c_in, c_out, k, alone, **conv) -> None:
        super().__init__()
        torch.manual_seed(c_in * 100 + c_out)
        self.alone = alone
        self.a = nn.Linear(c_in, c_in)
        self.conv = nn.Conv1d(c_in, c_out, k, **conv)
        self.b = nn.Linear(c_out, 3)

    def forward(self, x):  # x [N, L, C_in]
        if self.alone:
            return self.conv(x)
        h = torch.nn.functional.gelu(self.a(x)).transpose(1, 2)
        return self.b(torch.tanh(self.conv(h)).transpose(1, 2))


@st.composite
def conv_models(draw):
    k, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    padding = draw(st.sampled_from([0, 1, 3] + (["same", "valid"] if stride == 1 else [])))
    span = (k - 1) * dilation + 1
    length = draw(st.integers(max(1, span - 2 * (padding if isinstance(padding, int) else 0)), 24))
    conv = {"stride": stride, "dilation": dilation, "padding": padding, "bias": draw(st.booleans())}
    model = ConvNet(
        draw(st.sampled_from([1, 3, 16])), draw(st.sampled_from([1, 5, 32])), k, draw(st.booleans()), **conv
    )
    x = torch.randn(draw(st.integers(1, 5)), length, model.conv.in_channels) * draw(
        st.sampled_from([0.01, 1.0, 30.0])
    )
    return model.eval(), x if not model.alone else x.transpose(1, 2).contiguous()


def _check(model, args, precision, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = mtiasim.compile(model, args, mode="functional", precision=precision, **kw)
        got = cm(*args)
        res = cm.check()
    assert res["passed"], res
    return cm, got


@given(conv_models(), st.sampled_from(["fp16", "int8"]), st.booleans())
@settings(max_examples=16, deadline=None)
def test_conv1d_models_are_within_their_bound(case, precision, extremes):
    model, x = case
    if extremes and precision == "fp16":  # NaN, Inf and fp16's largest value (int8 makes NaN finite)
        flat = x.view(-1)
        flat[0], flat[-1], flat[flat.numel() // 2] = float("nan"), float("-inf"), 65504.0
    cm, got = _check(model, (x,), precision)
    assert {n.op for n in cm.compiled.graph.nodes} >= {"im2col", "linear"}
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape


def conv_int8_oracle(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """docs/numerics.md for ``conv(x)`` with x a graph input, in plain torch: x crosses as fp16; the columns
    are quantized symmetric per tensor with the scale calibrated on the fp32 columns; the weights [C_out, K C]
    (tap-major) per output channel; INT32 products and bias; the epilogue's FP32 scale; the result stored as
    fp16."""
    f32 = torch.float32
    pad, s, d = conv.padding[0], conv.stride[0], conv.dilation[0]
    k = conv.kernel_size[0]

    def cols(v):  # [N, C, L] -> [N L_out, K C]
        vp = torch.nn.functional.pad(v, (pad, pad))
        u = vp.unfold(2, (k - 1) * d + 1, s)[..., ::d]  # [N, C, L_out, K]
        return u.permute(0, 2, 3, 1).reshape(-1, k * v.shape[1])

    amax = float(cols(x).abs().max())
    s_x = float(np.float32(amax / 127)) if amax > 0 else 1.0
    q = torch.clamp(
        torch.round(cols(x.half().to(f32)) * torch.tensor(1 / s_x, dtype=torch.float64).to(f32)), -128, 127
    )
    w = conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1).to(f32)
    s_w = torch.where(w.abs().amax(1) > 0, (w.abs().amax(1).double() / 127).to(f32), torch.ones(w.shape[0]))
    qw = torch.clamp(torch.round(w * (1 / s_w.double()).to(f32)[:, None]), -127, 127)
    acc = q.double() @ qw.double().T
    scale = s_x * s_w.double()
    if conv.bias is not None:
        acc = acc + torch.round(conv.bias.detach().double() / scale)
    v = acc.to(f32) * scale.to(f32)
    n, l_out = x.shape[0], v.shape[0] // x.shape[0]
    return v.half().to(f32).reshape(n, l_out, -1).permute(0, 2, 1)


@pytest.mark.parametrize("conv", [dict(padding=1), dict(stride=2, dilation=2, padding=2), dict(bias=False)])
def test_conv1d_int8_is_the_fake_quant_oracle_bit_for_bit(conv):
    model = ConvNet(6, 10, 3, True, **conv).eval()
    x = torch.randn(4, 6, 19)
    cm, got = _check(model, (x,), "int8")
    kops = [op.kind for op in cm.compiled.lowered.kops]
    assert (
        "quantize" in kops and "im2col" in kops and kops.index("quantize") < kops.index("im2col")
    )  # int8 columns
    assert torch.equal(got, conv_int8_oracle(model.conv, x))


class RowOps(nn.Module):
    """An FC and relu, a gather or scatter with index data, a sigmoid and an FC: the op between nonlinear
    layers, and also returned as it is."""

    def __init__(self, op: str, width: int) -> None:
        super().__init__()
        torch.manual_seed(width)
        self.op = op
        self.a, self.b = nn.Linear(6, width), nn.Linear(width, 4)

    def forward(self, x, idx, idx2):
        h = torch.relu(self.a(x))  # [B, W]
        w = h.shape[1]
        op = self.op
        if op == "index_select":
            y = h.index_select(0, idx)
        elif op == "index_select_last":
            y = h.index_select(1, idx2[0] % w)
        elif op == "getitem":
            y = h[idx]
        elif op == "getitem_last":
            y = h[:, idx2[0] % w]
        elif op == "gather_rows":
            y = torch.gather(h, 0, idx.unsqueeze(1).expand(-1, w))
        elif op == "gather_last":
            y = torch.gather(h, 1, idx2 % w)
        elif op == "scatter_value":
            y = h.scatter(1, idx2 % w, 0.75)
        elif op == "scatter_src":
            y = h.scatter(1, idx2 % w, torch.tanh(h[:, : idx2.shape[1]]))
        elif op == "scatter_add":
            y = h.scatter_add(0, idx.unsqueeze(1).expand(-1, w), h[: idx.shape[0]] * 2)
        elif op == "index_put":
            y = h.index_put((idx,), torch.sigmoid(h[: idx.shape[0]]))
        elif op == "index_put_acc":
            y = h.index_put((idx,), h[: idx.shape[0]], accumulate=True)
        else:  # index_add
            y = h.index_add(0, idx, -h[: idx.shape[0]])
        return self.b(torch.sigmoid(y)) if y.shape[1] == w else torch.sigmoid(y), y


WRITES = ("scatter_value", "scatter_src", "index_put")  # torch leaves duplicates undefined here
ROW_OPS = ("index_select", "index_select_last", "getitem", "getitem_last", "gather_rows", "gather_last",
           "scatter_add", "index_put_acc", "index_add") + WRITES  # fmt: skip


@given(
    st.sampled_from(ROW_OPS),
    st.integers(1, 40),
    st.integers(1, 9),
    st.sampled_from([1, 5, 64, 300]),
    st.sampled_from(["fp16", "int8"]),
    st.integers(0, 99),
    st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_gather_and_scatter_models_are_within_their_bound(op, batch, n, width, precision, seed, extremes):
    g = torch.Generator().manual_seed(seed)
    n = min(n, batch) if op in ("scatter_add", "index_put", "index_put_acc", "index_add") else n
    unique = op in WRITES
    idx = torch.randperm(batch, generator=g)[:n] if unique else torch.randint(0, batch, (n,), generator=g)
    k = min(3, width)
    idx2 = torch.stack([torch.randperm(width, generator=g)[:k] for _ in range(batch)]) if unique else \
        torch.randint(0, width, (batch, k), generator=g)  # fmt: skip
    x = torch.randn(batch, 6, generator=g) * 3
    if extremes and precision == "fp16":  # NaN and Inf through the FC into the op (int8 makes them finite)
        x[0, 0], x[-1, 1] = float("nan"), float("inf")
    model = RowOps(op, width).eval()
    _cm, got = _check(model, (x, idx, idx2), precision)
    with torch.no_grad():
        want = model(x, idx, idx2)
    assert [t.shape for t in got] == [t.shape for t in want]


def test_gathered_and_added_rows_are_torch_bit_for_bit():
    """fp16 values in, no other op: the gathered rows are eager's exactly, and the added ones are eager's fp32
    sums (in index order, duplicates and all) rounded once to fp16."""

    class Direct(nn.Module):
        def forward(self, x, idx):
            return x.index_select(0, idx) * 1.0, x.index_add(0, idx, x[: idx.shape[0]])

    x = (torch.randn(50, 33) * 100).half().float()
    idx = torch.randint(0, 8, (40,))
    cm = mtiasim.compile(Direct(), (x, idx), mode="functional", precision="fp16")
    picked, added = cm(x, idx)
    assert torch.equal(picked, x.index_select(0, idx))
    assert torch.equal(added, x.index_add(0, idx, x[:40]).half().float())


# ------------------------------------------------------------------------------- timing, shapes, refusals
class TopKGather(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 16)

    def forward(self, x, idx):
        h = torch.relu(self.a(x))
        _v, top = torch.topk(h, 3)  # indices the host computes from the device's values (fallback)
        return torch.gather(h, 1, top), h.index_select(0, idx)


def test_timing_runs_with_index_inputs_and_indices_the_device_makes():
    """A timing run gets the call's index inputs (which rows move); indices computed during the call (here
    by a host call) are taken as spread over the rows."""
    x, idx = torch.randn(5, 6), torch.tensor([4, 0, 0, 3, 1, 2, 2])  # 7 indices over a batch of 5
    cm = mtiasim.compile(TopKGather().eval(), (x, idx), mode="timing", fallback="host")
    cm(x, idx)
    kinds = {op.kind for op in cm.report.ops}
    assert {"gather_rows", "host_call"} <= kinds and cm.report.latency_s > 0
    both = mtiasim.compile(TopKGather().eval(), (x, idx), mode="both", fallback="host", precision="fp16")
    got = both(x, idx)
    assert got[0].shape == (5, 3) and got[1].shape == (7, 16) and both.check()["passed"]
    with pytest.raises(UsageError):  # the index count is fixed when compiling
        both(x, torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "module,x,message",
    [
        (nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8), "aten::convolution: a 2-D convolution (weight rank 4)"),
        (nn.Conv1d(4, 4, 3, groups=2), torch.randn(2, 4, 9), "aten::conv1d with groups=2 is not supported"),
        (nn.ConvTranspose1d(4, 4, 3), torch.randn(2, 4, 9), "aten::convolution with transposed=True"),
    ],
)
def test_unsupported_convolutions_are_one_line_naming_op_and_argument(module, x, message):
    with pytest.raises(UnsupportedOperatorError) as err:
        mtiasim.compile(module.eval(), (x,), mode="functional", precision="fp16")
    assert "\n" not in str(err.value) and message in str(err.value)


def test_unsupported_indexing_is_one_line():
    class Mask(nn.Module):
        def forward(self, x):
            return x[x > 0]

    class Pairs(nn.Module):
        def forward(self, x, i, j):
            return x[i, j] + 1

    x = torch.randn(4, 5)
    with pytest.raises(UnsupportedOperatorError) as err:
        mtiasim.compile(Pairs(), (x, torch.tensor([0, 1]), torch.tensor([2, 3])), mode="functional")
    assert "\n" not in str(err.value) and "several index tensors" in str(err.value)
    with pytest.raises(UnsupportedOperatorError):
        mtiasim.compile(Mask(), (x,), mode="functional")


def test_core_aten_coverage_runs_them_on_the_chip():
    from mtiasim.frontend.coverage import core_aten_coverage

    status = {c.op: (c.status, c.unit) for c in core_aten_coverage()}
    assert status["aten::convolution"] == ("chip", "dpe")
    for op in ("aten::gather", "aten::index_select", "aten::index.Tensor", "aten::index_put", "aten::scatter.src",
               "aten::scatter.value", "aten::scatter_add", "aten::scatter_reduce.two"):  # fmt: skip
        assert status[op] == ("chip", "dma"), op


def test_functional_memory_copies_only_the_inputs_the_program_writes():
    """A functional run reads the inputs its commands never write (weights, tables, most activations) through
    read-only views of the caller's arrays, and writes into copies of the others: either way the caller's
    arrays come back unchanged, and a weight is not copied on every call."""
    rng = np.random.default_rng(5)
    table, src = (
        rng.standard_normal((6, 4)).astype(np.float32),
        rng.standard_normal((5, 4)).astype(np.float32),
    )
    idx = np.array([[4, 0, 4, 2, 5]])
    p = plan()
    p.add("T", table.shape, DType.FP32, Level.SRAM)
    p.add("S", src.shape, DType.FP32, Level.SRAM)
    p.add("I", idx.shape, DType.INT64, Level.SRAM)
    scatter = DmaScatter("S", "T", "I", 0, 5, accumulate=True)  # T is written by nothing else
    job = Job("s", "scatter", {(0, 0): PeProgram((0, 0), (), ([scatter], []))})
    inputs = {"T": table, "I": idx, "S": src}
    kept = {k: v.copy() for k, v in inputs.items()}
    out = execute(Program("t", p.tensors, [job]), CHIP, mode="functional", inputs=inputs).outputs
    assert all(np.array_equal(inputs[k], kept[k]) for k in inputs)  # nothing the caller gave is changed
    for name in ("I", "S"):  # read only: a view of the caller's array, which stays writable
        assert np.shares_memory(out[name], inputs[name]) and not out[name].flags.writeable
        assert inputs[name].flags.writeable
    assert not np.shares_memory(out["T"], table)  # written: a copy
    want = torch.from_numpy(table).index_add(0, torch.from_numpy(idx[0]), torch.from_numpy(src)).numpy()
    assert np.array_equal(out["T"], want)
