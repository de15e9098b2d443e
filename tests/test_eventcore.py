"""The compiled event core (eventloop.py built by Cython) runs exactly what the Python core runs, and both
give the node times and bundle rates recorded from the event core as it was before the incremental max-min
solver (commit 2fcb215; data/eventcore_reference.npz, written by `python tests/test_eventcore.py --record`
with that core)."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.ops import OPS, prepare_op
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.engine import eventcore
from mtiasim.engine.resolve import resolve
from mtiasim.engine.timing import TimingModel, simulate
from mtiasim.errors import UsageError

COMPILED, WHY = eventcore.compiled_core()
REFERENCE = Path(__file__).parent / "data" / "eventcore_reference.npz"
needs_compiled = pytest.mark.skipif(COMPILED is None, reason=f"compiled event core unavailable: {WHY}")


def model(prep) -> TimingModel:
    data = {k: np.asarray(v) for k, v in (prep.inputs or {}).items()}
    return TimingModel(prep.program, resolve(prep.program, prep.chip, None), prep.chip, data)


def run(module, m: TimingModel, share: bool):
    sim = module.Sim(m, share)
    sim.run()
    return sim.result(), np.asarray(sim.b_rate, dtype=np.float64)


def assert_same_run(m: TimingModel) -> None:
    """Both fidelities that use the loop: event count, every node's issue/start/end, why it started and
    ended, every bundle's last rate and time per limiting class, every job's launch and end: all equal."""
    for share in (True, False):
        (a, rate_a), (b, rate_b) = run(eventcore.python_core(), m, share), run(COMPILED, m, share)
        assert a.events == b.events
        for name in ("issue_at", "start", "end", "job_launch", "job_end"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        np.testing.assert_array_equal(rate_a, rate_b, err_msg="b_rate")
        assert a.start_reason == b.start_reason
        assert a.end_reason == b.end_reason
        assert [dict(x) for x in a.b_class_time] == [dict(x) for x in b.b_class_time]
        assert a.barrier_binding == b.barrier_binding
        assert a.pe_start_reason == b.pe_start_reason


CASES = {
    "gemm int8 sram 512x1024x1024": lambda: prepare_gemm(
        512, 1024, 1024, "int8", "sram", in_flight=1, bias=False
    ),
    "gemm fp16 sram odd 123x1658x116": lambda: prepare_gemm(
        123, 1658, 116, "fp16", "sram", in_flight=1, bias=False
    ),
    "gemm bf16 dram odd 300x700x260": lambda: prepare_gemm(
        300, 700, 260, "bf16", "dram", in_flight=1, bias=False
    ),
    "gemm int8 dram 256x512x1000": lambda: prepare_gemm(
        256, 512, 1000, "int8", "dram", in_flight=1, bias=False
    ),
    "gemm int8 dram-direct": lambda: prepare_gemm(
        200, 640, 300, "int8", "dram-direct", in_flight=1, bias=False
    ),
    "tbe cache hits": lambda: prepare_tbe(64, 20, 50000, 128),
    "tbe zipf dram": lambda: prepare_tbe(32, 10, 200000, 64, placement="dram", distribution="zipf"),
    "transpose dram": lambda: prepare_op("transpose", 256, 128, 32, "dram"),
    "batchmatmul sram": lambda: prepare_op("batchmatmul", 64, 128, 64, "sram"),
    "concat sram": lambda: prepare_op("concat", 128, 96, 32, "sram"),
    "quantize dram": lambda: prepare_op("quantize", 192, 256, 32, "dram"),
}


@needs_compiled
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_core_matches_python_core(case):
    assert_same_run(model(CASES[case]()))


@needs_compiled
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 700),
    k=st.integers(1, 1800),
    n=st.integers(1, 700),
    dtype=st.sampled_from(["int8", "fp16", "bf16"]),
    placement=st.sampled_from(["sram", "dram"]),
)
def test_compiled_core_matches_python_core_on_gemms(m, k, n, dtype, placement):
    assert_same_run(model(prepare_gemm(m, k, n, dtype, placement)))


FLOW_PROGRAMS = st.one_of(
    st.builds(
        lambda batch, pooling, rows, dim, tables, placement: prepare_tbe(
            batch, pooling, rows, dim, tables=tables, placement=placement
        ),
        st.integers(1, 96),
        st.integers(1, 30),
        st.integers(100, 300000),
        st.sampled_from([4, 16, 64, 128, 256]),
        st.integers(1, 4),
        st.sampled_from(["cache", "dram"]),
    ),
    st.builds(
        prepare_op,
        st.sampled_from(OPS),
        st.integers(1, 300),
        st.integers(1, 300),
        st.integers(1, 64),
        st.sampled_from(["sram", "dram"]),
    ),
)


@needs_compiled
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prep=FLOW_PROGRAMS)
def test_compiled_core_matches_python_core_on_tbes_and_operators(prep):
    assert_same_run(model(prep))


def recorded(m: TimingModel, share: bool) -> dict[str, np.ndarray]:
    """What the reference file keeps of a run: event count, node start and end times, bundle rates."""
    (r, rate) = run(eventcore.python_core(), m, share)
    return {"events": np.array([r.events]), "start": r.start, "end": r.end, "b_rate": rate}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cores_give_the_recorded_times_and_rates(case):
    """Times and rates within 1e-9 (relative) of the recorded ones, the event count equal, with either core."""
    ref = np.load(REFERENCE)
    m = model(CASES[case]())
    modules = [eventcore.python_core()] + ([COMPILED] if COMPILED is not None else [])
    for share in (True, False):
        for module in modules:
            r, rate = run(module, m, share)
            key = f"{case}|{share}|"
            assert r.events == ref[key + "events"][0]
            for name, got in (("start", r.start), ("end", r.end), ("b_rate", rate)):
                np.testing.assert_allclose(got, ref[key + name], rtol=1e-9, atol=0, err_msg=f"{key}{name}")


@needs_compiled
def test_simulate_gives_the_same_result_with_either_core():
    m = model(prepare_gemm(123, 1658, 116, "fp16", "sram"))
    a, b = simulate(m, "event", core="python"), simulate(m, "event", core="compiled")
    assert (a.seconds, a.events, a.detail) == (b.seconds, b.events, b.detail)


def test_unknown_core_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(eventcore.ENV_VAR, "fast")
    with pytest.raises(
        UsageError, match=r"^MTIASIM_EVENT_CORE: unknown event core 'fast' \(known: compiled, python\)$"
    ):
        eventcore.sim_module()
    with pytest.raises(UsageError, match=r"^core: unknown event core 'c' \(known: compiled, python\)$"):
        eventcore.sim_module("c")


def test_python_core_is_the_interpreted_source(monkeypatch):
    monkeypatch.setenv(eventcore.ENV_VAR, "python")
    mod = eventcore.sim_module()
    assert mod is eventcore.python_core()
    assert mod.__file__.endswith("eventloop.py") and not mod.COMPILED


def test_stale_compiled_core_falls_back_with_a_warning(monkeypatch):
    """A compiled core built from other sources is not used: a warning, then the Python core."""
    monkeypatch.delenv(eventcore.ENV_VAR, raising=False)
    monkeypatch.setattr(eventcore, "source_digest", lambda folder=eventcore.HERE: "edited since the build")
    eventcore.compiled_core.cache_clear()
    eventcore._warn_fallback.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = eventcore.sim_module()
        assert mod is eventcore.python_core()
        assert any("compiled event core is unavailable" in str(w.message) for w in caught)
        with pytest.raises(UsageError, match="the compiled event core cannot be used"):
            eventcore.sim_module("compiled")
    finally:
        eventcore.compiled_core.cache_clear()
        eventcore._warn_fallback.cache_clear()


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    REFERENCE.parent.mkdir(exist_ok=True)
    arrays = {}
    for case, make in sorted(CASES.items()):
        m = model(make())
        for share in (True, False):
            for name, value in recorded(m, share).items():
                arrays[f"{case}|{share}|{name}"] = value
    np.savez_compressed(REFERENCE, **arrays)
