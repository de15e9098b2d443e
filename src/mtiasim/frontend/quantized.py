"""ATen's quantized embedding lookups as torch.export can capture them.

- `torch.ao.nn.quantized.EmbeddingBag` keeps its rows in a TorchBind object that torch.export refuses.
  `exportable(model)` swaps each one, for the export only, for a `PackedRowsBag`: the same rows as a uint8
  buffer in the layout ATen's prepack ops write (`RowFormat.INT8_ATEN` / `INT4_ATEN`), pooled by the matching
  ``quantized::embedding_bag_{byte,4bit}_rowwise_offsets`` op, which computes what the original module does,
  bit for bit.
- ``quantized::embedding_bag_4bit_rowwise_offsets`` has no shape implementation in torch, so it cannot be
  exported over indices of a data-dependent length; `register_4bit_lookup_meta` gives it a Meta kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_LOOKUPS = {
    torch.quint8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
    torch.quint4x2: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets,
}


class PackedRowsBag(nn.Module):
    """A torch.ao quantized EmbeddingBag's rows as a buffer: per row the quantized values, then its scale and
    bias (fp32 for 8-bit rows, fp16 for 4-bit ones), as ATen's prepack ops write them."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        weight = module.weight()  # per-row affine with float qparams: x = (q - zero_point) * scale
        rows = weight.shape[0]
        scale = weight.q_per_channel_scales()
        bias = -weight.q_per_channel_zero_points() * scale
        qparams_dtype = torch.float32 if module.dtype == torch.quint8 else torch.float16
        qparams = torch.stack([scale, bias], dim=1).to(qparams_dtype).contiguous().view(torch.uint8)
        self.register_buffer("rows", torch.cat([weight.int_repr().reshape(rows, -1), qparams], dim=1))
        self.lookup = _LOOKUPS[module.dtype]
        self.pruned_weights = module.pruned_weights
        self.include_last_offset = module.include_last_offset

    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
        compressed_indices_mapping: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # mode 0, as the torch.ao module passes whatever its mode
        return self.lookup(
            self.rows, indices, offsets, False, 0, self.pruned_weights, per_sample_weights,
            compressed_indices_mapping, self.include_last_offset,
        )  # fmt: skip


@contextlib.contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its torch.ao quantized EmbeddingBags swapped for `PackedRowsBag`s, put back on exit."""
    from torch.ao.nn.quantized import EmbeddingBag as QuantizedBag

    swaps = []
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedBag) and module.dtype in _LOOKUPS:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            swaps.append((parent, attr, module))
            setattr(parent, attr, PackedRowsBag(module))
    try:
        yield model
    finally:
        for parent, attr, module in swaps:
            setattr(parent, attr, module)


_META_KERNELS: list[torch.library.Library] = []  # kept alive: a library's registrations end with it


def register_4bit_lookup_meta() -> None:
    """A Meta (shape) kernel for ``quantized::embedding_bag_4bit_rowwise_offsets``, which torch.export's fake
    tensors use: [bags, 2 * (row bytes - 4)] fp32. A no-op where torch has one already."""

    def shape(weight, indices, offsets=None, scale_grad_by_freq=False, mode=0, pruned_weights=False,
              per_sample_weights=None, compressed_indices_mapping=None, include_last_offset=False):  # fmt: skip
        bags = indices.shape[0] if offsets is None else offsets.shape[0] - int(bool(include_last_offset))
        return weight.new_empty((bags, 2 * (weight.shape[1] - 4)), dtype=torch.float32)

    if _META_KERNELS or torch._C._dispatch_has_kernel_for_dispatch_key(
        "quantized::embedding_bag_4bit_rowwise_offsets", "Meta"
    ):
        return
    lib = torch.library.Library("quantized", "IMPL")
    lib.impl("embedding_bag_4bit_rowwise_offsets", shape, "Meta")
    _META_KERNELS.append(lib)
