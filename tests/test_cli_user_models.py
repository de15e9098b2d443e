"""`mtiasim run` on a user's own model: a torch.export archive (FILE.pt2) or a Python factory (FILE.py:FUNCTION);
every run option applies; a file that is not what it claims to be is one line with exit status 2."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtiasim.cli import main

# a small recommendation model with odd sizes: bottom MLP, two EmbeddingBags (one weighted by a keyword
# argument), a dot interaction whose index lists are built in forward, top MLP
PARTS = """
import torch
from torch import nn

DIM = 7


class SmallRec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.bottom = nn.Sequential(nn.Linear(11, 19), nn.ReLU(), nn.Linear(19, DIM), nn.ReLU())
        self.bag_a = nn.EmbeddingBag(53, DIM, mode="sum")
        self.bag_b = nn.EmbeddingBag(29, DIM, mode="mean")
        self.top = nn.Sequential(nn.Linear(DIM + 3, 5), nn.ReLU(), nn.Linear(5, 1), nn.Sigmoid())
        for p in self.parameters():
            p.data = torch.rand(p.shape, generator=g) - 0.5

    def forward(self, dense, idx_a, off_a, idx_b, off_b, weights_a=None):
        x = self.bottom(dense)
        a = self.bag_a(idx_a, off_a, per_sample_weights=weights_a)
        b = self.bag_b(idx_b, off_b)
        t = torch.stack([x, a, b], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))
        li, lj = torch.tensor([1, 2, 2]), torch.tensor([0, 0, 1])
        return self.top(torch.cat([x, z[:, li, lj]], dim=1))


def example_inputs(batch=13, seed=9):
    g = torch.Generator().manual_seed(seed)
    la, lb = torch.randint(1, 5, (batch,), generator=g), torch.randint(1, 4, (batch,), generator=g)
    off = lambda n: torch.cat([torch.zeros(1, dtype=torch.int64), n.cumsum(0)[:-1]])
    args = (
        torch.randn(batch, 11, generator=g),
        torch.randint(0, 53, (int(la.sum()),), generator=g),
        off(la),
        torch.randint(0, 29, (int(lb.sum()),), generator=g),
        off(lb),
    )
    return args, {"weights_a": torch.rand(int(la.sum()), generator=g)}
"""

FACTORIES = """
from rec_parts import SmallRec, example_inputs  # a sibling module: the file's folder is on sys.path


def make():
    args, _ = example_inputs()
    return SmallRec(), args


def make_with_kwargs():
    args, kwargs = example_inputs()
    return SmallRec(), args, kwargs
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error(capsys, *argv) -> str:
    """The one line of a run that must fail with exit status 2."""
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The model's files in a fresh folder; the modules they define are forgotten afterwards."""
    (tmp_path / "rec_parts.py").write_text(PARTS)
    (tmp_path / "rec_model.py").write_text(FACTORIES)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("rec_", "_mtiasim_", "bad_")):
            del sys.modules[name]


def _parts(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("rec_parts")
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
def archive(folder):
    """model.pt2 (with its example inputs, keyword argument included) and the eager reference."""
    parts = _parts(folder)
    model, (args, kwargs) = parts.SmallRec().eval(), parts.example_inputs()
    path = folder / "model.pt2"
    bags = {0: torch.export.Dim.AUTO}  # the bags' lengths change from batch to batch
    shapes = {"dense": None, "idx_a": bags, "off_a": None, "idx_b": bags, "off_b": None, "weights_a": bags}
    torch.export.save(torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=shapes), path)
    with torch.no_grad():
        return path, model(*args, **kwargs)


def _passed(out: str) -> dict:
    res = json.loads(out)
    assert res["check"]["passed"] is True
    assert res["check"]["max_abs_err"] <= res["check"]["max_bound"]
    assert res["latency_us"] > 0 and res["samples_per_s"] > 0 and res["batch"] == 13
    assert {"gemm", "tbe", "batchmatmul"} <= {op["kind"] for op in res["ops"]}
    return res


# --- what runs ---------------------------------------------------------------------------------------------


def test_archive_with_its_example_inputs(capsys, archive):
    path, _ = archive
    code, out, err = run(capsys, "run", path, "--check", "--json")
    assert code == 0, err
    res = _passed(out)
    assert res["workload"] == str(path) and res["model"] == "SmallRec"
    assert res["source"] == "torch.export archive" and res["inputs"] == f"{path} (its example inputs)"


def test_factory(capsys, folder):
    spec = f"{folder / 'rec_model.py'}:make"
    code, out, err = run(capsys, "run", spec, "--check", "--json")
    assert code == 0, err
    res = _passed(out)
    assert res["source"] == "python factory" and res["inputs"] == "make()"
    # module paths and lines of the user's file are kept in the per-op rows
    assert any(op["module"] == "bag_a" for op in res["ops"])


def test_factory_with_keyword_arguments_matches_the_archive(capsys, folder, archive):
    """The same model and inputs through both doors: the same numbers and the same simulated time."""
    code, out, _ = run(capsys, "run", f"{folder / 'rec_model.py'}:make_with_kwargs", "--check", "--json")
    assert code == 0
    from_factory = _passed(out)
    code, out, _ = run(capsys, "run", archive[0], "--check", "--json")
    from_archive = _passed(out)
    for key in ("latency_us", "macs"):
        assert from_factory[key] == from_archive[key]
    assert from_factory["check"]["max_abs_err"] == from_archive["check"]["max_abs_err"]


def test_inputs_file_replaces_the_archives(capsys, folder, archive):
    parts = _parts(folder)
    args, kwargs = parts.example_inputs(seed=10)  # other bags: the archive's bag lengths are dynamic
    assert args[1].shape != parts.example_inputs()[0][1].shape
    torch.save({"args": args, "kwargs": kwargs}, folder / "in.pt")
    code, out, err = run(capsys, "run", archive[0], "--inputs", folder / "in.pt", "--check", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["batch"] == 13 and res["check"]["passed"] and res["inputs"] == str(folder / "in.pt")
    assert res["simulator_s"]["build"] >= 0


@pytest.mark.parametrize("precision, quantization", [("fp16", "static"), ("int8", "dynamic,per-tensor")])
def test_every_option_applies(capsys, folder, archive, precision, quantization):
    trace, report = folder / "trace.json", folder / "report"
    code, out, err = run(
        capsys, "run", archive[0], "--check", "--precision", precision, "--quantization", quantization,
        "--trace", trace, "--report", report, "--warmup", "2", "--fidelity", "analytic",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(
        f"{archive[0]} batch 13 on mtia-v1 ({precision}, both, analytic; tables as in the model)"
    )
    assert "every element within its bound (docs/numerics.md): passed" in out
    assert json.loads(trace.read_text())["traceEvents"] and (report / "index.html").is_file()


def test_functional_mode_is_not_timed(capsys, archive):
    code, out, err = run(capsys, "run", archive[0], "--mode", "functional")
    assert code == 0, err
    assert "  latency     not timed (functional mode)" in out.splitlines()
    assert "throughput" not in out
    code, out, _ = run(capsys, "run", archive[0], "--mode", "functional", "--json")
    res = json.loads(out)
    assert res["latency_us"] is None and res["samples_per_s"] is None and res["numerics"]["passed"]


# --- options that do not apply ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value", [("--batch", "64"), ("--max-rows", "10"), ("--seed", "3"), ("--distribution", "zipf")]
)
def test_zoo_options_are_refused_for_a_users_model(capsys, archive, flag, value):
    assert error(capsys, "run", archive[0], flag, value) == (
        f"mtiasim: error: {flag} applies to zoo workloads; {archive[0]} runs on its own example inputs"
    )


def test_inputs_only_for_an_archive(capsys, folder):
    assert error(capsys, "run", "dlrm-kaggle", "--inputs", "x.pt") == (
        "mtiasim: error: --inputs applies to a model file (FILE.pt2); dlrm-kaggle is a zoo workload"
    )
    spec = f"{folder / 'rec_model.py'}:make"
    assert error(capsys, "run", spec, "--inputs", "x.pt") == (
        f"mtiasim: error: --inputs applies to a FILE.pt2; {spec}: the factory returns the inputs"
    )


# --- files that are not what they claim ---------------------------------------------------------------------


def test_missing_files(capsys, tmp_path):
    for spec, path in (
        (tmp_path / "none.pt2", tmp_path / "none.pt2"),
        (f"{tmp_path}/none.py:make", tmp_path / "none.py"),
    ):
        assert error(capsys, "run", spec) == f"mtiasim: error: {path}: no such file"
    assert error(capsys, "run", tmp_path / "none.py") == (
        f"mtiasim: error: {tmp_path / 'none.py'}: name the function that builds the model: "
        f"{tmp_path / 'none.py'}:FUNCTION"
    )


def test_archive_that_is_not_one(capsys, tmp_path):
    noise = tmp_path / "noise.pt2"
    noise.write_bytes(bytes(range(256)) * 4)
    assert (
        error(capsys, "run", noise) == f"mtiasim: error: {noise}: not a torch.export archive (not a zip file)"
    )
    saved = tmp_path / "saved.pt2"
    torch.save({"weight": torch.ones(3)}, saved)
    assert error(capsys, "run", saved) == (
        f"mtiasim: error: {saved}: not a torch.export archive (written by torch.save, not torch.export.save)"
    )
    (tmp_path / "folder.pt2").mkdir()
    assert (
        error(capsys, "run", tmp_path / "folder.pt2")
        == f"mtiasim: error: {tmp_path / 'folder.pt2'}: not a file"
    )


def test_archive_without_example_inputs(capsys, folder):
    parts = _parts(folder)
    args, _ = parts.example_inputs()
    ep = torch.export.export(parts.SmallRec().eval(), args, strict=False)
    ep.example_inputs = None
    path = folder / "bare.pt2"
    torch.export.save(ep, path)
    assert error(capsys, "run", path) == (
        f"mtiasim: error: {path}: the archive holds no example inputs; give them with --inputs FILE "
        '(torch.save of a tuple of positional arguments or a dict {"args": tuple, "kwargs": dict})'
    )
    torch.save(args, folder / "args.pt")
    code, out, err = run(capsys, "run", path, "--inputs", folder / "args.pt", "--check", "--json")
    assert code == 0 and json.loads(out)["check"]["passed"], err


def test_bad_inputs_files(capsys, folder, archive):
    path = archive[0]
    unreadable = folder / "unreadable.pt"
    unreadable.write_text("not a pickle")
    line = error(capsys, "run", path, "--inputs", unreadable)
    assert line.startswith(f"mtiasim: error: {unreadable}: cannot read the inputs: ")
    forms = 'a tuple of positional arguments or a dict {"args": tuple, "kwargs": dict}'
    for obj, got in (
        ([torch.ones(2)], "a list"),
        ({"dense": torch.ones(2)}, "a dict with keys 'dense'"),
        ({"args": [torch.ones(2)]}, '"args" a list, "kwargs" a dict'),
    ):
        torch.save(obj, folder / "wrong.pt")
        assert error(capsys, "run", path, "--inputs", folder / "wrong.pt") == (
            f"mtiasim: error: {folder / 'wrong.pt'}: the inputs must be {forms}; got {got}"
        )
    parts = _parts(folder)
    args, kwargs = parts.example_inputs()
    what = f"mtiasim: error: {folder / 'wrong.pt'}: the inputs do not match the model's signature"
    torch.save({"args": (args[0][:, :9], *args[1:]), "kwargs": kwargs}, folder / "wrong.pt")
    assert error(capsys, "run", path, "--inputs", folder / "wrong.pt") == (
        f"{what}: Expected input at *args[0].shape[1] to be equal to 11, but got 9. If you meant for this "
        "dimension to be dynamic, please re-export and specify dynamic_shapes (e.g. with Dim.DYNAMIC)"
    )
    wider, _ = parts.example_inputs(batch=21)  # the batch is static
    torch.save({"args": wider, "kwargs": kwargs}, folder / "wrong.pt")
    assert error(capsys, "run", path, "--inputs", folder / "wrong.pt").startswith(
        f"{what}: Expected input at *args[0].shape[0] to be equal to 13, but got 21"
    )
    torch.save(args[:3], folder / "short.pt")
    assert error(capsys, "run", path, "--inputs", folder / "short.pt") == (
        f"mtiasim: error: {folder / 'short.pt'}: the inputs do not match the model's signature: expected (args, "
        "kwargs) ((*, *, *, *, *), {'weights_a': *}), got ((*, *, *), {}) (* a tensor or value)"
    )


def _bad_module(folder: Path, text: str) -> Path:
    path = folder / "bad_model.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_module_that_fails_to_import(capsys, folder):
    path = _bad_module(folder, "import torch\n\nraise RuntimeError('needs a GPU')\n")
    assert error(capsys, "run", f"{path}:make") == (
        f"mtiasim: error: {path}:3: cannot import: RuntimeError: needs a GPU"
    )
    path = _bad_module(folder, "def make(:\n    pass\n")
    assert (
        error(capsys, "run", f"{path}:make")
        == f"mtiasim: error: {path}:1: cannot import: SyntaxError: invalid syntax"
    )
    path = _bad_module(folder, "import rec_partz\n")
    assert error(capsys, "run", f"{path}:make") == (
        f"mtiasim: error: {path}:1: cannot import: ModuleNotFoundError: No module named 'rec_partz'"
    )
    assert str(folder) not in sys.path  # the folder is on sys.path only while the file imports


def test_no_such_function(capsys, folder):
    spec = f"{folder / 'rec_model.py'}:build"
    assert error(capsys, "run", spec) == (
        f"mtiasim: error: {folder / 'rec_model.py'}: no function 'build' (defined there: make, make_with_kwargs)"
    )


def test_factory_that_raises(capsys, folder):
    path = _bad_module(
        folder,
        """
        def make():
            sizes = {"dense": 13}
            return sizes["sparse"]
        """,
    )
    assert (
        error(capsys, "run", f"{path}:make") == f"mtiasim: error: {path}:4: make() raised KeyError: 'sparse'"
    )


@pytest.mark.parametrize(
    "body, what",
    [
        ("return None", "returned a NoneType; expected (model, args) or (model, args, kwargs)"),
        ("return (SmallRec(),)", "returned a tuple of 1; expected (model, args) or (model, args, kwargs)"),
        ("return 'model', ()", "returned a str as the model; expected a torch.nn.Module"),
        (
            "return SmallRec(), list(example_inputs()[0])",
            "returned a list as the inputs; expected a tuple of positional arguments",
        ),
        (
            "return SmallRec(), (), [1]",
            "returned a list as the keyword arguments; expected a dict",
        ),
    ],
)
def test_factory_returning_the_wrong_thing(capsys, folder, body, what):
    path = _bad_module(folder, f"from rec_parts import SmallRec, example_inputs\n\ndef make():\n    {body}\n")
    assert error(capsys, "run", f"{path}:make") == f"mtiasim: error: {path}: make() {what}"


# --- corpus models through both doors ----------------------------------------------------------------------

CORPUS_FACTORY = """
import sys
sys.path.insert(0, {root!r})
from tests.corpus import by_name


def build():
    return by_name({name!r}).build()
"""


@pytest.mark.parametrize("name", ["two-tower", "autoint", "dcn-v2-parallel"])
def test_corpus_model_as_a_factory_and_as_an_archive(capsys, tmp_path, name):
    """A third-party-style model of the corpus, as a user would bring it: `file.py:factory` and `model.pt2`
    both compile, run and pass `--check`, with the same simulated time."""
    from tests.corpus import by_name

    root = str(Path(__file__).resolve().parents[1])
    (tmp_path / "corpus_model.py").write_text(CORPUS_FACTORY.format(root=root, name=name))
    code, out, err = run(capsys, "run", f"{tmp_path / 'corpus_model.py'}:build", "--check", "--json")
    assert code == 0, err
    from_factory = json.loads(out)
    assert from_factory["check"]["passed"] is True and from_factory["latency_us"] > 0

    model, args = by_name(name).build()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, args, strict=False), path)
    code, out, err = run(capsys, "run", path, "--check", "--json")
    assert code == 0, err
    from_archive = json.loads(out)
    assert from_archive["check"]["passed"] is True
    assert from_archive["latency_us"] == pytest.approx(from_factory["latency_us"], rel=1e-9)


OVERFLOWING = """
import torch
from torch import nn


def make():
    fc = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        fc.weight.fill_(3e4)  # outputs of 1.2e5: beyond fp16's 65504, +-inf on the chip, finite in fp32
    return fc.eval(), (torch.ones(5, 4),)
"""


def test_a_check_that_bounds_no_element_says_so_and_the_json_stays_strict(capsys, tmp_path):
    """Every output element is unbounded (an fp16 overflow the bound allows): the check passes, says that it
    checked nothing, and --json writes the infinite largest bound as null (RFC 8259 has no Infinity)."""
    spec = f"{tmp_path / 'overflow_model.py'}:make"
    (tmp_path / "overflow_model.py").write_text(OVERFLOWING)
    code, out, err = run(capsys, "run", spec, "--precision", "fp16", "--check", "--json")
    assert code == 0, err
    res = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    chk = res["check"]
    assert chk["passed"] is True and chk["elements"] == chk["unbounded"] == 15 and chk["outside"] == 0
    assert chk["max_bound"] is None  # inf
    code, out, err = run(capsys, "run", spec, "--precision", "fp16", "--check")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.lstrip().startswith("check "))
    assert "; no element is bounded (15 of 15 unbounded: the worst-case bound exceeds the range" in line
    assert "so the bound checks nothing; the error is " in line and "passed" not in line
    numerics = next(x for x in out.splitlines() if x.lstrip().startswith("numerics "))
    assert numerics.endswith("bound inf (15 of 15 elements unbounded)")
