"""One typed run configuration (`mtiasim.run.config.RunConfig`): the command line's options come from it, the
Python API and design studies run it."""

import dataclasses

import pytest

from mtiasim.cli import cli
from mtiasim.errors import ConfigError
from mtiasim.run.config import RunConfig
from mtiasim.run.workload import run_workload

OPTION_FIELDS = [f for f in dataclasses.fields(RunConfig) if "option" in f.metadata]


def _params(command: str) -> dict:
    return {p.name: p for p in cli.commands[command].params}


SERVING = ("server", "scenario", "p99_ms", "queries")
SHARED = {
    "run": tuple(f.name for f in OPTION_FIELDS if f.name not in SERVING),
    "serve": (*SERVING, "precision", "sets"),
    "sweep": ("chip", "sets", "batch", "precision", "fidelity", *SERVING),
    "explore": ("chip", "sets", "batch", "precision", "fidelity", *SERVING),
}


@pytest.mark.parametrize("command", sorted(SHARED))
def test_the_commands_options_are_the_configs_fields(command):
    params = _params(command)
    by_name = {f.name: f for f in OPTION_FIELDS}
    for name in SHARED[command]:
        f = by_name[name]
        opt = f.metadata["option"]
        p = params[opt.param or f.name]
        assert p.opts == [opt.flag] and p.help == opt.help, name
        assert p.multiple == opt.multiple and p.is_flag == opt.is_flag, name
        if not opt.multiple and not opt.is_flag:
            assert p.default == f.default, name


def test_from_options_reads_parameter_names_and_parses_sets():
    cfg = RunConfig.from_options(
        "dlrm-kaggle",
        {"chip_name": "mtia-2i", "sets": ("sram.bytes=64MiB",), "trace_path": "t.json", "other": 1},
    )
    assert cfg == RunConfig("dlrm-kaggle", chip="mtia-2i", sets=(("sram.bytes", "64MiB"),), trace="t.json")
    only = RunConfig.from_options("w", {"report_dir": "r", "batch": 8}, ("batch",))
    assert only == RunConfig("w", batch=8)
    with pytest.raises(ConfigError, match=r"^--set sram\.bytes: expected KEY=VALUE"):
        RunConfig.from_options("w", {"sets": ("sram.bytes",)})


def test_identity_keeps_the_keys_studies_had():
    base = {"workload", "chip", "sets", "batch", "precision", "fidelity", "seed"}
    assert set(RunConfig("w").to_json()) == base
    assert RunConfig("w", warmup=2).to_json()["warmup"] == 2
    served = RunConfig("w", server="yosemite-v3", scenario="server").to_json()
    assert served["serve"] == {"server": "yosemite-v3", "scenario": "server", "p99_ms": None, "queries": None}


def test_the_api_runs_a_config_as_its_keywords():
    kw = {
        "batch": 16,
        "max_rows": 100,
        "warmup": 0,
        "fidelity": "analytic",
        "sets": (("sram.bytes", "64MiB"),),
    }
    a = run_workload(RunConfig("dlrm-kaggle", **kw))
    b = run_workload("dlrm-kaggle", **kw)
    assert a["latency_us"] == b["latency_us"] and a["overrides"] == b["overrides"] == {"sram.bytes": 64 << 20}
