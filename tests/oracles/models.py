"""Random recommendation-style graphs for differential fuzzing: a small description (`Spec`) and the
`nn.Module` it builds, so that the fake-quant oracle can read the same description the model was built from.

A spec is a list of steps, each making one new value from earlier ones:

- ("linear", src, out_features, bias) -> nn.Linear
- ("act", src, "relu" | "sigmoid" | "tanh" | "gelu" | "silu" | "leaky_relu")
- ("row", src, "softmax" | "log_softmax" | "layer_norm" | "center")   over the last dim (center: x - mean)
- ("add", a, b), ("mul", a, b)   (same shapes: residual adds and gates)
- ("add3", a, b)                 a[None] + b, back to 2-D: an add of a 3-D and a 2-D value (views, broadcast)
- ("slice", src, start, end)     x[:, start:end]: a column window
- ("const", src, "sub" | "mul" | "maximum")   c - x, c * x, max(c, x), c a [batch, width] tensor built
                                 in forward (a constant folded at compile time, the first operand)
- ("bag", table)                 -> nn.EmbeddingBag of table `table`, pooled [batch, dim]
- ("cat", (a, b, ...))           along dim 1
- ("interact", (a, b, ...))      DLRM's dot interaction of [batch, d] features: the strict lower triangle of
                                 T @ T^T, T = stack of the features, concatenated after the first feature

Value 0 is the dense input x [batch, dense]; the outputs are the values listed in `outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTS = ("relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu")
ROWS = ("softmax", "log_softmax", "layer_norm", "center")


def row_op(x: torch.Tensor, which: str) -> torch.Tensor:
    """A row-wise op as a model writes it."""
    if which == "softmax":
        return torch.softmax(x, dim=-1)
    if which == "log_softmax":
        return F.log_softmax(x, dim=-1)
    if which == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],))
    return x - x.mean(dim=-1, keepdim=True)


@dataclass(frozen=True)
class Table:
    rows: int
    dim: int
    mode: str  # sum | mean | max
    weighted: bool
    pooling: int  # maximum bag length (bags are 0..pooling long)


@dataclass
class Spec:
    batch: int
    dense: int
    tables: list[Table]
    steps: list[tuple]
    outputs: list[int]
    weight_scale: float
    seed: int
    nonfinite: str = ""  # "", "nan" or "inf": planted in the dense input (and a per-sample weight)
    kind: str = ""
    widths: list[int] = field(default_factory=list)  # last dim of every value

    def describe(self) -> str:
        bad = f" {self.nonfinite} in the inputs" if self.nonfinite else ""
        return f"{self.kind} batch {self.batch} steps {self.steps} outputs {self.outputs}{bad}"


class SpecModel(nn.Module):
    """Runs a `Spec` in torch, the way a user would write it."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        self.linears = nn.ModuleDict()
        self.bags = nn.ModuleList()
        for t in spec.tables:
            bag = nn.EmbeddingBag(t.rows, t.dim, mode=t.mode)
            bag.weight.data = (torch.rand(t.rows, t.dim, generator=g) - 0.5) * 2 * spec.weight_scale
            self.bags.append(bag)
        for i, step in enumerate(spec.steps):
            if step[0] == "linear":
                _, src, n, bias = step
                k = spec.widths[src]
                lin = nn.Linear(k, n, bias=bias)
                lin.weight.data = (torch.rand(n, k, generator=g) - 0.5) * 2 * spec.weight_scale / k**0.5
                if bias:
                    lin.bias.data = torch.rand(n, generator=g) - 0.5
                self.linears[str(i)] = lin
            elif step[0] == "interact":
                f = len(step[1])
                li, lj = torch.tril_indices(f, f, offset=-1)
                self.register_buffer(f"li{i}", li)
                self.register_buffer(f"lj{i}", lj)
        self.eval()

    def forward(self, x, *bag_inputs):
        vals = self.values(x, *bag_inputs)
        outs = tuple(vals[j] for j in self.spec.outputs)
        return outs[0] if len(outs) == 1 else outs

    def values(self, x, *bag_inputs, row=None) -> list[torch.Tensor]:
        """Every value of the spec, in fp32 eager torch (`row` replaces `row_op` for the row-wise steps)."""
        spec = self.spec
        vals = [x]
        for i, step in enumerate(spec.steps):
            op = step[0]
            if op == "linear":
                y = self.linears[str(i)](vals[step[1]])
            elif op == "act":
                y = getattr(F, step[2])(vals[step[1]])
            elif op == "row":
                y = (row or row_op)(vals[step[1]], step[2])
            elif op == "add":
                y = vals[step[1]] + vals[step[2]]
            elif op == "add3":
                y = (vals[step[1]].unsqueeze(0) + vals[step[2]]).squeeze(0)
            elif op == "slice":
                y = vals[step[1]][:, step[2] : step[3]]
            elif op == "const":
                src = vals[step[1]]
                c = torch.linspace(-3.0, 3.0, src.numel()).reshape(src.shape)
                y = c - src if step[2] == "sub" else (c * src if step[2] == "mul" else torch.maximum(c, src))
            elif op == "mul":
                y = vals[step[1]] * vals[step[2]]
            elif op == "bag":
                t = step[1]
                at = sum(2 + tb.weighted for tb in spec.tables[:t])
                idx, off = bag_inputs[at], bag_inputs[at + 1]
                psw = bag_inputs[at + 2] if spec.tables[t].weighted else None
                y = self.bags[t](idx, off, per_sample_weights=psw)
            elif op == "cat":
                y = torch.cat([vals[j] for j in step[1]], dim=1)
            elif op == "interact":
                feats = [vals[j] for j in step[1]]
                b, d = feats[0].shape
                t_ = torch.cat(feats, dim=1).view(b, len(feats), d)
                z = torch.bmm(t_, torch.transpose(t_, 1, 2))
                flat = z[:, getattr(self, f"li{i}"), getattr(self, f"lj{i}")]
                y = torch.cat([feats[0], flat], dim=1)
            else:
                raise ValueError(op)
            vals.append(y)
        return vals


def inputs_for(spec: Spec, seed: int) -> tuple:
    """The model's positional inputs: x, then indices, offsets (and per-sample weights if weighted) per
    table; bags of 0..pooling rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, spec.dense, generator=g) * 2
    if spec.nonfinite:
        flat = x.view(-1)
        pos = torch.randint(0, flat.numel(), (max(1, flat.numel() // 50),), generator=g)
        flat[pos] = float("nan") if spec.nonfinite == "nan" else float("inf")
        flat[pos[:1]] = float("nan") if spec.nonfinite == "nan" else float("-inf")
    args: list[torch.Tensor] = [x]
    for t in spec.tables:
        lengths = torch.randint(0, t.pooling + 1, (spec.batch,), generator=g)
        idx = torch.randint(0, t.rows, (int(lengths.sum()),), generator=g)
        off = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)[:-1]])
        psw = torch.rand(idx.numel(), generator=g) * 2 - 0.5
        if spec.nonfinite == "nan" and psw.numel():
            psw[0] = float("nan")
        args += [idx, off] + ([psw] if t.weighted else [])
    return tuple(args)


# ------------------------------------------------------------------------------------------- generator
# mostly small (fast), often odd, sometimes up to 300
SIZES = st.one_of(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 300))


@st.composite
def specs(draw, kinds=("mlp", "residual", "bags", "dlrm"), nonfinite: bool = True) -> Spec:
    """A random graph: every op may land in every position (activations between layers, not only last)."""
    kind = draw(st.sampled_from(kinds))
    batch = draw(st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(1, 16), st.integers(1, 1000)))
    dense = draw(SIZES)
    scale = draw(st.sampled_from([1e-3, 0.05, 0.5, 1.0, 3.0, 30.0]))
    steps: list[tuple] = []
    widths = [dense]
    tables: list[Table] = []

    def add(step: tuple, width: int) -> int:
        steps.append(step)
        widths.append(width)
        return len(widths) - 1

    def mlp(src: int, depth: int, width_last: int | None = None) -> int:
        v = src
        for layer in range(depth):
            n = width_last if (width_last is not None and layer == depth - 1) else draw(SIZES)
            v = add(("linear", v, n, draw(st.booleans())), n)
            for _ in range(draw(st.integers(0, 2))):  # 0, 1 or 2 activations in a row, anywhere
                v = add(("act", v, draw(st.sampled_from(ACTS))), widths[v])
            if draw(st.integers(0, 3)) == 0:  # a row-wise op (softmax, norm...) between layers or last
                v = add(("row", v, draw(st.sampled_from(ROWS))), widths[v])
            if draw(st.integers(0, 5)) == 0:  # a constant built in forward as the first operand
                v = add(("const", v, draw(st.sampled_from(["sub", "mul", "maximum"]))), widths[v])
        return v

    def window(v: int) -> int:
        """Sometimes `v` as a column window of a wider layer (a slice of an FC's output)."""
        if not draw(st.booleans()):
            return v
        w, pad = widths[v], draw(st.integers(1, 9))
        wide = add(("linear", v, w + pad, draw(st.booleans())), w + pad)
        start = draw(st.integers(0, pad))
        return add(("slice", wide, start, start + w), w)

    def bag(dim: int) -> int:
        mode = draw(st.sampled_from(["sum", "mean", "max"]))
        weighted = mode == "sum" and draw(st.booleans())
        tables.append(Table(draw(st.integers(1, 200)), dim, mode, weighted, draw(st.integers(0, 8))))
        return add(("bag", len(tables) - 1), dim)

    if kind == "mlp":
        v = mlp(0, draw(st.integers(1, 4)))
    elif kind == "residual":
        v = mlp(0, draw(st.integers(1, 2)))
        for _ in range(draw(st.integers(1, 3))):
            w = widths[v]
            h = window(mlp(v, draw(st.integers(1, 2)), width_last=w))
            v = add((draw(st.sampled_from(["add", "add", "mul", "add3"])), window(v), h), w)
            if draw(st.booleans()):
                v = add(("act", v, draw(st.sampled_from(ACTS))), w)
        v = mlp(v, draw(st.integers(0, 2)))
    elif kind == "bags":
        parts = [mlp(0, draw(st.integers(1, 2)))]
        for _ in range(draw(st.integers(1, 4))):
            parts.append(bag(draw(SIZES)))
        order = draw(st.permutations(parts))
        v = add(("cat", tuple(order)), sum(widths[p] for p in order))
        v = mlp(v, draw(st.integers(1, 3)))
    else:  # dlrm: bottom MLP to d, bags of dim d, dot interaction, top MLP
        d = draw(st.integers(1, 64))
        bottom = mlp(0, draw(st.integers(1, 3)), width_last=d)
        if draw(st.booleans()):
            bottom = add(("act", bottom, draw(st.sampled_from(ACTS))), d)
        feats = [bottom] + [bag(d) for _ in range(draw(st.integers(1, 5)))]
        f = len(feats)
        v = add(("interact", tuple(feats)), d + f * (f - 1) // 2)
        v = mlp(v, draw(st.integers(1, 3)))
    outputs = [v]
    inner = [i + 1 for i, s in enumerate(steps) if s[0] == "linear" and i + 1 != v]
    if inner and draw(st.integers(0, 3)) == 0:
        outputs.append(draw(st.sampled_from(inner)))  # an intermediate value as a second output
    bad = draw(st.sampled_from(["", "", "", "", "nan", "inf"])) if nonfinite else ""
    return Spec(
        batch, dense, tables, steps, outputs, scale, draw(st.integers(0, 2**31 - 1)), bad, kind, widths
    )
