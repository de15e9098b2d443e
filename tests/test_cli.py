"""The CLI contract: flags, JSON keys, one-line errors with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtiasim.bench.ops import OPS as BENCH_OPS
from mtiasim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_gemm_json(capsys):
    code, out, err = run(
        capsys,
        "bench",
        "gemm",
        "--m",
        "256",
        "--k",
        "512",
        "--n",
        "128",
        "--dtype",
        "int8",
        "--placement",
        "sram",
        "--json",
    )
    assert code == 0, err
    res = json.loads(out)
    for key in ("seconds", "tops", "macs", "bound"):
        assert key in res
    assert res["macs"] == 256 * 512 * 128
    assert res["tops"] == pytest.approx(2 * res["macs"] / res["seconds"] / 1e12)
    assert res["bound"] in ("compute", "sram", "dram", "noc", "dispatch", "issue", "latency")


def test_bench_gemm_functional_check(capsys):
    code, out, _ = run(
        capsys,
        "bench",
        "gemm",
        "--m",
        "100",
        "--k",
        "70",
        "--n",
        "90",
        "--dtype",
        "fp16",
        "--mode",
        "both",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["check"]["passed"] is True


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_bench_gemm_functional_only_runs_and_checks_without_a_time(capsys, json_flag):
    # no timing in a functional run: the launches have no job spans (this crashed with an internal error)
    argv = ["bench", "gemm", "--m", "96", "--k", "80", "--n", "72", "--mode", "functional", *json_flag]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    if json_flag:
        res = json.loads(out)
        assert res["check"]["passed"] is True and "seconds" not in res["launches"][0]
    else:
        assert "  time      -   (event, functional)" in out and "check     passed" in out


def test_bench_tbe_json(capsys):
    code, out, err = run(
        capsys,
        "bench",
        "tbe",
        "--batch",
        "64",
        "--pooling",
        "20",
        "--rows",
        "1000",
        "--dim",
        "64",
        "--tables",
        "2",
        "--json",
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["gbps"] == pytest.approx(res["lookups"] * (64 + 4) / res["seconds"] / 1e9)
    assert res["lookups"] == 64 * 20 * 2


@pytest.mark.parametrize("op", ["batchmatmul", "transpose", "concat", "quantize", "dequantize", "tanh"])
def test_bench_op_json(capsys, op):
    code, out, err = run(
        capsys, "bench", "op", op, "--m", "256", "--k", "128", "--n", "32", "--placement", "dram", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["gbps"] == pytest.approx(res["bytes"] / res["seconds"] / 1e9)


def test_human_output(capsys):
    code, out, _ = run(capsys, "bench", "gemm", "--m", "128", "--k", "128", "--n", "128")
    assert code == 0
    assert "gemm 128x128x128 int8 (sram) on mtia-v1" in out and "TOPS" in out and "bound" in out


def test_suite_json_lines_in_row_order(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text(
        "kind,m,k,n,dtype,placement,batch,pooling,rows,dim,op\n"
        "gemm,128,256,64,int8,sram,,,,,\n"
        "op,256,128,32,,dram,,,,,transpose\n"
        "tbe,,,,,,32,10,1000,32,\n"
        "gemm,64,64,64,fp16,,,,,,\n"
    )
    code, out, err = run(capsys, "bench", "suite", str(csv), "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in rows] == ["gemm", "op", "tbe", "gemm"]
    assert rows[0]["m"] == 128 and rows[1]["op"] == "transpose" and rows[3]["dtype"] == "fp16"
    assert rows[3]["placement"] == "sram"  # empty cell: the default


def test_suite_unknown_column(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("kind,m,k,n,speed\ngemm,1,1,1,fast\n")
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2 and out == ""
    assert err.strip().startswith(f"mtiasim: error: {csv}:1: unknown column 'speed' (known: kind, m, k, n,")
    assert len(err.strip().splitlines()) == 1


def test_suite_bad_cell_names_the_line(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("kind,m,k,n\ngemm,64,64,64\ngemm,64,-3,64\n")
    code, out, err = run(capsys, "bench", "suite", str(csv))
    assert code == 2
    assert len(out.splitlines()) == 1  # the good row's result is kept
    assert err.strip() == f"mtiasim: error: {csv}:3: --k: must be positive, got -3"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "gemm", "--m", "0", "--k", "8", "--n", "8"], "--m: must be positive, got 0"),
        (
            ["bench", "gemm", "--m", "8", "--k", "8", "--n", "8", "--dtype", "int4"],
            "--dtype: unknown dtype 'int4' (known: int8, uint8, int32, int64, fp16, bf16, fp32)",
        ),
        (
            ["bench", "gemm", "--m", "8", "--k", "8", "--n", "8", "--placement", "hbm"],
            "--placement: unknown placement 'hbm' (known: sram, dram, dram-cached, dram-direct)",
        ),
        (
            ["bench", "gemm", "--m", "8", "--k", "8", "--n", "8", "--chip", "mtia-v9"],
            "unknown chip 'mtia-v9' (known: mtia-2i, mtia-v1; or give a .toml file)",
        ),
        (
            ["bench", "gemm", "--m", "8", "--k", "8", "--n", "8", "--fidelity", "exact"],
            "--fidelity: unknown fidelity 'exact' (known: roofline, analytic, event)",
        ),
        (
            ["bench", "gemm", "--m", "99999999999", "--k", "8", "--n", "8"],
            "--m: 99999999999 is absurdly large (limit 16777216)",
        ),
        (
            ["bench", "op", "softmax"],
            f"unknown op 'softmax' (known: {', '.join(BENCH_OPS)})",
        ),
        (
            ["bench", "tbe", "--batch", "8", "--pooling", "0", "--rows", "10", "--dim", "8"],
            "--pooling: must be positive, got 0",
        ),
        (
            [
                "bench",
                "tbe",
                "--batch",
                "8",
                "--pooling",
                "2",
                "--rows",
                "10",
                "--dim",
                "8",
                "--placement",
                "hbm",
            ],
            "--placement: unknown TBE placement 'hbm' (known: cache, sram, dram)",
        ),
        (
            [
                "bench",
                "tbe",
                "--batch",
                "8",
                "--pooling",
                "2",
                "--rows",
                "100000000",
                "--dim",
                "64",
                "--mode",
                "both",
            ],
            "functional TBE needs the whole 6.3 GiB table in memory (limit 2 GiB): lower --rows or --tables, or use --mode timing",
        ),
    ],
)
def test_bad_input_is_one_line_with_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err == f"mtiasim: error: {message}\n"


def test_tensor_that_cannot_fit_sram(capsys):
    code, _, err = run(
        capsys, "bench", "gemm", "--m", "16384", "--k", "16384", "--n", "16384", "--placement", "sram"
    )
    assert code == 2
    assert err == "mtiasim: error: tensor 'A' (256.0 MiB) does not fit SRAM (128 MiB, 0.0 MiB in use)\n"


def test_tbe_table_that_cannot_fit_sram(capsys):
    code, _, err = run(
        capsys,
        "bench",
        "tbe",
        "--batch",
        "8",
        "--pooling",
        "2",
        "--rows",
        "10000000",
        "--dim",
        "64",
        "--placement",
        "sram",
    )
    assert code == 2
    assert err == "mtiasim: error: tensor 'tables' (648.5 MiB) does not fit SRAM (128 MiB, 0.0 MiB in use)\n"


def test_click_usage_error_is_one_line(capsys):
    code, _, err = run(capsys, "bench", "gemm", "--m", "eight", "--k", "8", "--n", "8")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Invalid value for '--m'" in err


def test_debug_shows_the_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "mtiasim.cli", "--debug", "bench", "gemm", "--m", "0", "--k", "8", "--n", "8"],
        capture_output=True,
        text=True,
    )
    # the traceback, then the same one line and the same status as without --debug
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "UsageError" in proc.stderr
    assert proc.stderr.splitlines()[-1] == "mtiasim: error: --m: must be positive, got 0"


def test_console_script_entry_point():
    script = Path(sys.executable).parent / "mtiasim"
    proc = subprocess.run([str(script), "chip", "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "mtia-v1" in proc.stdout


def test_the_process_ends_after_exit_handlers_and_flushed_output():
    """`end_process` (the console script's end) skips the interpreter's teardown, not what a command left to do:
    the atexit handlers run, buffered output is written, the status is kept; a thread still running is waited
    for, as a normal exit would."""
    code = (
        "import atexit, sys, threading, time\n"
        "from mtiasim.cli import end_process\n"
        "atexit.register(lambda: print('at exit'))\n"
        "if sys.argv[1] == 'thread':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "sys.stdout.write('buffered ' * 5000); sys.stderr.write('err')\n"
        "end_process(3)\n"
    )
    for case in ("plain", "thread"):
        proc = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True)
        done = "thread done\n" if case == "thread" else ""
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            3,
            "buffered " * 5000 + done + "at exit\n",
            "err",
        )


def test_chip_show(capsys):
    code, out, _ = run(capsys, "chip", "show", "mtia-v1")
    assert code == 0
    assert "frequency_ghz" in out and "published: ISCA23 Table I" in out
    assert "dpe_int8_tops" in out and "quoted 102.4" in out
    code, out, _ = run(capsys, "chip", "show", "mtia-v1", "--json")
    doc = json.loads(out)
    assert doc["parameters"]["sram.bytes"] == {
        "value": 134217728,
        "provenance": "published",
        "source": "ISCA23 §3.4 (128 MB)",
        "note": None,
    }
    assert any(p["name"] == "sram_gbps" and p["quoted"] == pytest.approx(800.0) for p in doc["peaks"])


def test_start_up_imports_no_study_modules(capsys):
    """The command line loads a subcommand's modules when it runs: `run` does not pay for Optuna; the study
    metrics still list in `explore --help`."""
    code = (
        "import sys, mtiasim.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'ray')"
        " or m.startswith('mtiasim.explore')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    from mtiasim.explore.metrics import EVALUATORS

    for command in ("explore", "sweep"):
        status, out, _ = run(capsys, command, "--help")
        assert status == 0
        listed = " ".join(" ".join(out.split("Metrics:")[1].split("--storage")[0].split()).split(", "))
        assert listed.split() == list(dict.fromkeys(m for e in EVALUATORS.values() for m in e.metrics))


def test_the_benchmarks_timing_path_imports_no_torch():
    """`mtiasim bench gemm/tbe/op` in timing mode needs no PyTorch (its import is most of a process's 3 s):
    only a functional check loads the numerics bounds, which use torch."""
    code = (
        "import sys, mtiasim.cli, mtiasim.bench\n"
        "from mtiasim.bench import bench_gemm\n"
        "bench_gemm(64, 128, 64, 'int8', 'sram')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
