"""The command set's rules (errors with exact messages) and the timing engine's properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.ops import OPS, prepare_op
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.dtypes import DType
from mtiasim.engine import execute
from mtiasim.engine.resolve import resolve
from mtiasim.engine.timing import TimingModel, simulate
from mtiasim.errors import CapacityError, ProgramError
from mtiasim.hw import load_chip
from mtiasim.hw.lpddr5 import dram_timing
from mtiasim.hw.peaks import dram_channel_bytes_per_s
from mtiasim.isa import (
    Barrier,
    CbDecl,
    CbPop,
    Direction,
    DmaIn,
    DmaOut,
    Job,
    Level,
    MatMul,
    MemoryPlan,
    Multicast,
    Operand,
    PeProgram,
    Program,
    SeMap,
    SeOp,
    TileStream,
    loop,
)

CHIP = load_chip("mtia-v1")


def plan():
    return MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)


def program(tensors, pes, groups=None):
    return Program("p", tensors, [Job("j", "test", pes, groups=groups or {})])


def stream(name, rows, cols, tile=(64, 64)):
    return TileStream(name, tile, loop((0, 0), (rows // tile[0], tile[0], 0), (cols // tile[1], 0, tile[1])))


def copy_pe(pe, x, y, cb_bytes=16384, n_rows=256, n_cols=256):
    prog = PeProgram(pe, (CbDecl(0, 0, cb_bytes),), ([], []))
    prog.cores[0].append(DmaIn.one(0, stream(x, n_rows, n_cols)))
    prog.cores[1].append(DmaOut(0, stream(y, n_rows, n_cols)))
    return prog


# ------------------------------------------------------------------------------------------ rule errors


def test_deadlock_names_what_each_core_waits_for():
    p = plan()
    p.add("X", (256, 256), DType.FP16, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 16384), CbDecl(1, 16384, 16384)), ([], []))
    prog.cores[1].append(SeMap(SeOp.RELU, 0, 1, 4, DType.FP16))
    with pytest.raises(ProgramError) as e:
        resolve(program(p.tensors, {(0, 0): prog}), CHIP)
    assert (
        str(e.value) == "job j: deadlock: PE(0, 0) core 1 command 0 (SeMap) waits for 4 tiles in CB 0 (has 0)"
    )


def test_unconsumed_tiles_are_an_error():
    p = plan()
    p.add("X", (256, 256), DType.INT8, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 8192),), ([DmaIn.one(0, stream("X", 256, 256))], []))
    with pytest.raises(ProgramError, match=r"^job j: PE\(0, 0\) CB 0 ends the job with 16 unconsumed tiles$"):
        resolve(program(p.tensors, {(0, 0): prog}), CHIP)


def test_circular_buffers_must_fit_the_local_store():
    prog = PeProgram((2, 3), (CbDecl(0, 0, 100_000), CbDecl(1, 100_000, 40_000)), ([], []))
    with pytest.raises(CapacityError) as e:
        resolve(program({}, {(2, 3): prog}), CHIP)
    assert str(e.value) == "job j: PE(2, 3) CB 1 [100000, 140000) exceeds the 128 KiB local store"


def test_overlapping_circular_buffers():
    prog = PeProgram((0, 0), (CbDecl(0, 0, 4096), CbDecl(1, 2048, 4096)), ([], []))
    with pytest.raises(ProgramError, match=r"CB 0 and CB 1 overlap in the local store"):
        resolve(program({}, {(0, 0): prog}), CHIP)


def test_tile_larger_than_its_buffer():
    p = plan()
    p.add("X", (256, 256), DType.FP32, Level.SRAM)
    p.add("Y", (256, 256), DType.FP32, Level.SRAM)
    with pytest.raises(CapacityError) as e:
        resolve(program(p.tensors, {(0, 0): copy_pe((0, 0), "X", "Y", cb_bytes=8192)}), CHIP)
    assert str(e.value) == (
        "job j: PE(0, 0) core 0 command 0 (DmaIn): a 64x64 fp32 tile (16384 B) does not fit CB 0 (8192 B)"
    )


def test_resident_operand_must_fit():
    p = plan()
    p.add("A", (64, 4096), DType.INT8, Level.SRAM)
    p.add("W", (64, 4096), DType.INT8, Level.SRAM)
    p.add("C", (64, 64), DType.INT32, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 8192), CbDecl(1, 8192, 65536), CbDecl(2, 73728, 32768)), ([], []))
    steps = 4096 // 32
    prog.cores[0].append(DmaIn.one(1, TileStream("W", (64, 32), loop((0, 0), (steps, 0, 32)))))
    prog.cores[0].append(DmaIn.one(0, TileStream("A", (64, 32), loop((0, 0), (steps, 0, 32)))))
    prog.cores[1].append(MatMul(0, 1, DType.INT8, 1, 1, steps, 64, 64, 32, b_mode=Operand.RESIDENT, out_cb=2))
    prog.cores[1].append(DmaOut(2, TileStream("C", (64, 64), loop((0, 0)))))
    prog.cores[1].append(CbPop(1, steps))
    with pytest.raises(CapacityError) as e:
        resolve(program(p.tensors, {(0, 0): prog}), CHIP)
    assert "128 resident tiles of 2048 B (256.0 KiB) exceed CB 1 (64.0 KiB)" in str(e.value)


def test_multicast_members_must_issue_the_same_stream():
    p = plan()
    p.add("X", (256, 256), DType.FP16, Level.SRAM)
    p.add("Y", (512, 256), DType.FP16, Level.SRAM)
    pes = {}
    for c in range(2):
        prog = PeProgram((0, c), (CbDecl(0, 0, 16384),), ([], []))
        rows = 256 if c == 0 else 128  # the second PE asks for a different stream
        prog.cores[0].append(DmaIn.one(0, stream("X", rows, 256), Multicast("row", ((0, 0), (0, 1)))))
        prog.cores[1].append(
            DmaOut(0, TileStream("Y", (64, 64), loop((c * 256, 0), (rows // 64, 64, 0), (4, 0, 64))))
        )
        pes[(0, c)] = prog
    with pytest.raises(ProgramError, match=r"multicast transfer #0 differs from the one PE\(0, 0\) issues"):
        resolve(program(p.tensors, pes), CHIP)


def test_multicast_group_must_be_one_row_or_column():
    p = plan()
    p.add("X", (256, 256), DType.FP16, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 16384),), ([], []))
    prog.cores[0].append(DmaIn.one(0, stream("X", 256, 256), Multicast("row", ((0, 0), (1, 1)))))
    with pytest.raises(
        ProgramError, match=r"is not one row \(the NoC coalesces same-row or same-column requests only\)"
    ):
        resolve(program(p.tensors, {(0, 0): prog, (1, 1): PeProgram((1, 1), (), ([], []))}), CHIP)


def test_reduction_must_stay_in_the_job():
    p = plan()
    p.add("A", (64, 32), DType.INT8, Level.SRAM)
    prog = PeProgram((0, 7), (CbDecl(0, 0, 4096), CbDecl(1, 4096, 4096)), ([], []))
    prog.cores[0].append(
        DmaIn(
            (
                *DmaIn.one(0, TileStream("A", (64, 32), loop((0, 0)))).transfers,
                *DmaIn.one(1, TileStream("A", (64, 32), loop((0, 0)))).transfers,
            )
        )
    )
    prog.cores[1].append(MatMul(0, 1, DType.INT8, 1, 1, 1, 64, 64, 32, reduce_out=Direction.EAST))
    with pytest.raises(ProgramError, match=r"reduce_out east leads to PE\(0, 8\), which is not in the job"):
        resolve(program(p.tensors, {(0, 7): prog}), CHIP)


def test_sram_overflow_names_tensor_and_residents():
    p = plan()
    p.add("W", (8192, 8192), DType.INT8, Level.SRAM)
    with pytest.raises(CapacityError) as e:
        p.add("A", (8192, 16384), DType.INT8, Level.SRAM)
    assert str(e.value) == "tensor 'A' (128.0 MiB) does not fit SRAM (128 MiB, 64.0 MiB in use: W 64.0 MiB)"


def test_barrier_needs_every_participant():
    prog = PeProgram((0, 0), (), ([Barrier("cores")], []))
    with pytest.raises(
        ProgramError,
        match=r"deadlock: PE\(0, 0\) core 0 command 0 \(Barrier\) waits for the other participants",
    ):
        resolve(program({}, {(0, 0): prog}), CHIP)


def test_too_many_circular_buffers():
    cbs = tuple(CbDecl(i, i * 64, 64) for i in range(17))
    with pytest.raises(CapacityError, match=r"declares 17 circular buffers, the limit is 16"):
        resolve(program({}, {(0, 0): PeProgram((0, 0), cbs, ([], []))}), CHIP)


# ------------------------------------------------------------------------------------------ timing


def test_uncontended_dma_matches_its_closed_form():
    p = plan()
    p.add("X", (256, 256), DType.INT8, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 8192),), ([DmaIn.one(0, stream("X", 256, 256))], [CbPop(0, 16)]))
    prg = program(p.tensors, {(0, 0): prog})
    hz = CHIP.hz
    latency = CHIP.sram.latency_cycles / hz + CHIP.noc.hop_latency_cycles / hz  # corner PE: one hop
    issue = (CHIP.dma.setup_cycles + 16 * CHIP.core.cycles_per_command) / hz
    # 64x64 tiles of 256-byte rows: one 64-byte run per tile row, each one request; the engine keeps
    # `outstanding_requests` of them in flight
    in_flight = CHIP.dma.outstanding_requests * min(64, CHIP.dma.request_bytes)
    rate = min(
        CHIP.noc.fi_bytes_per_cycle * hz,  # its Fabric Interface
        in_flight / latency,  # bytes in flight / latency
        CHIP.sram.slices * CHIP.sram.slice_bytes_per_cycle * hz,
        65536 / issue,  # the core issues one DMA per tile
    )
    pop = CHIP.core.cycles_per_command / hz  # the consumer's last step after the last tile
    launch = (CHIP.host.launch_ns + CHIP.dispatch.job_launch_ns + CHIP.dispatch.job_end_ns) * 1e-9
    expect = launch + latency + 65536 / rate + pop
    for fidelity in ("analytic", "event"):
        t = execute(prg, CHIP, fidelity=fidelity).timing
        assert math.isclose(t.seconds, expect, rel_tol=1e-9), fidelity


def test_dram_contention_divides_the_channels():
    # 64 PEs stream 1 MiB each from LPDDR5 at once: the channels, not the PEs, set the pace
    p = plan()
    pes = {}
    for r in range(8):
        for c in range(8):
            name = f"X{r}{c}"
            p.add(name, (1024, 1024), DType.INT8, Level.DRAM)
            prog = PeProgram(
                (r, c),
                (CbDecl(0, 0, 16384),),
                ([DmaIn.one(0, TileStream(name, (16, 1024), loop((0, 0), (64, 16, 0))))], [CbPop(0, 64)]),
            )
            pes[(r, c)] = prog
    prg = program(p.tensors, pes)
    event = execute(prg, CHIP, fidelity="event").timing
    analytic = execute(prg, CHIP, fidelity="analytic").timing
    total = 64 * 2**20
    # long sequential runs cut into 256-byte pieces per channel: even when every piece opens a page (64
    # streams close each other's pages), its 8 bursts outlast an activation, so the bus binds; refresh takes
    # tRFC of every tREFI; and a channel's controller keeps queue_entries transactions of transaction_bytes in
    # flight for one latency each (Little's law). The slower of the two binds.
    d = CHIP.dram
    t = dram_timing(CHIP)
    assert d.interleave_bytes / d.burst_bytes * t.burst_s >= max(t.act_s, t.rc_s / d.banks_per_channel)
    bus = total / (d.channels * dram_channel_bytes_per_s(CHIP)) * t.refresh
    queue = total / (d.channels * d.queue_entries * d.transaction_bytes / (d.latency_ns * 1e-9))
    bound = max(bus, queue)
    overhead = (CHIP.host.launch_ns + CHIP.dispatch.job_launch_ns + CHIP.dispatch.job_end_ns) * 1e-9
    assert event.seconds >= analytic.seconds
    assert bound + overhead <= event.seconds <= (bound + overhead) * 1.03
    assert event.bound == "dram"


def _three(prep):
    resolved = resolve(prep.program, prep.chip)
    return [
        simulate(TimingModel(prep.program, resolved, prep.chip, prep.inputs), f).seconds
        for f in ("roofline", "analytic", "event")
    ]


@given(
    st.integers(1, 2048),
    st.integers(1, 2048),
    st.integers(1, 2048),
    st.sampled_from(["int8", "fp16"]),
    st.sampled_from(["sram", "dram"]),
)
@settings(max_examples=30)
def test_fidelities_are_ordered_for_gemm(m, k, n, dtype, placement):
    roof, ana, ev = _three(prepare_gemm(m, k, n, dtype, placement))
    assert 0 < roof <= ana * (1 + 1e-9)
    assert ana <= ev * (1 + 1e-9)


@given(
    st.sampled_from(OPS),
    st.integers(1, 300),
    st.integers(1, 130),
    st.integers(1, 70),
    st.sampled_from(["sram", "dram"]),
)
@settings(max_examples=25)
def test_fidelities_are_ordered_for_ops(op, m, k, n, placement):
    roof, ana, ev = _three(prepare_op(op, m, k, n, placement))
    assert 0 < roof <= ana * (1 + 1e-9) and ana <= ev * (1 + 1e-9)


@given(
    st.integers(1, 300),
    st.integers(1, 60),
    st.sampled_from([100, 10_000, 1_000_000]),
    st.sampled_from([16, 64, 128]),
)
@settings(max_examples=15)
def test_fidelities_are_ordered_for_tbe(batch, pooling, rows, dim):
    roof, ana, ev = _three(prepare_tbe(batch, pooling, rows, dim, tables=2))
    assert 0 < roof <= ana * (1 + 1e-9) and ana <= ev * (1 + 1e-9)


def test_compute_bound_gemm_approaches_the_dpe_peak():
    prep = prepare_gemm(4096, 4096, 4096, "int8", "sram", in_flight=1)  # one launch: the kernel alone
    res = prep.run()
    peak = CHIP.n_pes * CHIP.dpe.int8_macs_per_cycle * CHIP.hz
    compute = 4096**3 / peak
    assert res["bound"] == "compute"
    assert compute <= res["seconds"] <= compute * 1.1
    fp16 = prepare_gemm(4096, 4096, 4096, "fp16", "sram", in_flight=1).run()
    assert fp16["seconds"] >= 1.9 * compute  # FP16 runs the DPE at half the INT8 rate


def test_matmul_closed_form_cycles():
    from mtiasim.engine.resources import resource_map
    from mtiasim.engine.work import WorkModel

    p = plan()
    p.add("A", (128, 96), DType.FP16, Level.SRAM)
    p.add("W", (64, 96), DType.FP16, Level.SRAM)
    p.add("C", (128, 64), DType.FP32, Level.SRAM)
    prog = PeProgram(
        (0, 0), (CbDecl(0, 0, 32768), CbDecl(1, 32768, 32768), CbDecl(2, 65536, 65536)), ([], [])
    )
    prog.cores[0].append(DmaIn.one(0, TileStream("A", (64, 32), loop((0, 0), (2, 64, 0), (3, 0, 32)))))
    prog.cores[0].append(DmaIn.one(1, TileStream("W", (64, 32), loop((0, 0), (2, 0, 0), (3, 0, 32)))))
    prog.cores[1].append(MatMul(0, 1, DType.FP16, 2, 1, 3, 64, 64, 32, out_cb=2))
    prog.cores[1].append(DmaOut(2, TileStream("C", (64, 64), loop((0, 0), (2, 64, 0)))))
    prg = program(p.tensors, {(0, 0): prog})
    resolved = resolve(prg, CHIP)
    wm = WorkModel(prg, resolved, CHIP, resource_map(CHIP), {})
    mm = next(n for n in resolved.nodes if isinstance(n.cmd, MatMul))
    w = wm.work(mm)
    blocks = 2 * 1 * 3 * 4  # output blocks x steps x (2x2 DPE blocks per step)
    cycles = blocks * 32**3 / CHIP.dpe.fp16_macs_per_cycle + 64 * 64 * 4 / CHIP.re.bytes_per_cycle
    assert math.isclose(w.busy_s, cycles / CHIP.hz)
    assert w.counters["dpe_macs_fp16"] == blocks * 32**3


def test_barrier_orders_both_cores():
    p = plan()
    p.add("X", (256, 256), DType.FP16, Level.SRAM)
    p.add("Y", (256, 256), DType.FP16, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 16384),), ([], []))
    prog.cores[0].extend([DmaIn.one(0, stream("X", 256, 256)), Barrier("cores")])
    prog.cores[1].extend([Barrier("cores"), DmaOut(0, stream("Y", 256, 256))])
    res = execute(program(p.tensors, {(0, 0): prog}), CHIP)
    nodes = res.resolved.nodes
    dma_in = next(n.id for n in nodes if isinstance(n.cmd, DmaIn))
    dma_out = next(n.id for n in nodes if isinstance(n.cmd, DmaOut))
    assert res.timing.node_start[dma_out] >= res.timing.node_end[dma_in]


def test_runs_are_deterministic():
    a = prepare_tbe(64, 20, 1_000_000, 64, tables=4).run()
    b = prepare_tbe(64, 20, 1_000_000, 64, tables=4).run()
    assert a == b
    assert prepare_gemm(300, 200, 100).run() == prepare_gemm(300, 200, 100).run()


def test_small_buffers_make_producer_and_consumer_alternate():
    from mtiasim.isa import DmaGather, PoolMode, SePool

    def tbe_like(rows_cb_rows):
        p = plan()
        p.add("T", (1000, 260), DType.UINT8, Level.SRAM)
        p.add("I", (64 * 32,), DType.INT32, Level.SRAM)
        p.add("O", (64, 256), DType.FP16, Level.SRAM)
        prog = PeProgram((0, 0), (CbDecl(0, 0, rows_cb_rows * 260), CbDecl(1, 65536, 1024)), ([], []))
        prog.cores[0].append(DmaGather(0, "T", "I", 0, 64 * 32))
        prog.cores[1].append(SePool(0, 1, (32,) * 64, 256, PoolMode.SUM, DType.FP16))
        prog.cores[1].append(DmaOut(1, TileStream("O", (1, 256), loop((0, 0), (64, 1, 0)))))
        return program(p.tensors, {(0, 0): prog})

    idx = {"I": np.arange(64 * 32, dtype=np.int32) % 1000}
    single = execute(tbe_like(32), CHIP, inputs=idx).timing.seconds
    double = execute(tbe_like(64), CHIP, inputs=idx).timing.seconds
    assert single > double * 1.3  # one bag of buffer: gather and pool take turns


# ------------------------------------------------------------------------------- new commands and views


def _bcast_program(period: int, pop: bool = True):
    from mtiasim.isa import MemoryPlan as Plan

    p = Plan(CHIP.sram.bytes, CHIP.dram.bytes)
    p.add("X", (16, 32), DType.FP32, Level.SRAM)
    p.add("Y", (1, 32), DType.FP32, Level.SRAM)
    p.add("O", (16, 32), DType.FP32, Level.SRAM)
    x_loop = loop((0, 0), (2, 8, 0), (2, 0, 16))  # 2x2 tiles of 8x16, row-major
    y_loop = loop((0, 0), (2, 0, 16)) if period else loop((0, 0), (2, 0, 0), (2, 0, 16))
    prog = PeProgram((0, 0), (CbDecl(0, 0, 4096), CbDecl(1, 4096, 1024), CbDecl(2, 8192, 4096)), ([], []))
    prog.cores[0].append(DmaIn.one(0, TileStream("X", (8, 16), x_loop)))
    prog.cores[0].append(DmaIn.one(1, TileStream("Y", (1, 16), y_loop)))
    prog.cores[1].append(SeMap(SeOp.ADD, 0, 2, 4, DType.FP32, src2=1, src2_period=period))
    prog.cores[1].append(DmaOut(2, TileStream("O", (8, 16), x_loop)))
    if period and pop:
        prog.cores[1].append(CbPop(1, period))
    return program(p.tensors, {(0, 0): prog})


@pytest.mark.parametrize("period", [0, 2])
def test_se_map_broadcasts_a_row_operand(period):
    x = np.arange(16 * 32, dtype=np.float32).reshape(16, 32)
    y = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    res = execute(_bcast_program(period), CHIP, mode="both", inputs={"X": x, "Y": y})
    assert np.array_equal(res.outputs["O"], x + y)


def test_resident_second_operand_must_be_freed():
    with pytest.raises(ProgramError, match=r"^job j: PE\(0, 0\) CB 1 ends the job with 2 unconsumed tiles$"):
        resolve(_bcast_program(2, pop=False), CHIP)


def test_se_pool_checks_the_row_format():
    from mtiasim.isa import DmaGather, PoolMode, RowFormat, SePool

    p = plan()
    p.add("T", (100, 68), DType.UINT8, Level.SRAM)
    p.add("I", (8,), DType.INT32, Level.SRAM)
    prog = PeProgram((0, 0), (CbDecl(0, 0, 8192), CbDecl(1, 8192, 1024)), ([], []))
    prog.cores[0].append(DmaGather(0, "T", "I", 0, 8))
    prog.cores[1].append(SePool(0, 1, (8,), 64, PoolMode.SUM, DType.FP32, row_format=RowFormat.INT8_ATEN))
    with pytest.raises(ProgramError, match=r"rows are 68 uint8, expected int8_aten rows of 72 uint8$"):
        resolve(program(p.tensors, {(0, 0): prog}), CHIP)


def test_a_column_window_moves_one_run_per_row():
    from mtiasim.isa.memory import stream_bytes, stream_runs

    p = plan()
    base = p.add("B", (64, 256), DType.FP16, Level.SRAM)
    win = p.alias("W", base, (64, 100), col_offset=30)
    s = TileStream("W", (64, 128), loop((0, 0)))  # one tile, clipped to the window's 100 columns
    runs = stream_runs(win, s)
    assert runs.n_runs == 64 and runs.bytes == 64 * 200 == stream_bytes(win, s)
    assert runs.sample_starts[0] == base.address + 60 and runs.sample_starts[1] == base.address + 60 + 512
    whole = stream_runs(base, TileStream("B", (64, 256), loop((0, 0))))
    assert whole.n_runs == 1  # whole rows of a contiguous tensor: one run


def _new_kernel_programs():
    from mtiasim.indices import offsets_from_lengths
    from mtiasim.isa import PoolMode, RowFormat
    from mtiasim.kernels.elementwise import elementwise_job
    from mtiasim.kernels.gemm import gemm_job
    from mtiasim.kernels.layout import concat_job, copy_job, gather_columns_job, transpose_job
    from mtiasim.kernels.tbe import tbe_job

    out = []
    for lvl in (Level.SRAM, Level.DRAM):
        p = plan()
        a, w = p.add("A", (300, 200), DType.INT8, lvl), p.add("W", (130, 200), DType.INT8, lvl)
        s, c = p.add("s", (1, 130), DType.FP32, Level.SRAM), p.add("C", (300, 130), DType.FP16, lvl)
        out.append((p, [gemm_job(CHIP, "g", a, w, c, out_scales=s, activation="tanh")], {}))
        p = plan()
        x, y = p.add("X", (500, 700), DType.FP16, lvl), p.add("Y", (1, 700), DType.FP16, lvl)
        o = p.add("O", (500, 700), DType.FP16, lvl)
        out.append((p, [elementwise_job(CHIP, "b", SeOp.MUL, x, o, y=y)], {}))
        p = plan()
        x = p.add("X", (256, 729), DType.FP16, lvl)
        o = p.add("O", (256, 351), DType.FP16, lvl)
        cols = [i * 27 + j for i in range(27) for j in range(i)]
        out.append((p, [gather_columns_job(CHIP, "g", x, o, cols)], {}))
        p = plan()
        xs = [p.add(f"X{i}", (300, wd), DType.FP32, lvl) for i, wd in enumerate((64, 300, 7))]
        o = p.add("O", (300, 371), DType.FP32, lvl)
        out.append((p, [concat_job(CHIP, "c", xs, o)], {}))
        p = plan()
        x, o = p.add("X", (333, 517), DType.FP16, lvl), p.add("O", (517, 333), DType.FP16, lvl)
        out.append((p, [transpose_job(CHIP, "t", x, o)], {}))
        p = plan()
        x, o = p.add("X", (400, 300), DType.FP32, lvl), p.add("O", (400, 500), DType.FP32, lvl)
        out.append(
            (
                p,
                [
                    copy_job(
                        CHIP, "c", p.alias("Xw", x, (400, 100), col_offset=7), p.alias("Ow", o, (400, 100))
                    )
                ],
                {},
            )
        )
        p = plan()
        t = p.add("T", (10_000, 64), DType.FP32, Level.DRAM, cached=lvl == Level.DRAM)
        idx = np.random.default_rng(0).integers(0, 10_000, 64 * 20).astype(np.int32)
        i = p.add("I", (idx.size,), DType.INT32, Level.SRAM)
        o = p.add("O", (64, 64), DType.FP32, Level.SRAM)
        job = tbe_job(
            CHIP,
            "tbe",
            t,
            i,
            o,
            offsets=offsets_from_lengths(np.full(64, 20)),
            table_rows=[10_000],
            batch=64,
            dim=64,
            mode=PoolMode.MAX,
            row_format=RowFormat.FP32,
        )
        out.append((p, [job], {"I": idx}))
    return out


def test_fidelities_are_ordered_for_the_new_kernels():
    for p, jobs, data in _new_kernel_programs():
        prg = Program("p", p.tensors, jobs)
        resolved = resolve(prg, CHIP)
        roof, ana, ev = (
            simulate(TimingModel(prg, resolved, CHIP, data), f).seconds
            for f in ("roofline", "analytic", "event")
        )
        assert 0 < roof <= ana * (1 + 1e-9) and ana <= ev * (1 + 1e-9), jobs[0].name


def test_static_jobs_work_memo_keeps_the_timing():
    """A compiled model keeps the work of its unchanged jobs' nodes across calls; it must not change the
    timing, and nodes that read per-run state (the SRAM cache's contents) are not kept."""
    from mtiasim.bench.gemm import prepare_gemm
    from mtiasim.engine import Memo

    prep = prepare_gemm(512, 1024, 1024, "int8", "dram")  # LPDDR5 through the SRAM cache
    base = execute(prep.program, prep.chip, mode="timing").timing
    names = frozenset(j.name for j in prep.program.jobs)
    memo = Memo(static_jobs=names)
    first = execute(prep.program, prep.chip, mode="timing", memo=memo).timing
    kept = len(memo.works)
    assert 0 < kept < len(first.nodes)  # the cached-DRAM reads are recomputed every run
    again = execute(
        prep.program, prep.chip, mode="timing", memo=Memo(static_jobs=names, works=memo.works)
    ).timing
    assert base.seconds == first.seconds == again.seconds
    assert base.counters == again.counters


def test_tile_reads_and_writes_match_one_tile_at_a_time():
    """Functional DMAs read and write many tiles at once (window views, rectangles, zero-padded edges, bands):
    the same arrays as reading and writing them one after the other, edge tiles clipped or zero-padded."""
    from mtiasim.engine.resolve import _scatter
    from mtiasim.engine.tiles import ArrayTiles, Piece, TensorTiles, TileRun
    from mtiasim.isa.memory import TileLoop

    rng = np.random.default_rng(7)
    checked = 0
    for case in range(600):
        nrow, ncol = (int(v) for v in rng.integers(1, 40, 2))
        tr, tc = (int(v) for v in rng.integers(1, 10, 2))
        rows, cols = (int(v) for v in rng.integers(1, 5, 2))
        base = (int(rng.integers(0, nrow)), int(rng.integers(0, ncol)))
        dims = [
            ((rows, tr, 0), (cols, 0, tc)),  # a rectangle, row-major
            ((cols, 0, tc), (rows, tr, 0)),  # column-major
            ((rows, tr, 0), (cols, 0, max(1, tc - 1))),  # overlapping
            ((rows * cols, int(rng.integers(0, 3)), int(rng.integers(0, 3))),),  # anything
        ][case % 4]
        origins = TileLoop(base, dims).origins()
        if (origins[:, 0] >= nrow).any() or (origins[:, 1] >= ncol).any():
            continue  # a stream's tiles start inside its tensor
        n = origins.shape[0]
        tiles = rng.integers(-99, 99, (n, tr, tc)).astype(np.int16)
        src = rng.integers(-99, 99, (nrow, ncol)).astype(np.int16)
        want_read = np.zeros_like(tiles)
        want_write = np.zeros_like(src)
        for k, (r, c) in enumerate(origins.tolist()):
            h, w = min(tr, nrow - r), min(tc, ncol - c)
            want_read[k, :h, :w] = src[r : r + h, c : c + w]
            want_write[r : r + h, c : c + w] = tiles[k, :h, :w]
        assert np.array_equal(TensorTiles(src, origins, (tr, tc)).get(0, n), want_read)
        got = np.zeros_like(src)
        _scatter(got, origins, (tr, tc), TileRun([Piece(ArrayTiles(tiles), 0, n)]))
        assert np.array_equal(got, want_write)
        bands = TileRun([Piece(TensorTiles(src, origins, (tr, tc)), 0, n)]).bands(0, rows, cols)
        if bands is not None:  # tiles side by side along rows: each group's tiles are one band
            values, which = bands
            joined = want_read.reshape(rows, cols, tr, tc).transpose(0, 2, 1, 3).reshape(rows, tr, cols * tc)
            assert np.array_equal(values[which], joined)
        for array in (src, src[::-1] * 3):  # a band plan kept by the stream's loop serves another array alike
            kept = TileRun([Piece(TensorTiles(array, origins, (tr, tc), TileLoop(base, dims)), 0, n)])
            fresh = TileRun([Piece(TensorTiles(array, origins, (tr, tc)), 0, n)]).bands(0, rows, cols)
            got = kept.bands(0, rows, cols)
            assert (got is None) == (fresh is None)
            if got is not None:
                assert np.array_equal(got[0][got[1]], fresh[0][fresh[1]])
        checked += 1
    assert checked > 200


def test_a_kept_band_plan_is_one_of_an_array_of_that_shape():
    """Two tiles side by side are one band of an array wide enough for both; of a narrower array (the same
    stream's loop, its second tile past the edge) they are not: the plan kept for the one is not the other's."""
    from mtiasim.engine.tiles import Piece, TensorTiles, TileRun
    from mtiasim.isa.memory import TileLoop

    loop_ = TileLoop((0, 0), ((2, 0, 4),))  # two [2, 4] tiles, the second 4 columns on
    origins = loop_.origins()
    wide, narrow = np.arange(16).reshape(2, 8), np.arange(12).reshape(2, 6)
    values, which = TileRun([Piece(TensorTiles(wide, origins, (2, 4), loop_), 0, 2)]).bands(0, 1, 2)
    assert np.array_equal(values[which][0], wide)
    assert TileRun([Piece(TensorTiles(narrow, origins, (2, 4), loop_), 0, 2)]).bands(0, 1, 2) is None


def test_a_cache_of_no_lines_misses_every_gathered_line(monkeypatch):
    """Where the scratchpad leaves the SRAM no cache lines, every line a gather touches misses, whatever the
    batches before it left warm (the history has nowhere to stay), and no gathered row counts as a hit."""
    from mtiasim.engine import Memo
    from mtiasim.engine.work import WorkModel

    prep = prepare_tbe(64, 20, 50_000, 128, placement="cache", warm="distribution")
    assert prep.program.cache_state is not None or prep.program.cache_history  # a warm cache, were there room
    memo = Memo()
    warm = execute(prep.program, prep.chip, mode="timing", inputs=prep.inputs, memo=Memo())
    monkeypatch.setattr(WorkModel, "cache_capacity_lines", lambda self: 0)
    cold = execute(prep.program, prep.chip, mode="timing", inputs=prep.inputs, memo=memo)
    assert memo.cache_hits and all(
        rec.shape[1] == 2 and not rec[:, 1].any() for rec in memo.cache_hits.values()
    )
    lines = sum(rec.shape[0] for rec in memo.cache_hits.values())
    lookups = sum(v.size for name, v in prep.inputs.items() if name.startswith("indices"))
    assert lines >= lookups > 0  # every gathered row touches a line at least
    assert cold.timing.counters.get("cache_hit_rows", 0.0) == 0.0 < warm.timing.counters["cache_hit_rows"]
