"""The die-area model (mtiasim.hw.area): the published dies from the presets, and how overrides move it."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.cli import main
from mtiasim.hw import load_chip
from mtiasim.hw.area import area

V1 = load_chip("mtia-v1")
I2 = load_chip("mtia-2i")
COMPONENTS = {
    "pe.dpe",
    "pe.re",
    "pe.se",
    "pe.vector",
    "pe.mlu",
    "pe.cores",
    "pe.other",
    "pe.local_memory",
    "sram",
    "noc",
    "dram_phy",
    "pcie",
    "misc",
}


def test_v1_die_within_10_percent():
    rep = area(V1)
    assert rep.published_die_mm2 == 373.0
    assert abs(rep.error_pct) <= 10.0


def test_2i_die_predicted_within_10_percent():
    """The out-of-sample check: 2i's die is not used by the fit (logic_overhead is v1's, carried over)."""
    rep = area(I2)
    assert rep.published_die_mm2 == 421.0
    assert abs(rep.error_pct) <= 10.0
    overhead = I2.provenance["area.logic_overhead"]
    assert overhead.kind == "assumed" and "carried over from mtia-v1" in overhead.note
    assert I2.area.logic_overhead == V1.area.logic_overhead


def test_the_one_fitted_coefficient_is_what_the_script_fits():
    from scripts.calibrate_area import fit

    assert fit() == pytest.approx(V1.area.logic_overhead, rel=1e-3)
    calibrated = [k for k, p in V1.provenance.items() if k.startswith("area.") and p.kind == "calibrated"]
    assert calibrated == ["area.logic_overhead"]


def test_every_coefficient_has_provenance():
    for chip in (V1, I2):
        for key in type(chip.area).model_fields:
            p = chip.provenance[f"area.{key}"]
            assert p.kind in ("published", "derived", "assumed", "calibrated")
            assert p.source or p.note
    assert V1.provenance["area.published_die_mm2"].kind == "published"
    assert I2.provenance["area.published_die_mm2"].kind == "published"


def test_breakdown_adds_up():
    for chip in (V1, I2):
        rep = area(chip)
        assert {i.name for i in rep.items} == COMPONENTS
        assert all(i.mm2 > 0 for i in rep.items)
        assert math.isclose(sum(rep.by_kind().values()), rep.total_mm2)


def test_more_sram_more_area():
    base = area(V1)
    big = area(V1.with_values({"sram.bytes": "256MiB"}))
    sram = {i.name: i.mm2 for i in base.items}["sram"]
    assert {i.name: i.mm2 for i in big.items}["sram"] == pytest.approx(2 * sram)
    assert big.total_mm2 == pytest.approx(base.total_mm2 + sram)


def test_components_follow_their_parameters():
    base = {i.name: i.mm2 for i in area(V1).items}
    wide = {i.name: i.mm2 for i in area(V1.with_values({"dpe.int8_macs_per_cycle": 2048})).items}
    assert wide["pe.dpe"] == pytest.approx(2 * base["pe.dpe"])
    grid = {i.name: i.mm2 for i in area(V1.with_values({"grid.rows": 4})).items}
    assert grid["pe.cores"] == pytest.approx(base["pe.cores"] / 2)
    assert grid["sram"] == base["sram"]
    phy = {i.name: i.mm2 for i in area(V1.with_values({"dram.channels": 32})).items}
    assert phy["dram_phy"] == pytest.approx(2 * base["dram_phy"])
    n5 = {i.name: i.mm2 for i in area(V1.with_values({"area.node_logic_scale": 0.5})).items}
    assert n5["pe.dpe"] == pytest.approx(base["pe.dpe"] / 2)
    assert n5["sram"] == base["sram"]


def test_clock_and_dram_rate_do_not_change_area():
    assert area(V1.with_values({"clock.frequency_ghz": 1.1})).total_mm2 == area(V1).total_mm2
    assert area(V1.with_values({"dram.transfer_rate_mts": 8533})).total_mm2 == area(V1).total_mm2


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 4096))
def test_area_is_monotonic_in_sram(a_mib, b_mib):
    small, large = sorted((a_mib, b_mib))
    lo = area(V1.with_values({"sram.bytes": f"{small}MiB"})).total_mm2
    hi = area(V1.with_values({"sram.bytes": f"{large}MiB"})).total_mm2
    assert lo <= hi
    assert hi - lo == pytest.approx((large - small) * V1.area.sram_mm2_per_mib)


def test_chip_show_prints_the_breakdown(capsys):
    assert main(["chip", "show", "mtia-2i"]) == 0
    out = capsys.readouterr().out
    assert "die area (the model of [area], at 5 nm)" in out
    total = [line for line in out.splitlines() if line.strip().startswith("total ")]
    assert len(total) == 1 and "vs the published die 421 mm^2" in total[0]
    for name in COMPONENTS:
        assert any(line.split()[:1] == [name] for line in out.splitlines())


def test_chip_show_json_area_follows_set(capsys):
    assert main(["chip", "show", "mtia-v1", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["chip", "show", "mtia-v1", "--json", "--set", "sram.bytes=256MiB"]) == 0
    big = json.loads(capsys.readouterr().out)
    for res in (base, big):
        assert set(res["area"]) == {
            "total_mm2",
            "published_die_mm2",
            "error_pct",
            "process_nm",
            "by_kind_mm2",
            "components",
        }
        assert {c["name"] for c in res["area"]["components"]} == COMPONENTS
        assert set(res["area"]["components"][0]) == {"name", "mm2", "kind", "formula"}
    assert big["area"]["total_mm2"] > base["area"]["total_mm2"]
    assert big["overrides"] == {"sram.bytes": 256 * 2**20} and base["overrides"] == {}
    assert big["parameters"]["sram.bytes"]["provenance"] == "user"
    assert big["chip_hash"] != base["chip_hash"]
