"""Constants built inside `forward` are folded at compile time: `torch.tensor([...])` exports as
`lift_fresh_copy` of a lifted constant (and `detach_` in some traces), and any op whose inputs are all
constants is computed once, whether or not it has a device converter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtiasim
from mtiasim.frontend import capture
from mtiasim.frontend.reference import run_graph

DIM = 6  # embedding width = the bottom MLP's output width
TABLES = (37, 50, 11)


class IndexListDlrm(nn.Module):
    """A DLRM whose dot interaction picks the pairs with index lists built in `forward` (as the reference
    DLRM does): `offset` 0 keeps the strict lower triangle, 1 the diagonal too."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(offset)
        self.offset = offset
        self.bottom = nn.Sequential(nn.Linear(13, 23), nn.ReLU(), nn.Linear(23, DIM), nn.ReLU())
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, DIM, mode="sum") for rows in TABLES)
        for t in self.tables:
            t.weight.data = torch.rand(t.weight.shape, generator=g) - 0.5
        features = len(TABLES) + 1
        pairs = features * (features - 1) // 2 + (features if offset else 0)
        self.top = nn.Sequential(nn.Linear(DIM + pairs, 17), nn.ReLU(), nn.Linear(17, 1), nn.Sigmoid())

    def forward(self, dense: torch.Tensor, indices: list, offsets: list) -> torch.Tensor:
        x = self.bottom(dense)
        pooled = [table(i, o) for table, i, o in zip(self.tables, indices, offsets, strict=True)]
        t = torch.cat([x, *pooled], dim=1).view(x.shape[0], -1, DIM)
        z = torch.bmm(t, torch.transpose(t, 1, 2))
        _, ni, nj = z.shape
        li = torch.tensor([i for i in range(ni) for j in range(i + self.offset)])
        lj = torch.tensor([j for i in range(nj) for j in range(i + self.offset)])
        return self.top(torch.cat([x, z[:, li, lj]], dim=1))


def _inputs(batch: int) -> tuple:
    g = torch.Generator().manual_seed(7)
    lengths = [torch.randint(1, 4, (batch,), generator=g) for _ in TABLES]
    indices = [
        torch.randint(0, rows, (int(n.sum()),), generator=g) for rows, n in zip(TABLES, lengths, strict=True)
    ]
    offsets = [torch.cat([torch.zeros(1, dtype=torch.int64), n.cumsum(0)[:-1]]) for n in lengths]
    return torch.randn(batch, 13, generator=g), indices, offsets


@pytest.mark.parametrize("offset", [0, 1])
def test_index_lists_built_in_forward_fold(offset):
    model, args = IndexListDlrm(offset).eval(), _inputs(19)
    cap = capture(model, args)
    # the index lists are constants of the graph, not data: the interaction is one gather of fixed columns
    assert [n.op for n in cap.graph.nodes].count("index") == 1
    env = run_graph(cap.graph, cap.host(cap.flat_inputs(args, {})))
    with torch.no_grad():
        ref = model(*args)
    assert torch.equal(env[cap.graph.outputs[0]], ref)  # the graph's fp32 meaning is the eager model's


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_index_list_dlrm_runs_within_its_bound(offset, precision):
    model, args = IndexListDlrm(offset).eval(), _inputs(19)
    cm = mtiasim.compile(model, args, mode="functional", precision=precision)
    got = cm(*args)
    with torch.no_grad():
        ref = model(*args)
    check = cm.check()
    assert check["passed"], check
    assert float((got - ref).abs().max()) <= check["max_abs_err"] * (1 + 1e-9)


class ScaledByConstants(nn.Module):
    """Ops without a device converter (cumsum, flip) on a tensor built in `forward`: folded, not refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor([0.5, 0.25, 1.0, 2.0, 0.125]).cumsum(0).flip(0)
        return x * scale


def test_any_op_on_constants_alone_folds():
    model, x = ScaledByConstants(), torch.randn(3, 5)
    cap = capture(model, (x,))
    (mul,) = cap.graph.nodes
    assert mul.op == "mul" and mul.inputs[0] == "x"
    folded = cap.graph.params[mul.inputs[1]]  # computed once, at compile time
    assert torch.equal(folded.tensor.reshape(-1), torch.tensor([3.875, 3.75, 1.75, 0.75, 0.5]))
    env = run_graph(cap.graph, cap.host(cap.flat_inputs((x,), {})))
    assert torch.equal(env[cap.graph.outputs[0]], model(x))


class RecurrentEncoder(nn.Module):
    """An nn.GRU (batch first) over a sequence: its zero initial state is a tensor built from nothing, which
    decomposes into an unbind of it and its products with the recurrent weights; then an FC on the states,
    transposed back to batch-first (a concatenation of the steps seen through a reshape)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.gru = nn.GRU(5, 7, batch_first=True)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(x)
        return self.head(torch.relu(states))


def test_a_state_built_from_nothing_folds():
    model, x = RecurrentEncoder().eval(), torch.randn(4, 6, 5)
    cap = capture(model, (x,))
    assert not any(n.op == "host_call" for n in cap.graph.nodes)
    assert any(p.target.startswith("<folded") for p in cap.graph.params.values())
    env = run_graph(cap.graph, cap.host(cap.flat_inputs((x,), {})))
    with torch.no_grad():
        assert torch.allclose(env[cap.graph.outputs[0]], model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_recurrent_encoder_runs_within_its_bound(precision):
    model, x = RecurrentEncoder().eval(), torch.randn(4, 6, 5)
    cm = mtiasim.compile(model, (x,), mode="both", precision=precision)
    for seed in (0, 1):
        x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(seed))
        cm(x)
        check = cm.check()
        assert check["passed"], check
