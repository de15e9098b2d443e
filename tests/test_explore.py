"""Design studies: `mtiasim sweep` and `mtiasim explore` (issue 13, parts 3-4).

The coordinator's promises are tested as such: the same trials with 1 worker, 2 worker processes and Ray; a
study killed with SIGKILL mid-run and re-run ends with exactly N complete trials, the same ones an
uninterrupted run makes; a trial a killed run left half-asked is finished, not lost or doubled. Trials use the
roofline fidelity (instant) except where a kill needs time to land."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mtiasim.cli import main
from mtiasim.explore import RunConfig, StudySpec, open_study, run_study
from mtiasim.explore.metrics import RUN_METRICS
from mtiasim.explore.output import csv_text, importances, render_page
from mtiasim.explore.space import parse_grid, parse_objective, parse_range
from mtiasim.hw import load_chip
from mtiasim.hw.area import area
from mtiasim.serve.run import serve_workload

V1 = load_chip("mtia-v1")
METRICS = dict.fromkeys(RUN_METRICS, "")
OBJECTIVES = (parse_objective("samples_per_s_per_w:max", METRICS), parse_objective("area_mm2:min", METRICS))
ROOT = Path(__file__).resolve().parents[1]


def spec(kind="explore", fidelity="roofline", population=4, seed=0, **kw):
    params = kw.pop("params", None) or (
        parse_range("sram.bytes=32MiB..256MiB", V1),
        parse_range("clock.frequency_ghz=0.8..1.1", V1),
    )
    run = RunConfig("dlrm-kaggle", fidelity=fidelity, batch=kw.pop("batch", 64))
    return StudySpec(kind, "run", run, tuple(params), OBJECTIVES, seed=seed, population=population, **kw)


def trials_of(study):
    """(number, state, params, metrics) of every trial in the store, by number."""
    return [
        (t.number, t.state.name, t.params, t.user_attrs.get("mtiasim.metrics"))
        for t in sorted(study.optuna_study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["explore", "dlrm-kaggle", "--param", "sram.byte=1..2", "--trials", "2"],
            "--param sram.byte=1..2: unknown key 'sram.byte' (keys of [sram]: bytes, slices,",
        ),
        (
            ["explore", "dlrm-kaggle", "--param", "sram.bytes=256MiB..32MiB", "--trials", "2"],
            "--param sram.bytes=256MiB..32MiB: LOW (256MiB) must be below HIGH (32MiB)",
        ),
        (
            ["explore", "dlrm-kaggle", "--param", "grid.rows=1..100", "--trials", "2"],
            "--param grid.rows=1..100: grid.rows=100: Input should be less than or equal to 64 "
            "(valid: an integer > 0 and <= 64)",
        ),
        (
            ["explore", "dlrm-kaggle", "--param", "sram.bytes=32MiB", "--trials", "2"],
            "--param sram.bytes=32MiB: expected KEY=LOW..HIGH (e.g. sram.bytes=32MiB..256MiB)",
        ),
        (
            [
                "explore",
                "dlrm-kaggle",
                "--param",
                "sram.bytes=32MiB..64MiB",
                "--objective",
                "speed:max",
                "--trials",
                "2",
            ],
            "--objective speed:max: unknown metric 'speed' (metrics: samples_per_s, samples_per_s_per_w,",
        ),
        (
            [
                "explore",
                "dlrm-kaggle",
                "--param",
                "sram.bytes=32MiB..64MiB",
                "--objective",
                "area_mm2:up",
                "--trials",
                "2",
            ],
            "--objective area_mm2:up: expected NAME:max or NAME:min",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB,1XB"],
            "--grid sram.bytes=32MiB,1XB: sram.bytes=1XB: unknown unit 'XB' (valid: an integer > 0; units: B,",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB,0"],
            "--grid sram.bytes=32MiB,0: sram.bytes=0: Input should be greater than 0 (valid: an integer > 0;",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "clock.frequency_ghz=0.8,1.2"],
            "clock.frequency_ghz=1.2: clock: frequency_ghz (1.2) is above max_frequency_ghz (1.1)",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "noc.multicast=a,b"],
            "--grid noc.multicast=a,b: noc.multicast is not a number; only numeric keys can be searched",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB", "--over", "queue"],
            "--over queue: unknown (known: run, serve)",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB", "--p99-ms", "10"],
            "--p99-ms applies to --over serve",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB", "--over", "serve", "--server", "nope"],
            "unknown server",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB", "--over", "serve", "--batch", "64"],
            "--batch does not apply to --over serve (the server batches queries dynamically)",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB", "--over", "serve", "--chip", "mtia-2i"],
            "--chip does not apply to --over serve: the server's cards set the chip (--server)",
        ),
        (
            ["sweep", "no-such-model", "--grid", "sram.bytes=64MiB"],
            "unknown workload 'no-such-model' (known: dlrm-kaggle,",
        ),
        (
            ["sweep", "dlrm-kaggle", "--grid", "sram.bytes=64MiB", "--fidelity", "fast"],
            "--fidelity: unknown fidelity 'fast' (known: roofline, analytic, event)",
        ),
        (
            ["explore", "dlrm-kaggle", "--param", "sram.bytes=32MiB..64MiB", "--trials", "0"],
            "--trials: expected 1..1000000, got 0",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = cli(capsys, *argv, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mtiasim: error: ")
    assert message in err
    assert not (tmp_path / "s.db").exists()  # refused before the store is made


def test_another_command_on_the_same_study_is_refused(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    open_study(spec(seed=0), db, "mine")
    with pytest.raises(
        Exception,
        match=r"--study mine: the study in .* was made by another command \(seed: 0 there, 3 here\)",
    ):
        open_study(spec(seed=3), db, "mine")


# ------------------------------------------------------------------------------------------------ a sweep


def test_sweep_runs_the_grid_in_order_and_exports_it(capsys, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    code, out, err = cli(
        capsys, "sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB,128MiB", "--grid", "clock.frequency_ghz=0.8,1.1",
        "--fidelity", "roofline", "--batch", "64", "--storage", db, "--json", "--csv", str(tmp_path / "t.csv"),
        "--report", str(tmp_path / "rep"),
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    trials, doc = lines[:-1], lines[-1]
    mib = 2**20
    assert [(t["params"]["sram.bytes"], t["params"]["clock.frequency_ghz"]) for t in trials] == [
        (32 * mib, 0.8), (32 * mib, 1.1), (128 * mib, 0.8), (128 * mib, 1.1),
    ]  # fmt: skip
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    for t in trials:  # the area metric is the area model of the chip with the trial's values
        chip = V1.with_values(t["params"])
        assert t["metrics"]["area_mm2"] == pytest.approx(area(chip).total_mm2, abs=1e-3)
        assert t["objectives"] == {k: t["metrics"][k] for k in ("samples_per_s_per_w", "area_mm2")}
    # the front is exactly the non-dominated trials
    pts = {t["trial"]: (t["metrics"]["samples_per_s_per_w"], t["metrics"]["area_mm2"]) for t in trials}

    def dominated(a):
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in pts.values())

    assert sorted(r["trial"] for r in doc["pareto_front"]) == sorted(
        n for n, p in pts.items() if not dominated(p)
    )
    assert doc["complete"] == 4 and doc["failed"] == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert {int(r["trial"]) for r in rows if r["pareto"] == "1"} == {r["trial"] for r in doc["pareto_front"]}
    assert float(rows[2]["area_mm2"]) == trials[2]["metrics"]["area_mm2"]
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count('<tr id="trial-') == 4
    assert page.count('class="front"') == 2 * len(doc["pareto_front"])  # a circle and a row each
    assert "http" not in page.replace("http-equiv", "")
    # re-running the finished sweep simulates nothing and prints the same
    code, out2, _ = cli(capsys, "sweep", "dlrm-kaggle", "--grid", "sram.bytes=32MiB,128MiB", "--grid",
                        "clock.frequency_ghz=0.8,1.1", "--fidelity", "roofline", "--batch", "64", "--storage", db,
                        "--json")  # fmt: skip
    assert code == 0 and out2 == out


def test_a_sweep_over_serve_sets_every_cards_chip(capsys, tmp_path):
    """`--over serve`: each trial serves the workload on the server with the trial's values on every card."""
    db = f"sqlite:///{tmp_path}/s.db"
    code, out, err = cli(
        capsys, "sweep", "dlrm-kaggle", "--over", "serve", "--grid", "clock.frequency_ghz=0.8,1.1",
        "--scenario", "offline", "--queries", "200", "--fidelity", "roofline",
        "--objective", "samples_per_s_per_w:max", "--objective", "area_mm2:min", "--storage", db, "--json",
    )  # fmt: skip
    assert code == 0, err
    trials = [json.loads(line) for line in out.splitlines()][:-1]
    assert [t["params"]["clock.frequency_ghz"] for t in trials] == [0.8, 1.1]
    slow, fast = (t["metrics"] for t in trials)
    direct = serve_workload(
        "dlrm-kaggle",
        scenario="offline",
        queries=200,
        fidelity="roofline",
        values={"clock.frequency_ghz": 1.1},
    )
    assert fast["queries_per_s"] == direct["queries_per_s"] and fast["p99_ms"] == direct["p99_ms"]
    assert fast["samples_per_s_per_w"] == direct["samples_per_s_per_w"]
    assert fast["queries_per_s"] >= slow["queries_per_s"] and fast["area_mm2"] == slow["area_mm2"]


# ------------------------------------------------------------------------------------------------ determinism


def test_one_worker_two_workers_and_a_resumed_run_make_the_same_trials(tmp_path):
    one = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/a.db", name="s")
    two = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/b.db", name="s", workers=2)
    part = run_study(spec(), 5, storage=f"sqlite:///{tmp_path}/c.db", name="s")
    assert len(trials_of(part)) == 5
    resumed = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/c.db", name="s")
    assert trials_of(one) == trials_of(two) == trials_of(resumed)
    assert [t[1] for t in trials_of(one)] == ["COMPLETE"] * 8
    # NSGA-II made generation 1 from generation 0: its trials are not a fresh random draw
    gen = [t.system_attrs.get("NSGAIISampler:generation") for t in one.optuna_study.trials]
    assert gen == [0, 0, 0, 0, 1, 1, 1, 1]
    other = run_study(spec(seed=1), 8, storage=f"sqlite:///{tmp_path}/d.db", name="s")
    assert [t[2] for t in trials_of(other)] != [t[2] for t in trials_of(one)]


def test_ray_makes_the_same_trials_as_one_worker(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mtiasim[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
    )
    try:
        on_ray = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/r.db", name="s", ray_address="local")
    finally:
        ray.shutdown()
    one = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/a.db", name="s")
    assert trials_of(on_ray) == trials_of(one)


# ------------------------------------------------------------------------------------------------ kill and resume


def _explore_argv(db):
    return [
        sys.executable, "-m", "mtiasim.cli", "explore", "dlrm-kaggle", "--param", "sram.bytes=32MiB..256MiB",
        "--param", "clock.frequency_ghz=0.8..1.1", "--trials", "10", "--population", "4", "--batch", "64",
        "--storage", db, "--json",
    ]  # fmt: skip


def test_a_study_killed_with_sigkill_resumes_to_exactly_n_trials(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(_explore_argv(db), stdout=subprocess.PIPE, env=env, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(json.loads(line))
        if len(seen) == 5:  # trial 4 told; 5, 6, 7 asked (one generation) and RUNNING
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    name = spec(fidelity="event").default_name()  # the name the command gave its study
    st = optuna.load_study(study_name=name, storage=db)
    states = [t.state for t in st.trials]
    assert states.count(TrialState.COMPLETE) >= 5 and TrialState.RUNNING in states
    done = subprocess.run(_explore_argv(db), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [t["trial"] for t in lines[:-1]] == list(range(10))
    assert lines[-1]["complete"] == 10 and lines[-1]["failed"] == 0
    assert lines[:5] == seen  # the trials finished before the kill are kept as they were
    st = optuna.load_study(study_name=name, storage=db)
    assert [t.state for t in st.trials] == [TrialState.COMPLETE] * 10
    # and they are the trials an uninterrupted run makes
    ref = run_study(spec(fidelity="event"), 10, storage=f"sqlite:///{tmp_path}/ref.db", name="r")
    got = [(t["trial"], t["params"], t["metrics"]) for t in lines[:-1]]
    assert got == [(n, p, m) for n, _, p, m in trials_of(ref)]


def test_a_trial_left_half_asked_is_finished_not_lost_or_doubled(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    study = open_study(spec(), db, "s")
    # a run killed between storing a new trial's first value and its second
    study.optuna_study.sampler = study._sampler(0)
    trial = study.optuna_study.ask()
    sram = trial.suggest_int("sram.bytes", 32 * 2**20, 256 * 2**20)
    assert study.optuna_study.trials[0].state == TrialState.RUNNING
    done = run_study(spec(), 4, storage=db, name="s")
    got = trials_of(done)
    assert [t[:2] for t in got] == [(n, "COMPLETE") for n in range(4)]
    assert got[0][2]["sram.bytes"] == sram and set(got[0][2]) == {"sram.bytes", "clock.frequency_ghz"}


# ------------------------------------------------------------------------------------------------ outputs


def test_importance_and_page_from_a_small_study(tmp_path):
    study = run_study(spec(), 8, storage=f"sqlite:///{tmp_path}/a.db", name="s")
    imp = importances(study)
    assert set(imp) == {"samples_per_s_per_w", "area_mm2"}
    for v in imp.values():
        assert isinstance(v, dict) and set(v) == {"sram.bytes", "clock.frequency_ghz"}
        assert sum(v.values()) == pytest.approx(1.0, abs=1e-3)
    # the area depends on the SRAM size far more than on the clock (which it does not depend on at all)
    assert imp["area_mm2"]["sram.bytes"] > imp["area_mm2"]["clock.frequency_ghz"]
    page = render_page(study)
    assert page.count('<tr id="trial-') == 8
    assert 'id="pareto"' in page and 'class="importance"' in page
    assert csv_text(study).count("\n") == 9


def test_the_run_json_has_the_area(capsys):
    code, out, _ = cli(capsys, "run", "dlrm-kaggle", "--fidelity", "roofline", "--batch", "64", "--json",
                       "--set", "sram.bytes=64MiB")  # fmt: skip
    assert code == 0
    res = json.loads(out)
    assert res["area_mm2"] == pytest.approx(area(V1.with_values({"sram.bytes": "64MiB"})).total_mm2, abs=1e-3)


def test_grid_choices_are_parsed_with_units():
    p = parse_grid("sram.bytes=64MiB,1GiB", V1)
    assert p.choices == (64 * 2**20, 2**30)
