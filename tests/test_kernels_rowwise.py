"""Row reductions and column-broadcast elementwise jobs against numpy/torch, functional and timed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import se_ops_per_cycle
from mtiasim.isa import Level, MemoryPlan, Program, ReduceOp, SeOp
from mtiasim.kernels.common import Region
from mtiasim.kernels.elementwise import elementwise_job
from mtiasim.kernels.rowwise import reduce_rows_job

CHIP = load_chip("mtia-v1")
regions = st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4)])


def _run(p: MemoryPlan, job, inputs, mode="functional"):
    return execute(Program("t", p.tensors, [job]), CHIP, mode=mode, inputs=inputs)


def _sequential_sum(x: np.ndarray) -> np.ndarray:
    """FP32 accumulation in column order, written out as a loop (the spec, not the engine's cumsum)."""
    acc = np.zeros(x.shape[0], np.float32)
    for j in range(x.shape[1]):
        acc = (acc + x[:, j].astype(np.float32)).astype(np.float32)
    return acc


@given(st.integers(1, 300), st.integers(1, 700), st.sampled_from(list(ReduceOp)), regions, st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_row_reduction_is_the_specified_arithmetic(rows, cols, op, region, seed):
    rng = np.random.default_rng(seed)
    # negative rows too, so a max/min that read the zero padding of a ragged last tile would be wrong
    x_np = (rng.standard_normal((rows, cols)) * 4 - 3).astype(np.float16)
    p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
    x = p.add("X", (rows, cols), DType.FP16, Level.SRAM)
    out = p.add("O", (rows, 1), DType.FP32, Level.SRAM)
    got = _run(p, reduce_rows_job(CHIP, "r", op, x, out, region=region), {"X": x_np}).outputs["O"][:, 0]
    xf = x_np.astype(np.float32)
    if op == ReduceOp.SUM:
        want = _sequential_sum(xf)
    elif op == ReduceOp.MEAN:
        want = (_sequential_sum(xf) / np.float32(cols)).astype(np.float32)
    else:
        want = xf.max(axis=1) if op == ReduceOp.MAX else xf.min(axis=1)
    np.testing.assert_array_equal(got, want)
    ref = getattr(
        torch.from_numpy(xf), {"sum": "sum", "mean": "mean", "max": "amax", "min": "amin"}[op.value]
    )(1)
    assert np.allclose(got, ref.numpy(), rtol=1e-5, atol=1e-4 * cols)


def test_row_max_propagates_nan_and_sum_overflows_to_inf():
    x_np = np.array([[1, np.nan, 3], [60000, 60000, 60000]], dtype=np.float16)
    for op, want in ((ReduceOp.MAX, [np.nan, 60000]), (ReduceOp.SUM, [np.nan, np.inf])):
        p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
        x = p.add("X", (2, 3), DType.FP16, Level.SRAM)
        out = p.add("O", (2, 1), DType.FP16, Level.SRAM)
        got = _run(p, reduce_rows_job(CHIP, "r", op, x, out), {"X": x_np}).outputs["O"][:, 0]
        np.testing.assert_array_equal(got, np.array(want, np.float16))


@given(st.integers(1, 200), st.integers(1, 600), st.sampled_from(["add", "mul", "div", "maximum"]), regions)
@settings(max_examples=30, deadline=None)
def test_column_broadcast_operand(rows, cols, op, region):
    rng = np.random.default_rng(rows * 1000 + cols)
    x_np = rng.standard_normal((rows, cols)).astype(np.float16)
    y_np = (rng.standard_normal((rows, 1)) + 3).astype(np.float16)
    p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
    x = p.add("X", (rows, cols), DType.FP16, Level.SRAM)
    y = p.add("Y", (rows, 1), DType.FP16, Level.SRAM)
    out = p.add("O", (rows, cols), DType.FP32, Level.SRAM)
    job = elementwise_job(CHIP, op, SeOp(op), x, out, y=y, region=region)
    got = _run(p, job, {"X": x_np, "Y": y_np}).outputs["O"]
    want = getattr(np, {"add": "add", "mul": "multiply", "div": "divide", "maximum": "maximum"}[op])(
        x_np.astype(np.float32), y_np.astype(np.float32)
    )
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("rows,cols", [(4096, 512), (64, 8192)])
def test_row_reduction_time_is_the_se_rate_or_the_memory(rows, cols):
    """A large reduction streams at the SE's rate (one op per element, FP32 lanes) or the memory's, whichever
    is slower; fixed costs (launch, latency) add at most a few microseconds."""
    p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
    x = p.add("X", (rows, cols), DType.FP16, Level.SRAM)
    out = p.add("O", (rows, 1), DType.FP16, Level.SRAM)
    t = _run(p, reduce_rows_job(CHIP, "r", ReduceOp.SUM, x, out), {}, mode="timing").timing.seconds
    se_s = rows * cols / (se_ops_per_cycle(CHIP, DType.FP32) * 64 * CHIP.hz)
    sram_s = rows * cols * 2 / (CHIP.sram.slices * CHIP.sram.slice_bytes_per_cycle * CHIP.hz)
    assert max(se_s, sram_s) <= t <= max(se_s, sram_s) * 1.5 + 10e-6
