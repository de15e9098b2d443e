"""The int8 scheme of docs/numerics.md, written again from that page in plain torch, on a `Spec`.

It shares no code with mtiasim: it reads the fuzzer's own model description and the model's weights, and
computes, bit for bit, what the spec says the chip returns in int8 precision: where values are quantized,
fused activations, FP32 epilogues, FBGEMM int8 rows, the SE's lookup tables, fp16 storage. The fuzzer checks
that mtiasim's int8 outputs equal it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tests.oracles.models import Spec, SpecModel

F16, F32 = torch.float16, torch.float32


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F32)


def quantize(x32: torch.Tensor, scale, zero_point: int = 0) -> torch.Tensor:
    """q = clamp(rne(x * f32(1/scale)) + zp, -128, 127) in FP32; NaN -> zp. Returns int64 values."""
    recip = (1.0 / torch.as_tensor(scale, dtype=torch.float64)).to(F32)
    q = torch.round(x32.to(F32) * recip) + zero_point
    q = torch.where(torch.isnan(q), torch.full_like(q, float(zero_point)), q)
    return torch.clamp(q, -128, 127).to(torch.int64)


TABLES = {
    "tanh": torch.tanh,
    "sigmoid": lambda k: 1.0 / (1.0 + torch.exp(-k)),
    "gelu_inner": lambda k: 0.5 * k * (1.0 + torch.erf(k / math.sqrt(2.0))) - torch.clamp(k, min=0.0),
}


def lut(x32: torch.Tensor, name: str, segments: int = 64) -> torch.Tensor:
    """The SE's table: fp32 values at 65 knots over [-8, 8], linear in between, every step in FP32."""
    knots = -8.0 + torch.arange(segments + 1, dtype=torch.float64) * (16.0 / segments)
    vals = TABLES[name](knots).to(F32)
    diffs = vals[1:] - vals[:-1]
    nan = torch.isnan(x32)
    xc = torch.clamp(torch.where(nan, torch.zeros_like(x32), x32), -8.0, 8.0)
    t = (xc + _f32(8.0)) * _f32(segments / 16.0)
    j = torch.clamp(torch.floor(t), max=segments - 1).to(torch.int64)
    y = vals[j] + (t - j.to(F32)) * diffs[j]
    return torch.where(nan, torch.full_like(y, float("nan")), y)


def activation(v32: torch.Tensor, name: str) -> torch.Tensor:
    """The SE's function; a non-finite input gives PyTorch's value (the special-value table)."""
    special = ~torch.isfinite(v32)
    y = _activation(v32, name)
    if bool(special.any()):
        fn = getattr(torch.nn.functional, name)
        exact = torch.tensor([fn(v.reshape(1)).item() for v in v32[special]], dtype=y.dtype)  # each alone
        y = y.clone()
        y[special] = exact
    return y


def _activation(v32: torch.Tensor, name: str) -> torch.Tensor:
    relu = torch.where(v32 < 0, torch.zeros_like(v32), v32)
    if name == "relu":
        return relu
    if name == "leaky_relu":  # the default slope 0.01, in FP32
        return torch.where(v32 < 0, v32 * _f32(0.01), v32)
    if name == "gelu":  # relu plus a table of gelu - relu
        return relu + lut(v32, "gelu_inner")
    if name == "silu":  # x times the sigmoid's table
        return v32 * lut(v32, "sigmoid")
    return lut(v32, name)


def _row_sum(x: torch.Tensor) -> torch.Tensor:
    """The SE's row sum: FP32, one column after the other."""
    acc = torch.zeros(x.shape[0], dtype=F32)
    for j in range(x.shape[1]):
        acc = acc + x[:, j]
    return acc[:, None]


def _math(fn, x: torch.Tensor) -> torch.Tensor:
    """The SE's FP32 math library (numpy's float32 functions, as the spec names them)."""
    with np.errstate(all="ignore"):
        return torch.from_numpy(np.asarray(fn(x.numpy().astype(np.float32)), dtype=np.float32))


def row_op32(x: torch.Tensor, which: str) -> torch.Tensor:
    """The fp32 meaning of a row-wise step as the compiler's graph states it (reductions, then elementwise)."""
    if which in ("softmax", "log_softmax"):
        d = x - torch.amax(x, -1, keepdim=True)
        s = torch.sum(torch.exp(d), -1, keepdim=True)
        return d - torch.log(s) if which == "log_softmax" else torch.exp(d) / s
    d = x - torch.mean(x, -1, keepdim=True)
    if which == "center":
        return d
    return d * torch.rsqrt(torch.mean(d * d, -1, keepdim=True) + torch.tensor(1e-5, dtype=F32))


def row_op(x: torch.Tensor, which: str) -> torch.Tensor:
    """Softmax, log_softmax, layer norm (eps 1e-5, no affine) or x - mean over the last dim, as the chip runs
    them: row reductions and elementwise SE ops, every intermediate stored as fp16."""
    n = _f32(float(x.shape[1]))
    if which in ("softmax", "log_softmax"):
        d = fp16(x - fp16(torch.amax(x, dim=1, keepdim=True)))
        e = fp16(_math(np.exp, d))
        s = fp16(_row_sum(e))
        return fp16(d - fp16(_math(np.log, s))) if which == "log_softmax" else fp16(e / s)
    d = fp16(x - fp16(_row_sum(x) / n))
    if which == "center":
        return d
    var = fp16(_row_sum(fp16(d * d)) / n)
    r = fp16(_math(lambda v: np.float32(1) / np.sqrt(v), fp16(var + fp16(_f32(1e-5)))))
    return fp16(d * r)


def fp16(v32: torch.Tensor) -> torch.Tensor:
    """Stored as fp16 (kept in an fp32 tensor)."""
    return v32.to(F32).to(F16).to(F32)


def int8_rows(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FBGEMM rows: (q uint8 values, fp16 scale, fp16 bias) as fp32 tensors."""
    x = table.detach().to(F32)
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    scale = ((hi - lo) / 255.0).to(F16).to(F32)
    bias = lo.to(F16).to(F32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - bias) / safe), 0, 255)
    return q, scale, bias


def pool(table, idx, off, psw, mode: str, batch: int) -> torch.Tensor:
    q, scale, bias = int8_rows(table)
    rows = q[idx] * scale[idx] + bias[idx]  # two FP32 roundings
    if psw is not None:
        rows = rows * psw.to(F32)[:, None]
    ends = torch.cat([off[1:], torch.tensor([idx.numel()])])
    lengths = ends - off
    out = torch.zeros(batch, table.shape[1], dtype=F32)
    for pos in range(int(lengths.max()) if batch else 0):  # every bag's rows added one after another
        live = torch.nonzero(lengths > pos).reshape(-1)
        r = rows[off[live] + pos]
        if pos == 0:
            out[live] = r
        elif mode == "max":
            out[live] = torch.maximum(out[live], r)
        else:
            out[live] = out[live] + r
    if mode == "mean":
        nz = lengths > 0
        out[nz] = out[nz] / lengths[nz].to(F32)[:, None]
    return out


def _weights(w: torch.Tensor, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.detach().to(F32)
    amax = w.abs().amax(dim=1)
    if per_tensor:
        amax = torch.full_like(amax, float(amax.max()))
    s_w = torch.where(amax > 0, (amax.to(torch.float64) / 127).to(F32), torch.ones_like(amax))
    recip = (1.0 / s_w.to(torch.float64)).to(F32)
    q = torch.clamp(torch.round(w * recip[:, None]), -127, 127).to(torch.int64)
    return q, s_w


def reference(model: SpecModel, args: tuple, *, dynamic: bool = False, per_tensor: bool = False) -> tuple:
    """The int8 device outputs (fp32 tensors) of `model` on `args`, calibrated on `args` (static)."""
    spec: Spec = model.spec
    steps = spec.steps
    n_vals = len(steps) + 1
    with torch.no_grad():
        # static scales come from the graph's fp32 meaning, where softmax and the norms are their
        # decompositions computed by torch in fp32 (the calibration sees those values, not the fused kernels')
        vals32 = model.values(*args, row=row_op32)
    readers: dict[int, list[int]] = {v: [] for v in range(n_vals)}
    for i, st in enumerate(steps):
        for src in _sources(st):
            if i + 1 not in readers[src]:
                readers[src].append(i + 1)
    outputs = set(spec.outputs)
    # fusion: an FC whose output's only reader is an activation (and not an output) applies it
    alias = list(range(n_vals))
    fused: dict[int, str] = {}
    # an FC whose output's only reader multiplies it by a constant row ([1, width]: a "const" mul at batch
    # 1) has the row folded into its weights and bias, in fp32 (compiler.simplify._fold_scale)
    scaled: dict[int, torch.Tensor] = {}
    for i, st in enumerate(steps):
        v = i + 1
        if st[0] != "linear":
            continue
        out = v
        if v not in outputs and len(readers[v]) == 1 and spec.batch == 1:
            r = readers[v][0]
            if steps[r - 1][0] == "const" and steps[r - 1][2] == "mul":
                scaled[v] = torch.linspace(-3.0, 3.0, spec.widths[v])
                alias[r], out = v, r
        if out not in outputs and len(readers[out]) == 1:
            r = readers[out][0]
            if steps[r - 1][0] == "act":
                fused[v] = steps[r - 1][2]
                alias[r] = v

    def canon(v: int) -> int:
        while alias[v] != v:
            v = alias[v]
        return v

    c_readers: dict[int, list[int]] = {}
    for u in range(n_vals):
        for r in readers[u]:
            if alias[r] == r:  # a fused activation is not a reader: its readers are its FC's
                c_readers.setdefault(canon(u), []).append(r)
    after = {v: r for r, v in enumerate(alias) if r != v}  # fused FC -> the activation's value (fp32 eager)
    c_outputs = {canon(v) for v in outputs}

    def only_fc_readers(v: int) -> bool:
        rs = c_readers.get(v, [])
        return bool(rs) and all(steps[r - 1][0] == "linear" for r in rs) and v not in c_outputs

    def amax(v: int) -> float:
        a = vals32[after.get(v, v)].detach().abs()
        a = a[torch.isfinite(a)]
        return float(a.max()) if a.numel() else 0.0

    def act_scale(v: int) -> float:
        m = amax(v)
        return float(torch.tensor(m / 127, dtype=torch.float64).to(F32)) if m > 0 else 1.0

    # device values: ("f", fp32 tensor holding the stored value) or ("q", int64 tensor, scale)
    dev: dict[int, tuple] = {}
    x = args[0]
    dev[0] = ("f", x.to(F32) if only_fc_readers(0) else fp16(x))
    bag_at = 1
    bag_args = {}
    for t, tb in enumerate(spec.tables):
        bag_args[t] = (args[bag_at], args[bag_at + 1], args[bag_at + 2] if tb.weighted else None)
        bag_at += 2 + tb.weighted

    for i, st in enumerate(steps):
        v = i + 1
        if alias[v] != v:
            continue  # a fused activation: its FC produced it
        op = st[0]
        if op == "linear":
            src = canon(st[1])
            lin = model.linears[str(i)]
            row = scaled.get(v)
            w32 = lin.weight.detach().to(F32) * (1.0 if row is None else row[:, None])
            bias = None if lin.bias is None else lin.bias.detach().to(F32) * (1.0 if row is None else row)
            wq, s_w = _weights(w32, per_tensor)
            kind = dev[src]
            if dynamic:
                x32 = kind[1]
                a = torch.where(torch.isfinite(x32.abs()), x32.abs(), torch.zeros_like(x32)).amax(
                    dim=-1, keepdim=True
                )
                s_row = a * _f32(1.0 / 127)
                s_row = torch.where(s_row > 0, s_row, torch.ones_like(s_row))
                q = quantize(x32, s_row)
                acc = (q @ wq.T).to(torch.int32).to(F32)
                vv = acc * s_row * s_w[None, :]
                if bias is not None:
                    vv = vv + bias[None, :]
                if v in fused:
                    vv = activation(vv, fused[v])
                dev[v] = ("f", fp16(vv))
                continue
            if kind[0] == "q":
                q, s_x = kind[1], kind[2]
            else:
                s_x = act_scale(src)
                q = quantize(kind[1], s_x)
            acc_scale = torch.tensor(s_x, dtype=torch.float64) * s_w.to(torch.float64)
            acc = q @ wq.T
            fbias = None
            if bias is not None:  # INT32 in the accumulator unless it would exceed 2^24
                b_q = torch.round(bias.to(torch.float64) / acc_scale)
                if float(b_q.abs().max()) <= 2**24:
                    acc = acc + b_q.to(torch.int64)
                else:
                    fbias = bias.to(torch.float64)
            acc32 = acc.to(torch.int32).to(F32)
            out_int8 = only_fc_readers(v)
            s_y = act_scale(v) if out_int8 else 1.0
            fold = out_int8 and fused.get(v, "relu") == "relu"
            col = (acc_scale / (s_y if fold else 1.0)).to(F32)
            vv = acc32 * col[None, :]
            if fbias is not None:
                vv = vv + (fbias / (s_y if fold else 1.0)).to(F32)[None, :]
            if v in fused:
                vv = activation(vv, fused[v])
            if out_int8:
                dev[v] = ("q", quantize(vv, 1.0 if fold else s_y), s_y)
            else:
                dev[v] = ("f", fp16(vv))
        elif op == "act":
            dev[v] = ("f", fp16(activation(dev[canon(st[1])][1], st[2])))
        elif op == "row":
            dev[v] = ("f", row_op(dev[canon(st[1])][1], st[2]))
        elif op in ("add", "mul", "add3"):
            a, b = dev[canon(st[1])][1], dev[canon(st[2])][1]
            dev[v] = ("f", fp16(a * b if op == "mul" else a + b))
        elif op == "slice":
            dev[v] = ("f", dev[canon(st[1])][1][:, st[2] : st[3]])
        elif op == "const":
            a = dev[canon(st[1])][1]
            c = fp16(torch.linspace(-3.0, 3.0, a.numel()).reshape(a.shape))  # in the activations' dtype
            dev[v] = (
                "f",
                fp16(c - a if st[2] == "sub" else (c * a if st[2] == "mul" else torch.maximum(c, a))),
            )
        elif op == "bag":
            t = st[1]
            idx, off, psw = bag_args[t]
            dev[v] = ("f", fp16(pool(model.bags[t].weight, idx, off, psw, spec.tables[t].mode, spec.batch)))
        elif op == "cat":
            dev[v] = ("f", torch.cat([dev[canon(j)][1] for j in st[1]], dim=1))
        elif op == "interact":
            feats = [dev[canon(j)][1] for j in st[1]]
            b, d = feats[0].shape
            t_ = torch.cat(feats, dim=1).view(b, len(feats), d).to(torch.float64)
            z = fp16(torch.bmm(t_, t_.transpose(1, 2)).to(F32))
            li, lj = getattr(model, f"li{i}"), getattr(model, f"lj{i}")
            dev[v] = ("f", torch.cat([feats[0], z[:, li, lj]], dim=1))
        else:
            raise ValueError(op)
    outs = []
    for o in spec.outputs:
        kind = dev[canon(o)]
        outs.append(kind[1] if kind[0] == "f" else None)
    return tuple(outs)


def _sources(step: tuple) -> list[int]:
    op = step[0]
    if op in ("linear", "act", "row", "slice", "const"):
        return [step[1]]
    if op in ("add", "mul", "add3"):
        return [step[1], step[2]]
    if op in ("cat", "interact"):
        return list(step[1])
    return []
