"""Embedding models as users bring them, compiled and run (timing and numbers) against torch eager: torchrec
EmbeddingBagCollection (plain, weighted, quantized int8 / int4 with `quantize_embeddings`), EmbeddingCollection
(one row per id, jagged outputs), and nn.EmbeddingBag tables quantized with ATen's byte / 4-bit prepack ops.

Where docs/numerics.md says the pooling is FBGEMM's CPU arithmetic (ATen int8 and int4 rows, FBGEMM int4 rows)
the device's fp32 sums are eager's bit for bit, so its fp16 output is eager's rounded once; everywhere else the
device stays within the specification's bound of the fp32 model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtiasim
from mtiasim.errors import UnsupportedOperatorError
from mtiasim.runtime.bounds import error_bounds

torchrec = pytest.importorskip("torchrec")
from torchrec import (  # noqa: E402
    DataType,
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)
from torchrec.inference.modules import quantize_embeddings  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:fbgemm_gpu"),
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
]

KEYS = ("f0", "f1", "f2")
ROWS = (50, 40, 60)
DIMS = (8, 8, 16)  # two dims: the device runs one batched lookup per dim


def kjt(batch: int, seed: int, weighted: bool = False, max_len: int = 5) -> KeyedJaggedTensor:
    """A KeyedJaggedTensor of random ids (bags of 0..max_len per key and sample), key-major as torchrec's."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(KEYS) * batch,), generator=g)
    ids = [
        torch.randint(0, r, (int(n),), generator=g)
        for r, n in zip(ROWS, lengths.view(len(KEYS), -1).sum(1), strict=True)
    ]
    values = torch.cat(ids)
    weights = torch.rand(values.numel(), generator=g) * 2 if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(list(KEYS), values, lengths, weights=weights)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return module.eval()


class Pooled(nn.Module):
    """An EmbeddingBagCollection's pooled features [B, sum of dims]."""

    def __init__(self, weighted: bool = False, seed: int = 0) -> None:
        super().__init__()
        tables = [
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=d, num_embeddings=r, feature_names=[k])
            for i, (k, r, d) in enumerate(zip(KEYS, ROWS, DIMS, strict=True))
        ]
        self.ebc = _randomize(EmbeddingBagCollection(tables=tables, is_weighted=weighted), seed)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.ebc(features).values()


class Sequences(nn.Module):
    """An EmbeddingCollection's rows per key (a JaggedTensor's values, [ids of the key, 8]; torchrec wants
    one dim for all its tables)."""

    def __init__(self, data_type: DataType = DataType.FP32, seed: int = 0) -> None:
        super().__init__()
        tables = [
            EmbeddingConfig(
                name=f"t{i}", embedding_dim=8, num_embeddings=r, feature_names=[k], data_type=data_type
            )
            for i, (k, r) in enumerate(zip(KEYS, ROWS, strict=True))
        ]
        self.ec = _randomize(EmbeddingCollection(tables=tables), seed)

    def forward(self, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        out = self.ec(features)
        return {k: out[k].values() for k in KEYS}


def _eager(model: nn.Module, *args):
    with torch.no_grad():
        return model(*args)


def _within_bound(cm, args: tuple, got, eager, same_graph: bool = True) -> float:
    """The device outputs against eager's under the bound docs/numerics.md gives for the fp32 model's graph;
    that graph's values are eager's (`same_graph`), or within a few FP32 roundings of them (quantized rows:
    eager dequantizes with fused multiply-adds, the graph as ``q*scale + bias``). Returns the largest error
    over its bound."""
    values = cm.captured.host(cm.captured.flat_inputs(args, {}))
    gots, eagers = (list(v.values()) if isinstance(v, dict) else [v] for v in (got, eager))
    worst = 0.0
    for bound, g, e in zip(error_bounds(cm.compiled, values), gots, eagers, strict=True):
        reference = bound.reference.to(e.dtype)
        few_roundings = 1e-5 * max(1.0, float(e.abs().max()) if e.numel() else 0.0)
        assert (
            torch.equal(reference, e)
            if same_graph
            else torch.allclose(reference, e, rtol=0, atol=few_roundings)
        )
        res = bound.check(g)
        assert res["passed"], res
        worst = max(worst, res["max_err_over_bound"])
    return worst


def _rounded_once(eager: torch.Tensor) -> torch.Tensor:
    """Eager's fp32 result as the device returns it: rounded to its fp16 activations, back in eager's dtype."""
    return eager.to(torch.float16).to(eager.dtype)


# ------------------------------------------------------------------------------ EmbeddingBagCollection


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_ebc_matches_eager(weighted, precision):
    model = Pooled(weighted)
    cm = mtiasim.compile(model, (kjt(6, 0, weighted),), mode="both", precision=precision)
    for seed in (0, 1, 2):  # other calls: other bag sizes and id counts
        x = kjt(6, seed, weighted)
        got = cm(x)
        assert got.shape == (6, sum(DIMS)) and cm.report.latency_s > 0
        _within_bound(cm, (x,), got, _eager(model, x))
    kinds = [op.kind for op in cm.report.ops]
    assert kinds.count("tbe") == len(set(DIMS)), kinds


@pytest.mark.parametrize("dtype", [torch.quint4x2, torch.qint8], ids=["int4", "int8"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_quantized_ebc_matches_eager(dtype, weighted):
    """torchrec's quantize_embeddings: one FBGEMM TBE over all tables (rows padded to 16 bytes). int4 rows pool
    as FBGEMM's CPU kernel, bit for bit; int8 rows as the SE's ``q*scale + bias`` then a sum, within the
    bound."""
    model = quantize_embeddings(Pooled(weighted), dtype=dtype, inplace=False).eval()
    cm = mtiasim.compile(model, (kjt(5, 0, weighted),), mode="both", precision="fp16")
    bits = 4 if dtype == torch.quint4x2 else 8
    tables = [b for b in cm.compiled.lowered.buffers.values() if b.role == "table"]
    assert sorted(b.cols for b in tables) == sorted({d * bits // 8 + 4 for d in DIMS})  # unpadded rows
    for seed in (0, 3):
        x = kjt(5, seed, weighted)
        got, eager = cm(x), _eager(model, x)
        if bits == 4:
            assert torch.equal(got, _rounded_once(eager))
        _within_bound(cm, (x,), got, eager, same_graph=False)


# ---------------------------------------------------------------------------------- EmbeddingCollection


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("data_type", [DataType.FP32, DataType.FP16], ids=["fp32-tables", "fp16-tables"])
def test_embedding_collection_returns_eager_rows(data_type, precision):
    """One row per id, as many as the call has: the rows of each key come back as eager's (fp16 rows: exact)."""
    model = Sequences(data_type)
    cm = mtiasim.compile(model, (kjt(4, 0),), mode="both", precision=precision)
    for seed, max_len in ((0, 5), (1, 9), (2, 1)):  # other id counts than the example's, empty keys too
        x = kjt(4, seed, max_len=max_len)
        got, eager = cm(x), _eager(model, x)
        assert cm.report.latency_s > 0
        for k in KEYS:
            assert got[k].shape == eager[k].shape and got[k].dtype == eager[k].dtype
            if precision == "fp16":
                assert torch.equal(got[k], _rounded_once(eager[k])), k
        _within_bound(cm, (x,), got, eager)


def test_embedding_collection_timing_mode_gives_each_call_its_rows():
    model = Sequences()
    cm = mtiasim.compile(model, (kjt(4, 0),), mode="timing", precision="fp16")
    small, large = kjt(4, 1, max_len=1), kjt(4, 1, max_len=40)
    got_small = cm(small)
    t_small = cm.report.latency_s
    got_large = cm(large)
    assert {k: got_large[k].shape[0] for k in KEYS} == {k: int(large[k].values().numel()) for k in KEYS}
    assert {k: got_small[k].shape[0] for k in KEYS} == {k: int(small[k].values().numel()) for k in KEYS}
    assert cm.report.latency_s > t_small  # more rows, more time


class StackedSequences(nn.Module):
    """The rows of several keys one after another (torch.cat of JaggedTensor values, in `order`), optionally
    also returning one key's rows on their own."""

    def __init__(self, order: tuple[str, ...], also: str | None = None) -> None:
        super().__init__()
        self.order, self.also = order, also
        self.ec = Sequences().ec

    def forward(self, features: KeyedJaggedTensor):
        out = self.ec(features)
        stacked = torch.cat([out[k].values() for k in self.order])
        return (stacked, out[self.also].values()) if self.also else stacked


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("order", [("f2", "f0", "f1"), ("f1", "f2")], ids=["all", "two"])
def test_concatenated_sequences_match_eager(order, precision):
    """Rows of several keys concatenated run as one lookup job over the keys' tables, the rows in the cat's
    order (not the tables'), however many ids each key has in the call (none too)."""
    model = StackedSequences(order).eval()
    cm = mtiasim.compile(model, (kjt(4, 0),), mode="both", precision=precision)
    for seed, max_len in ((0, 5), (1, 9), (2, 0), (3, 1)):
        x = kjt(4, seed, max_len=max_len)
        got, eager = cm(x), _eager(model, x)
        assert [op.kind for op in cm.report.ops].count("tbe") == 1
        assert got.shape == eager.shape == (sum(x[k].values().numel() for k in order), 8)
        if precision == "fp16":
            assert torch.equal(got, _rounded_once(eager))
        _within_bound(cm, (x,), got, eager)


def test_rows_used_beside_their_concatenation_fail_in_one_line():
    with pytest.raises(UnsupportedOperatorError) as err:
        mtiasim.compile(StackedSequences(KEYS, also="f1"), (kjt(4, 0),), mode="timing", precision="fp16")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model StackedSequences: ")
    assert "rows known per call, is used beside its concatenation" in msg


class SequenceMath(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.ec = Sequences().ec
        self.fc = nn.Linear(8, 2)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        jagged = self.ec(features)["f0"]
        if self.how == "linear":
            return self.fc(jagged.values())
        return jagged.values() * 2


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("linear", "aten::linear of embedding_rows, rows whose count is known per call only"),
        ("scale", "aten::mul.Tensor of embedding_rows, rows whose count is known per call only"),
    ],  # (padded to dense by fbgemm.jagged_to_padded_dense they are supported: tests/test_jagged.py)
)
def test_consumers_of_jagged_rows_fail_in_one_line(how, message):
    with pytest.raises(UnsupportedOperatorError) as err:
        mtiasim.compile(SequenceMath(how).eval(), (kjt(4, 0),), mode="timing", precision="fp16")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"model SequenceMath: {message}")
    assert "test_production_embeddings.py:" in msg  # where in the model


# ------------------------------------------------------------------------- ATen quantized EmbeddingBag

PREPACK = {
    8: torch.ops.quantized.embedding_bag_byte_prepack,
    4: torch.ops.quantized.embedding_bag_4bit_prepack,
}
LOOKUP = {
    8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
    4: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets,
}


class PrepackedBag(nn.Module):
    """An nn.EmbeddingBag whose table is quantized row-wise by ATen's prepack op (what
    torch.ao.nn.quantized.EmbeddingBag holds), looked up with the matching quantized op."""

    def __init__(self, bag: nn.EmbeddingBag, bits: int, include_last_offset: bool = False) -> None:
        super().__init__()
        self.bits = bits
        self.include_last_offset = include_last_offset
        self.register_buffer("packed", PREPACK[bits](bag.weight.detach()))

    def forward(self, idx, off, psw=None):
        return LOOKUP[self.bits](self.packed, idx, off, False, 0, False, psw, None, self.include_last_offset)


def _bags(batch: int, rows: int, seed: int, include_last_offset: bool):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 7, (batch,), generator=g)
    idx = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return idx, off if include_last_offset else off[:-1], torch.rand(idx.numel(), generator=g) * 3


class QuantizedBagModel(nn.Module):
    """A torch.ao.nn.quantized.EmbeddingBag (as a user gets it from `from_float`) feeding an FC."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        bag = _randomize(nn.EmbeddingBag(60, 16, mode="sum"), 1)
        qconfig = torch.ao.quantization.float_qparams_weight_only_qconfig
        if bits == 4:
            observer = torch.ao.quantization.PerChannelMinMaxObserver.with_args(
                dtype=torch.quint4x2, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
            )
            qconfig = torch.ao.quantization.QConfig(activation=qconfig.activation, weight=observer)
        bag.qconfig = qconfig
        self.bag = torch.ao.nn.quantized.EmbeddingBag.from_float(bag)
        self.fc = nn.Linear(16, 3)

    def forward(self, idx, off, psw):
        return self.fc(self.bag(idx, off, per_sample_weights=psw))


@pytest.mark.parametrize("bits", [8, 4])
def test_torch_ao_quantized_embedding_bag(bits):
    """torch.ao's quantized EmbeddingBag (its rows in a TorchBind object torch.export refuses) is exported as
    the ATen lookup it runs: the pooled rows are eager's bit for bit, the FC's output within the bound."""
    model = QuantizedBagModel(bits).eval()
    cm = mtiasim.compile(model, _bags(8, 60, 0, False), mode="both", precision="fp16")
    assert isinstance(model.bag, torch.ao.nn.quantized.EmbeddingBag)  # the model is left as it was
    (node,) = [n for n in cm.captured.graph.nodes if n.op == "embedding_bag"]
    assert node.attrs["row_format"] == f"int{bits}_aten"
    for seed in (0, 1):
        args = _bags(8, 60, seed, False)
        got = cm(*args)
        _within_bound(cm, args, got, _eager(model, *args), same_graph=False)


@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("bits", [8, 4])
def test_prepacked_bag_pools_exactly_as_eager(bits, weighted, include_last_offset):
    model = PrepackedBag(_randomize(nn.EmbeddingBag(70, 14, mode="sum"), 2), bits, include_last_offset).eval()

    def args(seed):
        idx, off, psw = _bags(9, 70, seed, include_last_offset)
        return (idx, off, psw) if weighted else (idx, off)

    cm = mtiasim.compile(model, args(0), mode="both", precision="fp16")
    table = next(b for b in cm.compiled.lowered.buffers.values() if b.role == "table")
    assert table.cols == {8: 14 + 8, 4: 7 + 4}[bits]  # the model's own rows, as they are
    for seed in (0, 1):
        got, eager = cm(*args(seed)), _eager(model, *args(seed))
        assert torch.equal(got, _rounded_once(eager))
        _within_bound(cm, args(seed), got, eager, same_graph=False)
