"""fbgemm's jagged ops (HSTU's jagged <-> padded dense: `jagged_to_padded_dense`, `dense_to_jagged` and their
variants) on the simulated chip: row copies, so the device's rows are eager fbgemm's bit for bit at every
precision (odd sizes, empty sequences, sequences truncated to the dense length, extreme values, offsets that
change from call to call); bad offsets are refused in one line naming the op; and the kernel's DMA time is
the closed form of the chip preset's rates."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("fbgemm_gpu")  # registers torch.ops.fbgemm

import mtiasim  # noqa: E402
from mtiasim.dtypes import DType  # noqa: E402
from mtiasim.engine import execute  # noqa: E402
from mtiasim.errors import UnsupportedOperatorError, UsageError  # noqa: E402
from mtiasim.hw import load_chip  # noqa: E402
from mtiasim.hw.peaks import sram_bytes_per_s  # noqa: E402
from mtiasim.isa import Level, MemoryPlan, Program  # noqa: E402
from mtiasim.jagged import check_offsets, to_dense_pieces, to_jagged_pieces  # noqa: E402
from mtiasim.kernels.common import Region  # noqa: E402
from mtiasim.kernels.jagged import jagged_rows_job, pad_rows  # noqa: E402

fbgemm = torch.ops.fbgemm
CHIP = load_chip("mtia-v1")
EXTREMES = [65504.0, -65504.0, 6.1e-5, -3e-8, 0.0, -0.0, math.inf, -math.inf, math.nan]


class Both(nn.Module):
    """Both directions at once: jagged values [T, D] padded to [B, S, D], and a dense [B, S, D] back to jagged."""

    def __init__(self, max_len: int, padding: float, variant: str = "padded") -> None:
        super().__init__()
        self.max_len, self.padding, self.variant = max_len, padding, variant

    def forward(self, values: torch.Tensor, offsets: torch.Tensor, dense: torch.Tensor):
        if self.variant == "2d":
            padded = fbgemm.jagged_2d_to_dense(values, offsets, self.max_len)
        else:
            padded = fbgemm.jagged_to_padded_dense(values, [offsets], [self.max_len], self.padding)
        return padded, fbgemm.dense_to_jagged(dense, [offsets], values.shape[0])[0]


def _offsets(lengths: list[int], start: int = 0) -> torch.Tensor:
    return torch.tensor([start] + [start + sum(lengths[: i + 1]) for i in range(len(lengths))])


def _with_extremes(t: torch.Tensor, picks: list[int]) -> torch.Tensor:
    flat = t.reshape(-1).clone()
    for i, p in enumerate(picks[: flat.numel()]):
        flat[(i * 7919) % flat.numel()] = EXTREMES[p % len(EXTREMES)]
    return flat.reshape(t.shape)


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=0, equal_nan=True)


def _compile(model: nn.Module, inputs: tuple, precision: str, mode: str = "functional"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf/NaN inputs: the numerics warnings say so
        return mtiasim.compile(model, inputs, mode=mode, precision=precision)


def _call(cm, *inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cm(*inputs)


lengths_of = st.integers(1, 6).flatmap(lambda b: st.lists(st.integers(0, 12), min_size=b, max_size=b))


@given(
    lengths=lengths_of,
    max_len=st.integers(1, 9),
    dim=st.integers(0, 12).map(lambda k: 2 * k + 1),
    padding=st.sampled_from([0.0, -1.5, 3.0e4, -math.inf, 1e-7]),
    precision=st.sampled_from(["fp16", "int8"]),
    model_dtype=st.sampled_from([torch.float32, torch.float16]),
    picks=st.lists(st.integers(0, 100), max_size=6),
    variant=st.sampled_from(["padded", "2d"]),
    seed=st.integers(0, 2**16),
)
@example(lengths=[0, 300, 5], max_len=257, dim=301, padding=-2.0, precision="fp16", model_dtype=torch.float32,
         picks=[], variant="padded", seed=0)  # fmt: skip
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rows_are_eager_fbgemms_bit_for_bit(
    lengths, max_len, dim, padding, precision, model_dtype, picks, variant, seed
):
    """Every element is eager fbgemm's on the inputs as the device holds them (fp16): a copy, or the padding
    rounded once; sequences longer than the dense length are truncated, empty ones are all padding. A second
    call with other offsets (same B and T; starting past 0 or ending before T too) is right as well: the job
    follows each call's offsets."""
    torch.manual_seed(seed)
    if variant == "2d":
        padding = 0.0
    offsets = _offsets(lengths)
    t, b = int(offsets[-1]), len(lengths)
    values = _with_extremes(torch.randn(t, dim) * 4, picks).to(model_dtype)
    dense = _with_extremes(torch.randn(b, max_len, dim), picks[::-1]).to(model_dtype)
    model = Both(max_len, padding, variant)
    cm = _compile(model, (values, offsets, dense), precision)
    cuts = np.sort(
        np.random.default_rng(seed).integers(0, t + 1, size=b + 1)
    )  # from 0 or more, up to T or less
    calls = [offsets, torch.from_numpy(cuts)]
    for off in calls:
        got = _call(cm, values, off, dense)
        with torch.no_grad():
            want = model(values.half(), off, dense.half())
        for g, w in zip(got, want, strict=True):
            _same(g, w)
        assert cm.check()["passed"]


def test_jagged_1d_to_dense_and_the_forward_ops():
    class Variants(nn.Module):
        def forward(self, values, offsets, dense):
            one = fbgemm.jagged_1d_to_dense(values[:, 0].contiguous(), offsets, 4, 0)
            padded = fbgemm.jagged_to_padded_dense_forward(values, [offsets], [4], 2.5)
            return one, padded, fbgemm.dense_to_jagged_forward(dense, [offsets], values.shape[0])

    offsets = _offsets([2, 0, 6, 3])
    values, dense = torch.randn(11, 5), torch.randn(4, 4, 5)
    for precision in ("fp16", "int8"):
        cm = _compile(Variants(), (values, offsets, dense), precision)
        assert {n.op for n in cm.compiled.graph.nodes} >= {"jagged_to_dense", "dense_to_jagged"}
        for g, w in zip(
            cm(values, offsets, dense), Variants()(values.half(), offsets, dense.half()), strict=True
        ):
            _same(g, w)


def test_constant_offsets_are_checked_when_compiling():
    class Buffered(nn.Module):
        def __init__(self, offsets: list[int]) -> None:
            super().__init__()
            self.register_buffer("offsets", torch.tensor(offsets))

        def forward(self, values):
            return fbgemm.jagged_to_padded_dense(values * 2, [self.offsets], [3], -1.0)

    values = torch.randn(8, 4)
    good = Buffered([0, 4, 4, 8])
    cm = _compile(good, (values,), "fp16")
    _same(cm(values), good(values.half()))
    with pytest.raises(UsageError) as err:
        mtiasim.compile(Buffered([0, 4, 3, 8]), (values,), mode="functional")
    msg = str(err.value)
    assert "\n" not in msg and "fbgemm::jagged_to_padded_dense" in msg and "never decrease" in msg


@pytest.mark.parametrize(
    ("offsets", "what"),
    [
        (torch.tensor([0, 3, 2, 10]), "never decrease"),
        (torch.tensor([0, 3, 5, 11]), "within the 10 jagged rows"),
        (torch.tensor([0.0, 3.0, 5.0, 10.0]), "must be integers"),
    ],
)
def test_bad_offsets_of_a_call_are_one_line_naming_the_op(offsets, what):
    model = Both(4, 0.0)
    cm = _compile(model, (torch.randn(10, 3), _offsets([3, 2, 5]), torch.randn(3, 4, 3)), "fp16")
    with pytest.raises(UsageError) as err:
        cm(torch.randn(10, 3), offsets, torch.randn(3, 4, 3))
    msg = str(err.value)
    assert "\n" not in msg and "fbgemm::" in msg and what in msg


def test_what_is_refused_says_so_in_one_line():
    class TwoLevels(nn.Module):
        def forward(self, values, outer, inner):
            return fbgemm.jagged_to_padded_dense(values * 2, [outer, inner], [3, 4], 0.0)

    class Scaled(nn.Module):  # rows known per call only, then an op other than padding them
        def forward(self, dense, offsets):
            return fbgemm.dense_to_jagged(dense, [offsets])[0] * 2

    cases = [
        (
            TwoLevels(),
            (torch.randn(6, 3), _offsets([1, 2]), _offsets([2, 1, 3])),
            "fbgemm::jagged_to_padded_dense: only one jagged dimension",
        ),
        (
            Scaled(),
            (torch.randn(3, 4, 5), _offsets([2, 1, 4])),
            "aten::mul.Tensor of dense_to_jagged_jagged, rows whose count is known per call only",
        ),
    ]
    for model, inputs, what in cases:
        with pytest.raises(UnsupportedOperatorError) as err:
            mtiasim.compile(model, inputs, mode="functional")
        assert "\n" not in str(err.value) and what in str(err.value)


def test_dense_to_jagged_without_total_l_takes_the_rows_export_found():
    """As generative-recommenders writes it: no total_L, the result added to the jagged values, so export finds
    its rows (offsets[-1]) equal to theirs; every call's offsets must then end there."""

    class Residual(nn.Module):
        def forward(self, values, offsets):
            dense = fbgemm.jagged_to_padded_dense(values, [offsets], [4], 0.0)
            return values + fbgemm.dense_to_jagged(dense * 3, [offsets])[0]

    values, offsets = torch.randn(9, 5), _offsets([2, 6, 0, 1])
    cm = _compile(Residual(), (values, offsets), "fp16")
    _same(cm(values, offsets), Residual()(values.half(), offsets))
    assert cm.check()["passed"]
    with pytest.raises(UsageError, match=r"fbgemm::dense_to_jagged .*offsets must end at 9, .* got 8$"):
        cm(values, _offsets([2, 5, 0, 1]))


class Unpadded(nn.Module):
    def forward(self, dense, offsets):
        return fbgemm.dense_to_jagged(dense * 2, [offsets])[0]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dense_to_jagged_rows_known_per_call_only(precision):
    """No total_L and nothing that fixes it: the result has offsets[-1] rows, a different number each call
    (placed per call, as an EmbeddingCollection's rows are), and can be returned."""
    dense = torch.randn(3, 4, 5)
    cm = _compile(Unpadded(), (dense, _offsets([2, 1, 4])), precision)
    for offsets in (
        _offsets([2, 1, 4]),
        _offsets([0, 9, 4]),
        _offsets([0, 0, 0]),
        _offsets([1, 1, 1], start=3),
    ):
        got = cm(dense, offsets)
        assert got.shape == (int(offsets[-1]), 5)
        _same(got, Unpadded()(dense.half(), offsets))
        assert cm.check()["passed"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_an_embedding_collections_rows_padded_by_the_offsets_and_back(precision):
    """torchrec's EmbeddingCollection gives a sequence's rows, their count known per call only; padded to
    [B, S, D] by jagged_to_padded_dense (its offsets from the KeyedJaggedTensor's lengths, on the host), an FC
    runs on the dense form and dense_to_jagged returns rows per call again: a different total each call."""
    torchrec = pytest.importorskip("torchrec")

    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = torchrec.EmbeddingConfig(
                name="t", embedding_dim=8, num_embeddings=50, feature_names=["item"]
            )
            self.ec = torchrec.EmbeddingCollection(tables=[config])
            self.fc = nn.Linear(8, 8)

        def forward(self, features):
            rows = self.ec(features)["item"]
            values, offsets = rows.values(), rows.offsets()
            dense = torch.relu(self.fc(fbgemm.jagged_to_padded_dense(values, [offsets], [4], 0.0)))
            return fbgemm.dense_to_jagged(dense, [offsets], values.shape[0])[0]

    def kjt(lengths: list[int]):
        ids = torch.randint(0, 50, (sum(lengths),))
        return torchrec.KeyedJaggedTensor.from_lengths_sync(["item"], ids, torch.tensor(lengths))

    torch.manual_seed(0)
    model = Sequence().eval()
    cm = _compile(model, (kjt([2, 0, 5, 3]),), precision)
    for lengths in ([2, 0, 5, 3], [6, 1, 0, 6], [0, 0, 2, 0]):  # (export wants at least 2 ids)
        features = kjt(lengths)
        got = cm(features)
        assert got.shape == (sum(lengths), 8)
        assert cm.check()["passed"]
        with torch.no_grad():
            assert (got - model(features)).abs().max() < 0.05


def test_timing_mode_builds_each_calls_job_from_its_offsets():
    model = Both(6, 0.0)
    values, dense = torch.randn(12, 7), torch.randn(3, 6, 7)
    cm = _compile(model, (values, _offsets([4, 4, 4]), dense), "fp16", mode="timing")
    out = cm(values, _offsets([0, 12, 0]), dense)
    assert [tuple(o.shape) for o in out] == [(3, 6, 7), (12, 7)]
    rows = {r.name: r for r in cm.report.ops}
    assert {r.kind for r in rows.values()} == {"jagged_to_dense", "dense_to_jagged"}
    assert all(r.bytes["sram"] > 0 for r in rows.values())


# --------------------------------------------------------------------------------------- the row pieces


@given(lengths=lengths_of, max_len=st.integers(1, 9), start=st.integers(0, 3), tail=st.integers(0, 3))
def test_pieces_cover_every_output_row_once_in_order(lengths, max_len, start, tail):
    off = check_offsets(_offsets(lengths, start).numpy(), sequences=len(lengths), rows=start + sum(lengths) + tail,
                        where="t")  # fmt: skip
    for pieces, rows in (
        (to_dense_pieces(off, max_len), len(lengths) * max_len),
        (to_jagged_pieces(off, max_len, int(off[-1]) + tail), int(off[-1]) + tail),
    ):
        at = 0
        for p in pieces:
            assert p.dst == at and p.rows > 0
            at += p.rows
        assert at == rows


# ---------------------------------------------------------------------------------------------- timing


def _program(kind: str, lengths: list[int], max_len: int, dim: int, dt: DType, region: Region):
    plan = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
    off = _offsets(lengths).numpy()
    t, b = int(off[-1]), len(lengths)
    jagged = plan.add("jagged", (t, dim), dt, Level.SRAM)
    padded = plan.add("padded", (b * max_len, dim), dt, Level.SRAM)
    pad = plan.add("pad", (pad_rows(dim, dt.itemsize), dim), dt, Level.SRAM)
    if kind == "to_dense":
        job = jagged_rows_job(CHIP, "j", jagged, padded, pad, to_dense_pieces(off, max_len), region=region)
        rows = b * max_len
    else:
        job = jagged_rows_job(
            CHIP, "j", padded, jagged, pad, to_jagged_pieces(off, max_len, t), region=region
        )
        rows = t
    return Program("jagged", plan.tensors, [job]), job, rows * dim * dt.itemsize


@given(
    kind=st.sampled_from(["to_dense", "to_jagged"]),
    lengths=lengths_of.filter(lambda ls: sum(ls) > 0),
    max_len=st.integers(1, 40),
    dim=st.integers(1, 300),
    dt=st.sampled_from([DType.FP16, DType.FP32]),
)
@settings(max_examples=30, deadline=None)
def test_roofline_time_is_every_output_row_read_and_written_once(kind, lengths, max_len, dim, dt):
    """2 x (output rows x D x itemsize) over the SRAM's bandwidth, whatever the lengths: a row of the input or
    of the padding is read and the output row written."""
    program, _job, nbytes = _program(kind, lengths, max_len, dim, dt, Region.whole(CHIP))
    timing = execute(program, CHIP, fidelity="roofline").timing
    assert math.isclose(timing.seconds, 2 * nbytes / sram_bytes_per_s(CHIP), rel_tol=1e-12)
    event = execute(program, CHIP, fidelity="event").timing
    assert event.seconds >= timing.seconds


@pytest.mark.parametrize("kind", ["to_dense", "to_jagged"])
@pytest.mark.parametrize(
    ("rows", "dim", "dt"),
    [(64, 64, DType.FP16), (256, 64, DType.FP16), (480, 96, DType.FP32), (64, 300, DType.FP16)],
)
def test_one_sequence_on_one_pe_matches_its_closed_form(kind, rows, dim, dt):
    """One full sequence (no padding) on one PE: core 0 streams its n tiles in, core 1 out as they arrive. Each
    stream runs at the rate its DMA allows (the Fabric Interface, the bytes in flight over the SRAM's latency,
    or the core issuing a command per tile); the output stream starts one tile after the input's and ends one
    tile after it: launch + 2 latencies + (N + N/n) / rate."""
    program, job, nbytes = _program(kind, [rows], rows, dim, dt, Region(0, 0, 1, 1))
    (prog,) = job.pes.values()
    (dma_in,) = prog.cores[0]  # one stream in, one out
    tiles = dma_in.iterations
    hz = CHIP.hz
    latency = (CHIP.sram.latency_cycles + CHIP.noc.hop_latency_cycles) / hz  # the corner PE: one hop
    issue = (CHIP.dma.setup_cycles + tiles * CHIP.core.cycles_per_command) / hz
    rate = min(
        CHIP.noc.fi_bytes_per_cycle * hz,
        CHIP.dma.outstanding_requests * CHIP.dma.request_bytes / latency,
        nbytes / issue,
    )
    launch = (CHIP.host.launch_ns + CHIP.dispatch.job_launch_ns + CHIP.dispatch.job_end_ns) * 1e-9
    expect = launch + 2 * latency + (nbytes + nbytes / tiles) / rate
    for fidelity in ("analytic", "event"):
        assert math.isclose(execute(program, CHIP, fidelity=fidelity).timing.seconds, expect, rel_tol=1e-9)


def test_the_offsets_decide_where_rows_go_not_how_many_bytes_move():
    a, _, n_a = _program("to_dense", [5, 0, 9], 6, 33, DType.FP16, Region.whole(CHIP))
    b, _, n_b = _program("to_dense", [0, 14, 0], 6, 33, DType.FP16, Region.whole(CHIP))
    assert n_a == n_b
    counters = [execute(p, CHIP, fidelity="event").timing.counters for p in (a, b)]
    for c in counters:
        assert c["sram_read_bytes"] == c["sram_write_bytes"] == n_a
    assert np.isclose(counters[0]["noc_bytes"], counters[1]["noc_bytes"])
