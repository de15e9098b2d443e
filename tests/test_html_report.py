"""The HTML run report: files, self-containment, escaping, PNG determinism, the page in headless Chromium."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mtiasim.errors import UsageError
from mtiasim.hw import load_chip
from mtiasim.report.figures import PNG_NAMES
from mtiasim.report.html import json_for_script, write_report

EVIL_SCRIPT = "<script>alert(1)</script>"
EVIL_IMG = '"><img src=x onerror=alert(1)>'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POWER_KEYS = (
    "energy_j",
    "avg_power_w",
    "peak_power_w",
    "card_power_w",
    "platform_power_w",
    "card_energy_j",
    "platform_energy_j",
    "energy_breakdown_j",
    "samples_per_s_per_w",
    "pe_utilization",
)
SUMMARY_NUMBERS = (
    "batch",
    "latency_us",
    "host_us",
    "h2d_us",
    "device_us",
    "d2h_us",
    "samples_per_s",
    "macs",
    "mac_utilization",
    "avg_power_w",
    "peak_power_w",
    "card_power_w",
    "platform_power_w",
    "energy_j",
    "card_energy_j",
    "platform_energy_j",
)


@pytest.fixture(scope="module")
def run() -> dict:
    from mtiasim.run.workload import run_workload

    return run_workload("dlrm-kaggle", batch=64)


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    return write_report(run, tmp_path_factory.mktemp("report") / "out")


class Page(HTMLParser):
    """What a test needs from a page: elements by id, the op table's rows, tags, attributes, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.op_rows: list[str] = []
        self.scripts: list[str] = []
        self._in_ops_body = False
        self._script: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.by_id[a["id"]] = a
            self.ids.append(a["id"])
        if tag == "table":
            self._in_ops_body = a.get("id") == "ops"
        if tag == "tr" and self._in_ops_body and "data-op" in a:
            self.op_rows.append(a["data-op"])
        if tag == "script":
            self._script = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_ops_body = False
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)

    def value(self, id_: str) -> float:
        return float(self.by_id[id_]["data-value"])


def _check_numbers(page: Page, run: dict) -> None:
    for k in SUMMARY_NUMBERS:
        assert page.value(k) == run[k], k
    for k, v in run["samples_per_s_per_w"].items():
        assert page.value(f"samples_per_s_per_w_{k}") == v, k
    for k, v in (run.get("attribution_detail_us") or run["attribution_us"]).items():
        assert page.value(f"attr_{k}") == v, k
    assert page.by_id["bound"]["data-value"] == run["bound"]
    assert page.by_id["model"]["data-value"] == run["model"]


# ------------------------------------------------------------------------------------------------ files


def test_writes_the_page_and_the_pngs(report):
    assert report.name == "index.html" and report.is_file()
    for n in PNG_NAMES:
        data = (report.parent / n).read_bytes()
        assert data.startswith(PNG_MAGIC), n


def test_page_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    low = text.lower()
    for bad in ("<link", "@import", "fetch(", "xmlhttprequest", "<iframe", "<img", "<object", "<embed"):
        assert bad not in low, bad
    page = Page(text)
    assert not [t for t, a in page.tags if "src" in a], "an element loads a resource"
    # the only url() is the roofline's own clip path
    assert set(re.findall(r"url\(([^)]*)\)", text)) <= {"#roofclip"}
    # the only links are in-page anchors and the PNG copies beside the page
    hrefs = {a["href"] for t, a in page.tags if "href" in a}
    assert all(h.startswith("#") or h in PNG_NAMES for h in hrefs), hrefs


def test_summary_numbers_equal_the_json(report, run):
    page = Page(report.read_text(encoding="utf-8"))
    _check_numbers(page, run)
    assert page.op_rows == [op["name"] for op in run["ops"]]
    # the run is embedded, and reads back as it was
    (data,) = [s for s in page.scripts if s.lstrip().startswith("{")]
    assert json.loads(data) == run
    # every op is on the roofline and on the timeline
    for op in run["ops"]:
        assert f'data-op="{op["name"]}"' in report.read_text(encoding="utf-8")
    assert {k for k in page.by_id if k.startswith("heatmap-")} >= {
        f"heatmap-{u}" for u in run["pe_utilization"]
    }


def test_ids_are_unique_and_the_check_is_shown(run, tmp_path):
    out = {"output": "linear_6", "max_abs_err": 0.0125, "max_bound": 0.25, "max_err_over_bound": 0.05}
    checked = {
        **run,
        "check": {"max_abs_err": 0.0125, "max_rel_err": 0.5, "max_err_over_bound": 0.05, "passed": True},
        "numerics": {"outputs": [{**out, "passed": False}]},
        "conversions": {"linear_q": {"converted": 64, "nonfinite": 2, "saturated": 3, "overflow": 0}},
        "numerics_warnings": ["op linear_q (module 0): 2 NaN/Inf input value(s) <b>"],
    }
    text = write_report(checked, tmp_path, pngs=False).read_text(encoding="utf-8")
    page = Page(text)
    assert len(page.ids) == len(set(page.ids))
    assert page.by_id["check_passed"]["data-value"] == "true"
    assert page.value("check_max_abs_err") == 0.0125 and page.value("check_max_err_over_bound") == 0.05
    assert "numerics-outputs" in page.by_id and "numerics-conversions" in page.by_id
    assert "OUTSIDE" in text and "&lt;b&gt;" in text and "<b>" not in text


def test_pngs_and_page_are_deterministic(report, run, tmp_path):
    again = write_report(run, tmp_path, chip=load_chip("mtia-v1"))
    assert again.read_bytes() == report.read_bytes()
    for n in PNG_NAMES:
        data = (tmp_path / n).read_bytes()
        assert data == (report.parent / n).read_bytes(), n
        assert b"tIME" not in data and b"Software" not in data, n


def test_pngs_false_writes_only_the_page(run, tmp_path):
    write_report(run, tmp_path, pngs=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_unwritable_path_is_a_usage_error(run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError) as e:
        write_report(run, blocker / "report", pngs=False)
    msg = str(e.value)
    assert "\n" not in msg and str(blocker) in msg


def test_a_run_without_timing_renders(run, tmp_path):
    bare = {k: v for k, v in run.items() if k not in POWER_KEYS}
    bare["ops"] = []
    bare["attribution_us"] = {}
    bare["attribution_detail_us"] = {}
    page = Page(write_report(bare, tmp_path).read_text(encoding="utf-8"))
    assert page.value("latency_us") == run["latency_us"]
    assert "data-value" not in page.by_id["energy_j"] and page.op_rows == []


# ------------------------------------------------------------------------------------------------ escaping


def evil_run(run: dict) -> dict:
    bad = copy.deepcopy(run)
    bad["model"] = bad["workload"] = EVIL_SCRIPT
    bad["ops"][0]["name"] = EVIL_SCRIPT
    bad["ops"][1]["name"] = EVIL_IMG
    bad["ops"][2]["module"] = EVIL_IMG
    bad["ops"][3]["kind"] = EVIL_SCRIPT
    bad["ops"][4]["lane"] = EVIL_IMG
    bad["ops"][5]["attribution_us"] = {EVIL_IMG: 1.0}
    bad["ops"][5]["attribution_detail_us"] = {EVIL_IMG: 1.0}
    bad["memory_plan"] = [*bad["memory_plan"], EVIL_SCRIPT, EVIL_IMG, "a & b </pre> <!--"]
    bad["energy_breakdown_j"] = {**bad["energy_breakdown_j"], EVIL_IMG: 1e-6}
    bad["pe_utilization"] = {**bad["pe_utilization"], EVIL_IMG: bad["pe_utilization"]["dpe"]}
    bad["attribution_us"] = {**bad["attribution_us"], EVIL_SCRIPT: 1.0}
    bad["attribution_detail_us"] = {**bad["attribution_detail_us"], EVIL_SCRIPT: 1.0}
    return bad


def test_strings_are_escaped(run, tmp_path):
    bad = evil_run(run)
    text = write_report(bad, tmp_path, pngs=False).read_text(encoding="utf-8")
    assert EVIL_SCRIPT not in text and EVIL_IMG not in text
    assert "<img" not in text.lower() and "</pre> <!--" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert [t for t, _ in page.tags].count("script") == 2  # the embedded run and the sorter
    assert not [t for t, a in page.tags if "onerror" in a or t == "img"]
    assert page.op_rows == [op["name"] for op in bad["ops"]]
    (data,) = [s for s in page.scripts if s.lstrip().startswith("{")]
    assert json.loads(data) == bad


def test_json_for_script_escapes_markup():
    text = json_for_script({"a": "</script><!-- & \u2028", "b": float("inf")})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028", "b": None}


# ------------------------------------------------------------------------------------------------ browser

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Chromium (--enable-logging=stderr) logs every console message of a page, whatever its level (log, warn,
# error, an uncaught exception), as `[pid:tid:time:INFO:CONSOLE:LINE] "message", source: URL (LINE)` (older
# builds: `INFO:CONSOLE(LINE)`): the level is not in the line. The report logs nothing, so any CONSOLE line is
# a failure.
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught")


def browse(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and Chromium's console lines for it."""
    if BROWSER is None:
        pytest.skip(
            "chromium not installed (apt-get install chromium): the HTML page is not checked in a browser"
        )
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [
        BROWSER,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, [ln for ln in res.stderr.splitlines() if CONSOLE.search(ln)]


def test_console_error_detection_works(tmp_path):
    """Negative controls: a page that calls console.error, and one that throws, are both caught."""
    logs = tmp_path / "logs.html"
    logs.write_text('<!DOCTYPE html><p id="x">x</p><script>console.error("report-boom");</script>')
    throws = tmp_path / "throws.html"
    throws.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction();</script>")
    _, lines = browse(logs.as_uri(), tmp_path)
    assert any("report-boom" in ln for ln in lines), lines
    _, lines = browse(throws.as_uri(), tmp_path)
    assert any("Uncaught" in ln and "undefinedFunction" in ln for ln in lines), lines


def test_page_in_chromium(report, run, tmp_path):
    dom, console = browse(report.as_uri(), tmp_path)
    assert console == []
    page = Page(dom)
    assert page.by_id and 'data-js="ok"' in dom  # the script ran to its end
    _check_numbers(page, run)
    assert page.op_rows == [op["name"] for op in run["ops"]]


def test_sort_in_chromium(report, run, tmp_path):
    dom, console = browse(report.as_uri() + "?sort=time_us&dir=desc", tmp_path)
    assert console == []
    page = Page(dom)
    assert page.by_id["ops"]["data-sorted"] == "time_us:desc"
    order = sorted(range(len(run["ops"])), key=lambda i: (-run["ops"][i]["time_us"], i))
    assert page.op_rows == [run["ops"][i]["name"] for i in order]


def test_escaped_page_in_chromium(run, tmp_path):
    index = write_report(evil_run(run), tmp_path / "evil", pngs=False)
    dom, console = browse(index.as_uri() + "?sort=-name", tmp_path)
    assert console == []
    page = Page(dom)
    assert not [t for t, a in page.tags if t == "img" or "onerror" in a]
    assert [t for t, _ in page.tags].count("script") == 2
    assert sorted(page.op_rows, key=str.lower, reverse=True) == page.op_rows
