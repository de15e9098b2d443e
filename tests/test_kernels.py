"""Every kernel's functional output equals a torch reference, over hypothesis-generated (ragged) shapes."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.bench.gemm import int8_out_scale
from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.engine.numerics import fbgemm_rows_dequantize, fbgemm_rows_quantize
from mtiasim.hw import load_chip
from mtiasim.indices import offsets_from_lengths
from mtiasim.isa import Level, MemoryPlan, PoolMode, Program, SeOp
from mtiasim.kernels.bmm import bmm_job
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import dynamic_quantize_job, elementwise_job
from mtiasim.kernels.gemm import GemmMapping, gemm_job
from mtiasim.kernels.layout import concat_job, transpose_job
from mtiasim.kernels.tbe import tbe_job

CHIP = load_chip("mtia-v1")


def plan():
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def run(tensors, job, inputs, mode="functional"):
    return execute(Program("t", tensors, [job]), CHIP, mode=mode, inputs=inputs)


regions = st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4), Region(5, 0, 3, 8)])


@given(
    st.integers(1, 200),
    st.integers(1, 300),
    st.integers(1, 200),
    st.sampled_from(["ws", "is", "os"]),
    regions,
    st.booleans(),
    st.integers(0, 1000),
)
@settings(max_examples=40)
def test_gemm_int8_bit_exact(m, k, n, variant, region, requant, seed):
    rng = np.random.default_rng(seed)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    p = plan()
    a, w = p.add("A", (m, k), DType.INT8, Level.SRAM), p.add("W", (n, k), DType.INT8, Level.DRAM)
    c = p.add("C", (m, n), DType.INT8 if requant else DType.INT32, Level.SRAM)
    scale = int8_out_scale(k) if requant else None
    res = run(
        p.tensors,
        gemm_job(CHIP, "fc", a, w, c, out_scale=scale, region=region, variant=variant),
        {"A": a_np, "W": w_np},
    )
    acc = torch.from_numpy(a_np).long() @ torch.from_numpy(w_np).long().T
    recip = torch.tensor(1.0 / scale, dtype=torch.float32) if requant else None
    ref = torch.clamp(torch.round(acc.float() * recip), -128, 127).to(torch.int8) if requant else acc.int()
    assert np.array_equal(res.outputs["C"], ref.numpy())


@given(
    st.integers(1, 150),
    st.integers(1, 200),
    st.integers(1, 150),
    st.sampled_from([DType.FP16, DType.BF16]),
    st.integers(0, 1000),
)
@settings(max_examples=25)
def test_gemm_float_with_bias(m, k, n, dt, seed):
    rng = np.random.default_rng(seed)
    a_np = rng.standard_normal((m, k)).astype(dt.numpy)
    w_np = rng.standard_normal((n, k)).astype(dt.numpy)
    b_np = rng.standard_normal((1, n)).astype(np.float32)
    p = plan()
    a, w = p.add("A", (m, k), dt, Level.SRAM), p.add("W", (n, k), dt, Level.SRAM)
    bias, c = p.add("bias", (1, n), DType.FP32, Level.SRAM), p.add("C", (m, n), DType.FP32, Level.SRAM)
    res = run(p.tensors, gemm_job(CHIP, "fc", a, w, c, bias=bias), {"A": a_np, "W": w_np, "bias": b_np})
    ta = torch.from_numpy(a_np.astype(np.float32))
    tw = torch.from_numpy(w_np.astype(np.float32))
    ref = F.linear(ta, tw, torch.from_numpy(b_np[0])).numpy()
    assert np.allclose(res.outputs["C"], ref, rtol=1e-5, atol=1e-4 * np.sqrt(k))


def test_gemm_k_split_reduction_chain():
    # force K over 4 PEs of a row: partial sums cross the reduction network west->east
    m, k, n = 96, 500, 70
    rng = np.random.default_rng(1)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    p = plan()
    a, w, c = (
        p.add("A", (m, k), DType.INT8, Level.SRAM),
        p.add("W", (n, k), DType.INT8, Level.SRAM),
        p.add("C", (m, n), DType.INT32, Level.SRAM),
    )
    for variant in ("ws", "is", "os"):
        job = gemm_job(CHIP, "fc", a, w, c, mapping=GemmMapping(2, 1, 2, 4, variant))
        assert any(
            cmd.reduce_out is not None
            for prog in job.pes.values()
            for cmd in prog.cores[1]
            if hasattr(cmd, "reduce_out")
        )
        res = run(p.tensors, job, {"A": a_np, "W": w_np})
        assert np.array_equal(res.outputs["C"], a_np.astype(np.int64) @ w_np.astype(np.int64).T)


@given(
    st.integers(1, 40),  # batch
    st.lists(st.integers(1, 300), min_size=1, max_size=4),  # rows per table
    st.sampled_from([4, 16, 64, 100]),
    st.sampled_from(["sum", "mean"]),
    st.booleans(),
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_tbe_matches_torch_embedding_bag(batch, table_rows, dim, mode, weighted, seed):
    rng = np.random.default_rng(seed)
    t = len(table_rows)
    lengths = rng.integers(0, 9, size=t * batch)
    offsets = offsets_from_lengths(lengths)
    idx = np.concatenate(
        [rng.integers(0, table_rows[i], int(lengths[i * batch : (i + 1) * batch].sum())) for i in range(t)]
    ).astype(np.int32)
    weights = rng.standard_normal((sum(table_rows), dim)).astype(np.float32)
    packed = fbgemm_rows_quantize(weights)
    psw = rng.random(idx.size).astype(np.float32)
    p = plan()
    tab = p.add("tables", packed.shape, DType.UINT8, Level.DRAM, cached=True)
    ind = p.add("indices", (max(idx.size, 1),), DType.INT32, Level.SRAM)
    wts = p.add("w", (max(idx.size, 1),), DType.FP32, Level.SRAM) if weighted else None
    out = p.add("out", (batch, t * dim), DType.FP32, Level.SRAM)
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
        mode=PoolMode(mode),
        weights=wts,
    )
    inputs = {"tables": packed, "indices": np.resize(idx, max(idx.size, 1))}
    if weighted:
        inputs["w"] = np.resize(psw, max(idx.size, 1))
    res = run(p.tensors, job, inputs, mode="both")
    deq = torch.from_numpy(fbgemm_rows_dequantize(packed, dim))
    starts = np.concatenate([[0], np.cumsum(table_rows)[:-1]])
    cols = []
    for i in range(t):
        o = offsets[i * batch : (i + 1) * batch + 1]
        ix = torch.from_numpy(idx[o[0] : o[-1]].astype(np.int64) + starts[i])
        off = torch.from_numpy((o[:-1] - o[0]).astype(np.int64))
        w = torch.from_numpy(psw[o[0] : o[-1]]) if weighted else None
        cols.append(F.embedding_bag(ix, deq, off, mode=mode, per_sample_weights=w if mode == "sum" else None))
    if weighted and mode == "mean":  # torch only weights sum bags; mtiasim weights then averages
        return
    ref = torch.cat(cols, dim=1).numpy()
    assert np.allclose(res.outputs["out"], ref, rtol=1e-5, atol=1e-5)
    assert res.timing.seconds > 0


shapes3 = st.tuples(st.integers(1, 12), st.integers(1, 70), st.integers(1, 70))


@given(shapes3, st.integers(0, 1000))
@settings(max_examples=20)
def test_transpose_and_concat_exact(shape, seed):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape).astype(np.float16)
    y_np = rng.standard_normal(shape).astype(np.float16)
    m, k, n = shape
    p = plan()
    x, xt = p.add("X", shape, DType.FP16, Level.SRAM), p.add("XT", (m, n, k), DType.FP16, Level.DRAM)
    res = run(p.tensors, transpose_job(CHIP, "t", x, xt), {"X": x_np})
    assert np.array_equal(res.outputs["XT"], torch.from_numpy(x_np).transpose(1, 2).numpy())
    p = plan()
    x, y, o = (
        p.add("X", shape, DType.FP16, Level.SRAM),
        p.add("Y", shape, DType.FP16, Level.SRAM),
        p.add("O", (m, k, 2 * n), DType.FP16, Level.SRAM),
    )
    res = run(p.tensors, concat_job(CHIP, "c", x, y, o), {"X": x_np, "Y": y_np})
    assert np.array_equal(
        res.outputs["O"], torch.cat([torch.from_numpy(x_np), torch.from_numpy(y_np)], dim=-1).numpy()
    )


@given(
    st.integers(1, 20), st.sampled_from([1, 2, 3, 16, 64, 100, 128]), st.integers(1, 90), st.integers(0, 1000)
)
@settings(max_examples=20)
def test_bmm_matches_torch(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a_np = rng.standard_normal((m, k, n)).astype(np.float16)
    b_np = rng.standard_normal((m, k, n)).astype(np.float16)
    p = plan()
    a, b, c = (
        p.add("A", (m, k, n), DType.FP16, Level.SRAM),
        p.add("B", (m, k, n), DType.FP16, Level.SRAM),
        p.add("C", (m, k, k), DType.FP32, Level.SRAM),
    )
    res = run(p.tensors, bmm_job(CHIP, "bmm", a, b, c), {"A": a_np, "B": b_np})
    ref = torch.bmm(torch.from_numpy(a_np).float(), torch.from_numpy(b_np).float().transpose(1, 2)).numpy()
    assert np.allclose(res.outputs["C"], ref, rtol=1e-5, atol=1e-4 * np.sqrt(n))


@given(
    st.tuples(st.integers(1, 300), st.integers(1, 200)),
    st.sampled_from(["relu", "tanh", "sigmoid", "dequantize", "add", "mul"]),
    st.integers(0, 1000),
)
@settings(max_examples=30)
def test_se_elementwise(shape, op, seed):
    rng = np.random.default_rng(seed)
    p = plan()
    if op == "dequantize":
        x_np = rng.integers(-128, 128, shape, dtype=np.int8)
        x = p.add("X", shape, DType.INT8, Level.SRAM)
    else:
        x_np = (rng.standard_normal(shape) * 3).astype(np.float16)
        x = p.add("X", shape, DType.FP16, Level.SRAM)
    y_np = (rng.standard_normal(shape) * 3).astype(np.float16)
    y = p.add("Y", shape, DType.FP16, Level.SRAM) if op in ("add", "mul") else None
    out = p.add("O", shape, DType.FP32, Level.SRAM)
    job = elementwise_job(CHIP, op, SeOp(op), x, out, y=y, scale=0.05, zero_point=-3)
    inputs = {"X": x_np, **({"Y": y_np} if y is not None else {})}
    got = run(p.tensors, job, inputs).outputs["O"]
    tx = torch.from_numpy(x_np.astype(np.float32))
    ty = torch.from_numpy(y_np.astype(np.float32))
    ref, tol = {
        "relu": (torch.relu(tx), 0.0),
        "tanh": (torch.tanh(tx), 6e-3),
        "sigmoid": (torch.sigmoid(tx), 7.5e-4),
        "dequantize": ((tx + 3) * 0.05, 1e-6),
        "add": (tx + ty, 0.0),
        "mul": (tx * ty, 0.0),
    }[op]
    assert np.abs(got - ref.numpy()).max() <= tol


@given(st.tuples(st.integers(1, 200), st.integers(1, 150)), st.integers(0, 1000))
@settings(max_examples=20)
def test_dynamic_quantize_matches_torch(shape, seed):
    x_np = (np.random.default_rng(seed).standard_normal(shape) * 4 + 1).astype(np.float16)
    p = plan()
    x, q = p.add("X", shape, DType.FP16, Level.SRAM), p.add("Q", shape, DType.INT8, Level.SRAM)
    from mtiasim.kernels.tiling import grid_loops, tile_shape

    parts = len(grid_loops(shape[0], shape[1], tile_shape(shape[0], shape[1], 2), CHIP.n_pes))
    part, qp = p.add("part", (parts, 2), DType.FP32, Level.SRAM), p.add("qp", (1, 2), DType.FP32, Level.SRAM)
    res = run(p.tensors, dynamic_quantize_job(CHIP, "q", x, q, part, qp), {"X": x_np})
    tx = torch.from_numpy(x_np.astype(np.float32))
    lo, hi = min(float(tx.min()), 0.0), max(float(tx.max()), 0.0)
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    assert res.outputs["qp"].tolist() == [[float(tx.min()), float(tx.max())]]
    ref = torch.clamp(torch.round(tx / torch.tensor(scale, dtype=torch.float32)) + zp, -128, 127).to(
        torch.int8
    )
    assert np.array_equal(res.outputs["Q"], ref.numpy())


def test_gemm_ws_chunks_agree_along_a_ragged_k_chain():
    # Weight-stationary with K over 3 PEs whose k-ranges differ in depth: the shallower PE could hold more
    # W blocks per chunk than the deepest. Every PE of the chain must cut the same chunks, or the partial
    # blocks it reduces into its neighbour do not match what the neighbour expects (seen at 464x1089x1139).
    from mtiasim.kernels.common import split
    from mtiasim.kernels.gemm import tiles, ws_chunk_blocks

    tm, tn, tk = tiles(CHIP)

    def per(kb):
        return ws_chunk_blocks(CHIP, kb, tk, DType.INT8, DType.INT32, 0)

    def depths(k):
        return [-(-(hi - lo) // tk) for lo, hi in split(k, 3, tk)]

    k = next(k for k in range(tk * 3, 4096, tk) if per(max(depths(k))) != per(min(depths(k))))
    n = tn * (per(min(depths(k))) + 2) + 5  # more n-blocks than one chunk holds, ragged
    m = 70
    rng = np.random.default_rng(3)
    a_np = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w_np = rng.integers(-128, 128, (n, k), dtype=np.int8)
    p = plan()
    a, w, c = (
        p.add("A", (m, k), DType.INT8, Level.SRAM),
        p.add("W", (n, k), DType.INT8, Level.SRAM),
        p.add("C", (m, n), DType.INT32, Level.SRAM),
    )
    job = gemm_job(CHIP, "fc", a, w, c, mapping=GemmMapping(1, 1, 1, 3, "ws"))
    res = run(p.tensors, job, {"A": a_np, "W": w_np})
    assert np.array_equal(res.outputs["C"], a_np.astype(np.int64) @ w_np.astype(np.int64).T)
