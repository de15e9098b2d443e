"""Energy and power: closed forms of the energy model, the TDP envelope, card and platform levels, the power
calibration script, per-watt figures in the JSON, and the detailed bottleneck attribution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.bench.ops import prepare_op
from mtiasim.bench.tbe import prepare_tbe
from mtiasim.cli import main
from mtiasim.engine import execute
from mtiasim.engine.timing import coarse
from mtiasim.hw import load_chip
from mtiasim.hw.peaks import dram_bytes_per_s
from mtiasim.power import node_energy_j, power_report, power_timeline
from mtiasim.power.model import PJ, board_w, host_share_w, paper_w, spread

ROOT = Path(__file__).resolve().parents[1]
V1 = load_chip("mtia-v1")
TDP_W = V1.power.tdp_w


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_peak_gemm_draws_close_to_tdp(capsys):
    res = _json(capsys, ["bench", "gemm", "--m", "2048", "--k", "4096", "--n", "4096", "--dtype", "int8",
                         "--placement", "sram", "--json"])  # fmt: skip
    assert 18.0 <= res["avg_power_w"] <= TDP_W
    assert res["avg_power_w"] <= res["peak_power_w"] <= TDP_W
    # per watt is the rate over the power at each level
    assert res["tops_per_w"]["chip"] == pytest.approx(res["tops"] / res["avg_power_w"], rel=1e-3)
    assert res["tops_per_w"]["card"] == pytest.approx(res["tops"] / res["card_power_w"], rel=1e-3)
    assert res["tops_per_w"]["platform"] == pytest.approx(res["tops"] / res["platform_power_w"], rel=1e-3)
    assert res["tops_per_w"]["paper"] == pytest.approx(res["tops"] / 65.0, rel=1e-3)
    # energy = average power x time
    assert res["energy_j"] == pytest.approx(res["avg_power_w"] * res["seconds"], rel=1e-3)


def test_dpe_energy_is_macs_times_the_mac_energy():
    prep = prepare_gemm(1024, 1024, 1024, "int8", "sram")
    res = prep.run()
    macs = 1024**3
    assert res["counters"]["dpe_macs_int8"] == macs
    assert res["energy_breakdown_j"]["dpe"] == pytest.approx(macs * V1.energy.int8_mac_pj * PJ, rel=1e-9)
    fp16 = prepare_gemm(1024, 1024, 1024, "fp16", "sram").run()
    ratio = V1.energy.float_mac_ratio
    assert fp16["energy_breakdown_j"]["dpe"] == pytest.approx(
        macs * V1.energy.int8_mac_pj * ratio * PJ, rel=1e-9
    )


def test_levels_add_up():
    prep = prepare_tbe(256, 20, 4_000_000, 256)  # 1 GB of rows: most lookups miss the SRAM cache
    res, result = prep.run_with_result()
    t = result.timing
    rep = power_report(V1, t.counters, t.seconds, nodes=t.nodes)
    e = V1.energy
    chip_j = rep.chip_energy_j
    assert chip_j == pytest.approx(sum(rep.chip_j.values()))
    assert rep.chip_j["static"] == pytest.approx(e.static_w * t.seconds)
    dram = t.counters["dram_read_bytes"] + t.counters.get("dram_write_bytes", 0.0)
    assert dram > 0 and t.counters["dram_activations"] > 0
    assert rep.chip_j["lpddr5_phy"] == pytest.approx(dram * e.dram_phy_byte_pj * PJ)
    assert rep.card_j["vrm_loss"] == pytest.approx(chip_j * (1 / e.vrm_efficiency - 1))
    devices = dram * e.dram_device_byte_pj * PJ + t.counters["dram_activations"] * e.dram_activation_nj * 1e-9
    assert rep.card_j["lpddr5_devices"] == pytest.approx(devices)
    assert rep.platform_energy_j == pytest.approx(rep.card_energy_j + host_share_w(V1) * t.seconds)


def test_card_and_platform_at_full_load_match_the_published_figures():
    """A card with its chip at TDP and LPDDR5 streaming at peak draws the published 35 W; with its share of
    the server it is the paper's 65 W per card."""
    e = V1.energy
    dram_w = dram_bytes_per_s(V1) * e.dram_device_byte_pj * PJ + e.dram_background_w
    card = TDP_W / e.vrm_efficiency + dram_w + board_w(V1)
    assert card == pytest.approx(V1.power.card_power_w)
    assert card + host_share_w(V1) == pytest.approx(paper_w(V1)) and paper_w(V1) == pytest.approx(65.0)


def test_power_timeline_integrates_to_the_energy():
    prep = prepare_gemm(512, 1024, 1024, "int8", "sram")
    t = execute(prep.program, V1, mode="timing").timing
    edges, watts = power_timeline(V1, t.nodes, t.seconds, bins=50)
    width = edges[1] - edges[0]
    dynamic = float(((watts - V1.energy.static_w) * width).sum())
    assert dynamic == pytest.approx(float(node_energy_j(V1, t.nodes.counters).sum()), rel=1e-9)
    assert (watts >= V1.energy.static_w - 1e-9).all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.sampled_from([64, 256, 1024, 4096]),
    k=st.sampled_from([128, 512, 2048, 4096]),
    n=st.sampled_from([128, 512, 2048, 4096]),
    dtype=st.sampled_from(["int8", "fp16", "bf16"]),
    placement=st.sampled_from(["sram", "dram"]),
)
def test_no_gemm_exceeds_tdp(m, k, n, dtype, placement):
    res = prepare_gemm(m, k, n, dtype, placement).run()
    assert 0 < res["avg_power_w"] <= res["peak_power_w"] <= TDP_W


@pytest.mark.parametrize("op", ["batchmatmul", "concat", "quantize", "tanh"])
def test_memory_bound_ops_draw_less_than_the_peak_gemm(op):
    gemm = prepare_gemm(2048, 4096, 4096, "int8", "sram").run()
    for placement in ("sram", "dram"):
        res = prepare_op(op, placement=placement).run()
        assert res["avg_power_w"] < gemm["avg_power_w"]
        assert res["peak_power_w"] <= TDP_W
    tbe = prepare_tbe(256, 50, 1_000_000, 256).run()
    assert tbe["bound"] == "dram" and tbe["avg_power_w"] < 0.5 * gemm["avg_power_w"]


def test_calibration_script_reproduces_the_preset():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "calibrate_power.py"), "--dry-run"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fitted = float(out.split("=")[1].split()[0])
    assert fitted == pytest.approx(V1.energy.int8_mac_pj, rel=2e-3)
    assert V1.provenance["energy.int8_mac_pj"].kind == "calibrated"


def test_every_energy_constant_has_its_provenance():
    for chip in ("mtia-v1", "mtia-2i"):
        c = load_chip(chip)
        for key in type(c.energy).model_fields:
            prov = c.provenance[f"energy.{key}"]
            assert prov.kind in ("assumed", "derived", "calibrated", "published")
            assert prov.note or prov.source, f"{chip} energy.{key} has no note or source"


def test_detail_attribution_folds_into_the_classes():
    prep = prepare_gemm(512, 1024, 1024, "int8", "sram")
    t = execute(prep.program, V1, mode="timing").timing
    for job in t.jobs:
        assert coarse(job.detail) == pytest.approx(job.attribution)
        assert sum(job.detail.values()) == pytest.approx(job.seconds, rel=1e-6)
    assert max(t.detail.items(), key=lambda kv: kv[1])[0] == "compute.dpe"


def test_run_json_has_energy_utilisation_and_detail(capsys):
    res = _json(capsys, ["run", "dlrm-kaggle", "--batch", "64", "--warmup", "0", "--json"])
    for key in ("energy_j", "avg_power_w", "peak_power_w", "card_power_w", "platform_power_w"):
        assert res[key] > 0, key
    assert res["avg_power_w"] <= res["peak_power_w"] <= TDP_W
    assert res["samples_per_s_per_w"]["chip"] == pytest.approx(
        res["samples_per_s"] / res["avg_power_w"], rel=1e-3
    )
    # the chip is idle (static power only) while the host and PCIe work
    assert res["avg_power_w"] * res["latency_us"] * 1e-6 == pytest.approx(res["energy_j"], rel=1e-3)
    assert res["energy_breakdown_j"]["pcie"] > 0
    util = res["pe_utilization"]
    assert set(util) == {"core0", "core1", "dma", "dpe", "re", "se", "mlu"}
    for grid in util.values():
        a = np.array(grid)
        assert a.shape == (8, 8) and (a >= 0).all() and (a <= 1).all()
    assert np.array(util["dpe"]).max() > 0
    assert sum(res["attribution_detail_us"].values()) == pytest.approx(res["latency_us"], rel=1e-3)
    assert sum(res["attribution_us"].values()) == pytest.approx(res["latency_us"], rel=1e-3)
    for op in res["ops"]:
        assert op["energy_j"] >= 0 and set(op["bytes"]) <= {"local_memory", "sram", "dram", "noc"}


def test_node_energies_add_up_to_the_run_total():
    prep = prepare_gemm(512, 1024, 1024, "fp16", "sram")
    t = execute(prep.program, V1, mode="timing").timing
    rep = power_report(V1, t.counters, t.seconds)
    dynamic = rep.chip_energy_j - rep.chip_j["static"]
    assert float(node_energy_j(V1, t.nodes.counters).sum()) == pytest.approx(dynamic, rel=1e-9)


def test_a_run_above_tdp_is_flagged():
    """A chip variant whose MACs cost twice as much cannot hold the peak GEMM inside its TDP: the report says so."""
    hot = V1.with_values({"energy.int8_mac_pj": 2 * V1.energy.int8_mac_pj})
    res = prepare_gemm(2048, 4096, 4096, "int8", "sram", chip=hot).run()
    assert res["avg_power_w"] > TDP_W
    assert res["power_warnings"] == [
        f"peak chip power {res['peak_power_w']:.1f} W is above the 25 W TDP: the chip would throttle; "
        "the times assume it does not"
    ]
    assert prepare_gemm(2048, 4096, 4096, "int8", "sram").run()["power_warnings"] == []


def test_a_narrow_local_store_port_bounds_the_units():
    """The units stream operands through the PE's local-store port; at 512 B/cycle it never binds an FC, at
    16 B/cycle it does, and the attribution says so."""
    base = prepare_gemm(1024, 1024, 1024, "int8", "sram").run()
    assert "local_memory" not in base["attribution_us"]
    narrow = V1.with_values({"local_memory.bytes_per_cycle": 16})
    res = prepare_gemm(1024, 1024, 1024, "int8", "sram", chip=narrow).run()
    assert res["bound"] == "local_memory" and res["seconds"] > 1.5 * base["seconds"]


def _spread_reference(amounts, start, end, edges):
    """Per span: clip to the edges, then share the amount by the overlap with each bin."""
    total = np.zeros(len(edges) - 1)
    width = edges[1] - edges[0]
    for a, s, e in zip(amounts, start, end, strict=True):
        if a <= 0:
            continue
        s, e = min(max(s, 0.0), edges[-1]), min(max(e, 0.0), edges[-1])
        i0 = min(int(s / width), len(total) - 1)
        if e <= s or i0 == min(int(e / width), len(total) - 1):
            total[i0] += a
            continue
        overlap = np.clip(np.minimum(edges[1:], e) - np.maximum(edges[:-1], s), 0.0, None)
        total += a * overlap / (e - s)
    return total


@pytest.mark.parametrize("bins", [1, 3, 10, 64])
def test_spread_shares_each_amount_by_overlap(bins):
    rng = np.random.default_rng(bins)
    start = rng.uniform(-1.0, 11.0, 500)
    end = start + rng.choice([0.0, 0.01, 0.5, 3.0, 20.0], 500)
    amounts = rng.choice([0.0, 1.0, 7.5, 1e6], 500)
    edges = np.linspace(0.0, 10.0, bins + 1)
    got = spread(amounts, start, end, edges)
    assert got == pytest.approx(_spread_reference(amounts, start, end, edges), rel=1e-9, abs=1e-6)
    # nothing is lost: spans inside [0, 10] keep all of their amount
    inside = (start >= 0) & (end <= 10)
    inner = spread(amounts[inside], start[inside], end[inside], edges)
    assert inner.sum() == pytest.approx(amounts[inside].sum(), rel=1e-12)
