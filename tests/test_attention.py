"""Fused scaled dot-product attention (`kernels.attention`): the engine computes the documented arithmetic bit
for bit; compiled models match eager PyTorch within the numerics specification's bound; what the kernel does
not take still compiles through the decomposition; the kernel's time follows the DPE and SE rates and beats
the decomposition."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmarks.attention import decomposed
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtiasim
from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.errors import CapacityError
from mtiasim.frontend.aten_attention import MAX_HEAD_DIM
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, se_ops_per_cycle
from mtiasim.isa import Level, MemoryPlan, Program
from mtiasim.kernels import attention as A
from mtiasim.kernels.common import Region
from mtiasim.opset import ELEMENTWISE, Kind

CHIP = load_chip("mtia-v1")
SMALL_STORE = CHIP.with_values({"local_memory.bytes": 40 * 1024})  # streams key blocks at small sizes
MASKS = ["none", "rows", "keys", "float", "causal"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------------------------------ the kernel
def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def spec_attention(q, k, v, scale, mask, rows, per_query, causal, plan, items) -> np.ndarray:
    """The kernel's arithmetic as the module doc states it, in plain numpy, band by band and block by block
    in the plan's sizes: scores exact then rounded to FP32, times f32(scale), plus the mask in FP32; running
    max (-FLT_MAX for a row masked so far), exp in FP32 rounded to the DPE dtype, FP32 sums in column order,
    p v exact then rounded, rescaled by exp(m - m'); then o * f32(1 / max(l, 1)) rounded to fp16."""
    s_q, s_kv, dv = q.shape[0] // items, k.shape[0] // items, v.shape[1]
    out = np.zeros((q.shape[0], dv), np.float16)
    p = plan
    masked = mask is not None or causal
    sc = np.float32(scale)
    for b in range(items):
        for i0 in range(0, s_q, p.tq):
            n_keys = p.nk
            if causal and (not p.resident or p.nvb == 1):
                n_keys = min(p.nk, -(-(i0 + p.tq) // p.tn))
            qb = q[b * s_q + i0 : b * s_q + i0 + p.tq].astype(np.float64)
            m = lsum = o = None
            for j in range(0, n_keys, p.nbk):
                c0, c1 = j * p.tn, min(j + p.nbk, n_keys) * p.tn
                kb = k[b * s_kv + c0 : b * s_kv + c1].astype(np.float64)
                vb = v[b * s_kv + c0 : b * s_kv + c1].astype(np.float64)
                s = _f32(_f32(qb @ kb.T) * sc)
                if mask is not None:  # a tile per band, or one row for all queries
                    r0 = rows[b] + (i0 if per_query else 0)
                    s = _f32(s + _f32(mask[r0 : r0 + (p.tq if per_query else 1), c0:c1]))
                if causal:
                    keys = np.arange(c0, c1)[None, :]
                    qs = np.arange(i0, i0 + p.tq)[:, None]
                    s = _f32(s + np.where(keys <= qs, np.float32(0), np.float32(-np.inf)))
                mj = s.max(axis=1)
                if masked:
                    mj = np.where(mj < -A.FLT_MAX, np.float32(-A.FLT_MAX), mj)
                if m is None:
                    mn = mj
                else:
                    mn = _f32(np.maximum(mj, m))
                    corr = _f32(np.exp(_f32(m - mn)))
                pr = np.exp(_f32(s - mn[:, None])).astype(np.float32).astype(np.float16)
                lj = np.zeros(p.tq, np.float32)
                for col in range(pr.shape[1]):
                    lj = _f32(lj + pr[:, col].astype(np.float32))
                pv = _f32(pr.astype(np.float64) @ vb)
                if m is None:
                    lsum, o = lj, pv
                else:
                    lsum = _f32(_f32(lsum * corr) + lj)
                    o = _f32(_f32(o * corr[:, None]) + pv)
                m = mn
            if masked:
                lsum = np.maximum(lsum, np.float32(1))
            out[b * s_q + i0 : b * s_q + i0 + p.tq] = _f32(o * _f32(np.float32(1) / lsum)[:, None]).astype(
                np.float16
            )
    return out


def _kernel_case(chip, items, s_q, s_kv, d, dv, kind, gain, seed, region=None):
    """Run the job on random data; (engine output, spec output, float64 torch reference, plan)."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((items * s_q, d)) * gain).astype(np.float16)
    k = (rng.standard_normal((items * s_kv, d)) * gain).astype(np.float16)
    v = rng.standard_normal((items * s_kv, dv)).astype(np.float16)
    scale = 1 / math.sqrt(d)
    plan_ = MemoryPlan(chip.sram.bytes, chip.dram.bytes)
    decl = {n: plan_.add(n, a.shape, DType.FP16, Level.SRAM) for n, a in (("Q", q), ("K", k), ("V", v))}
    out = plan_.add("O", (items * s_q, dv), DType.FP16, Level.SRAM)
    sc = plan_.add("SC", (1, A.SCALE_COLS), DType.FP32, Level.SRAM)
    inputs = {"Q": q, "K": k, "V": v, "SC": np.full((1, A.SCALE_COLS), scale, np.float32)}
    mask, rows, kw, torch_mask = None, (), {}, None
    if kind in ("rows", "keys", "float"):
        per_query = kind != "keys"
        n_rows = s_q if per_query else 1
        if kind == "float":
            mask = (rng.standard_normal((items * n_rows, s_kv)) * 3).astype(np.float16)
        else:
            mask = np.where(rng.random((items * n_rows, s_kv)) < 0.3, -np.inf, 0).astype(np.float16)
            mask[::3] = -np.inf  # fully masked rows (or items): their output is 0
        rows = tuple(b * n_rows for b in range(items))
        kw = dict(
            mask=plan_.add("M", mask.shape, DType.FP16, Level.SRAM), mask_rows=rows, mask_per_query=per_query
        )
        inputs["M"] = mask
        torch_mask = torch.from_numpy(mask.astype(np.float64)).reshape(items, n_rows, s_kv)
    if kind == "causal":
        table = A.causal_table(s_q, s_kv, min(A.MAX_TILE, s_q), DType.FP16)
        kw["causal"] = plan_.add("C", table.shape, DType.FP16, Level.SRAM)
        inputs["C"] = table
    region = region or Region.whole(chip)
    job = A.attention_job(
        chip, "att", decl["Q"], decl["K"], decl["V"], out, sc, items=items, region=region, **kw
    )
    got = execute(Program("t", plan_.tensors, [job]), chip, mode="functional", inputs=inputs).outputs["O"]
    mrows = 0 if kind == "none" else (1 if kind == "keys" else 2)
    plan = A.plan_attention(chip, s_q, s_kv, d, dv, DType.FP16, items=items, mask_rows=mrows, pes=region.size)
    spec = spec_attention(q, k, v, scale, mask, rows, kind != "keys", kind == "causal", plan, items)
    t = [torch.from_numpy(x.astype(np.float64)).reshape(items, -1, x.shape[1]) for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*t, attn_mask=torch_mask, is_causal=kind == "causal", scale=scale)
    return got.reshape(items * s_q, dv), spec, ref.reshape(items * s_q, dv).numpy(), plan


@given(
    items=st.integers(1, 4),
    s_q=st.integers(1, 70),
    s_kv=st.integers(1, 140),
    d=st.integers(1, 70),
    dv=st.integers(1, 70),
    kind=st.sampled_from(MASKS),
    chip=st.sampled_from([CHIP, SMALL_STORE]),
    seed=st.integers(0, 99),
)
@settings(max_examples=40, deadline=None)
def test_kernel_computes_the_documented_arithmetic(items, s_q, s_kv, d, dv, kind, chip, seed):
    """Odd sizes, every mask kind, resident and streamed key blocks: bit for bit the spec, and close to the
    exact attention (fully masked rows: 0, as PyTorch)."""
    got, spec, ref, plan = _kernel_case(chip, items, s_q, s_kv, d, dv, kind, 1.0, seed, Region(0, 0, 2, 3))
    np.testing.assert_array_equal(got, spec)
    assert np.isfinite(got).all()
    assert np.abs(got.astype(np.float64) - ref).max() <= 4e-3 * max(1.0, np.abs(ref).max())


def test_streamed_blocks_are_exercised_and_large_logits_stay_exact():
    """The small store streams key blocks (online softmax); logits in the hundreds saturate the softmax
    without overflow; both bit for bit the spec."""
    got, spec, ref, plan = _kernel_case(SMALL_STORE, 3, 40, 260, 24, 20, "float", 6.0, 5)
    assert not plan.resident and plan.nk // plan.nbk > 1
    np.testing.assert_array_equal(got, spec)
    assert np.abs(got.astype(np.float64) - ref).max() <= 8e-3


def test_largest_head_dim_the_front_end_fuses_fits_every_preset():
    for name in ("mtia-v1", "mtia-2i"):
        plan = A.plan_attention(load_chip(name), 64, 4096, MAX_HEAD_DIM, MAX_HEAD_DIM, DType.FP16, items=1,
                                mask_rows=2, pes=64)  # fmt: skip
        assert plan.tq >= 1
    with pytest.raises(CapacityError, match="head dims 8192 .* one query and one key"):
        A.plan_attention(CHIP, 64, 64, 8192, 8192, DType.FP16, items=1, mask_rows=0, pes=64)


# ------------------------------------------------------------------------------------ compiled models
class Attend(nn.Module):
    """SDPA between two nonlinear layers: projections, SDPA over heads, gelu, a projection."""

    def __init__(self, dim: int, heads: int, head_dim: int, causal: bool = False) -> None:
        super().__init__()
        torch.manual_seed(dim + heads + head_dim)
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.out = nn.Linear(heads * head_dim, 5)

    def forward(self, x, ctx, mask=None):
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(torch.tanh(self.q(x))), heads(self.k(ctx)), heads(self.v(ctx))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return self.out(F.gelu(y.transpose(1, 2).reshape(b, n, -1)))


def _model_mask(kind: str, b: int, heads: int, n: int, m: int, g: torch.Generator):
    if kind == "rows":  # boolean, per (batch, query), shared by the heads, with fully masked rows
        keep = torch.rand(b, 1, n, m, generator=g) > 0.3
        keep[:, :, ::4] = False
        return keep
    if kind == "keys":  # boolean key padding [B, 1, 1, S]
        return torch.rand(b, 1, 1, m, generator=g) > 0.4
    if kind == "float":  # additive, per head
        return torch.randn(b, heads, n, m, generator=g) * 2
    return None


def _check(model, args, precision: str):
    cm = mtiasim.compile(model, args, mode="functional", precision=precision)
    ops = [n.op for n in cm.compiled.graph.nodes]
    assert "attention" in ops and "exp" not in ops, ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = cm(*args)
    res = cm.check()
    with torch.no_grad():
        want = model(*args)
    return res, float((got - want).abs().max()), float(want.abs().max())


# batch, heads, queries, keys, head dim
MODEL_SIZES = st.tuples(*(st.integers(1, hi) for hi in (3, 3, 20, 20, 17)))


@given(MODEL_SIZES, st.sampled_from(MASKS), st.sampled_from(["fp16", "int8"]))
@settings(max_examples=16, deadline=None)
def test_compiled_attention_matches_eager_within_its_bound(sizes, kind, precision):
    """Odd sizes (S_q != S_kv, odd head dims), every mask kind, fp16 and int8 (the projections int8 GEMMs,
    the attention core fp16): within the bound of docs/numerics.md, and close to eager in absolute terms."""
    b, heads, n, m, head_dim = sizes
    if kind == "causal":
        model = Attend(12, heads, head_dim, causal=True).eval()
    else:
        model = Attend(12, heads, head_dim).eval()
    g = torch.Generator().manual_seed(b * 100 + n * 10 + m)
    x, ctx = torch.randn(b, n, 12, generator=g), torch.randn(b, m, 12, generator=g)
    mask = _model_mask(kind, b, heads, n, m, g)
    args = (x, ctx) if mask is None else (x, ctx, mask)
    res, err, scale = _check(model, args, precision)
    assert res["passed"], res
    assert err <= (0.02 if precision == "fp16" else 0.15) * max(1.0, scale)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_transformer_layer_over_a_long_sequence_streams_and_matches(precision):
    """nn.TransformerEncoderLayer (SDPA inside nn.MultiheadAttention) with a key padding mask over a sequence
    whose keys do not fit a PE's store: the key blocks stream (online softmax)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, 48, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 640, 32)
    pad = torch.zeros(2, 640, dtype=torch.bool)
    pad[1, 500:] = True
    cm = mtiasim.compile(layer, (x, None, pad), mode="functional", precision=precision)
    node = next(n for n in cm.compiled.graph.nodes if n.op == "attention")
    assert node.attrs["mask"] == "add"  # MultiheadAttention makes the padding an additive -inf mask
    for rows in (1, 2):
        assert not A.plan_attention(
            CHIP, 640, 640, 16, 16, DType.FP16, items=4, mask_rows=rows, pes=64
        ).resident
    got = cm(x, None, pad)
    with torch.no_grad():
        want = layer(x, src_key_padding_mask=pad)
    assert float((got - want).abs().max()) <= (0.03 if precision == "fp16" else 0.3)
    res = cm.check()
    assert res["passed"], res


def test_fully_masked_rows_and_huge_logits_match_eager():
    """Extreme values: logits of several hundred (the softmax one-hot), and rows whose every key is masked (0,
    as eager)."""

    class Raw(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(torch.tanh(q) * 30, k * 3, v, attn_mask=mask)

    g = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(2, 3, 9, 16, generator=g),
        torch.randn(2, 3, 11, 16, generator=g),
        torch.randn(2, 3, 11, 7),
    )
    mask = torch.rand(2, 1, 9, 11, generator=g) > 0.5
    mask[:, :, 4] = False
    cm = mtiasim.compile(Raw().eval(), (q, k, v, mask), mode="functional", precision="fp16")
    got = cm(q, k, v, mask)
    want = Raw()(q, k, v, mask)
    assert torch.equal(got[:, :, 4], torch.zeros_like(got[:, :, 4])) and torch.equal(
        want[:, :, 4], got[:, :, 4]
    )
    assert torch.isfinite(got).all()
    res = cm.check()  # logits of hundreds: fp16 inputs move them by ~1, the bound says how far that may go
    assert res["passed"] and res["max_bound"] < 3, res


@pytest.mark.parametrize(
    ("why", "kwargs", "mask_shape"),
    [("keys broadcast", {}, (2, 1, 5, 1)), ("mask of scores' rank + 1", {}, (1, 2, 1, 5, 6))],
)
def test_what_the_kernel_refuses_runs_decomposed(why, kwargs, mask_shape):
    """A mask the kernel does not take: the capture decomposes the op (matmuls and a softmax) as it did
    before the kernel, and the model still compiles and matches."""

    class Raw(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(torch.tanh(q), k, v, attn_mask=mask, **kwargs)

    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 4)
    mask = torch.randn(mask_shape)
    capture = importlib.import_module("mtiasim.frontend.capture")
    node = next(
        n for n in capture.export(Raw(), (q, k, v, mask)).graph.nodes if "scaled_dot" in str(n.target)
    )
    from mtiasim.frontend.aten_attention import refusal

    if len(mask_shape) == 4:
        assert "mask" in refusal(node)
    cm = mtiasim.compile(Raw().eval(), (q, k, v, mask), mode="functional", precision="fp16")
    ops = [n.op for n in cm.compiled.graph.nodes]
    assert ("attention" in ops) == (len(mask_shape) == 5), why
    cm(q, k, v, mask)
    assert cm.check()["passed"]


def test_flash_variant_from_a_program_converts_like_sdpa():
    """`_scaled_dot_product_flash_attention_for_cpu` (a program captured after PyTorch's CPU dispatch)
    becomes the same attention op; its logsumexp output is not used."""

    class Flash(nn.Module):
        def forward(self, q, k, v):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)[0]

    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    cm = mtiasim.compile(Flash().eval(), (q, k, v), mode="functional", precision="fp16")
    node = next(n for n in cm.compiled.graph.nodes if n.op == "attention")
    assert node.attrs["causal"] and node.attrs["scale"] == pytest.approx(8**-0.5)
    got = cm(q, k, v)
    assert float((got - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max()) < 5e-3


@pytest.mark.parametrize("weights_used", [False, True])
def test_math_variant_fuses_unless_its_weights_are_used(weights_used):
    """`_scaled_dot_product_attention_math` returns (output, weights): fused when only the output is read,
    decomposed (the weights computed) when the weights are read too."""

    class Math(nn.Module):
        def forward(self, q, k, v):
            out, weights = torch.ops.aten._scaled_dot_product_attention_math(q, k, v)
            return (out, weights) if weights_used else out

    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    cm = mtiasim.compile(Math().eval(), (q, k, v), mode="functional", precision="fp16")
    assert ("attention" in [n.op for n in cm.compiled.graph.nodes]) != weights_used
    cm(q, k, v)
    assert cm.check()["passed"]


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_models_constant_mask(kind):
    """A mask held as a buffer (a causal triangle, boolean or additive): made additive at compile time."""

    class Buffered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tril = torch.tril(torch.ones(7, 9, dtype=torch.bool))
            self.register_buffer("mask", tril if kind == "bool" else torch.where(tril, 0.0, -1e4))

        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(torch.tanh(q), k, v, attn_mask=self.mask)

    q, k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 5)
    model = Buffered().eval()
    cm = mtiasim.compile(model, (q, k, v), mode="functional", precision="fp16")
    assert [n.op for n in cm.compiled.graph.nodes] == ["tanh", "attention"]
    assert float((cm(q, k, v) - model(q, k, v)).abs().max()) < 0.01
    assert cm.check()["passed"]


def test_a_planted_bug_is_caught(monkeypatch):
    """Mutation check: the mask added after the softmax instead of before (as if masking the probabilities)
    must fail the bound check and the bit-exact spec."""
    real = A._Compute.softmax

    def late_mask(self, st):
        cmds = real(self, st)
        if not self.masked:
            return cmds
        add = next(c for c in cmds if getattr(c, "src2", None) == self.cb["MK"])
        cmds.remove(add)  # ... and add the mask to the probabilities instead
        at = next(i for i, c in enumerate(cmds) if getattr(c, "op", None) == A.SeOp.EXP) + 1
        p = cmds[at - 1].dst
        cmds.insert(at, A.SeMap(A.SeOp.ADD, p, p, st.n, self.dt, src2=self.cb["MK"]))
        return cmds

    monkeypatch.setattr(A._Compute, "softmax", late_mask)
    model = Attend(12, 2, 5).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 6, 12, generator=g), torch.randn(2, 7, 12, generator=g)
    mask = torch.randn(2, 2, 6, 7, generator=g) * 2
    res, err, _ = _check(model, (x, ctx, mask), "fp16")
    assert not res["passed"] and err > 0.05


# ------------------------------------------------------------------------------------------- timing
def _timed(chip, items, s, d, dv):
    plan_ = MemoryPlan(chip.sram.bytes, chip.dram.bytes)
    q = plan_.add("Q", (items * s, d), DType.FP16, Level.SRAM)
    k = plan_.add("K", (items * s, d), DType.FP16, Level.SRAM)
    v = plan_.add("V", (items * s, dv), DType.FP16, Level.SRAM)
    o = plan_.add("O", (items * s, dv), DType.FP16, Level.SRAM)
    sc = plan_.add("SC", (1, A.SCALE_COLS), DType.FP32, Level.SRAM)
    job = A.attention_job(chip, "att", q, k, v, o, sc, items=items)
    res = execute(Program("t", plan_.tensors, [job]), chip, mode="timing", fidelity="event")
    return res.timing.seconds, res.timing.jobs[0].attribution


@pytest.mark.parametrize(
    ("chip", "items", "s", "d", "bound"),
    [("mtia-v1", 256, 128, 32, "se"), ("mtia-2i", 256, 256, 128, "dpe")],
    ids=["v1-softmax-bound", "2i-matmul-bound"],
)
def test_time_follows_the_dpe_and_se_rates(chip, items, s, d, bound):
    """Closed form per PE, the work spread evenly: the SE's FP32 ops (max, subtract, exp and sum per score,
    the normalisation per output) at the preset's FP32 rate, against the DPE's MACs (both products) at its
    fp16 rate plus the RE's drain of their FP32 accumulators; the simulated time is the longer of the two
    (the units overlap), at most 30 % more (launch, the first tiles' loads, per-command overheads)."""
    c = load_chip(chip)
    scores, outputs = items * s * s / c.n_pes, items * s * d / c.n_pes
    per_score = 1 + 1 + ELEMENTWISE[Kind.EXP].se_ops + 1
    se = (scores * per_score + outputs) / se_ops_per_cycle(c, DType.FP32) / c.hz
    drain = (scores + outputs) * 4 / c.re.bytes_per_cycle
    dpe = (scores * 2 * d / dpe_macs_per_cycle(c, DType.FP16) + drain) / c.hz
    assert (se > dpe) == (bound == "se")
    seconds, attribution = _timed(c, items, s, d, d)
    closed = max(se, dpe)
    assert closed <= seconds <= 1.3 * closed, (seconds, se, dpe)
    assert max(attribution, key=attribution.get) == "compute"


def test_fused_is_faster_than_the_decomposition_in_fewer_jobs():
    """The scores never go through SRAM: one job instead of a dozen, several times faster (self-attention of
    a MultiheadAttention-sized layer: 4 x 8 heads, 96 positions, head dim 32)."""

    class Core(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    args = tuple(torch.randn(4, 8, 96, 32) for _ in range(3))
    times, jobs = [], []
    for program in (Core().eval(), decomposed(Core().eval(), args)):
        cm = mtiasim.compile(program, args, mode="timing", precision="fp16")
        cm(*args)
        times.append(cm.report.device_s)
        jobs.append(len(cm.report.ops))
    assert jobs[0] == 1 and jobs[1] >= 8
    assert times[0] * 3 < times[1], times
