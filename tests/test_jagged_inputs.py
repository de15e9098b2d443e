"""KeyedJaggedTensor inputs exported per key (mtiasim.frontend.jagged): the program carries no per-key
bookkeeping, and every later call, whatever its per-key lengths, computes what eager torchrec computes."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

torchrec = pytest.importorskip("torchrec")

import mtiasim  # noqa: E402
from mtiasim.frontend import jagged  # noqa: E402
from mtiasim.frontend.capture import export  # noqa: E402

capture_module = sys.modules["mtiasim.frontend.capture"]

KEYS = ("f0", "f1", "f2")
ROWS = (7, 13, 5)
DIM = 6
BATCH = 3


class Pooled(nn.Module):
    """EmbeddingBagCollection -> linear -> relu -> linear: a nonlinearity between layers."""

    def __init__(self, weighted: bool) -> None:
        super().__init__()
        tables = [
            torchrec.EmbeddingBagConfig(name=f"t{i}", embedding_dim=DIM, num_embeddings=r, feature_names=[k])
            for i, (k, r) in enumerate(zip(KEYS, ROWS, strict=True))
        ]
        self.ebc = torchrec.EmbeddingBagCollection(tables=tables, is_weighted=weighted)
        self.fc1 = nn.Linear(len(KEYS) * DIM, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, dense: torch.Tensor, features: torchrec.KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features).values()
        return self.fc2(torch.relu(self.fc1(pooled))) + dense.sum(dim=1, keepdim=True)


def kjt(lengths_per_key: list[list[int]], weighted: bool, seed: int) -> torchrec.KeyedJaggedTensor:
    """A KeyedJaggedTensor whose key k has bags of `lengths_per_key[k]` ids (one per sample)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([n for key in lengths_per_key for n in key], dtype=torch.int64)
    totals = [sum(key) for key in lengths_per_key]
    values = torch.cat([torch.randint(0, r, (n,), generator=g) for r, n in zip(ROWS, totals, strict=True)])
    weights = torch.rand(values.shape[0], generator=g) if weighted else None
    return torchrec.KeyedJaggedTensor(keys=list(KEYS), values=values, lengths=lengths, weights=weights)


def model(weighted: bool) -> nn.Module:
    torch.manual_seed(0)
    return Pooled(weighted).eval()


def compiled(m: nn.Module, example: tuple) -> mtiasim.CompiledModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mtiasim.compile(m, example, mode="functional", precision="fp16")


def assert_within_bound(cm: mtiasim.CompiledModel, got: torch.Tensor, want: torch.Tensor) -> None:
    """The last call is within the numerics specification's bound of eager PyTorch (fp16 on the chip)."""
    report = cm.check()
    assert report["passed"], report
    assert float((got - want).abs().max()) <= report["max_bound"]


def targets(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


# equal per-key totals in the example (2 + 2 + 2 ids per key): with duck shaping they would be one size
EQUAL = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


@pytest.mark.parametrize("weighted", [False, True])
def test_per_key_export_has_no_per_key_bookkeeping(weighted):
    example = (torch.rand(BATCH, 2), kjt(EQUAL, weighted, seed=1))
    ops = targets(export(model(weighted), example))
    assert "aten.item.default" not in ops and "aten._assert_scalar.default" not in ops
    per_key = jagged.per_key_tensors(jagged.split_for_export(example))
    assert [t.shape[0] for t in per_key] == [2, 2, 2] * (2 if weighted else 1)


@pytest.mark.parametrize("weighted", [False, True])
def test_export_fakes_copies_of_the_per_key_views_and_traces_the_same_graph(weighted, monkeypatch):
    """torch.export is handed per-key values of their own (a view costs it a fake base and symbolic strides);
    the program is the one the views give."""
    example = (torch.rand(BATCH, 2), kjt([[1, 3, 0], [2, 0, 4], [1, 1, 2]], weighted, seed=3))
    handed: list[torch.Tensor] = []
    real_export = torch.export.export

    def spy(m, args, kwargs=None, **options):
        handed.extend(
            t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        )
        return real_export(m, args, kwargs, **options)

    monkeypatch.setattr(torch.export, "export", spy)
    ep = export(model(weighted), example)
    assert len(handed) == 2 + (6 if weighted else 3)  # dense, lengths and each key's values (and weights)
    assert all(t._base is None for t in handed)
    monkeypatch.setattr(capture_module, "_own_storage", lambda tree: tree)
    handed.clear()
    with_views = export(model(weighted), example)
    assert sum(t._base is not None for t in handed) == (6 if weighted else 3)
    assert ep.graph_module.code == with_views.graph_module.code


class UsersKJT(torchrec.KeyedJaggedTensor):
    """A user's subclass, in a module without torchrec's JaggedTensor."""


@pytest.mark.parametrize("weighted, kind", [(False, None), (True, None), (False, UsersKJT)])
def test_the_lookups_read_the_per_key_tensors_as_to_dict_gives_them(weighted, kind):
    """Unflattened, a per-key KeyedJaggedTensor's `to_dict` is torchrec's (values, weights, lengths, offsets per
    key) made from its per-key tensors, so the exported lookups read them with no split of the values."""
    example = kjt([[1, 3, 0], [2, 0, 4], [1, 1, 2]], weighted, seed=2)
    if kind is not None:
        example = kind(keys=example.keys(), values=example.values(), lengths=example.lengths())
    leaves, spec = torch.utils._pytree.tree_flatten(jagged.split_for_export(example))
    rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)
    want, got = example.to_dict(), rebuilt.to_dict()
    assert list(got) == list(want)
    for key in want:
        for part in ("values", "lengths", "offsets", "weights_or_none"):
            a, b = getattr(want[key], part)(), getattr(got[key], part)()
            assert (a is None and b is None) or (a.dtype == b.dtype and a.equal(b)), (key, part)
        assert got[key].values() is leaves[list(want).index(key)]  # the per-key input itself
    ops = targets(export(model(weighted), (torch.rand(BATCH, 2), example)))
    assert not any("split" in op for op in ops), ops


def test_a_key_with_fewer_than_two_ids_travels_whole():
    example = (torch.rand(BATCH, 2), kjt([[1, 1, 1], [1, 0, 0], [2, 1, 1]], False, seed=1))
    assert not jagged.splittable(example[1])
    assert jagged.per_key_tensors(jagged.split_for_export(example)) == []
    assert "aten.item.default" in targets(export(model(False), example))  # torchrec's own path


bag = st.integers(min_value=0, max_value=4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.lists(bag, min_size=BATCH, max_size=BATCH), min_size=3, max_size=3),
    weighted=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_later_calls_with_any_per_key_lengths_match_eager(lengths, weighted, seed):
    """Compiled on equal per-key totals, called with others (empty keys, one id, long bags): eager's result."""
    m = model(weighted)
    cm = compiled(m, (torch.rand(BATCH, 2), kjt(EQUAL, weighted, seed=1)))
    call = (torch.rand(BATCH, 2, generator=torch.Generator().manual_seed(seed)), kjt(lengths, weighted, seed))
    with torch.no_grad():
        want = m(*call)
    assert_within_bound(cm, cm(*call), want)


def test_keyword_inputs_are_split_like_the_signature():
    class ByKeyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model(False)

        def forward(self, dense: torch.Tensor, *, features: torchrec.KeyedJaggedTensor) -> torch.Tensor:
            return self.inner(dense, features)

    m = ByKeyword().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = mtiasim.compile(
            m, (torch.rand(BATCH, 2),), kwargs={"features": kjt(EQUAL, False, 1)}, mode="functional",
            precision="fp16",
        )  # fmt: skip
    dense, features = torch.rand(BATCH, 2), kjt([[3, 0, 1], [0, 0, 4], [1, 1, 1]], False, seed=5)
    with torch.no_grad():
        want = m(dense, features=features)
    assert_within_bound(cm, cm(dense, features=features), want)


def test_a_model_on_the_meta_device_is_exported_per_key_and_timed():
    """Weights on meta (a table too big to hold): the inputs go to meta after the split, keeping each key's
    real length; timing runs calls of other lengths."""
    with torch.device("meta"):
        m = Pooled(weighted=False).eval()
    example = (torch.rand(BATCH, 2), kjt(EQUAL, False, seed=1))
    ops = targets(export(m, example))
    assert "aten.item.default" not in ops
    moved = torch.utils._pytree.tree_map_only(
        torch.Tensor, lambda t: t.to("meta"), jagged.split_for_export(example)
    )
    assert [t.shape[0] for t in jagged.per_key_tensors(moved)] == [2, 2, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = mtiasim.compile(m, example, mode="timing", precision="int8")
    cm(torch.rand(BATCH, 2), kjt([[4, 0, 3], [0, 0, 0], [1, 2, 1]], False, seed=2))
    assert cm.report is not None and cm.report.latency_s > 0
