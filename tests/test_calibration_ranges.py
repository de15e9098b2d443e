"""Every calibrated constant of a preset has a physical range with its source, and sits inside it, off its edges
(issue 10: a fitted value on an edge means the range or a mechanism is wrong)."""

import math

import pytest

from mtiasim.hw import load_chip
from mtiasim.validate.fit import EDGE, on_edge


@pytest.mark.parametrize("name", ["mtia-v1"])
def test_calibrated_constants_have_ranges_and_sit_off_their_edges(name):
    chip = load_chip(name)
    calibrated = {k: p for k, p in chip.provenance.items() if p.kind == "calibrated"}
    assert calibrated
    for k, p in calibrated.items():
        assert p.range is not None and p.range_source, f"{k}: no range or no range source"
        lo, hi = p.range
        assert 0 < lo < hi, k
        assert lo <= float(chip.value(k)) <= hi, k
    assert on_edge(chip) == []


def test_on_edge_flags_a_value_at_either_end():
    chip = load_chip("mtia-v1")
    lo, hi = chip.provenance["dram.latency_ns"].range
    near_lo = math.exp(math.log(lo) + EDGE / 2 * (math.log(hi) - math.log(lo)))
    assert "dram.latency_ns" in on_edge(
        chip.with_values({"dram.latency_ns": near_lo}, provenance_kind="calibrated")
    )
    assert "dram.latency_ns" in on_edge(
        chip.with_values({"dram.latency_ns": hi}, provenance_kind="calibrated")
    )
