"""aten 1-D convolutions -> im2col and an FC: ``conv1d(x, W, b)`` over x [N, C, L] is

    xt   = permute(x)                          [N, L, C]        (the MLU's transpose)
    cols = im2col(xt)                          [N, L_out, K C]  (DMA: each tap's rows, zeros in the padding)
    y    = linear(cols, W'.T, b)               [N, L_out, C_out] (the GEMM, with its bias and int8 path)
    out  = permute(y)                          [N, C_out, L_out]

with ``W'[o, k C + c] = W[o, c, k]``, so the convolution is quantized, fused and timed as any FC is. Only
1-D convolutions with groups = 1 run on the chip; a 2-D or 3-D one, a transposed one or grouped channels are
refused with a one-line error naming the op and the argument.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from mtiasim.frontend.aten import Ctx, _arg, _aten_overloads, _op_name, _out, _register, emit_permute
from mtiasim.ir import TensorType

aten = torch.ops.aten
CONVOLUTIONS = _aten_overloads(("convolution", "conv1d", "conv1d.padding"))


def _ints(value: Any, what: str, ctx: Ctx, op: str) -> int:
    v = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(v) != 1 or not isinstance(v[0], int):
        raise ctx.fail(f"{op} with {what}={value!r} is not supported (a 1-D convolution takes one integer)")
    return int(v[0])


def conv_args(ctx: Ctx, node: fx.Node) -> dict[str, Any]:
    """The convolution's arguments, normalised (checked for what the chip runs)."""
    op = _op_name(node.target)
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, _output_padding, groups = node.args[3:9]
    else:
        stride, padding = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
        dilation, groups, transposed = _arg(node, 5, "dilation", 1), _arg(node, 6, "groups", 1), False
    weight = node.args[1]
    w_shape = getattr(weight, "meta", {}).get("val")
    rank = w_shape.dim() if isinstance(w_shape, torch.Tensor) else 0
    if rank != 3:
        raise ctx.fail(f"{op}: a {max(rank - 2, 0)}-D convolution (weight rank {rank}) is not supported; "
                       "only 1-D ones ([N, C, L] input) run on the chip")  # fmt: skip
    if transposed:
        raise ctx.fail(f"{op} with transposed=True is not supported (a transposed convolution)")
    if groups != 1:
        raise ctx.fail(f"{op} with groups={groups} is not supported (only groups=1)")
    k = int(w_shape.shape[2])
    s, d = _ints(stride, "stride", ctx, op), _ints(dilation, "dilation", ctx, op)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":  # torch puts the odd one on the right
            total = d * (k - 1)
            pad = (total // 2, total - total // 2)
        else:
            raise ctx.fail(f"{op} with padding={padding!r} is not supported")
    else:
        p = _ints(padding, "padding", ctx, op)
        pad = (p, p)
    return {"kernel": k, "stride": s, "dilation": d, "pad": pad}


@_register(CONVOLUTIONS)
def _conv1d(ctx: Ctx, node: fx.Node) -> None:
    a = conv_args(ctx, node)
    x = ctx.value_of(node.args[0])
    weight, bias = node.args[1], _arg(node, 2, "bias")
    wname = ctx.alias.get(weight.name, weight.name) if isinstance(weight, fx.Node) else ""
    if wname not in ctx.params:
        raise ctx.fail(
            f"{_op_name(node.target)}: the weight must be a parameter or buffer of the model, not data"
        )
    out = _out(node)
    xt = ctx.type(x)
    c_out, c_in, k = ctx.params[wname].type.shape
    unbatched = len(xt.shape) == 2
    x3 = ctx.reshape(x, (1, *xt.shape), node.name + "_batched") if unbatched else x
    n, c, length = ctx.type(x3).shape
    if c != c_in:
        raise ctx.fail(f"{_op_name(node.target)}: input has {c} channels, the weight {c_in}")
    dt = xt.dtype
    l_out = out.shape[-1]
    nlc = emit_permute(ctx, x3, (0, 2, 1), TensorType((n, length, c), dt), node.name + "_nlc")
    cols = ctx.emit("im2col", [nlc], TensorType((n, l_out, k * c), dt), a, name=node.name + "_cols")
    w = _columns_weight(ctx, wname, (c_out, k * c))
    ins = [cols, w] + ([ctx.value_of(bias)] if bias is not None else [])
    y = ctx.emit("linear", ins, TensorType((n, l_out, c_out), out.dtype), name=node.name + "_fc")
    res = emit_permute(ctx, y, (0, 2, 1), TensorType((n, c_out, l_out), out.dtype), node.name + "_ncl")
    ctx.result(node, ctx.reshape(res, out.shape, node.name) if unbatched else res)


def _columns_weight(ctx: Ctx, wname: str, shape: tuple[int, int]) -> str:
    """W [C_out, C, K] as the FC's [C_out, K C] (tap-major, as im2col lays its columns out)."""
    name = f"{wname}@cols"
    if name in ctx.params:
        ctx.used.add(name)
        ctx.values.setdefault(name, ctx.params[name].type)
        return name
    p = ctx.params[wname]
    tensor = None if p.virtual else ctx.param_tensors[wname].detach().permute(0, 2, 1).reshape(shape)
    return ctx.new_param(name, tensor, TensorType(shape, p.type.dtype), p.target)
