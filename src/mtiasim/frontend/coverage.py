"""Which Core ATen operators mtiasim runs, and where: the contract `torch.export` + `run_decompositions`
hands a compiler (every OpOverload tagged `torch.Tag.core`).

- `chip`: a converter turns it into device operators; `unit` says which units run them (DPE, SE, MLU, DMA,
  or a view that moves no bytes);
- `decomposed`: no converter, but PyTorch's decomposition table rewrites it into other operators (which
  run if they convert in turn);
- `host`: index bookkeeping the host prologue runs in torch (on index data only);
- `none`: refused with a one-line error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtiasim.frontend.aten import CONVERTERS
from mtiasim.frontend.host import is_host_op

# the units a converter's device operators run on (by converter; elementwise ones: the SE)
_UNITS = {
    "_linear": "dpe",
    "_addmm": "dpe",
    "_matmul": "dpe",
    "_attention": "dpe",
    "_embedding": "se",
    "_embedding_bag": "se",
    "_embedding_bag_quantized": "se",
    "_permute": "mlu",
    "_cat": "view",
    "_reshape": "view",
    "_slice": "view",
    "_split": "view",
    "_select": "view",
    "_stack": "view",
    "_identity": "view",
    "_index": "mlu",
    "_full_like": "view",
    "_conv1d": "dpe",  # im2col by DMA, then the GEMM
    "_gather": "dma",
    "_index_tensor": "dma",
    "_scatter": "dma",
    "_index_put": "dma",
}


@dataclass(frozen=True)
class Coverage:
    op: str
    status: str  # chip | decomposed | host | none
    unit: str  # for chip: dpe | se | mlu | view


def core_aten_ops() -> list[torch._ops.OpOverload]:
    """Every aten OpOverload tagged core in this torch."""
    ops = []
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        if not hasattr(packet, "overloads"):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if torch.Tag.core in op.tags:
                ops.append(op)
    return sorted(ops, key=lambda o: o.name())


def core_aten_coverage() -> list[Coverage]:
    decomposable = torch.export.default_decompositions()
    out = []
    for op in core_aten_ops():
        conv = CONVERTERS.get(op)
        if conv is not None:
            out.append(Coverage(op.name(), "chip", _UNITS.get(conv.fn.__name__, "se")))
        elif is_host_op(op):
            out.append(Coverage(op.name(), "host", ""))
        elif op in decomposable:
            out.append(Coverage(op.name(), "decomposed", ""))
        else:
            out.append(Coverage(op.name(), "none", ""))
    return out
