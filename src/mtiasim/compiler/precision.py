"""Numeric formats: which dtype every value has on the device, and the int8 quantization parameters.

Precision `int8` (MTIA's deployment format): FC weights int8 per output channel (symmetric, scale =
max|w[n]| / 127), FC inputs int8 per tensor (symmetric, scale = max|x| / 127 over the example inputs), INT32
accumulation, bias quantized to INT32 with the scale s_x * s_w[n], and the epilogue
``y = act(float32(acc + bias_q) * out_scale[n])`` with out_scale[n] = s_x * s_w[n] (float output) or
s_x * s_w[n] / s_y (int8 output, when every reader of y is an FC). Embedding tables become FBGEMM int8 rows
(fp16 scale and bias at the row head). Everything else computes in fp16 (`float_dtype`).

Precisions `fp16` / `bf16`: FC operands in that type with fp32 accumulation, bias fp32; tables fp16 rows.

Graph inputs are converted on the host to the device dtype before they cross PCIe; outputs come back and are
converted to the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.ir import Graph, ValueKind

PRECISIONS = ("int8", "fp16", "bf16")
INT8_MAX = 127


@dataclass(frozen=True)
class Precision:
    name: str
    float_dtype: DType

    @staticmethod
    def parse(name: str) -> Precision:
        if name not in PRECISIONS:
            raise UsageError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
        return Precision(name, DType.BF16 if name == "bf16" else DType.FP16)

    @property
    def int8(self) -> bool:
        return self.name == "int8"

    @property
    def table_format(self) -> str:
        return "int8_fbgemm" if self.int8 else "fp16"


@dataclass
class LinearQuant:
    """An int8 FC's parameters (None arrays when the weights are virtual)."""

    x_scale: float
    y_scale: float | None  # int8 output scale, or None for a float output
    w_scales: np.ndarray | None
    out_scales: np.ndarray | None


@dataclass
class Formats:
    """The device dtype of every value, the activation scales, the int8 FC parameters and quantize points."""

    precision: Precision
    dtypes: dict[str, DType]
    scales: dict[str, float] = field(default_factory=dict)
    linears: dict[str, LinearQuant] = field(default_factory=dict)
    quantized_inputs: dict[str, str] = field(default_factory=dict)  # float value -> its int8 copy
    calibrated: bool = False


def quantize_weight(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: (q [N, K] int8, scales [N] fp32)."""
    w32 = w.detach().to(torch.float32).cpu().numpy()
    amax = np.abs(w32).max(axis=1) if w32.size else np.zeros(w32.shape[0], np.float32)
    scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w32 / scales[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scales


def quantize_bias(b: torch.Tensor, in_scale: float, w_scales: np.ndarray) -> np.ndarray:
    s = np.float64(in_scale) * w_scales.astype(np.float64)
    q = np.rint(b.detach().to(torch.float64).cpu().numpy() / s)
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)


def rowwise_int8(table: torch.Tensor) -> np.ndarray:
    """FBGEMM int8 rows [R, 4 + D]: fp16 scale, fp16 bias (= row min), then round((x - bias) / scale)."""
    x = table.detach().to(torch.float32).cpu().numpy()
    lo = x.min(axis=1) if x.size else np.zeros(x.shape[0], np.float32)
    hi = x.max(axis=1) if x.size else np.zeros(x.shape[0], np.float32)
    scale = ((hi - lo) / 255.0).astype(np.float16)
    bias = lo.astype(np.float16)
    s32 = np.where(scale.astype(np.float32) > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint((x - bias.astype(np.float32)[:, None]) / s32[:, None]), 0, 255).astype(np.uint8)
    head = np.stack([scale, bias], axis=1).view(np.uint8).reshape(x.shape[0], 4)
    return np.concatenate([head, q], axis=1)


def assign(graph: Graph, precision: Precision, ranges: dict[str, float] | None) -> Formats:
    """Device dtypes and int8 parameters. `ranges` (max |value| per value from the example inputs) may be None
    (virtual weights: timing only), then every scale is 1 and the numbers are not meaningful."""
    fd = precision.float_dtype
    dtypes: dict[str, DType] = {}
    for v, tt in graph.values.items():
        kind = graph.kinds.get(v)
        if kind == ValueKind.PARAM:
            dtypes[v] = tt.dtype
        elif tt.dtype.is_float:
            dtypes[v] = fd
        else:
            dtypes[v] = tt.dtype
    fm = Formats(precision, dtypes, calibrated=ranges is not None)
    if not precision.int8:
        return fm
    users = graph.users()

    def scale_of(v: str) -> float:
        amax = (ranges or {}).get(v, 0.0)
        return float(amax / INT8_MAX) if amax > 0 else 1.0

    linears = [n for n in graph.nodes if n.op == "linear"]
    fc_inputs = {n.inputs[0] for n in linears}
    for v in fc_inputs:
        fm.scales[v] = scale_of(v)
    producer = graph.producer()
    for v in fc_inputs:
        p = producer.get(v)
        all_fc = all(u.op == "linear" and u.inputs[0] == v for u in users.get(v, []))
        if p is not None and p.op == "linear" and all_fc and v not in graph.outputs:
            dtypes[v] = DType.INT8  # the producing FC requantizes in its epilogue
        else:
            fm.quantized_inputs[v] = f"{v}_q"
            dtypes[f"{v}_q"] = DType.INT8
    for n in linears:
        x, w = n.inputs[0], n.inputs[1]
        y = n.outputs[0]
        p = graph.params[w]
        sx = fm.scales[x]
        sy = fm.scales[y] if dtypes.get(y) == DType.INT8 else None
        if p.virtual:
            fm.linears[n.name] = LinearQuant(sx, sy, None, None)
            continue
        _, ws = quantize_weight(p.tensor)
        out = (np.float64(sx) * ws.astype(np.float64) / (sy if sy is not None else 1.0)).astype(np.float32)
        fm.linears[n.name] = LinearQuant(sx, sy, ws, out)
    return fm


def ranges_of(env: dict[str, torch.Tensor]) -> dict[str, float]:
    """max |value| of every float tensor value."""
    out = {}
    for k, v in env.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            out[k] = float(v.detach().abs().max())
    return out
