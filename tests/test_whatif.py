"""What-if on every command: `--set KEY=VALUE` (units, validation, one-line errors), the overrides and the chip
hash in the JSON, and overrides moving results the way the hardware would."""

import hashlib
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mtiasim
from mtiasim.cli import main
from mtiasim.errors import ConfigError
from mtiasim.hw import load_chip, peak
from mtiasim.hw.chip import SECTIONS, chip_with_sets, parse_sets
from mtiasim.hw.units import units_for

V1 = load_chip("mtia-v1")
BYTE_UNITS = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
SRAM_KEYS = ", ".join(SECTIONS["sram"].model_fields)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("sram.bytes", "256MiB", 256 * 2**20),
        ("sram.bytes", "256 MiB", 256 * 2**20),
        ("sram.bytes", "0.5GiB", 2**29),
        ("sram.bytes", "256MB", 256_000_000),
        ("sram.bytes", "64kB", 64_000),
        ("local_memory.bytes", "384KiB", 384 * 1024),
        ("dram.bytes", "128GiB", 128 * 2**30),
        ("sram.bytes", "134217728", 134217728),
        ("clock.frequency_ghz", "1.1", 1.1),
        ("clock.frequency_ghz", "1.1GHz", 1.1),
        ("clock.frequency_ghz", "1100MHz", 1.1),
        ("clock.frequency_ghz", "1100 mhz", 1.1),
        ("dram.transfer_rate_mts", "8533", 8533.0),
        ("dram.transfer_rate_mts", "8533MT/s", 8533.0),
        ("dram.transfer_rate_mts", "8.533GT/s", 8533.0),
        ("dispatch.job_launch_ns", "0.5us", 500.0),
        ("host.bandwidth_gbps", "32GB/s", 32.0),
        ("power.tdp_w", "35W", 35.0),
        ("grid.rows", "4", 4),
        ("noc.multicast", "none", "none"),
        ("identity.quotes_1024_based", "false", False),
    ],
)
def test_values_with_units(key, text, value):
    chip = V1.with_values({key: text})
    got = chip.value(key)
    assert got == pytest.approx(value) if isinstance(value, float) else got == value
    assert type(got) is type(value)
    assert chip.overrides() == {key: got}
    assert chip.provenance[key].kind == "user"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1 << 20), st.sampled_from(sorted(units_for("sram.bytes").items())))
def test_byte_units(n, unit_factor):
    unit, factor = unit_factor
    # the SRAM must hold at least one set of cache lines per slice (docs/memory.md)
    assume(round(n * factor) >= 1 << 20)
    chip = V1.with_values({"sram.bytes": f"{n}{unit}"})
    assert chip.sram.bytes == round(n * factor)
    assert isinstance(chip.sram.bytes, int)


def test_parse_sets():
    assert parse_sets(["sram.bytes=256MiB", " clock.frequency_ghz = 1.1 "]) == {
        "sram.bytes": "256MiB",
        "clock.frequency_ghz": "1.1",
    }
    with pytest.raises(ConfigError) as e:
        parse_sets(["sram.bytes=1MiB", "sram.bytes=2MiB"])
    assert str(e.value) == "--set sram.bytes: given twice (1MiB, then 2MiB); set it once"


ONE_LINE_ERRORS = [
    (
        "sram.size=1",
        f"--set sram.size=1: unknown key (keys of [sram]: {SRAM_KEYS})",
    ),
    (
        "hbm.bytes=1",
        "--set hbm.bytes=1: unknown section 'hbm' (sections: " + ", ".join(SECTIONS) + ")",
    ),
    ("rows=4", "--set rows=4: expected SECTION.KEY (e.g. sram.bytes)"),
    ("sram.bytes", "--set sram.bytes: expected KEY=VALUE (e.g. --set sram.bytes=256MiB)"),
    ("sram.bytes=", "--set sram.bytes=: no value after '='"),
    (
        "sram.bytes=abc",
        f"--set sram.bytes=abc: not a number (valid: an integer > 0; units: {BYTE_UNITS})",
    ),
    (
        "sram.bytes=256Mb",
        f"--set sram.bytes=256Mb: unknown unit 'Mb' (valid: an integer > 0; units: {BYTE_UNITS})",
    ),
    (
        "clock.frequency_ghz=1.1MiB",
        "--set clock.frequency_ghz=1.1MiB: unknown unit 'MiB' (valid: a finite number > 0; units: GHz, MHz)",
    ),
    (
        "grid.rows=100",
        "--set grid.rows=100: Input should be less than or equal to 64 (valid: an integer > 0 and <= 64)",
    ),
    (
        "grid.rows=0",
        "--set grid.rows=0: Input should be greater than 0 (valid: an integer > 0 and <= 64)",
    ),
    (
        "grid.rows=2.5",
        "--set grid.rows=2.5: Input should be a valid integer, got a number with a fractional part "
        "(valid: an integer > 0 and <= 64)",
    ),
    (
        "sram.bytes=1.5",
        f"--set sram.bytes=1.5: Input should be a valid integer, got a number with a fractional part "
        f"(valid: an integer > 0; units: {BYTE_UNITS})",
    ),
    (
        "clock.frequency_ghz=inf",
        "--set clock.frequency_ghz=inf: Input should be a finite number (valid: a finite number > 0; units: GHz, MHz)",
    ),
    (
        "clock.frequency_ghz=1.2",
        "--set clock.frequency_ghz=1.2: clock: frequency_ghz (1.2) is above max_frequency_ghz (1.1): "
        "raise clock.max_frequency_ghz too",
    ),
    (
        "noc.multicast=all",
        "--set noc.multicast=all: Input should be 'row_col' or 'none' (valid: one of \"row_col\", \"none\")",
    ),
    (
        "identity.quotes_1024_based=maybe",
        "--set identity.quotes_1024_based=maybe: not true or false (valid: true or false)",
    ),
]


@pytest.mark.parametrize(("given", "message"), ONE_LINE_ERRORS)
def test_bad_set_is_one_line_exit_2(capsys, given, message):
    code, out, err = run(capsys, "chip", "show", "mtia-v1", "--set", given)
    assert code == 2
    assert out == ""
    assert err == f"mtiasim: error: {message}\n"


COMMANDS = [
    ("chip", "show", "mtia-v1"),
    ("bench", "gemm", "--m", "64", "--k", "64", "--n", "64"),
    ("bench", "tbe", "--batch", "8", "--pooling", "2", "--rows", "100", "--dim", "64"),
    ("bench", "op", "relu"),
    ("run", "dlrm-kaggle"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_takes_set_and_refuses_a_bad_one(capsys, command):
    code, _, err = run(capsys, *command, "--set", "grid.rows=100")
    assert code == 2
    assert err == (
        "mtiasim: error: --set grid.rows=100: Input should be less than or equal to 64 "
        "(valid: an integer > 0 and <= 64)\n"
    )


# ------------------------------------------------------------------------------------------------ hash


def test_chip_hash_is_sha256_of_the_canonical_values():
    assert V1.values_hash() == hashlib.sha256(V1.values_json().encode()).hexdigest()
    assert json.loads(V1.values_json())["sram"]["bytes"] == V1.sram.bytes
    assert set(json.loads(V1.values_json())) == set(SECTIONS)
    assert load_chip("mtia-v1").values_hash() == V1.values_hash()
    assert load_chip("mtia-2i").values_hash() != V1.values_hash()


def test_chip_hash_ignores_name_and_how_values_were_set(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(
        'name = "big-sram"\ndescription = "what if"\ninherit = "mtia-v1"\n'
        '[sram]\nbytes = { value = 268435456, provenance = "assumed", note = "what if" }\n'
    )
    from_file = load_chip(str(path))
    from_set = chip_with_sets("mtia-v1", ["sram.bytes=256MiB"])
    assert from_file.values_hash() == from_set.values_hash()
    assert from_file.overrides() == {} and from_set.overrides() == {"sram.bytes": 256 * 2**20}


POOL = [
    ("sram.bytes", ["64MiB", "128MiB", "256MiB"]),
    ("clock.frequency_ghz", ["0.8", "0.9", "1.1"]),
    ("dram.transfer_rate_mts", ["5500", "6400", "8533"]),
    ("grid.rows", ["4", "8"]),
]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(POOL))), st.integers(0, 2)), unique_by=lambda t: t[0]))
def test_chip_hash_stable_and_order_independent(choice):
    sets = [f"{POOL[i][0]}={POOL[i][1][j % len(POOL[i][1])]}" for i, j in choice]
    a = chip_with_sets("mtia-v1", sets)
    b = chip_with_sets("mtia-v1", list(reversed(sets)))
    assert a.values_hash() == b.values_hash()
    assert a.overrides() == b.overrides()
    changed = a.with_values({"noc.hop_latency_cycles": a.noc.hop_latency_cycles + 1})
    assert changed.values_hash() != a.values_hash()


def test_same_value_as_preset_gives_preset_hash():
    assert V1.with_values({"sram.bytes": "128MiB"}).values_hash() == V1.values_hash()
    assert V1.with_values({"clock.frequency_ghz": "800MHz"}).values_hash() == V1.values_hash()


# ------------------------------------------------------------------------------------------------ derived values


@settings(max_examples=30, deadline=None)
@given(st.floats(0.1, 1.1))
def test_peaks_follow_the_clock(ghz):
    chip = V1.with_values({"clock.frequency_ghz": ghz})
    base = peak(V1, "dpe_int8_tops").physical
    assert peak(chip, "dpe_int8_tops").physical == pytest.approx(base * ghz / 0.8)
    assert peak(chip, "sram_gbps").physical == pytest.approx(peak(V1, "sram_gbps").physical * ghz / 0.8)
    assert peak(chip, "dram_gbps").physical == peak(V1, "dram_gbps").physical


def test_dram_rate_moves_the_dram_peak():
    chip = chip_with_sets("mtia-v1", ["dram.transfer_rate_mts=8533"])
    assert peak(chip, "dram_gbps").physical == pytest.approx(16 * 2 * 8533e6 / 1e9)


# ------------------------------------------------------------------------------------------------ results


def _bench_json(capsys, *argv):
    code, out, err = run(capsys, "bench", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_doubling_the_clock_halves_a_compute_bound_gemm(capsys):
    shape = ("gemm", "--m", "2048", "--k", "4096", "--n", "4096")
    base = _bench_json(capsys, *shape)
    fast = _bench_json(
        capsys, *shape, "--set", "clock.max_frequency_ghz=1.6", "--set", "clock.frequency_ghz=1600MHz"
    )
    assert base["bound"] == fast["bound"] == "compute"
    assert fast["seconds"] / base["seconds"] == pytest.approx(0.5, abs=0.02)
    assert base["overrides"] == {}
    assert fast["overrides"] == {"clock.frequency_ghz": 1.6, "clock.max_frequency_ghz": 1.6}
    assert fast["chip_hash"] != base["chip_hash"] and len(fast["chip_hash"]) == 64
    assert fast["chip"] == "mtia-v1"


def test_faster_dram_speeds_a_dram_bound_op(capsys):
    shape = ("op", "quantize", "--placement", "dram")
    base = _bench_json(capsys, *shape)
    # this op is bound by the LPDDR5 controllers' queues (Little's law: entries x 128 B per latency), so a
    # shorter latency speeds it up in proportion and a faster bus alone does not
    fast = _bench_json(capsys, *shape, "--set", "dram.latency_ns=95ns")
    bus = _bench_json(capsys, *shape, "--set", "dram.transfer_rate_mts=11000MT/s")
    assert base["bound"] == "dram"
    assert fast["seconds"] < 0.6 * base["seconds"]
    assert bus["seconds"] <= base["seconds"]
    assert fast["overrides"] == {"dram.latency_ns": 95.0}


def test_bench_tbe_records_overrides(capsys):
    tbe = ("tbe", "--batch", "8", "--pooling", "2", "--rows", "100", "--dim", "64")
    res = _bench_json(capsys, *tbe, "--set", "sram.bytes=64MiB")
    assert res["overrides"] == {"sram.bytes": 64 * 2**20}
    assert res["chip_hash"] == chip_with_sets("mtia-v1", ["sram.bytes=64MiB"]).values_hash()


def test_same_overrides_same_hash_across_runs(capsys):
    argv = ("gemm", "--m", "64", "--k", "64", "--n", "64", "--set", "sram.bytes=256MiB")
    assert _bench_json(capsys, *argv)["chip_hash"] == _bench_json(capsys, *argv)["chip_hash"]


def test_bench_suite_applies_set_to_every_row(capsys, tmp_path):
    path = tmp_path / "suite.csv"
    path.write_text("kind,m,k,n,op,chip\ngemm,64,64,64,,\nop,,,,relu,mtia-2i\n")
    code, out, err = run(capsys, "bench", "suite", str(path), "--set", "clock.frequency_ghz=1.1")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["chip"] for r in rows] == ["mtia-v1", "mtia-2i"]
    assert all(r["overrides"] == {"clock.frequency_ghz": 1.1} for r in rows)
    code, _, err = run(capsys, "bench", "suite", str(path), "--set", "clock.frequency_ghz=2")
    assert code == 2
    assert err.startswith(f"mtiasim: error: {path}:2: --set clock.frequency_ghz=2: clock: frequency_ghz (2)")


def test_run_json_records_overrides_and_hash(capsys):
    argv = ("run", "dlrm-kaggle", "--batch", "32", "--max-rows", "100", "--warmup", "0", "--json")
    code, out, err = run(capsys, *argv, "--set", "sram.bytes=256MiB", "--set", "clock.frequency_ghz=1.1")
    assert code == 0, err
    res = json.loads(out)
    assert res["overrides"] == {"clock.frequency_ghz": 1.1, "sram.bytes": 256 * 2**20}
    expected = chip_with_sets("mtia-v1", ["clock.frequency_ghz=1.1", "sram.bytes=256MiB"]).values_hash()
    assert res["chip_hash"] == expected


def test_python_api_records_overrides():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    x = torch.randn(16, 64)
    chip = load_chip("mtia-v1").with_values({"sram.bytes": "256MiB", "clock.frequency_ghz": 1.1})
    cm = mtiasim.compile(model, (x,), chip=chip, mode="timing")
    cm(x)
    res = cm.report.to_json()
    assert res["overrides"] == {"clock.frequency_ghz": 1.1, "sram.bytes": 256 * 2**20}
    assert res["chip_hash"] == chip.values_hash()
    plain = mtiasim.compile(model, (x,), mode="timing")
    plain(x)
    assert plain.report.to_json()["overrides"] == {}
    assert plain.report.to_json()["chip_hash"] == V1.values_hash()
