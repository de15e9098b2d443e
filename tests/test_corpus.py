"""The model corpus (tests/corpus): every model compiles for the simulated chip and matches eager PyTorch at
fp16 and int8 within the error bounds of docs/numerics.md, or fails for the reason on record.

Kernels are still landing, so the status is pinned here, in one place: a model in `EXPECTED_TO_PASS` must
pass; a model in `KNOWN_BUGS` fails for a reason other than a missing kernel (strict xfail); every other model
must be refused with `UnsupportedOperatorError`. When a kernel lands and a model starts to pass, its test fails
and says so: move it into `EXPECTED_TO_PASS`. `scripts/corpus_status.py` prints the whole status.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tests.corpus.check import PRECISIONS, blocker_of, check_model, load_fbgemm_ops

load_fbgemm_ops()  # before mtiasim's front end, where this module is imported first (see load_fbgemm_ops)

from tests.corpus import CORPUS, GROUPS, by_name, select  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # fbgemm_gpu, torch.ao (torchrec quantization)
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# models that compile and match at every precision (maintained from scripts/corpus_status.py's output)
EXPECTED_TO_PASS = frozenset(
    {
        "afm",
        "autoint",
        "bst",
        "dcn-v2-parallel",
        "dcn-v2-stacked",
        "dhen",
        "dien-lite",
        "din",
        "dlrm-batchnorm",
        "dssm",
        "esmm",
        "factorization-machine",
        "fibinet",
        "fwfm",
        "gated-fusion",
        "hstu-block",
        "hstu-jagged",
        "layernorm-gelu-mlp",
        "masknet",
        "mmoe",
        "multihead-attention",
        "neumf",
        "nfm",
        "ple",
        "pnn-inner-product",
        "sasrec",
        "torchrec-crossnet",
        "torchrec-deepfm",
        "torchrec-dlrm",
        "torchrec-dlrm-dcn",
        "torchrec-dlrm-projection",
        "torchrec-dlrm-train",
        "torchrec-ec",
        "torchrec-ebc",
        "torchrec-ebc-quantized",
        "torchrec-ebc-weighted",
        "torchrec-lowrank-crossnet",
        "torchrec-lowrank-mixture-crossnet",
        "torchrec-mlp-swish-layernorm",
        "torchrec-vector-crossnet",
        "transformer-encoder-layer",
        "two-tower",
        "wide-and-deep",
        "xdeepfm-cin",
        "youtube-dnn",
    }
)

KNOWN_BUGS: dict[str, str] = {}

# the public list: torchrec models and modules, torch.nn blocks, HSTU, classic interactions, two-tower
PUBLIC_MODELS = frozenset(
    {
        "torchrec-dlrm",
        "torchrec-dlrm-dcn",
        "torchrec-dlrm-projection",
        "torchrec-dlrm-train",
        "torchrec-ec",
        "torchrec-deepfm",
        "torchrec-crossnet",
        "torchrec-lowrank-crossnet",
        "torchrec-vector-crossnet",
        "torchrec-lowrank-mixture-crossnet",
        "torchrec-mlp-swish-layernorm",
        "torchrec-ebc",
        "torchrec-ebc-weighted",
        "torchrec-ebc-quantized",
        "transformer-encoder-layer",
        "multihead-attention",
        "layernorm-gelu-mlp",
        "hstu-block",
        "factorization-machine",
        "pnn-inner-product",
        "autoint",
        "two-tower",
    }
)
MIN_HELDOUT = 15

NAMES = [m.name for m in select()]


@pytest.fixture(autouse=True)
def _quiet_torchrec():
    logging.disable(logging.WARNING)  # torchrec warns on every KeyedJaggedTensor export
    yield
    logging.disable(logging.NOTSET)


def test_corpus_has_the_public_models_and_enough_heldout_ones():
    public = {m.name for m in select("public")}
    assert public >= PUBLIC_MODELS, f"missing public models: {sorted(PUBLIC_MODELS - public)}"
    assert len(select("heldout")) >= MIN_HELDOUT
    assert len(set(NAMES)) == len(NAMES) and {m.group for m in CORPUS} <= set(GROUPS)
    assert all(m.provenance for m in CORPUS)


def test_status_lists_name_real_models():
    for name in EXPECTED_TO_PASS | set(KNOWN_BUGS):
        by_name(name)
    assert not EXPECTED_TO_PASS & set(KNOWN_BUGS)


def _flat(tensors) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(
        tensors, is_leaf=lambda x: hasattr(x, "values") and not callable(x)
    )
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif hasattr(leaf, "values") and callable(leaf.values):  # a KeyedJaggedTensor
            out += [leaf.values(), leaf.lengths()]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_model_builds_the_same_every_time_and_runs_in_eager(name):
    entry = by_name(name)
    model_a, inputs_a = entry.build()
    model_b, inputs_b = entry.build()
    assert not model_a.training
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a if isinstance(state_a[k], torch.Tensor))
    flat_a, flat_b = _flat(inputs_a), _flat(inputs_b)
    assert flat_a and len(flat_a) == len(flat_b) and all(map(torch.equal, flat_a, flat_b))
    with torch.no_grad():
        outputs = _flat(model_a(*inputs_a))
    assert outputs and all(bool(torch.isfinite(o).all()) for o in outputs if o.is_floating_point())


def _status_params():
    for name in NAMES:
        for precision in PRECISIONS:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else []
            yield pytest.param(name, precision, marks=marks, id=f"{name}-{precision}")


@pytest.mark.parametrize(("name", "precision"), list(_status_params()))
def test_model_status(name, precision):
    model, inputs = by_name(name).build()
    outcome = check_model(model, inputs, precision)
    if name in EXPECTED_TO_PASS or name in KNOWN_BUGS:
        assert outcome.status == "ok", f"{name} at {precision}: {outcome.describe()}"
    else:
        assert outcome.status == "fails", (
            f"{name} at {precision} now compiles ({outcome.describe()}): "
            "move it into EXPECTED_TO_PASS in tests/test_corpus.py"
            if outcome.status == "ok"
            else f"{name} at {precision} compiles but does not match: {outcome.describe()}"
        )
        assert outcome.error_type == "UnsupportedOperatorError", outcome.describe()


def test_blocker_names_the_operator_or_the_unsupported_case():
    from mtiasim.errors import UnsupportedOperatorError

    op = UnsupportedOperatorError(
        "model M: operator aten::softmax.int has no MTIA kernel (module m (x.M) at f.py:3: y); supported: a, b"
    )
    assert blocker_of(op) == "aten::softmax.int"
    case = UnsupportedOperatorError(
        "model M: batched matmul of [5, 3, 8] by [5, 2, 8]^T needs equal shapes (op bmm)"
    )
    assert blocker_of(case) == "UnsupportedOperatorError: batched matmul of [..] by [..]^T needs equal shapes"


def test_status_script_json(capsys):
    from scripts.corpus_status import main

    assert main(["--only", "torchrec-ebc", "esmm", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in doc["models"]] == ["torchrec-ebc", "esmm"]  # public first
    for m in doc["models"]:
        assert m["fp16"]["status"] == m["int8"]["status"] == "ok"
        assert m["fp16"]["max_abs_err"] <= m["fp16"]["max_bound"]
    assert doc["summary"]["public"]["models"] == 1 and doc["summary"]["heldout"]["all_ok"] == 1
    assert doc["blockers"] == {}


DYNAMO_MODELS = [
    "torchrec-dlrm-dcn",
    "transformer-encoder-layer",
    "hstu-block",
    "hstu-jagged",
    "two-tower",
    "bst",
]


@pytest.mark.parametrize("name", DYNAMO_MODELS)
def test_torch_compile_backend_runs_the_corpus_model_whole(name):
    """`torch.compile(model, backend=mtiasim.backend(...))`: Dynamo captures the model in one graph (no graph
    breaks) and the backend's numbers are the export path's, bit for bit."""
    import torch._dynamo as dynamo

    import mtiasim

    model, inputs = by_name(name).build()
    dynamo.reset()
    assert dynamo.explain(model)(*inputs).graph_break_count == 0
    compiled = torch.compile(model, backend=mtiasim.backend(mode="functional", precision="fp16"))
    exported = mtiasim.compile(model, inputs, mode="functional", precision="fp16")
    with torch.no_grad():
        got, want = compiled(*inputs), exported(*inputs)
    for a, b in zip(_flat(got), _flat(want), strict=True):
        assert torch.equal(a, b)
    dynamo.reset()
