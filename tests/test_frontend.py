"""The front end: torch.export -> graph. Each captured graph, run by the torch reference interpreter, must
equal the eager model; unsupported ops get the one-line error with op, module path and line."""

import pytest
import torch
from torch import nn

from mtiasim.errors import UnsupportedOperatorError, UsageError
from mtiasim.frontend import capture
from mtiasim.frontend.reference import run_graph


def _check(model: nn.Module, args: tuple, atol: float = 0.0) -> object:
    model.eval()
    cap = capture(model, args)
    vals = cap.host(cap.flat_inputs(args, {}))
    env = run_graph(cap.graph, vals)
    with torch.no_grad():
        ref = model(*args)
    got = env[cap.graph.outputs[0]]
    assert got.shape == ref.shape
    assert torch.allclose(got.to(ref.dtype), ref, atol=atol, rtol=0), (got - ref).abs().max()
    return cap


class TinyDlrm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.bot = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.ebs = nn.ModuleList([nn.EmbeddingBag(100, 16, mode="sum") for _ in range(3)])
        for eb in self.ebs:
            eb.weight.data = torch.rand(100, 16, generator=g)
        li, lj = torch.tril_indices(4, 4, offset=-1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        self.top = nn.Sequential(nn.Linear(16 + 6, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())

    def forward(self, x, idx, off):
        d = self.bot(x)
        e = [eb(i, o) for eb, i, o in zip(self.ebs, idx, off, strict=True)]
        t = torch.cat([d, *e], dim=1).view(-1, 4, 16)
        z = torch.bmm(t, torch.transpose(t, 1, 2))
        return self.top(torch.cat([d, z[:, self.li, self.lj]], dim=1))


def test_tiny_dlrm_graph_matches_eager():
    torch.manual_seed(0)
    b = 6
    args = (
        torch.rand(b, 13),
        [torch.randint(0, 100, (2 * b,)) for _ in range(3)],
        [torch.arange(0, 2 * b, 2)] * 3,
    )
    cap = _check(TinyDlrm(), args)
    ops = [n.op for n in cap.graph.nodes]
    assert ops.count("embedding_bag") == 3 and ops.count("linear") == 4 and "index" in ops
    assert cap.graph.inputs[0] == "x"


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_options(mode):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.eb = nn.EmbeddingBag(50, 8, mode=mode, padding_idx=3, include_last_offset=True)

        def forward(self, idx, off):
            return self.eb(idx, off)

    idx = torch.tensor([3, 1, 2, 3, 3, 7, 9, 11, 3])
    off = torch.tensor([0, 3, 3, 5, 9])  # an empty bag, a bag of padding only
    _check(M(), (idx, off), atol=1e-6)


def test_embedding_bag_2d_input_and_weights():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.eb = nn.EmbeddingBag(40, 8, mode="sum")

        def forward(self, idx, w):
            return self.eb(idx, per_sample_weights=w)

    idx = torch.randint(0, 40, (5, 3))
    _check(M(), (idx, torch.rand(5, 3)), atol=1e-6)


def test_quantized_byte_rowwise_op():
    table = torch.rand(30, 8)
    packed = torch.ops.quantized.embedding_bag_byte_prepack(table)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("packed", packed)

        def forward(self, idx, off):
            return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                self.packed, idx, off, False, 0, False, None, None, False
            )

    _check(M(), (torch.randint(0, 30, (12,)), torch.tensor([0, 4, 8])), atol=1e-6)


def test_unsupported_op_names_op_module_and_line():
    class Top(nn.Module):
        def forward(self, x):
            return torch.topk(x, 2).values

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.pick = Top()

        def forward(self, x):
            return self.pick(self.fc(x))

    with pytest.raises(UnsupportedOperatorError) as err:
        capture(Model(), (torch.rand(2, 4),))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("model Model: operator aten::topk has no MTIA kernel (module pick (")
    assert "test_frontend.py:" in msg
    assert "supported: " in msg and "aten::linear" in msg and "aten::softmax.int" in msg


def test_not_a_module():
    with pytest.raises(UsageError, match="expected a torch.nn.Module, got function"):
        capture(lambda x: x, (torch.rand(2),))


def test_virtual_tables_are_shapes_only():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.eb = nn.EmbeddingBag(
                40_000_000, 64, mode="sum", _weight=torch.zeros(1, 64).expand(40_000_000, 64)
            )

        def forward(self, idx, off):
            return self.eb(idx, off)

    cap = capture(M(), (torch.randint(0, 40_000_000, (8,)), torch.tensor([0, 4])))
    (param,) = cap.graph.params.values()
    assert param.virtual and param.type.shape == (40_000_000, 64)


def test_recorded_sources_are_those_of_torch_stack_traces(monkeypatch):
    """`recording_sources` (one frame per node, read from the interpreter) gives every node the module, file,
    line and code that torch's own stack traces give: the innermost `forward` outside torch, or torch's own
    module when no other `forward` made the node (a bare nn.Sequential)."""
    import contextlib
    import importlib

    from mtiasim.frontend import source

    capture_module = importlib.import_module("mtiasim.frontend.capture")  # `capture` is the function

    def helper(x):  # not a forward: the node is placed at the forward that called it
        return torch.relu(x) * 2

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            y = self.fc(x)
            return helper(y) + torch.sigmoid(y)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.seq = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

        def forward(self, x):
            return self.seq(self.inner(x)).sum(dim=1, keepdim=True)

    def sources(model):
        ep = capture_module.export(model, (torch.rand(4, 5),))
        return [(n.name, source.node_source(n)) for n in ep.graph.nodes]

    for model in (Outer().eval(), nn.Sequential(nn.Linear(5, 2), nn.ReLU()).eval()):
        ours = sources(model)
        monkeypatch.setattr(capture_module, "recording_sources", contextlib.nullcontext)
        torchs = sources(model)
        monkeypatch.undo()
        assert ours == torchs
        assert any(s.location for _n, s in ours)
    located = {s.code for _n, s in sources(Outer().eval()) if "test_frontend.py:" in s.location}
    assert located == {
        "y = self.fc(x)",
        "return helper(y) + torch.sigmoid(y)",
        "return self.seq(self.inner(x)).sum(dim=1, keepdim=True)",
    }
