"""The graph's meaning, in torch: runs a `Graph` on CPU tensors and returns every value.

Used three ways: to calibrate int8 scales (the range of every activation on the example inputs), to check that
compiler rewrites keep the graph's meaning (run before and after), and as the fp32 reference of a compiled
model's outputs. Embedding lookups first get their indices normalised as on the device (`normalize_bags`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtiasim.errors import UsageError
from mtiasim.frontend.dtypes import DTYPE_TO_TORCH
from mtiasim.frontend.reference_rows import gather_rows, im2col, scatter_rows
from mtiasim.ir import DYNAMIC, Graph, Node
from mtiasim.isa import RowFormat
from mtiasim.jagged import check_offsets, lengths
from mtiasim.opset import Kind, elementwise, require

MODES = {"sum": 0, "mean": 1, "max": 2}


def normalize_bags(
    indices: torch.Tensor,
    offsets: torch.Tensor | None,
    weights: torch.Tensor | None,
    *,
    include_last_offset: bool,
    padding_idx: int | None,
    one_per_bag: bool = False,
    rows: int | None = None,
    where: str = "embedding_bag",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(indices, offsets with B+1 entries, weights) with the padding index removed, as int64 numpy arrays.

    torch's EmbeddingBag skips `padding_idx` entries (they count in no bag, not even in a mean's divisor), so
    removing them on the host gives the same result. `rows` (the table's), when given, bounds the indices;
    `where` names the lookup in errors.
    """
    for what, t in (("indices", indices), ("offsets", offsets)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex()):
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise UsageError(f"{where}: {what} must be an integer tensor, got {kind}")
    idx = indices.detach().reshape(-1).to(torch.int64).cpu().numpy()
    if rows is not None and idx.size and (idx.min() < 0 or idx.max() >= rows):
        bad = int(idx[(idx < 0) | (idx >= rows)][0])
        raise UsageError(f"{where}: index {bad} is outside the table's rows [0, {rows})")
    if one_per_bag or offsets is None:
        if offsets is None and not one_per_bag:
            if indices.dim() != 2:
                raise UsageError("embedding_bag without offsets takes 2-D indices [bags, pooling]")
            per = indices.shape[1]
            off = np.arange(0, idx.size + 1, max(per, 1), dtype=np.int64)
        else:
            off = np.arange(idx.size + 1, dtype=np.int64)
    else:
        off = offsets.detach().reshape(-1).to(torch.int64).cpu().numpy()
        if not include_last_offset:
            off = np.concatenate([off, [idx.size]])
    w = None if weights is None else weights.detach().reshape(-1).to(torch.float32).cpu().numpy()
    if off.size == 0 or off[0] != 0 or (np.diff(off) < 0).any() or off[-1] > idx.size:
        raise UsageError(
            f"{where}: offsets must start at 0, never decrease and stay within the {idx.size} indices"
        )
    if padding_idx is not None:
        keep = idx != padding_idx
        if not keep.all():
            bag = np.repeat(np.arange(off.size - 1), np.diff(off))
            counts = np.bincount(bag[keep[: bag.size]], minlength=off.size - 1)
            idx = idx[: bag.size][keep[: bag.size]]
            w = None if w is None else w[: bag.size][keep[: bag.size]]
            off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return idx, off, w


def run_graph(
    graph: Graph,
    inputs: dict[str, torch.Tensor],
    *,
    keep: bool = True,
    after: Callable[[Node, dict[str, Any]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Every value of `graph` (fp32 math where the graph says fp32) for the given device inputs. `keep=False`
    drops each value after its last use (outputs and weights stay); `after(node, env)` is called once a
    node's value is in `env`, before its inputs may be dropped."""
    env: dict[str, Any] = {}
    for name, p in graph.params.items():
        if p.virtual or p.tensor is None:
            raise UsageError(
                f"model {graph.name}: parameter {p.target!r} is virtual (no values); cap its rows"
            )
        env[name] = p.tensor
    for name in graph.inputs:
        if name not in inputs:
            raise UsageError(f"model {graph.name}: missing device input {name!r}")
        env[name] = inputs[name]
    users = graph.users()
    remaining = {k: len(v) for k, v in users.items()}
    with torch.no_grad():
        for node in graph.nodes:
            env[node.outputs[0]] = _run(node, [env[v] for v in node.inputs], graph)
            if after is not None:
                after(node, env)
            if not keep:
                for v in dict.fromkeys(node.inputs):  # an op may read a value twice (x * x)
                    remaining[v] -= 1
                    if remaining[v] == 0 and v not in graph.outputs and v not in graph.params:
                        env.pop(v, None)
    return env


def _run(node: Node, xs: list[Any], graph: Graph) -> torch.Tensor:
    out_dtype = DTYPE_TO_TORCH[graph.values[node.outputs[0]].dtype]
    spec = elementwise(node.op)
    if spec is not None:  # the operator set's PyTorch reference
        a = node.attrs
        attrs = {k: a[k] for k in spec.attrs if k in a}
        if spec.arity == 2:
            other = torch.tensor(a["scalar"], dtype=xs[0].dtype) if "scalar" in a else xs[1]
            return spec.torch(xs[0], other, **attrs)
        return spec.torch(xs[0], **attrs)
    rule = _RULES.get(node.op)
    if rule is None:
        raise UsageError(f"reference: op {node.op!r} has no torch meaning ({node.where()})")
    return rule(node, xs, node.attrs, out_dtype)


def _linear(node: Node, xs: list[Any], a: dict, out_dtype: torch.dtype) -> torch.Tensor:
    y = F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None)
    act = a.get("activation")
    return elementwise(act).torch(y) if act and act != "none" else y


def _quantize(node: Node, xs: list[Any], a: dict, out_dtype: torch.dtype) -> torch.Tensor:
    """As torch's quantized_decomposed.quantize_per_tensor, in int8."""
    recip = torch.tensor(1.0 / a["scale"], dtype=torch.float32)
    q = torch.round(xs[0].to(torch.float32) * recip) + a["zero_point"]
    return torch.clamp(q, -128, 127).to(torch.int8)


def _attention(node: Node, xs: list[Any], a: dict, out_dtype: torch.dtype) -> torch.Tensor:
    """PyTorch's scaled dot-product attention (a row with every key masked gives 0, as eager does); a
    boolean mask arrives as 1.0/0.0."""
    mask = xs[3] if len(xs) > 3 else None
    if mask is not None and a.get("mask") == "bool":
        mask = mask != 0
    elif mask is not None:
        mask = mask.to(xs[0].dtype)
    y = F.scaled_dot_product_attention(xs[0], xs[1], xs[2], attn_mask=mask, is_causal=bool(a.get("causal")),
                                       scale=float(a["scale"]))  # fmt: skip
    return y.to(out_dtype)


# the meaning of every non-elementwise operator (elementwise ones: their opset record's `torch`)
_RULES: dict[str, Callable[[Node, list[Any], dict, torch.dtype], torch.Tensor]] = {
    Kind.LINEAR: _linear,
    Kind.MATMUL: lambda n, xs, a, dt: torch.matmul(
        xs[0], xs[1].transpose(-1, -2) if a.get("transpose_b") else xs[1]
    ),
    Kind.ATTENTION: _attention,
    Kind.EMBEDDING_BAG: lambda n, xs, a, dt: _embedding_bag(n, xs, dt),
    Kind.TBE: lambda n, xs, a, dt: _tbe(n, xs, dt),
    Kind.CAT: lambda n, xs, a, dt: torch.cat(xs, dim=a["dim"]),
    Kind.CAST: lambda n, xs, a, dt: xs[0].to(dt),
    Kind.RESHAPE: lambda n, xs, a, dt: xs[0].reshape(a["shape"]),
    Kind.PERMUTE: lambda n, xs, a, dt: xs[0].permute(a["dims"]),
    Kind.SLICE: lambda n, xs, a, dt: xs[0].narrow(a["dim"], a["start"], a["end"] - a["start"]),
    Kind.INDEX: lambda n, xs, a, dt: xs[0].reshape(xs[0].shape[0], -1)[:, list(a["columns"])],
    Kind.COPY: lambda n, xs, a, dt: xs[0].clone(),
    Kind.QUANTIZE: _quantize,
    Kind.DEQUANTIZE: lambda n, xs, a, dt: ((xs[0].to(torch.float32) - a["zero_point"]) * a["scale"]).to(dt),
    Kind.HOST_CALL: lambda n, xs, a, dt: a["call"](*xs).to(dt),
    Kind.REDUCE: lambda n, xs, a, dt: _REDUCTIONS[a["op"]](xs[0].to(torch.float32), -1, keepdim=True).to(dt),
    Kind.JAGGED_TO_DENSE: lambda n, xs, a, dt: jagged_rows(n, xs[0], xs[1], a.get("padding", 0.0)).to(dt),
    Kind.DENSE_TO_JAGGED: lambda n, xs, a, dt: jagged_rows(n, xs[0], xs[1], 0.0).to(dt),
    Kind.IM2COL: lambda n, xs, a, dt: im2col(xs[0], a),
    Kind.GATHER_ROWS: lambda n, xs, a, dt: gather_rows(xs[0], xs[1], a, n.where()),
    Kind.SCATTER_ROWS: lambda n, xs, a, dt: scatter_rows(
        xs[0], xs[1], xs[2] if len(xs) > 2 else None, a, n.where()
    ),
}
_REDUCTIONS = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}
require(set(_RULES), "frontend.reference")


def jagged_rows(node: Node, x: torch.Tensor, offsets: torch.Tensor, fill: float) -> torch.Tensor:
    """A jagged op's rows (`mtiasim.jagged`): x [T, D] -> [B, S, D] (jagged_to_dense) or [B, S, D] -> [T, D]
    (dense_to_jagged, T its attr rows, or offsets[-1] when they are known per call only), every other row
    `fill`; the error bounds run it on errors too."""
    a = node.attrs
    s = a["max_len"]
    to_dense = node.op == Kind.JAGGED_TO_DENSE
    sequences = offsets.numel() - 1 if to_dense else x.shape[0]
    rows = x.shape[0] if to_dense else a["rows"] if a["rows"] != DYNAMIC else int(offsets.reshape(-1)[-1])
    off = check_offsets(offsets.detach().cpu().numpy(), sequences=sequences, rows=rows, where=node.where(),
                        whole=a.get("whole", False))  # fmt: skip
    pos = torch.arange(s)
    keep = pos[None, :] < torch.from_numpy(lengths(off, s))[:, None]  # [B, S]: positions the dense form holds
    row = torch.from_numpy(off[:-1])[:, None] + pos[None, :]  # their jagged rows
    d = x.shape[-1]
    if to_dense:
        out = x.new_full((sequences, s, d), fill)
        out[keep] = x[row[keep]]
    else:
        out = x.new_full((rows, d), fill)
        out[row[keep]] = x.reshape(sequences, s, d)[keep]
    return out


def _embedding_bag(node: Node, xs: list[Any], out_dtype: torch.dtype) -> torch.Tensor:
    a = node.attrs
    weight = xs[0]
    offsets = xs[2] if len(xs) > 2 else None
    psw = xs[3] if len(xs) > 3 else None
    idx, off, w = normalize_bags(
        xs[1],
        offsets,
        psw,
        include_last_offset=a.get("include_last_offset", False),
        padding_idx=a.get("padding_idx"),
        one_per_bag=a.get("one_per_bag", False),
        rows=weight.shape[0],
        where=node.where(),
    )
    fmt = RowFormat(a["row_format"])
    table = (
        dequantized(weight, fmt, fmt.dim_of(weight.shape[1]))
        if fmt.is_quantized
        else weight.to(torch.float32)
    )
    out = F.embedding_bag(
        torch.from_numpy(idx),
        table,
        torch.from_numpy(off),
        mode=a["mode"],
        per_sample_weights=None if w is None else torch.from_numpy(w),
        include_last_offset=True,
    )
    return out.to(out_dtype)


def dequantized(
    rows: torch.Tensor, fmt: RowFormat, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Quantized rows [n, cols] uint8 of `fmt` -> their values [n, dim], ``q*scale + bias`` in `dtype`."""
    values, qparams = fmt.layout(dim)
    sb = rows[:, qparams].contiguous().view(DTYPE_TO_TORCH[fmt.qparams_dtype]).to(dtype)
    q = rows[:, values]
    if fmt.bits == 4:  # element 2i in the low nibble of byte i
        q = torch.stack([q & 0x0F, q >> 4], dim=2).reshape(q.shape[0], -1)[:, :dim]
    return q.to(dtype) * sb[:, :1] + sb[:, 1:]


def tbe_table(weights: torch.Tensor, table: tuple[int, int, int, int], row_format: str) -> torch.Tensor:
    """One table (start_byte, dim, rows, row_bytes) of an FBGEMM TBE weight buffer, as fp32 [rows, dim]."""
    start, dim, rows, row_bytes = table
    raw = weights[start : start + rows * row_bytes].reshape(rows, row_bytes)
    if RowFormat(row_format).is_quantized:
        return dequantized(raw, RowFormat(row_format), dim)
    item = 2 if row_format == "fp16" else 4
    dt = torch.float16 if row_format == "fp16" else torch.float32
    return raw[:, : dim * item].contiguous().view(dt).reshape(rows, dim).to(torch.float32)


def batched_table_bags(
    indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None, table: int, tables: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Table `table`'s bags in an FBGEMM batched lookup over `tables` tables (offsets [tables * B + 1],
    table-major): its indices, its offsets from 0 ([B + 1]) and its per-sample weights."""
    idx, off = indices.reshape(-1), offsets.reshape(-1).to(torch.int64)
    batch = (off.numel() - 1) // tables
    o = off[table * batch : (table + 1) * batch + 1]
    w = None if weights is None else weights.reshape(-1)[o[0] : o[-1]]
    return idx[o[0] : o[-1]], o - o[0], w


def _tbe(node: Node, xs: list[Any], out_dtype: torch.dtype) -> torch.Tensor:
    a = node.attrs
    weights, indices, offsets = xs[0], xs[1], xs[2]
    psw = xs[3] if len(xs) > 3 else None
    tables = a["tables"]
    outs = []
    for t, spec in enumerate(tables):
        table = tbe_table(weights, spec, a["row_format"])
        idx, off, w = batched_table_bags(indices, offsets, psw, t, len(tables))
        outs.append(
            F.embedding_bag(
                idx.to(torch.int64),
                table,
                off,
                mode=a["mode"],
                per_sample_weights=None if w is None else w.to(torch.float32),
                include_last_offset=True,
            )
        )
    return torch.cat(outs, dim=1).to(out_dtype)
