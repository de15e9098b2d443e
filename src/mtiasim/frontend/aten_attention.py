"""aten scaled dot-product attention -> one `attention` op (the chip's fused kernel, `kernels.attention`).

`scaled_dot_product_attention` (what torch.export keeps of `F.scaled_dot_product_attention`), and the CPU
flash and math variants a program may hold, become one `attention` node: q, k, v, and the mask made to q's
rank (batch dims of 1 broadcast). A boolean mask stays 1.0/0.0 (`mask="bool"`), a float mask is additive
(`mask="add"`).

What the kernel does not take (dropout, grouped-query heads, batch dims that broadcast between q, k and v,
data-dependent sizes, a mask that broadcasts along the keys, head dims beyond `MAX_HEAD_DIM`) is refused by
`refusal`; the capture then decomposes those ops with PyTorch's decomposition into matmuls and a softmax, as
it does for any op without a converter (`capture.to_core_aten`).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from mtiasim.frontend.aten import Ctx, _arg, _aten_overloads, _register
from mtiasim.frontend.dtypes import to_dtype
from mtiasim.ir import TensorType

aten = torch.ops.aten

# the largest head dim the kernel takes: its smallest blocks fit every preset's local store (128 KiB on v1)
MAX_HEAD_DIM = 256

# op -> (position of attn_mask or None if keyword-only, position of dropout_p, of is_causal)
_ARGS = {
    "scaled_dot_product_attention": (3, 4, 5),
    "_scaled_dot_product_flash_attention_for_cpu": (None, 3, 4),
    "_scaled_dot_product_attention_math": (3, 4, 5),
}
_OPS = _aten_overloads(tuple(_ARGS))
_ARG0 = "scaled_dot_product_attention"  # the one whose result is a tensor, not a tuple


def _base(node: fx.Node) -> str:
    return node.target.name().split("::")[-1].split(".")[0]  # type: ignore[union-attr]


def _args(node: fx.Node) -> dict[str, Any]:
    mask_at, drop_at, causal_at = _ARGS[_base(node)]
    return {
        "mask": node.kwargs.get("attn_mask") if mask_at is None else _arg(node, mask_at, "attn_mask"),
        "dropout_p": _arg(node, drop_at, "dropout_p", 0.0),
        "is_causal": bool(_arg(node, causal_at, "is_causal", False)),
        "scale": node.kwargs.get("scale"),
        "enable_gqa": bool(node.kwargs.get("enable_gqa", False)),
        "dropout_mask": _arg(node, 6, "dropout_mask")
        if _base(node) == "_scaled_dot_product_attention_math"
        else None,
    }


def _shape(x: Any) -> tuple[int, ...] | None:
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape):
        return None
    return tuple(int(d) for d in val.shape)


def refusal(node: fx.Node) -> str | None:
    """Why the fused kernel does not take this attention (None: it does)."""
    a = _args(node)
    q, k, v = (_shape(x) for x in node.args[:3])
    if q is None or k is None or v is None:
        return "attention over tensors of data-dependent shapes"
    if isinstance(a["dropout_p"], fx.Node) or float(a["dropout_p"]) != 0.0 or a["dropout_mask"] is not None:
        return "attention with dropout"
    if a["enable_gqa"]:
        return "grouped-query attention"
    used = [u for u in node.users if u.target is not operator.getitem or (u.args[1] != 0 and u.users)]
    if used and _base(node) != _ARG0:
        return "attention whose weights or logsumexp are used"
    if isinstance(a["scale"], fx.Node):
        return "attention with a tensor scale"
    if len(q) < 2 or not (len(q) == len(k) == len(v)) or q[:-2] != k[:-2] or k[:-2] != v[:-2]:
        return f"attention of q {list(q)}, k {list(k)}, v {list(v)}: batch dims must be equal"
    if q[-1] != k[-1] or k[-2] != v[-2]:
        return f"attention of q {list(q)}, k {list(k)}, v {list(v)}: head dims or key counts differ"
    if max(q[-1], v[-1]) > MAX_HEAD_DIM:
        return f"attention of head dim {max(q[-1], v[-1])} (the kernel takes up to {MAX_HEAD_DIM})"
    if 0 in q + k + v:
        return "attention over an empty tensor"
    for x in (*node.args[:3], a["mask"]):
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if isinstance(val, torch.Tensor) and to_dtype(val.dtype) is None and val.dtype != torch.bool:
            return f"attention of {val.dtype} tensors"
    mask = a["mask"]
    if mask is not None:
        if a["is_causal"]:
            return "attention with both a mask and is_causal"
        ms = _shape(mask)
        if ms is None or _mask_shape(ms, q[:-2], q[-2], k[-2]) is None:
            return f"attention mask of shape {ms} for scores {list(q[:-1]) + [k[-2]]}"
    return None


def _mask_shape(ms: tuple[int, ...], batch: tuple[int, ...], s_q: int, s_kv: int) -> tuple[int, ...] | None:
    """The mask as q's rank (leading dims of 1 added): each batch dim 1 or the batch's, its queries 1 or Sq,
    its keys Skv; None when it broadcasts otherwise."""
    rank = len(batch) + 2
    if len(ms) > rank:
        if any(d != 1 for d in ms[: len(ms) - rank]):
            return None
        ms = ms[len(ms) - rank :]
    full = (1,) * (rank - len(ms)) + tuple(ms)
    if full[-1] != s_kv or full[-2] not in (1, s_q):
        return None
    if any(m not in (1, b) for m, b in zip(full[:-2], batch, strict=True)):
        return None
    return full


def _accepts(node: fx.Node) -> bool:
    return refusal(node) is None


@_register(_OPS, accepts=_accepts)
def _attention(ctx: Ctx, node: fx.Node) -> None:
    why = refusal(node)
    if why is not None:
        raise ctx.fail(f"{why} is not supported by the attention kernel")
    a = _args(node)
    q, k, v = (ctx.value_of(x) for x in node.args[:3])
    sq, skv = ctx.type(q).shape, ctx.type(k).shape
    scale = a["scale"]
    scale = 1.0 / math.sqrt(sq[-1]) if scale is None else float(scale)
    ins = [q, k, v]
    attrs: dict[str, Any] = {"scale": scale, "causal": a["is_causal"], "mask": None}
    if a["mask"] is not None:
        m = ctx.value_of(a["mask"])
        shape = _mask_shape(ctx.type(m).shape, sq[:-2], sq[-2], skv[-2])
        assert shape is not None  # refusal() checked it
        ins.append(ctx.reshape(m, shape, f"{node.name}_mask"))
        attrs["mask"] = "bool" if a["mask"].meta["val"].dtype == torch.bool else "add"
    val = node.meta["val"]
    first = val[0] if isinstance(val, (tuple, list)) else val
    out = TensorType(tuple(int(d) for d in first.shape), to_dtype(first.dtype))  # type: ignore[arg-type]
    y = ctx.emit("attention", ins, out, attrs)
    if isinstance(val, (tuple, list)):  # (output, logsumexp / weights): only the output is computed
        ctx.tuples[node.name] = [y] + [None] * (len(val) - 1)
