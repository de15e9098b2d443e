"""GEMM epilogue (per-column scales, activation) against plain torch, and its timing."""

import math

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
from mtiasim.engine.work import SE_OPS_PER_ELEMENT, WorkModel
from mtiasim.errors import ProgramError, UsageError
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import dpe_macs_per_cycle, se_ops_per_cycle
from mtiasim.isa import (
    CbDecl,
    Direction,
    DmaIn,
    DmaOut,
    Job,
    Level,
    MatMul,
    MemoryPlan,
    PeProgram,
    Program,
    SeOp,
    TileStream,
    loop,
)
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import elementwise_job
from mtiasim.kernels.gemm import GemmMapping, choose_mapping, gemm_job
from mtiasim.opset import ELEMENTWISE

CHIP = load_chip("mtia-v1")
SEGMENTS = CHIP.se.lut_segments
TORCH = {
    DType.INT8: torch.int8,
    DType.FP16: torch.float16,
    DType.BF16: torch.bfloat16,
    DType.FP32: torch.float32,
}
regions = st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4)])


def plan():
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def activate(v: torch.Tensor, act: str) -> torch.Tensor:
    """relu in torch; sigmoid/tanh: the SE's LUT (the same table SeMap uses), checked against torch below."""
    if act == "relu":
        return torch.relu(v)
    if act in ("sigmoid", "tanh"):
        y = torch.from_numpy(nx.lut_apply(v.numpy(), act, SEGMENTS))
        exact = torch.sigmoid(v) if act == "sigmoid" else torch.tanh(v)
        tol = nx.SIGMOID_MAX_ABS_ERROR if act == "sigmoid" else nx.TANH_MAX_ABS_ERROR
        assert float((y - exact).abs().max()) <= tol
        return y
    return v


def convert(y: torch.Tensor, out: DType) -> np.ndarray:
    if out == DType.INT8:
        return torch.clamp(torch.round(y), -128, 127).to(torch.int8).numpy()
    return y.to(TORCH[out]).float().numpy() if out == DType.BF16 else y.to(TORCH[out]).numpy()


@given(
    st.integers(1, 150),
    st.integers(1, 260),
    st.integers(1, 150),
    st.sampled_from(["ws", "is", "os"]),
    regions,
    st.sampled_from(["none", "relu", "sigmoid", "tanh"]),
    st.sampled_from([DType.INT8, DType.FP16, DType.FP32]),
    st.booleans(),
    st.integers(0, 1000),
)
@settings(max_examples=40)
def test_int8_gemm_epilogue_bit_exact(m, k, n, variant, region, act, out_dt, with_bias, seed):
    """y = act(float32(acc + bias) * scale): int32 sums exact, one float32 multiply, then the conversion."""
    rng = np.random.default_rng(seed)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    b_np = rng.integers(-20000, 20000, (1, n), dtype=np.int32)
    # outputs of a few units (int8: tens), so that rounding, saturation and the LUT range all matter
    s_np = (
        rng.uniform(0.2, 2.0, (1, n)) / (128 * math.sqrt(k)) * (40 if out_dt == DType.INT8 else 2)
    ).astype(np.float32)
    p = plan()
    a, w = p.add("A", (m, k), DType.INT8, Level.SRAM), p.add("W", (n, k), DType.INT8, Level.DRAM)
    bias = p.add("b", (1, n), DType.INT32, Level.SRAM) if with_bias else None
    scales = p.add("s", (1, n), DType.FP32, Level.SRAM)
    c = p.add("C", (m, n), out_dt, Level.SRAM)
    job = gemm_job(
        CHIP, "fc", a, w, c, bias=bias, out_scales=scales, activation=act, region=region, variant=variant
    )
    inputs = {"A": a_np, "W": w_np, "s": s_np, **({"b": b_np} if with_bias else {})}
    got = execute(Program("t", p.tensors, [job]), CHIP, mode="functional", inputs=inputs).outputs["C"]
    acc = torch.from_numpy(a_np).long() @ torch.from_numpy(w_np).long().T
    if with_bias:
        acc = acc + torch.from_numpy(b_np).long()
    ref = convert(activate(acc.to(torch.float32) * torch.from_numpy(s_np), act), out_dt)
    assert np.array_equal(got, ref)


def test_int8_epilogue_through_a_k_split_chain():
    # bias enters at the chain's first PE, scales and activation at its last: the order must not matter
    m, k, n = 96, 500, 70
    rng = np.random.default_rng(3)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    b_np = rng.integers(-20000, 20000, (1, n), dtype=np.int32)
    s_np = rng.uniform(1e-4, 3e-4, (1, n)).astype(np.float32)
    for variant in ("ws", "is", "os"):
        p = plan()
        a, w = p.add("A", (m, k), DType.INT8, Level.SRAM), p.add("W", (n, k), DType.INT8, Level.SRAM)
        b, s = p.add("b", (1, n), DType.INT32, Level.SRAM), p.add("s", (1, n), DType.FP32, Level.SRAM)
        c = p.add("C", (m, n), DType.INT8, Level.SRAM)
        mapping = GemmMapping(2, 1, 2, 4, variant)
        job = gemm_job(CHIP, "fc", a, w, c, bias=b, out_scales=s, activation="relu", mapping=mapping)
        inputs = {"A": a_np, "W": w_np, "b": b_np, "s": s_np}
        got = execute(Program("t", p.tensors, [job]), CHIP, mode="functional", inputs=inputs).outputs["C"]
        acc = torch.from_numpy(a_np).long() @ torch.from_numpy(w_np).long().T + torch.from_numpy(b_np).long()
        ref = convert(torch.relu(acc.to(torch.float32) * torch.from_numpy(s_np)), DType.INT8)
        assert np.array_equal(got, ref), variant


@given(
    st.integers(1, 130),
    st.integers(1, 200),
    st.integers(1, 130),
    st.sampled_from([DType.FP16, DType.BF16]),
    st.sampled_from(["none", "relu", "sigmoid", "tanh"]),
    st.sampled_from([DType.FP16, DType.BF16, DType.FP32]),
    st.sampled_from(["ws", "is", "os"]),
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_float_gemm_epilogue(m, k, n, dt, act, out_dt, variant, seed):
    """fp16/bf16: y = act((acc_fp32 + bias) * scale); bit-exact against the same accumulator, close to F.linear."""
    rng = np.random.default_rng(seed)
    a_np = rng.standard_normal((m, k)).astype(dt.numpy)
    w_np = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(dt.numpy)
    b_np = rng.standard_normal((1, n)).astype(np.float32)
    s_np = rng.uniform(0.5, 2.0, (1, n)).astype(np.float32)
    p = plan()
    a, w = p.add("A", (m, k), dt, Level.SRAM), p.add("W", (n, k), dt, Level.SRAM)
    b, s = p.add("b", (1, n), DType.FP32, Level.SRAM), p.add("s", (1, n), DType.FP32, Level.SRAM)
    acc_out, c = p.add("ACC", (m, n), DType.FP32, Level.SRAM), p.add("C", (m, n), out_dt, Level.SRAM)
    mapping = choose_mapping(CHIP, m, k, n, dt, out_dt, (Level.SRAM, Level.SRAM), Region.whole(CHIP), variant)
    plain = gemm_job(CHIP, "acc", a, w, acc_out, bias=b, mapping=mapping)
    fused = gemm_job(CHIP, "fc", a, w, c, bias=b, out_scales=s, activation=act, mapping=mapping)
    out = execute(
        Program("t", p.tensors, [plain, fused]),
        CHIP,
        mode="functional",
        inputs={"A": a_np, "W": w_np, "b": b_np, "s": s_np},
    ).outputs
    acc = torch.from_numpy(out["ACC"])
    got = out["C"].astype(np.float32)
    assert np.array_equal(
        got, convert(activate(acc * torch.from_numpy(s_np), act), out_dt).astype(np.float32)
    )
    lin = F.linear(torch.from_numpy(a_np.astype(np.float32)), torch.from_numpy(w_np.astype(np.float32)))
    exact = (lin + torch.from_numpy(b_np)) * torch.from_numpy(s_np)
    exact = {
        "none": exact,
        "relu": torch.relu(exact),
        "sigmoid": torch.sigmoid(exact),
        "tanh": torch.tanh(exact),
    }[act]
    lut = {"sigmoid": nx.SIGMOID_MAX_ABS_ERROR, "tanh": nx.TANH_MAX_ABS_ERROR}.get(act, 0.0)
    rel = {DType.FP16: 2**-10, DType.BF16: 2**-7, DType.FP32: 0.0}[out_dt]
    tol = lut + rel * float(exact.abs().max()) + 1e-4 * math.sqrt(k) * float(s_np.max())
    assert float(np.abs(got - exact.numpy()).max()) <= tol


def test_relu_with_a_scalar_out_scale_equals_relu_after_requantization():
    m, k, n = 64, 96, 80
    rng = np.random.default_rng(5)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    p = plan()
    a, w = p.add("A", (m, k), DType.INT8, Level.SRAM), p.add("W", (n, k), DType.INT8, Level.SRAM)
    c = p.add("C", (m, n), DType.INT8, Level.SRAM)
    job = gemm_job(CHIP, "fc", a, w, c, out_scale=700.0, activation="relu")
    got = execute(Program("t", p.tensors, [job]), CHIP, mode="functional", inputs={"A": a_np, "W": w_np})
    acc = torch.from_numpy(a_np).long() @ torch.from_numpy(w_np).long().T
    recip = torch.tensor(1 / 700, dtype=torch.float32)
    ref = torch.relu(torch.clamp(torch.round(acc.float() * recip), -128, 127)).to(torch.int8)
    assert np.array_equal(got.outputs["C"], ref.numpy())


def test_epilogue_argument_errors():
    p = plan()
    a, w = p.add("A", (8, 16), DType.INT8, Level.SRAM), p.add("W", (10, 16), DType.INT8, Level.SRAM)
    c = p.add("C", (8, 10), DType.INT8, Level.SRAM)
    s = p.add("s", (1, 10), DType.FP32, Level.SRAM)
    bad = p.add("s16", (1, 10), DType.FP16, Level.SRAM)
    known = ", ".join(["none"] + sorted(k.value for k, e in ELEMENTWISE.items() if e.epilogue))
    assert {"gelu", "relu", "sigmoid", "silu", "tanh"} <= set(known.split(", "))
    with pytest.raises(UsageError, match=rf"^fc: unknown activation 'exp' \(known: {known}\)$"):
        gemm_job(CHIP, "fc", a, w, c, out_scales=s, activation="exp")
    with pytest.raises(UsageError, match=r"^fc: out_scales must be \[1, 10\] fp32, got \[1, 10\] fp16$"):
        gemm_job(CHIP, "fc", a, w, c, out_scales=bad)
    with pytest.raises(UsageError, match=r"^fc: row_scales must be \[8, 1\] fp32, got \[1, 10\] fp32$"):
        gemm_job(CHIP, "fc", a, w, c, out_scale=0.1, row_scales=s)
    with pytest.raises(UsageError, match=r"^fc: out_scale must be a positive finite number, got inf$"):
        gemm_job(CHIP, "fc", a, w, c, out_scale=float("inf"), out_scales=s)


def _one_matmul(**fields) -> Program:
    p = plan()
    p.add("A", (64, 32), DType.INT8, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 4096), CbDecl(1, 4096, 4096), CbDecl(2, 8192, 32768)), ([], []))
    prog.cores[0].append(DmaIn.one(0, TileStream("A", (64, 32), loop((0, 0)))))
    prog.cores[0].append(DmaIn.one(1, TileStream("A", (64, 32), loop((0, 0)))))
    prog.cores[1].append(MatMul(0, 1, DType.INT8, 1, 1, 1, 64, 64, 32, **fields))
    return Program("p", p.tensors, [Job("j", "t", {(0, 0): prog})])


def test_epilogue_rules_in_the_engine():
    with pytest.raises(
        ProgramError, match=r"activation add is not an epilogue activation \(gelu, .*relu, .*\)$"
    ):
        resolve(_one_matmul(out_cb=2, activation=SeOp.ADD), CHIP)
    with pytest.raises(
        ProgramError, match=r"post_bias_cb and activation apply where blocks are converted \(out_cb\)$"
    ):
        resolve(_one_matmul(reduce_out=Direction.EAST, activation=SeOp.RELU), CHIP)


# ------------------------------------------------------------------------------------------------ timing


def _gemm_seconds(m, k, n, dt=DType.INT8, out_dt=DType.INT8, **kw):
    p = plan()
    a, w = p.add("A", (m, k), dt, Level.SRAM), p.add("W", (n, k), dt, Level.SRAM)
    c = p.add("C", (m, n), out_dt, Level.SRAM)
    if kw.pop("scales", False):
        kw["out_scales"] = p.add("s", (1, n), DType.FP32, Level.SRAM)
    elif dt == DType.INT8 and out_dt == DType.INT8:
        kw["out_scale"] = 0.01
    mapping = choose_mapping(CHIP, m, k, n, dt, out_dt, (Level.SRAM, Level.SRAM), Region.whole(CHIP))
    job = gemm_job(CHIP, "fc", a, w, c, mapping=mapping, **kw)
    return execute(Program("t", p.tensors, [job]), CHIP).timing.seconds


@pytest.mark.parametrize("shape", [(512, 64, 512), (2048, 1024, 1024), (100, 300, 70)])
def test_more_epilogue_work_never_takes_less_time(shape):
    plain = _gemm_seconds(*shape)
    scaled = _gemm_seconds(*shape, scales=True)
    relu = _gemm_seconds(*shape, scales=True, activation="relu")
    sigmoid = _gemm_seconds(*shape, scales=True, activation="sigmoid")
    tanh = _gemm_seconds(*shape, scales=True, activation="tanh")
    assert plain <= scaled * (1 + 1e-9) <= relu * (1 + 1e-9) <= sigmoid * (1 + 1e-9)
    assert math.isclose(sigmoid, tanh, rel_tol=1e-9)


def test_epilogue_hides_behind_a_long_k_loop():
    # K = 1024: the DPE spends 32 steps per block, the RE converts a block in a fraction of that
    plain = _gemm_seconds(2048, 1024, 1024, scales=True)
    sigmoid = _gemm_seconds(2048, 1024, 1024, scales=True, activation="sigmoid")
    assert sigmoid <= plain * 1.02


@pytest.mark.parametrize("shape", [(512, 64, 512), (1024, 512, 256), (100, 300, 70)])
def test_fused_epilogue_costs_less_than_a_separate_se_pass(shape):
    m, k, n = shape
    fused = _gemm_seconds(m, k, n, DType.FP16, DType.FP16, activation="sigmoid")
    p = plan()
    a, w = p.add("A", (m, k), DType.FP16, Level.SRAM), p.add("W", (n, k), DType.FP16, Level.SRAM)
    c, y = p.add("C", (m, n), DType.FP16, Level.SRAM), p.add("Y", (m, n), DType.FP16, Level.SRAM)
    mapping = choose_mapping(
        CHIP, m, k, n, DType.FP16, DType.FP16, (Level.SRAM, Level.SRAM), Region.whole(CHIP)
    )
    gemm = gemm_job(CHIP, "fc", a, w, c, mapping=mapping)
    act = elementwise_job(CHIP, "act", SeOp.SIGMOID, c, y)
    act.deps = ("fc",)
    separate = execute(Program("t", p.tensors, [gemm, act]), CHIP).timing.seconds
    assert fused < separate


def test_matmul_epilogue_closed_form():
    p = plan()
    p.add("A", (128, 64), DType.INT8, Level.SRAM)
    p.add("W", (64, 64), DType.INT8, Level.SRAM)
    p.add("s", (1, 64), DType.FP32, Level.SRAM)
    p.add("C", (128, 64), DType.FP16, Level.SRAM)
    cbs = (CbDecl(0, 0, 16384), CbDecl(1, 16384, 16384), CbDecl(2, 32768, 32768), CbDecl(3, 65536, 1024))
    prog = PeProgram((0, 0), cbs, ([], []))
    prog.cores[0].append(DmaIn.one(0, TileStream("A", (64, 32), loop((0, 0), (2, 64, 0), (2, 0, 32)))))
    prog.cores[0].append(DmaIn.one(1, TileStream("W", (64, 32), loop((0, 0), (2, 0, 0), (2, 0, 32)))))
    prog.cores[0].append(DmaIn.one(3, TileStream("s", (1, 64), loop((0, 0), (2, 0, 0)))))
    mm = MatMul(
        0,
        1,
        DType.INT8,
        2,
        1,
        2,
        64,
        64,
        32,
        out_cb=2,
        out_dtype=DType.FP16,
        scale_cb=3,
        activation=SeOp.TANH,
    )
    prog.cores[1].append(mm)
    prog.cores[1].append(DmaOut(2, TileStream("C", (64, 64), loop((0, 0), (2, 64, 0)))))
    prg = Program("p", p.tensors, [Job("j", "t", {(0, 0): prog})])
    resolved = resolve(prg, CHIP)
    wm = WorkModel(prg, resolved, CHIP, resource_map(CHIP), {})
    work = wm.work(next(nd for nd in resolved.nodes if isinstance(nd.cmd, MatMul)))
    dpe = 2 * 2 * 4 * 32**3 / dpe_macs_per_cycle(CHIP, DType.INT8)  # blocks x steps x 2x2 DPE blocks
    epi = 64 * 64 * (1 + SE_OPS_PER_ELEMENT[SeOp.TANH]) / se_ops_per_cycle(CHIP, DType.FP32)
    drain = 64 * 64 * 4 / CHIP.re.bytes_per_cycle
    assert math.isclose(work.busy_s, (max(dpe, 2 * epi) + epi + drain) / CHIP.hz)
