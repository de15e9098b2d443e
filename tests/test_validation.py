"""The public validation gate, and the rule that the model never reads a published number."""

import ast
from pathlib import Path

import pytest

from mtiasim.validate import FAMILIES, cases, gate_pct, pearson, validate

SRC = Path(__file__).resolve().parents[1] / "src" / "mtiasim"


@pytest.fixture(scope="module")
def report():
    return validate()


def test_every_public_case_is_run(report):
    assert len(report.cases) == len(cases()) == 54
    assert {c["family"] for c in report.cases} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_public_mape_gate(report, family):
    stats = report.families[family]
    gate = gate_pct(family)
    assert stats.mape_pct <= gate, f"{family}: MAPE {stats.mape_pct:.1f}% > {gate}%"
    # the FC families' r: their shape over M (the drop of 4096^3 from SRAM included), not only their level
    floor = 0.98 if family.startswith("fc") else 0.7
    assert stats.pearson_r >= floor, f"{family}: Pearson r {stats.pearson_r:.3f}"


def test_json_shape(report):
    doc = report.to_json()
    assert set(doc["families"]) == set(FAMILIES)
    for name, fam in doc["families"].items():
        assert set(fam) == {"mape_pct", "pearson_r", "cases", "per_w_mape_pct", "per_w_paper_mape_pct"}
        # Figs 10 and 12 publish per-watt values (Fig 13 only GB/s)
        assert (fam["per_w_mape_pct"] is None) == (name == "ops")
    case = doc["cases"][0]
    assert {"family", "case", "published", "predicted", "error_pct", "bound"} <= set(case)


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_model_never_reads_published_results():
    # only the validation package and the CLI that prints it may touch the published data
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "validate" or rel.name == "cli.py":
            continue
        text = path.read_text()
        assert "mtiasim.validate" not in _imports(path), rel
        for marker in ("fc.csv", "tbe.csv", "ops.csv", "target_tops", "published_gbps"):
            assert marker not in text, f"{rel} mentions {marker}"


LAYERS = {
    "hw": set(),
    "isa": {"hw"},
    "engine": {"hw", "isa"},
    "kernels": {"hw", "isa"},
    "power": {"hw", "isa", "engine"},
    "report": {"hw", "isa", "engine", "power"},
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_point_down(layer):
    # the bottom, shared by every layer (jagged: offsets arithmetic, numpy and errors only)
    allowed = LAYERS[layer] | {layer, "errors", "dtypes", "opset", "jagged"}
    for path in (SRC / layer).rglob("*.py"):
        for mod in _imports(path):
            if mod.startswith("mtiasim."):
                top = mod.split(".")[1]
                assert top in allowed, f"{path.relative_to(SRC)} imports {mod}"


# the applications, lowest first: `run` (one workload built, compiled and run; its RunConfig) sits on the runtime;
# serving sits on the run path and the server description; design studies run
# `run` or `serve` trials; the CLI calls them all. Nothing below an application imports it.
APPLICATIONS = ["run", "serve", "explore"]


@pytest.mark.parametrize("app", APPLICATIONS)
def test_applications_are_at_the_top(app):
    allowed = set(APPLICATIONS[APPLICATIONS.index(app) :])
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in allowed or rel.name == "cli.py":
            continue
        assert not any(m == f"mtiasim.{app}" or m.startswith(f"mtiasim.{app}.") for m in _imports(path)), rel


# passes inside a package, lowest first: a module imports none of those after it
PASSES = {
    "compiler": ["kinds", "lower", "kernel_table", "placement", "lanes", "dispatch", "codegen"],
    "engine": ["numerics", "tiles", "functional", "resolve"],
}


def _package_modules(path: Path, package: str) -> set[str]:
    """The modules of mtiasim.`package` that `path` imports (`from mtiasim.package import x` included)."""
    out = set()
    for mod in _imports(path):
        parts = mod.split(".")
        if parts[:2] == ["mtiasim", package] and len(parts) > 2:
            out.add(parts[2])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == f"mtiasim.{package}":
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package", sorted(PASSES))
def test_passes_import_down(package):
    order = PASSES[package]
    for i, name in enumerate(order):
        for mod in _package_modules(SRC / package / f"{name}.py", package) & set(order):
            assert order.index(mod) < i, f"{package}/{name}.py imports mtiasim.{package}.{mod}"


def test_the_operator_set_is_the_bottom_layer():
    mods = [m for m in _imports(SRC / "opset.py") if m.startswith("mtiasim.")]
    assert mods == [], f"opset.py imports {mods}"


def test_validation_runs_exactly_what_the_cli_runs(report, capsys):
    """A user reproducing a published case with the CLI gets the validated prediction: `dram` means the
    paper's set-up for each benchmark (FC through the SRAM cache, Fig 13 operators with it bypassed)."""
    import json

    from mtiasim.cli import main

    for family, name, argv in (
        (
            "fc_dram",
            "fc 128x1024x1024 int8 dram",
            ["bench", "gemm", "--m", "128", "--k", "1024", "--n", "1024", "--placement", "dram"],
        ),
        (
            "ops",
            "quantize 256x128x32 dram",
            ["bench", "op", "quantize", "--m", "256", "--k", "128", "--n", "32", "--placement", "dram"],
        ),
    ):
        assert main([*argv, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["sram_cache"] is (family == "fc_dram")
        rate = res["tops"] if family == "fc_dram" else res["gbps"]
        case = next(c for c in report.cases if c["family"] == family and c["case"] == name)
        assert rate == pytest.approx(case["predicted"], abs=1e-4)
