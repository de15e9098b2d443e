"""The command line's error contract (README "Exit status"): 0 success, 1 a failed numeric check, 2 bad input
(one line `mtiasim: error: ...`), 3 an internal error, 141 a closed stdout pipe; all-or-nothing output files;
and the bad inputs that used to escape it."""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mtiasim.cli import main
from mtiasim.errors import UsageError

MTIASIM = [sys.executable, "-m", "mtiasim.cli"]
TBE = ["bench", "tbe", "--batch", "16", "--pooling", "4", "--rows", "100", "--dim", "8"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def preset_text(name: str = "mtia-v1") -> str:
    return importlib.resources.files("mtiasim.hw").joinpath("presets", f"{name}.toml").read_text("utf-8")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- exit status 3 and --debug -------------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_internal_error_is_status_3_one_line(capsys, monkeypatch):
    monkeypatch.setattr("mtiasim.hw.preset_names", _boom)
    code, out, err = run(capsys, "chip", "list")
    assert code == 3 and out == ""
    assert one_error_line(err) == (
        "mtiasim: internal error: RuntimeError: boom second line "
        "(please report this bug; rerun with --debug for the traceback)"
    )


def test_debug_shows_the_traceback_and_keeps_the_status(capsys, monkeypatch):
    code, _, err = run(capsys, "--debug", "chip", "show", "mtia-v9")
    assert code == 2
    assert "Traceback" in err and "ConfigError" in err
    assert err.splitlines()[-1].startswith("mtiasim: error: unknown chip 'mtia-v9'")
    monkeypatch.setattr("mtiasim.hw.preset_names", _boom)
    code, _, err = run(capsys, "--debug", "chip", "list")
    assert code == 3 and "Traceback" in err and "RuntimeError: boom" in err
    assert err.splitlines()[-1].startswith("mtiasim: internal error: RuntimeError")
    # --debug does not stick to the next call in the same process
    code, _, err = run(capsys, "chip", "list")
    assert code == 3 and "Traceback" not in err


def test_debug_status_in_a_subprocess():
    proc = subprocess.run(
        [*MTIASIM, "--debug", "bench", "gemm", "--m", "0", "--k", "8", "--n", "8"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1] == "mtiasim: error: --m: must be positive, got 0"


# --- exit status 1: a failed check -----------------------------------------------------------------------------


def _failed_check(*args, **kwargs):
    return {"reference": "a test", "max_abs_err": 0.5, "max_err_over_bound": 50.0, "passed": False}


def test_failed_bench_check_is_status_1_after_the_full_output(capsys, monkeypatch):
    monkeypatch.setattr("mtiasim.bench.tbe._check", _failed_check)
    code, out, err = run(capsys, *TBE, "--mode", "both")
    assert code == 1
    assert "check     FAILED" in out and "time" in out  # the whole report is printed
    assert one_error_line(err) == (
        "mtiasim: check failed: max abs err 0.5, 50x its error bound (docs/numerics.md) vs a test"
    )
    code, out, err = run(capsys, *TBE, "--mode", "both", "--json")
    assert code == 1 and err == ""
    assert json.loads(out)["check"]["passed"] is False


def test_failed_check_in_a_suite_is_status_1_after_every_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mtiasim.bench.tbe._check", _failed_check)
    csv = tmp_path / "s.csv"
    csv.write_text(
        "kind,m,k,n,batch,pooling,rows,dim,mode\n"
        "tbe,,,,8,2,50,8,both\n"
        "gemm,64,64,64,,,,,both\n"
        "tbe,,,,8,2,50,8,timing\n"
    )
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in rows] == ["tbe", "gemm", "tbe"]
    assert rows[1]["check"]["passed"] is True
    assert one_error_line(err) == f"mtiasim: check failed: {csv}:2 (1 of 3 rows)"
    code, _, err = run(capsys, "bench", "suite", str(csv), "--json")
    assert code == 1 and err == ""


def test_failed_run_check_is_status_1(capsys, monkeypatch):
    from mtiasim.run import workload as run_module

    real = run_module.run_workload

    def failing(*args, **kwargs):
        res = real(*args, **kwargs)
        res["check"] = {**res["check"], "passed": False}
        return res

    monkeypatch.setattr(run_module, "run_workload", failing)
    code, out, err = run(capsys, "run", "dlrm-kaggle", "--batch", "8", "--check", "--max-rows", "1000")
    assert code == 1, err
    assert "check       max abs err" in out and out.rstrip().endswith("FAILED")
    last = err.splitlines()[-1]  # (after any NumericsWarning of the run)
    assert last.startswith("mtiasim: check failed: max abs err ") and last.endswith(" (PyTorch on the CPU)")
    code, out, err = run(
        capsys, "run", "dlrm-kaggle", "--batch", "8", "--check", "--max-rows", "1000", "--json"
    )
    assert code == 1 and json.loads(out)["check"]["passed"] is False
    assert "check failed" not in err


# --- a. TBE max pooling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool_mode", ["sum", "mean", "max"])
def test_tbe_pool_modes_pass_their_check(capsys, pool_mode):
    code, out, err = run(capsys, *TBE, "--tables", "2", "--pool-mode", pool_mode, "--mode", "both", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["pool_mode"] == pool_mode and res["check"]["passed"] is True


def test_tbe_pool_mode_errors(capsys):
    code, out, err = run(capsys, *TBE, "--pool-mode", "median")
    assert code == 2 and out == ""
    assert (
        one_error_line(err) == "mtiasim: error: --pool-mode: unknown pooling 'median' (known: sum, mean, max)"
    )
    code, _, err = run(capsys, *TBE, "--pool-mode", "max", "--weighted")
    assert code == 2
    assert one_error_line(err) == (
        "mtiasim: error: --weighted: per-sample weights need --pool-mode sum or mean, not max"
    )


# --- b. a chip from a file reaches the report and the trace ----------------------------------------------------


@pytest.fixture(scope="module")
def chip_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chip") / "my-chip.toml"
    path.write_text(preset_text().replace('name = "mtia-v1"', 'name = "my-chip"', 1), encoding="utf-8")
    return path


def test_run_with_a_chip_file_writes_the_report(tmp_path, capsys, chip_file):
    report, trace = tmp_path / "rep", tmp_path / "rep" / "trace.json"
    argv = ["run", "dlrm-kaggle", "--batch", "8", "--chip", str(chip_file), "--report", str(report),
            "--trace", str(trace), "--json"]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(out)
    assert res["chip"] == "my-chip"
    assert leftovers(report) == sorted(
        ["index.html", "roofline.png", "heatmap.png", "timeline.png", "energy.png", "trace.json"]
    )
    assert "my-chip" in (report / "index.html").read_text(encoding="utf-8")
    assert json.loads(trace.read_text())["traceEvents"]


# --- c. all-or-nothing output files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kaggle_run() -> dict:
    from mtiasim.run.workload import run_workload

    return run_workload("dlrm-kaggle", batch=8)


def test_a_failing_png_leaves_nothing_new(tmp_path, kaggle_run, monkeypatch):
    from mtiasim.report import figures
    from mtiasim.report.html import write_report

    def full_disk(run, path):
        path.write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figures, "energy_png", full_disk)
    (tmp_path / "old.txt").write_text("kept")
    with pytest.raises(UsageError) as e:
        write_report(kaggle_run, tmp_path)
    assert str(e.value) == f"cannot write {str(tmp_path / 'energy.png')!r}: No space left on device"
    assert leftovers(tmp_path) == ["old.txt"]  # no page, no PNG, no temporary
    fresh = tmp_path / "new" / "report"
    with pytest.raises(UsageError):
        write_report(kaggle_run, fresh)
    assert not (tmp_path / "new").exists()  # the folders this write made are gone too


def test_a_file_that_cannot_be_renamed_into_place_takes_back_the_others(tmp_path, kaggle_run):
    from mtiasim.report.html import write_report

    (tmp_path / "heatmap.png").mkdir()  # a folder where a PNG should go
    with pytest.raises(UsageError, match="heatmap.png"):
        write_report(kaggle_run, tmp_path)
    assert leftovers(tmp_path) == ["heatmap.png"]


def test_unwritable_report_png_via_the_cli_is_status_2(tmp_path, capsys, monkeypatch):
    from mtiasim.report import figures

    def read_only(run, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(figures, "timeline_png", read_only)
    report = tmp_path / "made" / "rep"
    code, out, err = run(capsys, "run", "dlrm-kaggle", "--batch", "8", "--report", str(report))
    assert code == 2 and out == ""
    assert one_error_line(err) == (
        f"mtiasim: error: cannot write {str(report / 'timeline.png')!r}: Permission denied"
    )
    assert not (tmp_path / "made").exists()  # made by the run, empty after the failure: removed


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs ulimit -f")
def test_file_size_limit_leaves_no_truncated_files(tmp_path):
    trace, report = tmp_path / "t.json", tmp_path / "rep"
    cmds = (
        f"{' '.join(MTIASIM)} bench gemm --m 256 --k 512 --n 512 --trace {trace}",
        f"{' '.join(MTIASIM)} run dlrm-kaggle --batch 8 --report {report}",
    )
    for cmd, target in zip(cmds, (trace, report / "index.html"), strict=True):
        # python ignores SIGXFSZ, so a write past the limit fails with EFBIG (File too large)
        proc = subprocess.run(
            ["bash", "-c", f"ulimit -f 40; exec {cmd}"],
            capture_output=True,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
        )
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.splitlines()[-1]
        assert line.startswith("mtiasim: error: cannot write ") and line.endswith(": File too large"), line
        assert str(target.parent) in line
        assert leftovers(tmp_path) == []  # no truncated trace.json or index.html, no temporary, no folder


def test_trace_write_failure_removes_the_temporary(tmp_path, monkeypatch):
    from mtiasim.report import atomic
    from mtiasim.report.trace import write_trace

    def no_fsync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "_fsync", no_fsync)
    with pytest.raises(UsageError) as e:
        write_trace(tmp_path / "t.json", {"traceEvents": []})
    assert str(e.value) == f"cannot write {str(tmp_path / 't.json')!r}: Input/output error"
    assert leftovers(tmp_path) == []


def test_atomic_write_replaces_and_keeps_the_umask_mode(tmp_path):
    from mtiasim.report.atomic import atomic_write_text

    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and leftovers(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_follows_links_and_writes_devices_in_place(tmp_path):
    from mtiasim.report.atomic import atomic_write_text

    (tmp_path / "link.json").symlink_to("real.json")
    atomic_write_text(tmp_path / "link.json", "x")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "x"
    assert leftovers(tmp_path) == ["link.json", "real.json"]
    if Path("/dev/null").exists():
        atomic_write_text("/dev/null", "nothing")  # a device is written, never renamed over
        assert Path("/dev/null").is_char_device()


def test_trace_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    import mtiasim.run.workload as run_module

    monkeypatch.setattr(run_module, "compile", _boom)
    code, _, err = run(capsys, "run", "dlrm-kaggle", "--trace", str(tmp_path))
    assert code == 2
    assert one_error_line(err) == (
        f"mtiasim: error: --trace {tmp_path}: is a folder; give a file name (e.g. {tmp_path}/trace.json)"
    )


# --- stdout: full disk, closed pipe ----------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["chip", "list"], ["chip", "show", "mtia-v1", "--json"]])
def test_full_disk_on_stdout_is_status_2(argv):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*MTIASIM, *argv], stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "mtiasim: error: cannot write the output: No space left on device\n"


def test_closed_pipe_on_stdout_is_quiet_status_141():
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write (as `| head -1` after its line)
    try:
        proc = subprocess.run(
            [*MTIASIM, "chip", "show", "mtia-v1"], stdout=w, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == ""


# --- d, e. bad chip files --------------------------------------------------------------------------------------

HEAD = 'name = "x"\ndescription = "d"\n'


def _value(section: str, key: str, value: str) -> str:
    return f'{HEAD}inherit = "mtia-v1"\n[{section}]\n{key} = {{ value = {value}, provenance = "user" }}\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "inherit = 5\n", "inherit: expected a preset name (mtia-2i, mtia-v1) or a .toml file name, got 5"),
        (HEAD + 'inherit = "mtia-v7"\n', "inherit: unknown preset 'mtia-v7' (known: mtia-2i, mtia-v1; or a .toml file)"),
        (HEAD + 'inherit = "nowhere.toml"\n', "inherit: no such chip file 'nowhere.toml'"),
        (HEAD + 'inherit = "chip.toml"\n', "inherit: 'chip.toml' makes a cycle (chip.toml -> chip.toml); inherit a preset or a file outside the chain"),
        (_value("clock", "frequency_ghz", "inf"), "clock.frequency_ghz: Input should be a finite number (got inf; valid: a finite number > 0)"),
        (_value("clock", "frequency_ghz", "nan"), "clock.frequency_ghz: Input should be a finite number (got nan; valid: a finite number > 0)"),
        (_value("host", "bandwidth_gbps", "inf"), "host.bandwidth_gbps: Input should be a finite number (got inf; valid: a finite number > 0)"),
        (_value("dram", "transfer_rate_mts", "-inf"), "dram.transfer_rate_mts: Input should be a finite number (got -inf; valid: a finite number > 0)"),
        (_value("grid", "rows", "true"), "grid.rows: expected a number, not a boolean (got true; valid: an integer > 0 and <= 64)"),
        (_value("grid", "rows", "65"), "grid.rows: Input should be less than or equal to 64 (got 65; valid: an integer > 0 and <= 64)"),
        (_value("sram", "bytes", "0"), "sram.bytes: Input should be greater than 0 (got 0; valid: an integer > 0)"),
        (_value("dram", "channels", "-2"), "dram.channels: Input should be greater than 0 (got -2; valid: an integer > 0)"),
        (_value("sram", "latency_cycles", "-1.0"), "sram.latency_cycles: Input should be greater than or equal to 0 (got -1.0; valid: a finite number >= 0)"),
    ],
)  # fmt: skip
def test_bad_chip_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    path = tmp_path / "chip.toml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, "chip", "show", str(path))
    assert code == 2 and out == ""
    assert one_error_line(err) == f"mtiasim: error: {path}: {message}"


def test_inheritance_cycle_through_two_files(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('name = "a"\ndescription = "d"\ninherit = "b.toml"\n')
    (tmp_path / "b.toml").write_text('name = "b"\ndescription = "d"\ninherit = "a.toml"\n')
    code, _, err = run(capsys, "chip", "show", str(tmp_path / "a.toml"))
    assert code == 2
    assert one_error_line(err) == (
        f"mtiasim: error: {tmp_path / 'b.toml'}: inherit: 'a.toml' makes a cycle (a.toml -> b.toml -> a.toml); "
        "inherit a preset or a file outside the chain"
    )


def test_a_file_inherits_a_file_beside_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "base.toml").write_text(preset_text().replace('name = "mtia-v1"', 'name = "base"', 1))
    (tmp_path / "top.toml").write_text(_value("grid", "rows", "4").replace('"mtia-v1"', '"base.toml"'))
    monkeypatch.chdir("/")
    code, out, err = run(capsys, "chip", "show", str(tmp_path / "top.toml"), "--json")
    assert code == 0, err
    assert json.loads(out)["parameters"]["grid.rows"]["value"] == 4


def test_non_utf8_chip_file(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\ndescription = "d"\n'.encode("latin-1"))
    code, _, err = run(capsys, "bench", "gemm", "--m", "8", "--k", "8", "--n", "8", "--chip", str(path))
    assert code == 2
    assert (
        one_error_line(err)
        == f"mtiasim: error: {path}: not UTF-8 text (byte 11 is 0xe9): save the file as UTF-8"
    )


def test_chip_file_with_a_bom_loads(tmp_path, capsys):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + preset_text().encode())
    code, out, err = run(capsys, "chip", "show", str(path))
    assert code == 0, err
    assert out.startswith("mtia-v1: ")


# --- d, f. bench suite CSVs ------------------------------------------------------------------------------------


def test_suite_line_numbers_count_blank_lines(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("kind,m,k,n\n\ngemm,64,64,64\n\n\ngemm,64,-3,64\n")
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2 and len(out.splitlines()) == 1
    assert one_error_line(err) == f"mtiasim: error: {csv}:6: --k: must be positive, got -3"


def test_suite_line_numbers_after_a_multiline_cell(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text('kind,m,k,n,dtype\ngemm,64,64,64,"\n"\ngemm,64,-3,64,\n')  # row 1: lines 2 and 3
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2 and len(out.splitlines()) == 1
    assert one_error_line(err) == f"mtiasim: error: {csv}:4: --k: must be positive, got -3"


def test_suite_accepts_a_utf8_bom(tmp_path, capsys):
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfkind,m,k,n\r\ngemm,64,64,64\r\n")
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 0, err
    assert json.loads(out)["kind"] == "gemm"


def test_suite_not_utf8_names_file_and_line(tmp_path, capsys):
    csv = tmp_path / "utf16.csv"
    csv.write_bytes("kind,m,k,n\ngemm,64,64,64\n".encode("utf-16"))
    code, _, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2
    assert (
        one_error_line(err)
        == f"mtiasim: error: {csv}:1: not UTF-8 text (byte 0 is 0xff): save the CSV as UTF-8"
    )
    csv.write_bytes(b"kind,m,k,n\ngemm,64,64,64\ngemm,\xff,1,1\n")
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2 and out == ""  # checked before the first row runs
    assert one_error_line(err).startswith(f"mtiasim: error: {csv}:3: not UTF-8 text")


# --- d, g, h. numbers out of range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "dlrm-kaggle", "--seed", "-1"], "--seed: must be >= 0, got -1"),
        (["run", "dlrm-kaggle", "--batch", "0"], "--batch: must be from 1 to 1,048,576, got 0"),
        (["run", "dlrm-kaggle", "--batch", "1048577"], "--batch: must be from 1 to 1,048,576, got 1,048,577"),
        (["run", "dlrm-kaggle", "--warmup", "-1"], "--warmup: must be from 0 to 1,000, got -1"),
        (["run", "dlrm-kaggle", "--warmup", "1001"], "--warmup: must be from 0 to 1,000, got 1,001"),
        (["run", "dlrm-kaggle", "--max-rows", "0"], "--max-rows: must be >= 1, got 0"),
        ([*TBE, "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
        ([*TBE, "--distribution", "zipf", "--alpha", "inf"], "--alpha: the zipf exponent must be a finite number > 0, got inf"),
        (["bench", "tbe", "--batch", "-3", "--pooling", "4", "--rows", "100", "--dim", "8"], "--batch: must be positive, got -3"),
        (["bench", "tbe", "--batch", "3", "--pooling", "4", "--rows", "100", "--dim", "0"], "--dim: must be positive, got 0"),
        (["bench", "tbe", "--batch", "3", "--pooling", "4", "--rows", "0", "--dim", "8"], "--rows: must be positive, got 0"),
        ([*TBE, "--tables", "0"], "--tables: must be positive, got 0"),
        (["bench", "gemm", "--m", "0", "--k", "8", "--n", "8"], "--m: must be positive, got 0"),
        (["bench", "gemm", "--m", "8", "--k", "-8", "--n", "8"], "--k: must be positive, got -8"),
        (["bench", "op", "relu", "--n", "0"], "--n: must be positive, got 0"),
    ],
)  # fmt: skip
def test_out_of_range_numbers_are_status_2(capsys, monkeypatch, argv, message):
    import mtiasim.run.workload as run_module

    monkeypatch.setattr(run_module, "compile", _boom)  # refused before anything is compiled
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert one_error_line(err) == f"mtiasim: error: {message}"


def test_batch_that_does_not_fit_host_memory_is_refused_up_front(capsys, monkeypatch):
    import mtiasim.run.workload as run_module

    monkeypatch.setattr(run_module, "compile", _boom)
    monkeypatch.setenv("MTIASIM_MEMORY_LIMIT_GB", "2")
    code, out, err = run(capsys, "run", "dlrm-kaggle", "--batch", "1048576")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert line.startswith("mtiasim: error: --batch 1048576: dlrm-kaggle would need about ")
    assert line.endswith(" GB of host memory (limit 2.0 GB MTIASIM_MEMORY_LIMIT_GB); use a smaller batch")
    # the Python API gets the same check
    with pytest.raises(UsageError, match="would need about"):
        run_module.run_workload("dlrm-kaggle", batch=1048576)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs /proc/meminfo")
def test_million_sample_dlrm_v2_is_refused_against_available_memory(capsys, monkeypatch):
    import mtiasim.run.workload as run_module

    monkeypatch.setattr(run_module, "compile", _boom)
    monkeypatch.delenv("MTIASIM_MEMORY_LIMIT_GB", raising=False)
    code, _, err = run(capsys, "run", "dlrm-v2-mlperf", "--batch", "1000000")
    assert code == 2
    line = err.splitlines()[-1]  # (torch may log a warning of its own as torchrec loads)
    assert line.startswith("mtiasim: error: --batch 1000000: dlrm-v2-mlperf would need about ")
    assert line.endswith(
        " GB available); use a smaller batch (or set MTIASIM_MEMORY_LIMIT_GB to override the limit)"
    )


def test_memory_estimate_covers_measured_peaks():
    from mtiasim.run.limits import estimate_host_bytes

    # peak RSS measured with /usr/bin/time -v (timing mode, default warm-up): conservative, not absurdly so
    measured = {
        ("dlrm-v2-mlperf", 16384): 1.43e9,
        ("dlrm-v2-mlperf", 65536): 4.99e9,
        ("dlrm-kaggle", 65536): 2.03e9,
        ("dlrm-random-bench", 65536): 7.41e9,
        ("dlrm-terabyte-10M", 65536): 2.45e9,
    }
    for (name, batch), peak in measured.items():
        est = estimate_host_bytes(name, batch=batch)
        assert 1.1 * peak <= est <= 2 * peak + 0.5e9, (name, batch, est)
    # and with --check (functional, tables capped at 100000 rows)
    measured = {
        ("dlrm-v2-mlperf", 1): 3.52e9,
        ("dlrm-v2-mlperf", 16384): 22.0e9,
        ("dlrm-kaggle", 16384): 2.69e9,
        ("dlrm-random-bench", 16384): 4.73e9,
    }
    for (name, batch), peak in measured.items():
        est = estimate_host_bytes(name, batch=batch, functional=True, max_rows=100_000)
        assert 1.1 * peak <= est <= 2 * peak + 0.5e9, (name, batch, est)
    small = estimate_host_bytes("dlrm-kaggle", batch=256)
    assert small < 2e9 and estimate_host_bytes("dlrm-kaggle", batch=512) > small


def test_bad_memory_cap(capsys, monkeypatch):
    monkeypatch.setenv("MTIASIM_MEMORY_LIMIT_GB", "lots")
    code, _, err = run(capsys, "run", "dlrm-kaggle")
    assert code == 2
    assert (
        one_error_line(err) == "mtiasim: error: MTIASIM_MEMORY_LIMIT_GB='lots': expected a number of GB > 0"
    )
