"""Fused attention against its decomposition, in simulated time (not a test): prints a table.

    PYTHONPATH=src:. .venv/bin/python benchmarks/attention.py [--precision fp16|int8] [--chip mtia-v1]

Each case is compiled twice for the same chip: as mtiasim captures it (SDPA as one `attention` kernel) and
with PyTorch's decomposition of SDPA applied first (matmuls, scale, mask, safe softmax: what ran before the
kernel). Device time only (the host's PCIe transfers are the same for both).
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import mtiasim


class Core(nn.Module):
    """The attention core alone: q, k, v [B, H, S, D] in, out [B, H, S, D]."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention self-attention without returned weights (the SDPA path)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x, pad=None):
        return self.mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]


def decomposed(model: nn.Module, args: tuple):
    """`model` exported with PyTorch's decomposition of SDPA applied."""
    capture = importlib.import_module("mtiasim.frontend.capture")
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if "scaled_dot_product" not in str(op):
            table.pop(op)
    return capture.export(model, args).run_decompositions(table)


def device(program, args: tuple, chip: str, precision: str) -> tuple[float, int, float]:
    """(device seconds, jobs, seconds of the attention's own jobs) of one call."""
    cm = mtiasim.compile(program, args, mode="timing", precision=precision, chip=chip)
    cm(*args)
    rep = cm.report
    gemm = sum(o.time_us for o in rep.ops if o.kind == "gemm") * 1e-6
    return rep.device_s, len(rep.ops), rep.device_s - gemm


def cases() -> list[tuple[str, nn.Module, tuple]]:
    torch.manual_seed(0)

    def qkv(b, h, s, d):
        return tuple(torch.randn(b, h, s, d) for _ in range(3))

    pad = torch.zeros(32, 128, dtype=torch.bool)
    pad[:, 100:] = True
    return [
        ("SDPA core 32x8 heads, S=128, D=64", Core(), qkv(32, 8, 128, 64)),
        ("SDPA core causal 32x8, S=128, D=64", Core(causal=True), qkv(32, 8, 128, 64)),
        ("SDPA core 8x8, S=512, D=64 (streamed)", Core(), qkv(8, 8, 512, 64)),
        ("MultiheadAttention 512/8, B=32, S=128", SelfAttention(512, 8), (torch.randn(32, 128, 512),)),
        ("  + key padding mask", SelfAttention(512, 8), (torch.randn(32, 128, 512), pad)),
        (
            "TransformerEncoderLayer 512/8/2048, B=32, S=128",
            nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True),
            (torch.randn(32, 128, 512),),
        ),
        (
            "TransformerEncoderLayer 256/4/1024, B=16, S=256",
            nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True),
            (torch.randn(16, 256, 256),),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--chip", default="mtia-v1")
    opts = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{opts.chip}, {opts.precision}, device time in us (non-GEMM part in brackets), jobs")
    print(f"{'case':50s} {'fused':>18s} {'decomposed':>18s} {'speed-up':>9s}")
    for name, model, args in cases():
        model.eval()
        t0 = time.perf_counter()
        fused = device(model, args, opts.chip, opts.precision)
        dec = device(decomposed(model, args), args, opts.chip, opts.precision)
        cell = lambda r: f"{r[0] * 1e6:8.1f} [{r[2] * 1e6:6.1f}] {r[1]:3d}"  # noqa: E731
        print(
            f"{name:50s} {cell(fused)} {cell(dec)} {dec[0] / fused[0]:8.2f}x  ({time.perf_counter() - t0:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
