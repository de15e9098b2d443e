"""Numeric formats: which dtype every value has on the device, and the int8 quantization parameters.

The scheme is specified in docs/numerics.md (the one place that states it and its error bounds); in short:

Precision `int8` (MTIA's deployment format): FC weights int8, symmetric, per output channel (scale
max|w[n]|/127; `weights="per-tensor"`: one scale for the whole matrix), INT32 accumulation. FC inputs:

- `activations="static"` (default): int8 per tensor, symmetric, scale s_x = max|x|/127 over the calibration
  inputs (the example inputs, or `calibration=[...]` batches); bias in the INT32 accumulator at s_x s_w[n];
  the epilogue computes ``v = float32(acc) * float32(s_x * s_w[n])``, the activation, then either quantizes v
  with the next FC's input scale (int8 output, when every reader of y is an FC; folded into the column scale
  for relu or no activation) or casts it to fp16. A model quantized with PyTorch's PT2E flow brings its own activation scales and zero points, and its
  own int8 weights (see `frontend`), which are used as they are.
- `activations="dynamic"`: int8 per row, symmetric, s_x[m] = max|x[m]|/127 computed on the chip at run time
  (FBGEMM's dynamic quantization; two SE passes on v1); the epilogue computes
  ``v = float32(acc) * s_x[m] * s_w[n] + bias[n]`` in FP32 and casts to fp16.

Embedding tables become FBGEMM int8 rows (fp16 scale and bias at the row head). Everything else computes in
fp16 (`float_dtype`). Precisions `fp16` / `bf16`: FC operands in that type with fp32 accumulation, bias fp32;
tables fp16 rows.

Graph inputs are converted on the host to the device dtype before they cross PCIe (a float input that only
feeds int8 quantization crosses as fp32 and is quantized on the SE); outputs come back and are converted to
the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mtiasim.dtypes import DType
from mtiasim.errors import UsageError
from mtiasim.ir import Graph, ValueKind

PRECISIONS = ("int8", "fp16", "bf16")
ACTIVATION_SCHEMES = ("static", "dynamic")
WEIGHT_SCHEMES = ("per-channel", "per-tensor")
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


@dataclass(frozen=True)
class Quantization:
    """How int8 quantizes FC operands: `activations` static (per tensor, calibrated) or dynamic (per row, at
    run time); `weights` per-channel or per-tensor (symmetric int8 either way)."""

    activations: str = "static"
    weights: str = "per-channel"

    @staticmethod
    def parse(value: Quantization | str | dict | None) -> Quantization:
        """`None`, a Quantization, a dict of its fields, or text like ``"dynamic"`` / ``"static,per-tensor"``."""
        if value is None:
            return Quantization()
        if isinstance(value, Quantization):
            q = value
        elif isinstance(value, dict):
            unknown = set(value) - {"activations", "weights"}
            if unknown:
                raise UsageError(
                    f"quantization: unknown key(s) {sorted(unknown)} (known: activations, weights)"
                )
            q = Quantization(**value)
        elif isinstance(value, str):
            acts, weights = "static", "per-channel"
            for part in (p.strip() for p in value.split(",") if p.strip()):
                if part in ACTIVATION_SCHEMES:
                    acts = part
                elif part in WEIGHT_SCHEMES:
                    weights = part
                else:
                    raise UsageError(
                        f"quantization: unknown scheme {part!r} (known: {', '.join(ACTIVATION_SCHEMES)} for "
                        f"activations, {', '.join(WEIGHT_SCHEMES)} for weights)"
                    )
            q = Quantization(acts, weights)
        else:
            raise UsageError(f"quantization: expected a string or a Quantization, got {type(value).__name__}")
        if q.activations not in ACTIVATION_SCHEMES:
            raise UsageError(
                f"quantization: activations {q.activations!r} (known: {', '.join(ACTIVATION_SCHEMES)})"
            )
        if q.weights not in WEIGHT_SCHEMES:
            raise UsageError(f"quantization: weights {q.weights!r} (known: {', '.join(WEIGHT_SCHEMES)})")
        return q

    def describe(self) -> str:
        return f"activations {self.activations}, weights {self.weights}"


@dataclass(frozen=True)
class ActQuant:
    """Static quantization of one activation: ``q = saturate(round(x * float32(1/scale)) + zero_point)``."""

    scale: float
    zero_point: int = 0


@dataclass
class LinearQuant:
    """An int8 FC's parameters (None arrays when the weights are virtual). `x` None: dynamic per-row."""

    x: ActQuant | None
    y: ActQuant | None  # int8 output parameters, or None for a float output
    w_q: np.ndarray | None  # [N, K] int8
    w_scales: np.ndarray | None  # [N] fp32
    col_scales: np.ndarray | None  # [N] fp32: float32(s_x * s_w[n]) (static) or s_w[n] (dynamic)
    bias_q: np.ndarray | None = None  # [N] int32 in the accumulator: bias at s_x s_w, zero-point share
    post_bias: np.ndarray | None = (
        None  # [N] fp32 added after scaling (dynamic, or a bias too large for int32)
    )
    out_scale: float | None = None  # quantizes an int8 output after a sigmoid/tanh (else folded into col)
    int_bias: bool = False  # an INT32 bias buffer exists (also for virtual weights)


@dataclass
class Formats:
    """The device dtype of every value, the activation quantization, the int8 FC parameters, quantize points."""

    precision: Precision
    dtypes: dict[str, DType]
    quantization: Quantization = field(default_factory=Quantization)
    acts: dict[str, ActQuant] = field(default_factory=dict)  # FC input value -> its static quantization
    linears: dict[str, LinearQuant] = field(default_factory=dict)
    quantized_inputs: dict[str, str] = field(default_factory=dict)  # float value -> its int8 copy
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)  # calibration findings (non-finite values skipped...)


def quantize_weight(w: torch.Tensor, per_tensor: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (or one scale): (q [N, K] int8, scales [N] fp32).

    ``scale = float32(max|w| / 127)`` (1 for an all-zero channel), ``q = saturate(round(w * float32(1/scale)))``
    to [-127, 127]."""
    w32 = w.detach().to(torch.float32).cpu().numpy()
    if w32.size:  # max|w| from each row's max and min: no |w| array (NaN propagates through both)
        amax = np.maximum(w32.max(axis=1), -w32.min(axis=1))
        if not np.isfinite(amax).all():
            raise UsageError("an FC weight holds NaN or Inf: int8 quantization needs finite weights")
    else:
        amax = np.zeros(w32.shape[0], np.float32)
    if per_tensor:
        amax = np.full_like(amax, amax.max(initial=0.0))
    scales = np.where(amax > 0, amax.astype(np.float64) / INT8_MAX, 1.0).astype(np.float32)
    recip = (1.0 / scales.astype(np.float64)).astype(np.float32)
    q = w32 * recip[:, None]  # one float32 array, rounded and saturated in place
    np.rint(q, out=q)
    np.clip(q, -INT8_MAX, INT8_MAX, out=q)
    return q.astype(np.int8), scales


def act_scale(amax: float) -> float:
    """The symmetric int8 scale of a calibrated range: max|x| / 127 as fp32 (1 when the range is 0)."""
    return float(np.float32(amax / INT8_MAX)) if amax > 0 else 1.0


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


def assign(
    graph: Graph,
    precision: Precision,
    ranges: dict[str, float] | None,
    quantization: Quantization | None = None,
) -> Formats:
    """Device dtypes and int8 parameters. `ranges` (max |finite value| per value over the calibration inputs)
    may be None (virtual weights: timing only), then every scale is 1 and the numbers are not meaningful.
    An FC's `x_quant` attribute (a PT2E model's own quantization of its input) wins over ranges."""
    fd = precision.float_dtype
    quant = quantization or Quantization()
    dtypes: dict[str, DType] = {}
    for v, tt in graph.values.items():
        kind = graph.kinds.get(v)
        if kind == ValueKind.PARAM:
            dtypes[v] = tt.dtype
        elif tt.dtype.is_float:
            dtypes[v] = fd
        else:
            dtypes[v] = tt.dtype
    fm = Formats(precision, dtypes, quant, calibrated=ranges is not None)
    if not precision.int8:
        return fm
    users = graph.users()
    producer = graph.producer()
    given = {
        n.inputs[0]: ActQuant(float(n.attrs["x_quant"][0]), int(n.attrs["x_quant"][1]))
        for n in graph.nodes
        if n.op == "linear" and "x_quant" in n.attrs
    }
    dynamic = quant.activations == "dynamic"
    linears = [n for n in graph.nodes if n.op == "linear"]
    fc_inputs = list(dict.fromkeys(n.inputs[0] for n in linears))
    for v in fc_inputs:
        if v in given:
            fm.acts[v] = given[v]
        elif not dynamic:
            fm.acts[v] = ActQuant(act_scale((ranges or {}).get(v, 0.0)))
    for v in fc_inputs:
        if v not in fm.acts:
            continue  # dynamic: quantized per row by a job of its own
        p = producer.get(v)
        all_fc = all(u.op == "linear" and u.inputs[0] == v for u in users.get(v, []))
        if p is not None and p.op == "linear" and all_fc and v not in graph.outputs:
            dtypes[v] = DType.INT8  # the producing FC quantizes in its epilogue
        else:
            fm.quantized_inputs[v] = f"{v}_q"
            dtypes[f"{v}_q"] = DType.INT8
    for v in fc_inputs:
        all_fc = all(u.op == "linear" and u.inputs[0] == v for u in users.get(v, []))
        if graph.kinds.get(v) == ValueKind.INPUT and all_fc and v not in graph.outputs:
            dtypes[v] = DType.FP32  # quantized on the chip from the model's fp32, not from an fp16 copy
    for n in linears:
        fm.linears[n.name] = _linear_quant(graph, fm, n)
    return fm


INT32_BIAS_LIMIT = (
    2**24
)  # an INT32 bias at most this large stays exact through the epilogue's FP32 conversion


def _linear_quant(graph: Graph, fm: Formats, n) -> LinearQuant:
    """An int8 FC's parameters (docs/numerics.md section 2). Static: the bias goes into the INT32 accumulator
    (rounded at s_x s_w[n]) unless that would exceed `INT32_BIAS_LIMIT`, then it is an FP32 bias after
    scaling; an int8 output with no activation or relu folds its scale into the column scales
    (``f32(s_x s_w[n] / s_y)``), with sigmoid/tanh it is quantized after the activation. Dynamic: row and
    column scales, FP32 bias."""
    x, w = n.inputs[0], n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    y = n.outputs[0]
    xq = fm.acts.get(x)
    yq = fm.acts.get(y) if fm.dtypes.get(y) == DType.INT8 else None
    fold = yq is not None and n.attrs.get("activation", "none") in ("none", "relu")
    out_scale = None if yq is None or fold else yq.scale
    p = graph.params[w]
    if p.virtual:
        return LinearQuant(
            xq, yq, None, None, None, out_scale=out_scale, int_bias=b is not None and xq is not None
        )
    if p.quant is not None:  # a PT2E model's own int8 weights and scales
        w_q, w_scales = p.quant
    else:
        w_q, w_scales = quantize_weight(p.tensor, fm.quantization.weights == "per-tensor")
    bias = None
    if b is not None:
        bias = graph.params[b].tensor.detach().to(torch.float64).cpu().numpy().reshape(-1)
    if xq is None:  # dynamic per row: the row and column scales multiply in the epilogue
        post = None if bias is None else bias.astype(np.float32)
        return LinearQuant(None, yq, w_q, w_scales, w_scales.astype(np.float32), post_bias=post)
    acc_scales = np.float64(xq.scale) * w_scales.astype(np.float64)
    col = (acc_scales / (yq.scale if fold else 1.0)).astype(np.float32)
    bias_q = np.zeros(w_q.shape[0], dtype=np.int64)
    post = None
    if bias is not None:
        b_q = np.rint(bias / acc_scales)
        if np.abs(b_q).max(initial=0) <= INT32_BIAS_LIMIT:
            bias_q += b_q.astype(np.int64)
        else:
            post = (bias / (yq.scale if fold else 1.0)).astype(np.float32)
    if xq.zero_point:
        # acc = sum (q - zp) w = sum q w - zp * sum w: the zero point's share goes into the INT32 bias
        bias_q -= np.int64(xq.zero_point) * w_q.astype(np.int64).sum(axis=1)
    has_int = bias is not None and post is None or bool(xq.zero_point)
    return LinearQuant(
        xq,
        yq,
        w_q,
        w_scales,
        col,
        bias_q=bias_q.astype(np.int32) if has_int else None,
        post_bias=post,
        out_scale=out_scale,
        int_bias=has_int,
    )


def ranges_of(envs: list[dict[str, torch.Tensor]]) -> tuple[dict[str, float], list[str]]:
    """max |finite value| of every float tensor value over calibration runs, and notes on what was skipped
    (values holding NaN or Inf are calibrated on their finite elements)."""
    out: dict[str, float] = {}
    nonfinite: dict[str, int] = {}
    for env in envs:
        for k, v in env.items():
            if not (isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()):
                continue
            a = v.detach().abs()
            finite = torch.isfinite(a)
            bad = int(a.numel() - int(finite.sum()))
            if bad:
                nonfinite[k] = nonfinite.get(k, 0) + bad
                a = a[finite]
            amax = float(a.max()) if a.numel() else 0.0
            out[k] = max(out.get(k, 0.0), amax)
    notes = [
        f"calibration: {k} held {n} NaN/Inf value(s); its int8 scale uses the finite ones"
        for k, n in nonfinite.items()
    ]
    return out, notes
