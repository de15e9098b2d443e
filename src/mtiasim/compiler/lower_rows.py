"""Lowering of the row operators (`im2col`, `gather_rows`, `scatter_rows`): a mixin of `lower.Lowering`.

An `im2col` whose columns feed int8 FCs only is built in int8: its input is quantized (with the FCs' input
scale, zero point 0: a layout op commutes with an elementwise quantization, and the padding's zeros stay 0),
so the SE quantizes L values per channel instead of K * L_out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtiasim.compiler.kinds import KernelKind
from mtiasim.dtypes import DType
from mtiasim.ir import Node
from mtiasim.kernels.rows import MAX_TILE_COLS, Conv1d, Groups


class RowsLowering:
    """`_op_*` handlers of the row operators (the attributes they use are `lower.Lowering`'s)."""

    g: Any
    fm: Any
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, DType]
    buffers: dict[str, Any]

    def _op_im2col(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        a = node.attrs
        n, length, c = self.shapes[x]
        conv = Conv1d(n, length, c, a["kernel"], a["stride"], a["dilation"], tuple(a["pad"]))
        q = self.fm.quantized_inputs.get(y)
        if q is not None and self.fm.acts[y].zero_point == 0 and self._only_fc_input(y):
            xq = self.fresh(f"{x}_q")  # type: ignore[attr-defined]
            self.shapes[xq], self.dtypes[xq] = self.shapes[x], DType.INT8
            attrs = {"scale": self.fm.acts[y].scale, "zero_point": 0}
            self.kop(KernelKind.QUANTIZE, [x], [xq], attrs, node, name=xq)  # type: ignore[attr-defined]
            self.shapes[q], self.dtypes[q] = (n * conv.out_length, conv.kernel * c), DType.INT8
            x, y = xq, q
        zeros = self._zero_row(self.dtypes[x], min(c, MAX_TILE_COLS))
        self.kop(KernelKind.IM2COL, [x, zeros], [y], {"conv": conv}, node)  # type: ignore[attr-defined]

    def _only_fc_input(self, v: str) -> bool:
        users = [u for u in self.g.nodes if v in u.inputs]
        return (
            v not in self.g.outputs
            and bool(users)
            and all(
                u.op == "linear" and list(u.inputs).index(v) == 0 and u.inputs.count(v) == 1 for u in users
            )
        )

    def _zero_row(self, dtype: DType, cols: int) -> str:
        from mtiasim.compiler.lower import Buffer

        name = f"zeros@{dtype.value}x{cols}"
        if name not in self.buffers:
            self.buffers[name] = Buffer(name, 1, cols, dtype, "weight", np.zeros((1, cols), dtype.numpy))
        return name

    def _operand(self, v: str, like: tuple[int, ...]) -> str:
        """A weight read as an activation: a constant buffer in the activations' dtype."""
        if v not in self.g.params:
            return v
        return self._constant(v, self.fm.precision.float_dtype, 1.0, like)  # type: ignore[attr-defined]

    def _indices(self, v: str) -> str:
        """Index data: a constant (a buffer of the model) becomes a buffer of its integers."""
        if v not in self.g.params:
            return v
        from mtiasim.compiler.lower import Buffer

        p = self.g.params[v]
        name = f"{v}@indices"
        if name not in self.buffers:
            data = (
                None
                if p.virtual
                else p.tensor.detach().reshape(1, -1).cpu().numpy().astype(p.type.dtype.numpy)
            )
            self.buffers[name] = Buffer(name, 1, p.type.numel, p.type.dtype, "weight", data, p.virtual)
        return name

    def _op_gather_rows(self, node: Node) -> None:
        x, idx = node.inputs
        y = node.outputs[0]
        a = node.attrs
        groups = Groups(a["groups"], a["count"], a["index_step"], a["row_step"])
        reads = [self._operand(x, self.shapes[x]), self._indices(idx)]
        self.kop(KernelKind.ROW_GATHER, reads, [y], {"groups": groups}, node)  # type: ignore[attr-defined]

    def _op_scatter_rows(self, node: Node) -> None:
        dst, idx = node.inputs[:2]
        y = node.outputs[0]
        a = node.attrs
        dt = self.dtypes[y]
        if len(node.inputs) > 2:
            src = self._operand(node.inputs[2], self.shapes[node.inputs[2]])
        else:  # a constant written at every index: one row, read again for each
            from mtiasim.compiler.lower import Buffer

            cols = a["cols"]
            src = f"{node.name}@value"
            data = np.full((1, cols), a["value"], dtype=np.float32).astype(dt.numpy)
            self.buffers[src] = Buffer(src, 1, cols, dt, "weight", data)
        writes = [y]
        if a.get("accumulate") and dt != DType.FP32:  # the sums are formed in FP32
            scratch = self.fresh(f"{y}_fp32")  # type: ignore[attr-defined]
            self.shapes[scratch], self.dtypes[scratch] = self.shapes[y], DType.FP32
            writes.append(scratch)
        attrs = {
            "groups": Groups(a["groups"], a["count"], a["index_step"], a["row_step"]),
            "accumulate": bool(a.get("accumulate")),
        }
        reads = [self._operand(dst, self.shapes[dst]), self._indices(idx), src]
        self.kop(KernelKind.ROW_SCATTER, reads, writes, attrs, node)  # type: ignore[attr-defined]
