"""The command line's reports end to end: `mtiasim run ... --report DIR --trace FILE --json`, and progress bars
that never touch --json output."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from mtiasim.cli import main
from mtiasim.progress import Progress


def test_run_writes_report_and_trace(tmp_path, capsys):
    report_dir, trace_file = tmp_path / "rep", tmp_path / "rep" / "trace.json"
    argv = ["run", "dlrm-kaggle", "--batch", "256", "--report", str(report_dir), "--trace", str(trace_file),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert captured.err == ""  # no progress bar or warning on stderr with --json
    assert res["report"] == str(report_dir / "index.html") and res["trace"]["path"] == str(trace_file)
    for png in ("roofline.png", "heatmap.png", "timeline.png", "energy.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the page shows the JSON's latency
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    shown = re.search(r'id="latency_us"[^>]*data-value="([^"]+)"', page) or re.search(
        r'data-value="([^"]+)"[^>]*id="latency_us"', page
    )
    assert shown is not None and float(shown.group(1)) == res["latency_us"]
    # the trace has a track per PE, each with its unit threads, and the ops on top
    trace = json.loads(trace_file.read_text())
    events = trace["traceEvents"]
    pe_names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert {f"PE ({r},{c})" for r in range(8) for c in range(8)} <= pe_names
    ops = [
        e for e in events if e["ph"] == "X" and e["pid"] == 0 and e["name"] in {o["name"] for o in res["ops"]}
    ]
    assert len(ops) == len(res["ops"])
    assert trace_file.stat().st_size == res["trace"]["bytes"]


def test_trace_folder_is_checked_before_the_run(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "t.json"
    assert main(["run", "dlrm-kaggle", "--trace", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mtiasim: error: --trace {missing}: folder {str(missing.parent)!r} does not exist"


def test_trace_needs_a_timed_run(tmp_path, capsys):
    assert main(["run", "dlrm-kaggle", "--mode", "functional", "--trace", str(tmp_path / "t.json")]) == 2
    assert "need a timed run" in capsys.readouterr().err


def test_bench_trace(tmp_path, capsys):
    path = tmp_path / "g.json"
    assert main(["bench", "gemm", "--m", "256", "--k", "512", "--n", "512", "--trace", str(path)]) == 0
    assert f"trace     {path}" in capsys.readouterr().out
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e["ph"] == "X" and e["pid"] > 0 for e in events)


def test_progress_is_silent_off_a_terminal(capsys):
    with Progress(enabled=True, total=2, show_after_s=0.0) as bar:
        bar.step("one")
        bar.step("two")
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal


def test_progress_shows_on_a_terminal_after_the_delay(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with Progress(enabled=True, total=2, show_after_s=0.05) as bar:
        bar.step("compiling the model")
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "compiling the model" in err


def test_progress_disabled_prints_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with Progress(enabled=False, total=1, show_after_s=0.0) as bar:
        bar.step("x")
    assert capsys.readouterr().err == ""


def test_a_bar_that_is_not_shown_does_not_load_rich():
    """rich is loaded for a bar on a terminal only: a --json or piped command does not pay its import."""
    import subprocess

    code = (
        "import sys\n"
        "from mtiasim.progress import Progress\n"
        "with Progress(enabled=False, total=1) as bar:\n"
        "    bar.step('x')\n"
        "with Progress(enabled=True, total=1) as bar:\n"  # stderr is a pipe here
        "    bar.step('y')\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trace-aggregate", "foo"], "--trace-aggregate: unknown mode 'foo' (known: auto, none, bins)"),
        (
            ["--report", "/proc/no/such"],
            "--report /proc/no/such: cannot create the folder (No such file or directory)",
        ),
    ],
)
def test_output_arguments_are_checked_first(tmp_path, capsys, monkeypatch, extra, message):
    import mtiasim.run.workload as run_module

    def no_compile(*args, **kwargs):
        raise AssertionError("the model was compiled before the output arguments were checked")

    monkeypatch.setattr(run_module, "compile", no_compile)
    argv = ["run", "dlrm-kaggle", "--trace", str(tmp_path / "t.json"), *extra]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"mtiasim: error: {message}"
    assert not (tmp_path / "t.json").exists()


def test_json_output_is_strict_with_numpy_scalars_and_non_finite_figures():
    import math

    import numpy as np

    from mtiasim import jsonout

    obj = {
        "a": np.float32("inf"),
        "b": np.int64(3),
        "c": [math.nan, 1.5, np.bool_(True)],
        "d": (np.float16(2),),
    }
    text = jsonout.dumps(obj)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": 3, "c": [None, 1.5, True], "d": [2.0],
    }  # fmt: skip
    with pytest.raises(TypeError, match="ndarray is not JSON serializable"):
        jsonout.dumps({"x": np.zeros(3)})
