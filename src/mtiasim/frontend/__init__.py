"""PyTorch -> the compiler's graph, through torch.export (non-strict)."""

from mtiasim.frontend.aten import supported_ops
from mtiasim.frontend.capture import Captured, capture, convert, export

__all__ = ["Captured", "capture", "convert", "export", "supported_ops"]
