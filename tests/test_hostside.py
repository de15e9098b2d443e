"""The host side of a card as engine resources: the host link (each direction) and the host CPU are flows'
resources in the event simulation, like SRAM slices (`engine.resources`, `isa.HostTransfer`,
`runtime.hostside`)."""

import json

import pytest
from tests.test_runtime import MlpEmb, _inputs

import mtiasim
from mtiasim.cli import main
from mtiasim.engine import execute
from mtiasim.frontend.host import host_cost_s, tensor_ops
from mtiasim.hw import load_chip
from mtiasim.isa import HostSide, HostTransfer, Job, PeProgram, Program

CHIP = load_chip("mtia-v1")
LINK_BPS = CHIP.host.bandwidth_gbps * 1e9
LATENCY_S = CHIP.host.latency_ns * 1e-9


def _transfers(per_pe: dict[tuple[int, int], list[HostTransfer]], fidelity: str = "event"):
    """One job whose PEs each issue their transfers; the timing's node start and end times, in order."""
    job = Job("host", "h2d", {pe: PeProgram(pe, (), (list(cmds), [])) for pe, cmds in per_pe.items()})
    t = execute(Program("p", {}, [job]), CHIP, mode="timing", fidelity=fidelity).timing
    return [(float(s), float(e)) for s, e in zip(t.nodes.start_s, t.nodes.end_s, strict=True)], t


@pytest.mark.parametrize("fidelity", ["event", "analytic"])
@pytest.mark.parametrize("nbytes", [1, 4096, 66_564, 64 << 20])
def test_one_transfer_takes_bytes_over_the_link_bandwidth(fidelity, nbytes):
    (span,), _ = _transfers({(0, 0): [HostTransfer(HostSide.LINK_IN, nbytes, LATENCY_S)]}, fidelity)
    assert span[1] - span[0] == pytest.approx(LATENCY_S + nbytes / LINK_BPS, rel=1e-9)


def test_two_transfers_sharing_the_link_take_twice_as_long():
    nbytes = 256 << 20  # long enough that the PEs' staggered starts (ns) do not matter
    spans, t = _transfers({pe: [HostTransfer(HostSide.LINK_IN, nbytes)] for pe in ((0, 0), (0, 1))})
    for s, e in spans:
        assert e - s == pytest.approx(2 * nbytes / LINK_BPS, rel=1e-6)
    assert t.resource_utilization["pcie"] == pytest.approx(1.0, rel=1e-3)


def test_the_link_is_full_duplex_and_the_cpu_its_own_resource():
    nbytes = 256 << 20
    sides = (HostSide.LINK_IN, HostSide.LINK_OUT)
    spans, _ = _transfers({(0, i): [HostTransfer(side, nbytes)] for i, side in enumerate(sides)})
    for s, e in spans:  # one direction each: neither waits for the other
        assert e - s == pytest.approx(nbytes / LINK_BPS, rel=1e-6)
    cpu_bps = CHIP.host.cpu_copy_gbps * 1e9
    spans, _ = _transfers(
        {(0, 0): [HostTransfer(HostSide.CPU, nbytes)], (0, 1): [HostTransfer(HostSide.LINK_IN, nbytes)]}
    )
    assert spans[0][1] - spans[0][0] == pytest.approx(nbytes / cpu_bps, rel=1e-6)
    assert spans[1][1] - spans[1][0] == pytest.approx(nbytes / LINK_BPS, rel=1e-6)


def test_roofline_times_a_transfer_at_the_link_bandwidth():
    nbytes = 64 << 20
    _, t = _transfers({(0, 0): [HostTransfer(HostSide.LINK_IN, nbytes)]}, "roofline")
    assert t.seconds == pytest.approx(nbytes / LINK_BPS, rel=1e-9)


def test_a_call_times_its_host_side_in_the_engine():
    args = _inputs(8, [100, 50, 30], 3, 13, 0)
    cm = mtiasim.compile(MlpEmb(13, [32, 16], [100, 50, 30], 16, "sum", 1, "sigmoid", 0).eval(), args)
    cm(*args)
    rep, host = cm.report, CHIP.host
    values = cm.captured.host(cm.captured.flat_inputs(args, {}), effects=True)
    index_bytes = cm._inputs(values, False).index_bytes  # the indices and offsets the host packs
    cost_s = host_cost_s(tensor_ops(cm.captured.host.nodes), index_bytes, host.cpu_op_ns, host.cpu_copy_gbps)
    assert cost_s > 0
    assert rep.host_busy_s["host_cpu"] == pytest.approx(cost_s, rel=1e-9)  # the host ops' cost model
    assert rep.host_busy_s["host_link_in"] == pytest.approx(LATENCY_S + rep.h2d_bytes / LINK_BPS, rel=1e-9)
    assert rep.host_busy_s["host_link_out"] == pytest.approx(LATENCY_S + rep.d2h_bytes / LINK_BPS, rel=1e-9)
    # each phase is its transfer (the host's jobs need no launch by the chip's control core); they add up
    assert rep.host_s == pytest.approx(cost_s, rel=1e-9)
    assert rep.h2d_s == pytest.approx(rep.host_busy_s["host_link_in"], rel=1e-9)
    assert rep.d2h_s == pytest.approx(rep.host_busy_s["host_link_out"], rel=1e-9)
    assert rep.host_s + rep.h2d_s + rep.device_s + rep.d2h_s == pytest.approx(rep.timing.seconds, rel=1e-12)
    assert not any(op.name.startswith("host:") for op in rep.ops)  # the host side is not an operator


def test_run_json_reports_host_link_and_cpu_busy(capsys):
    argv = ["run", "dlrm-kaggle", "--batch", "32", "--max-rows", "1000", "--warmup", "0", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    busy = res["host_busy_us"]
    assert set(busy) == {"host_cpu", "host_link_in", "host_link_out"}
    assert busy["host_link_in"] == pytest.approx(1e6 * (LATENCY_S + res["h2d_bytes"] / LINK_BPS), abs=1e-4)
    assert busy["host_link_out"] == pytest.approx(1e6 * (LATENCY_S + res["d2h_bytes"] / LINK_BPS), abs=1e-4)
    assert 0 < busy["host_cpu"] <= res["host_us"]
    total = res["host_us"] + res["h2d_us"] + res["device_us"] + res["d2h_us"]
    assert total == pytest.approx(res["latency_us"], abs=1e-3)
