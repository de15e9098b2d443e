"""The compiler's graph: typed device ops over named values, with the source of each op."""

from mtiasim.ir.graph import DYNAMIC, OPS, Graph, Node, Param, Source, TensorType, ValueKind

__all__ = ["DYNAMIC", "OPS", "Graph", "Node", "Param", "Source", "TensorType", "ValueKind"]
