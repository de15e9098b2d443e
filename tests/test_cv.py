"""Cross-validation and sensitivity of the calibrated constants (`mtiasim validate --cv / --sensitivity`).

A fast smoke run here (the other operators' six cases, one grouping, one re-fit step); the full run is
`make cv` (its figures are in the README).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from mtiasim.cli import main
from mtiasim.hw import load_chip
from mtiasim.validate import cases
from mtiasim.validate import fit as fitmod

OPS = [c for c in cases() if c.family == "ops"]


@pytest.fixture(scope="module")
def cv_run():
    """The CLI's --cv --sensitivity on the ops family, with every fit's training and held-out cases recorded."""
    seen: list[tuple[list[int], list[int]]] = []
    real_fit = fitmod.Fitter.fit

    def recording_fit(self, train, u0, *args, also=(), **kwargs):
        seen.append((sorted(set(train)), sorted(set(also))))
        return real_fit(self, train, u0, *args, also=also, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(fitmod.Fitter, "fit", recording_fit)
    try:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(
                [
                    "validate",
                    "--family",
                    "ops",
                    "--cv",
                    "--cv-grouping",
                    "placement",
                    "--cv-steps",
                    "1",
                    "--sensitivity",
                    "--processes",
                    "1",
                    "--json",
                ]
            )
    finally:
        mp.undo()
    assert code == 0, buf.getvalue()
    return json.loads(buf.getvalue()), seen


def test_cv_json_has_out_of_sample_figures_beside_in_sample(cv_run):
    doc, _ = cv_run
    ops = doc["families"]["ops"]
    assert {"mape_pct", "pearson_r", "cv_mape_pct", "cv_pearson_r"} <= ops.keys()
    assert ops["cv_mape_pct"] > 0 and -1 <= ops["cv_pearson_r"] <= 1
    folds = doc["cv"]["folds"]
    assert sorted(f["held_out"] for f in folds) == ["dram", "sram"]
    # every held-out case has its out-of-sample prediction, from the fold that left it out
    for c in doc["cv"]["cases"]:
        assert set(c["cv_predicted"]) == {"placement"}
    # the re-fitted values stay inside the preset's physical ranges
    chip = load_chip("mtia-v1")
    for f in folds:
        for k, v in f["values"].items():
            lo, hi = chip.provenance[k].range
            assert lo <= v <= hi, (f["held_out"], k, v)


def test_a_fold_never_trains_on_what_it_predicts(cv_run):
    """The held-out cases of every fold are disjoint from its training cases, and together the folds of a
    grouping hold out each case exactly once."""
    _, seen = cv_run
    folds = [(train, test) for train, test in seen if test]
    assert len(folds) == 2
    held = []
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(set(train) | set(test)) == list(range(len(OPS)))
        held += test
    assert sorted(held) == list(range(len(OPS)))


def test_sensitivity_is_zero_for_a_constant_the_family_never_uses(cv_run):
    """The other operators gather no embedding rows, so the per-row issue cost cannot move them; the LPDDR5
    latency moves exactly the LPDDR5 cases, and moves them against its sign (a longer latency, a lower rate)."""
    doc, _ = cv_run
    sens = doc["sensitivity"]["constants"]
    gather = sens["core.cycles_per_gather_row"]["cases"]
    assert all(lo == 0 and hi == 0 for lo, hi in gather.values())
    lat = sens["dram.latency_ns"]["cases"]
    for label, (lo, hi) in lat.items():
        if "dram" in label:
            assert lo > 0 > hi, label
        else:
            assert lo == 0 and hi == 0, label


def test_cv_options_are_checked(capsys):
    assert main(["validate", "--cv", "--cv-grouping", "colour"]) == 2
    assert "--cv-grouping: unknown grouping 'colour'" in capsys.readouterr().err
    assert main(["validate", "--cv", "--cv-steps", "-1"]) == 2
    assert "--cv-steps: expected 0..50, got -1" in capsys.readouterr().err
