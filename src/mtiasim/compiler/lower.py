"""Lowering: graph ops -> kernel ops over buffers (what runs, what it reads and writes, where the bytes live).

A kernel op (`KOp`) is one kernel invocation, of a `compiler.kinds.KernelKind`: an FC (`gemm`), a batched
lookup (`tbe`, several tables of one row format and dim in one job, as FBGEMM's TBE), `bmm`, `eltwise` (SE:
relu/sigmoid/tanh/add/mul/cast), `quantize`, `dequantize`, `quantize_rows`, `gather` (constant column
gather), `transpose`, `copy`, `reduce`. What code generation does with each kind is its record in
`compiler.kernel_table.KERNELS`.

Values live in buffers. Views cost nothing: a reshape is the same bytes, and a `cat` is laid out in place: each
input is written by its producer straight into its column window of the output buffer (the TBE writes its
tables' pooled rows where the interaction reads them). Where a view is impossible (an input or weight, a value
two `cat`s want, a kernel that needs another shape) the lowering inserts a `copy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtiasim.compiler.kinds import KernelKind
from mtiasim.compiler.lower_rows import RowsLowering
from mtiasim.compiler.precision import Formats, rowwise_int8
from mtiasim.dtypes import DType
from mtiasim.errors import UnsupportedOperatorError
from mtiasim.frontend.dtypes import DTYPE_TO_TORCH
from mtiasim.frontend.reference import tbe_table
from mtiasim.ir import DYNAMIC, Graph, Node, Source, ValueKind
from mtiasim.isa import RowFormat
from mtiasim.kernels import attention
from mtiasim.kernels.jagged import pad_rows
from mtiasim.opset import ELEMENTWISE, Kind, elementwise, require

# producers that can write their 2-D result into a column window of a wider buffer
WINDOW_WRITERS = frozenset(
    {
        KernelKind.GEMM,
        KernelKind.TBE,
        KernelKind.ELTWISE,
        KernelKind.QUANTIZE,
        KernelKind.DEQUANTIZE,
        KernelKind.COPY,
        KernelKind.GATHER,
        KernelKind.ROW_GATHER,
        KernelKind.CAT,
    }
)


@dataclass
class Buffer:
    """Bytes on the device. `rows` x `cols` is its 2-D grid; `data` the constant contents of weights/tables."""

    name: str
    rows: int
    cols: int
    dtype: DType
    role: str  # activation | input | weight | table | index | output
    data: np.ndarray | None = field(default=None, repr=False)
    virtual: bool = False
    pitch_bytes: int | None = None

    @property
    def nbytes(self) -> int:
        return self.rows * (self.pitch_bytes or self.cols * self.dtype.itemsize)


@dataclass(frozen=True)
class View:
    """A value as columns [col0, col0 + cols) of `rows` rows of a buffer's grid (the whole buffer if it fills
    it), with the value's logical shape."""

    buffer: str
    rows: int
    col0: int
    cols: int
    shape: tuple[int, ...]


@dataclass
class KOp:
    name: str
    kind: KernelKind  # a kind given by name is converted (an unknown name raises ValueError)
    reads: list[str]
    writes: list[str]
    attrs: dict[str, Any]
    source: Source
    lane: str = "joint"  # sparse (lookups) | dense (independent of lookups) | joint

    def __post_init__(self) -> None:
        self.kind = KernelKind(self.kind)


@dataclass
class Lookup:
    """One table of a batched lookup: where its rows are and which device inputs carry its bags."""

    table: int  # position in the tbe buffer
    rows: int
    row_start: int  # first row in the packed buffer
    indices: str
    offsets: str | None
    weights: str | None
    include_last_offset: bool
    padding_idx: int | None
    one_per_bag: bool
    batched: tuple[int, int] | None = None  # (table, tables) of an FBGEMM batched op's shared bags


@dataclass
class Lowered:
    kops: list[KOp]
    buffers: dict[str, Buffer]
    views: dict[str, View]
    lookups: dict[str, list[Lookup]]  # tbe kop name -> its tables
    dtypes: dict[str, DType]


def _natural(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape:
        return 1, 1
    return (math.prod(shape[:-1]) if len(shape) > 1 else 1), shape[-1]


class Lowering(RowsLowering):
    def __init__(self, graph: Graph, formats: Formats) -> None:
        self.g = graph
        self.fm = formats
        self.kops: list[KOp] = []
        self.buffers: dict[str, Buffer] = {}
        self.views: dict[str, View] = {}
        self.lookups: dict[str, list[Lookup]] = {}
        self.dtypes = dict(formats.dtypes)
        self.shapes = {v: tt.shape for v, tt in graph.values.items()}
        self.producer_kind: dict[str, KernelKind] = {}
        self.alias_of: dict[str, str] = {}  # value -> the value it is a reshape of (same bytes)
        self.parent: dict[str, tuple[str, int, int]] = {}  # value -> (cat value, rows, col0)
        self.pending_slices: dict[str, KOp] = {}  # slice output -> its op, until its view is made
        self._uid = 0

    # ------------------------------------------------------------------------------------------ helpers
    def fresh(self, base: str) -> str:
        self._uid += 1
        return f"{base}~{self._uid}"

    def kop(
        self, kind: KernelKind, reads: list[str], writes: list[str], attrs: dict, node: Node, name: str = ""
    ) -> KOp:
        op = KOp(name or node.name, kind, reads, writes, attrs, node.source)
        self.kops.append(op)
        for w in writes:
            self.producer_kind[w] = kind
        return op

    def fail(self, node: Node, what: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(f"model {self.g.name}: {what} ({node.where()})")

    # ------------------------------------------------------------------------------------------- ops
    def run(self) -> Lowered:
        for node in self.g.nodes:
            handler = getattr(self, "_op_" + node.op, None)
            if handler is None:
                if elementwise(node.op) is None:
                    raise self.fail(node, f"no lowering for {node.op}")
                handler = self._eltwise
            handler(node)
        self._group_lookups()
        self._layout()
        return Lowered(self.kops, self.buffers, self.views, self.lookups, self.dtypes)

    def _op_linear(self, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        y = node.outputs[0]
        wp = self.g.params[w]
        n_out, k = wp.type.shape
        if len(self.shapes[x]) != 2:
            rows = math.prod(self.shapes[x][:-1])
            x2 = self.fresh(x)
            self.shapes[x2] = (rows, k)
            self.dtypes[x2] = self.dtypes[x]
            self.alias_of[x2] = x
            x = x2
        attrs: dict[str, Any] = {"activation": node.attrs.get("activation", "none")}
        fm = self.fm
        if fm.precision.int8:
            self._int8_linear(node, x, w, b, attrs)
            return
        fd = fm.precision.float_dtype
        wname = f"{w}@{fd.value}"
        if wname not in self.buffers:
            data = None if wp.virtual else _to_numpy(wp.tensor, fd)
            self.buffers[wname] = Buffer(wname, n_out, k, fd, "weight", data, wp.virtual)
        reads = [x, wname]
        if b is not None:
            bname = f"{b}@fp32"
            if bname not in self.buffers:
                bp = self.g.params[b]
                data = None if bp.virtual else _to_numpy(bp.tensor, DType.FP32).reshape(1, n_out)
                self.buffers[bname] = Buffer(bname, 1, n_out, DType.FP32, "weight", data, bp.virtual)
            reads.append(bname)
        attrs.update(bias=b is not None, scales=None)
        self.kop(KernelKind.GEMM, reads, [y], attrs, node)

    def _int8_linear(self, node: Node, x: str, w: str, b: str | None, attrs: dict[str, Any]) -> None:
        """An int8 FC: its input quantized (statically by an SE job, or per row at run time, or already int8
        from the producing FC's epilogue), int8 weights, the epilogue's scales, bias and output quantization."""
        fm = self.fm
        lq = fm.linears[node.name]
        wp = self.g.params[w]
        n_out, k = wp.type.shape
        y = node.outputs[0]
        src = node.inputs[0]
        virtual = wp.virtual
        if lq.x is None:  # dynamic: per-row scales computed on the chip
            q, s = f"{src}_qrows", f"{src}_qrows@scales"
            if q not in self.producer_kind:
                self.dtypes[q], self.shapes[q] = DType.INT8, self.shapes[x]
                self.dtypes[s], self.shapes[s] = DType.FP32, (self.shapes[x][0], 1)
                self.kop(KernelKind.QUANTIZE_ROWS, [x], [q, s], {}, node, name=q)
            x = q
            attrs["row_scales"] = s
        else:
            q = fm.quantized_inputs.get(src)
            if q is not None:
                if q not in self.producer_kind:
                    self.dtypes[q] = DType.INT8
                    self.shapes[q] = self.shapes[x]
                    qa = {"scale": lq.x.scale, "zero_point": lq.x.zero_point}
                    self.kop(KernelKind.QUANTIZE, [x], [q], qa, node, name=q)
                x = q
        wname = f"{w}@int8" + (
            "" if wp.quant is not None or fm.quantization.weights == "per-channel" else "/t"
        )
        if wname not in self.buffers:
            self.buffers[wname] = Buffer(wname, n_out, k, DType.INT8, "weight", lq.w_q, virtual)
        reads = [x, wname]

        def vector(suffix: str, data: np.ndarray | None, dtype: DType) -> str:
            name = f"{node.name}@{suffix}"
            arr = None if data is None else data.reshape(1, n_out)
            self.buffers[name] = Buffer(name, 1, n_out, dtype, "weight", arr, virtual)
            return name

        if lq.int_bias:
            reads.append(vector("bias", lq.bias_q, DType.INT32))
        attrs["scales"] = vector("scales", lq.col_scales, DType.FP32)
        if lq.post_bias is not None or (virtual and b is not None and not lq.int_bias):
            attrs["post_bias"] = vector("post_bias", lq.post_bias, DType.FP32)
        if lq.y is not None:
            attrs["out_scale"], attrs["out_zero_point"] = lq.out_scale, lq.y.zero_point
        attrs["bias"] = lq.int_bias
        self.kop(KernelKind.GEMM, reads, [y], attrs, node)

    def _op_matmul(self, node: Node) -> None:
        a, b = node.inputs
        y = node.outputs[0]
        sa, sb = self.shapes[a], self.shapes[b]
        if not node.attrs.get("transpose_b"):
            # b [.., K, N] -> b^T [.., N, K] on the MLU, then the transposed form
            rank = len(sb)
            bt = self.fresh(b + "_T")
            self.shapes[bt] = tuple(sb[:-2]) + (sb[-1], sb[-2])
            self.dtypes[bt] = self.dtypes[b]
            self.kop(KernelKind.TRANSPOSE, [b], [bt], {}, node, name=bt)
            b, sb = bt, self.shapes[bt]
            del rank
        if len(sa) == 3:
            if sa[0] != sb[0] or sa[2] != sb[2]:
                raise self.fail(node, f"batched matmul of {list(sa)} by {list(sb)}^T: batch or depth differ")
            self.kop(KernelKind.BMM, [a, b], [y], {}, node)
            return
        self.kop(
            KernelKind.GEMM,
            [a, b],
            [y],
            {"activation": "none", "bias": False, "scales": None, "w_is_data": True},
            node,
        )

    def _op_attention(self, node: Node) -> None:
        """One attention job over q, k, v (2-D grids, item-major) with its constants: the scale vector and,
        for a causal op, the causal Toeplitz table; a boolean mask is made additive (0 keeps, -inf masks) by
        two SE jobs on the mask's own shape first."""
        q, k, v = node.inputs[:3]
        a = node.attrs
        sq, skv, sv = self.shapes[q], self.shapes[k], self.shapes[v]
        batch = tuple(sq[:-2])
        dt = self.dtypes[q]
        reads = [self._attention_operand(x, dt) for x in (q, k, v)]
        scale = f"{node.name}@scale"
        data = np.full((1, attention.SCALE_COLS), a["scale"], dtype=np.float32)
        self.buffers[scale] = Buffer(scale, 1, attention.SCALE_COLS, DType.FP32, "weight", data)
        reads.append(scale)
        attrs: dict[str, Any] = {"items": math.prod(batch), "s_q": sq[-2], "s_kv": skv[-2], "d": sq[-1],
                                 "dv": sv[-1], "scale_vec": scale}  # fmt: skip
        if a.get("mask"):
            m = node.inputs[3]
            ms = self.shapes[m]
            add = self._additive_mask(node, m, dt) if a["mask"] == "bool" else self._attention_operand(m, dt)
            attrs["mask"] = add
            attrs["mask_per_query"] = ms[-2] != 1
            attrs["mask_rows"] = attention.mask_first_rows(batch, tuple(ms[:-2]), ms[-2])
            reads.append(add)
        if a.get("causal"):
            table = f"{node.name}@causal"
            data = attention.causal_table(sq[-2], skv[-2], min(attention.MAX_TILE, sq[-2]), dt)
            self.buffers[table] = Buffer(table, data.shape[0], data.shape[1], dt, "weight", data)
            attrs["causal"] = table
            reads.append(table)
        self.kop(KernelKind.ATTENTION, reads, [node.outputs[0]], attrs, node)

    def _attention_operand(self, x: str, dt: DType) -> str:
        """q, k or v: an activation as it is, a weight as a constant in the activations' dtype."""
        if self.g.kinds.get(x) != ValueKind.PARAM:
            return x
        name = f"{x}@{dt.value}"
        if name not in self.buffers:
            p = self.g.params[x]
            r, c = _natural(p.type.shape)
            data = None if p.virtual else _to_numpy(p.tensor, dt).reshape(r, c)
            self.buffers[name] = Buffer(name, r, c, dt, "weight", data, p.virtual)
        return name

    def _additive_mask(self, node: Node, m: str, dt: DType) -> str:
        """A 1.0/0.0 mask as 0 (keep) / -inf (mask): ``fill(m == 0, -inf)``, two SE jobs, once per mask."""
        add = f"{m}@additive"
        if add in self.producer_kind or add in self.buffers:
            return add
        if self.g.kinds.get(m) == ValueKind.PARAM:  # a constant mask: made additive here
            p = self.g.params[m]
            r, c = _natural(p.type.shape)
            data = None
            if not p.virtual:
                keep = p.tensor.detach().reshape(r, c).cpu().numpy() != 0
                data = np.where(keep, 0.0, -np.inf).astype(dt.numpy)
            self.buffers[add] = Buffer(add, r, c, dt, "weight", data, p.virtual)
            return add
        eq, zero = f"{m}@masked", f"{m}@zero"
        n = self.shapes[m][-1]
        self.buffers[zero] = Buffer(zero, 1, n, dt, "weight", np.zeros((1, n), dtype=dt.numpy))
        for v in (eq, add):
            self.shapes[v], self.dtypes[v] = self.shapes[m], dt
        self.kop(KernelKind.ELTWISE, [m, zero], [eq], {"op": "eq", "params": ()}, node, name=eq)
        fill = {"op": "fill", "params": (("value", -math.inf),)}
        self.kop(KernelKind.ELTWISE, [eq], [add], fill, node, name=add)
        return add

    def _op_embedding_bag(self, node: Node) -> None:
        w, idx = node.inputs[0], node.inputs[1]
        offsets = node.inputs[2] if len(node.inputs) > 2 else None
        weights = node.inputs[3] if len(node.inputs) > 3 else None
        p = self.g.params[w]
        rows, dim = p.type.shape
        fmt = node.attrs["row_format"]
        if RowFormat(fmt).is_quantized:  # the model's own quantized rows (ATen's layouts)
            dim = RowFormat(fmt).dim_of(dim)
        else:  # float tables are stored in the precision's row format (int8 rows for int8)
            fmt = self.fm.precision.table_format
        self.kop(
            KernelKind.LOOKUP,
            [idx] + ([offsets] if offsets else []) + ([weights] if weights else []),
            [node.outputs[0]],
            {
                "param": w,
                "rows": rows,
                "dim": dim,
                "mode": node.attrs["mode"],
                "format": fmt,
                "indices": idx,
                "offsets": offsets,
                "weights": weights,
                "include_last_offset": node.attrs.get("include_last_offset", False),
                "padding_idx": node.attrs.get("padding_idx"),
                "one_per_bag": node.attrs.get("one_per_bag", False),
                "call_rows": self.shapes[node.outputs[0]][0] == DYNAMIC,
            },
            node,
        )

    def _op_tbe(self, node: Node) -> None:
        # an FBGEMM batched op: its tables become individual lookups sharing one output (re-grouped below)
        w, idx, off = node.inputs[:3]
        weights = node.inputs[3] if len(node.inputs) > 3 else None
        y = node.outputs[0]
        tables = node.attrs["tables"]
        batch = self.shapes[y][0]
        col = 0
        parts = []
        for t, (start, dim, rows, row_bytes) in enumerate(tables):
            part = self.fresh(f"{y}.t{t}")
            self.shapes[part] = (batch, dim)
            self.dtypes[part] = self.dtypes[y]
            self.kop(
                KernelKind.LOOKUP,
                [idx, off] + ([weights] if weights else []),
                [part],
                {
                    "param": w,
                    "fbgemm": (start, dim, rows, row_bytes),
                    "rows": rows,
                    "dim": dim,
                    "mode": node.attrs["mode"],
                    "format": node.attrs["row_format"],
                    "indices": idx,
                    "offsets": off,
                    "weights": weights,
                    "batched": (t, len(tables)),
                    "include_last_offset": True,
                    "padding_idx": None,
                    "one_per_bag": False,
                },
                node,
                name=part,
            )
            parts.append(part)
            col += dim
        # the op's output is the concatenation of its tables' pooled rows
        self.parent_cat(node, parts, y, 1)

    def parent_cat(self, node: Node, parts: list[str], y: str, dim: int) -> None:
        self.kop(KernelKind.CAT, parts, [y], {"dim": dim}, node, name=y)

    def _op_cat(self, node: Node) -> None:
        y = node.outputs[0]
        if DYNAMIC in self.shapes[y]:
            self._stack_rows(node)
            return
        self.kop(KernelKind.CAT, list(node.inputs), [y], {"dim": node.attrs["dim"]}, node)

    def _stack_rows(self, node: Node) -> None:
        """Lookups' rows known per call, one after another (an EmbeddingCollection's features): the lookups
        run as one job whose bags, one per index, write the rows in order into the concatenation."""
        y = node.outputs[0]
        writers = {op.writes[0]: op for op in self.kops if op.kind == KernelKind.LOOKUP}
        for i, x in enumerate(node.inputs):
            op = writers.get(self._root(x))
            if op is None or op.attrs.get("stack") is not None:
                raise self.fail(
                    node, f"a concatenation of {x}, rows known per call that are not one lookup's"
                )
            op.attrs["stack"], op.attrs["stack_position"] = y, i
        self.dtypes[y] = self.dtypes[self._root(node.inputs[0])]

    def _eltwise(self, node: Node) -> None:
        """Any elementwise operator of the operator set: an SE job; a second operand that is a weight or a
        scalar becomes a constant buffer in the activations' dtype (broadcast over rows when it is a vector)."""
        op = node.op
        spec = ELEMENTWISE[Kind(op)]
        x, y = node.inputs[0], node.outputs[0]
        params = tuple((k, node.attrs[k]) for k in spec.attrs if k in node.attrs and k != "alpha")
        if self.g.kinds.get(x) == ValueKind.PARAM:  # a weight first (1 - x, c * x): a constant buffer too
            other = node.inputs[1] if len(node.inputs) > 1 else None
            dt = self.dtypes[other] if other is not None and other not in self.g.params else self.dtypes[y]
            x = self._constant(x, dt, 1.0, self.shapes[x])
        reads = [x]
        if spec.arity == 2:
            if "scalar" in node.attrs:
                n = self.shapes[x][-1]
                cname = self.fresh(f"{op}_const")
                dt = self.dtypes[x]
                data = np.full((1, n), node.attrs["scalar"], dtype=np.float32).astype(dt.numpy)
                self.buffers[cname] = Buffer(cname, 1, n, dt, "weight", data)
                reads.append(cname)
            else:
                other = node.inputs[1]
                alpha = node.attrs.get("alpha", 1.0)
                if self.g.kinds.get(other) == ValueKind.PARAM:
                    other = self._constant(other, self.dtypes[x], alpha, self.shapes[x])
                elif alpha != 1.0:
                    params += (("alpha", alpha),)
                reads.append(other)
        self.kop(KernelKind.ELTWISE, reads, [y], {"op": op, "params": params}, node)

    def _constant(self, param: str, dtype: DType, alpha: float, like: tuple[int, ...]) -> str:
        """A weight operand of an elementwise op, scaled by `alpha`, in the activations' dtype: [1, N] when it
        broadcasts over rows, [M, 1] over columns, else the activation's 2-D shape."""
        p = self.g.params[param]
        shape = p.type.shape
        like_rows, like_cols = _natural(like)
        if math.prod(shape) == shape[-1] == like_cols:  # a row, broadcast over the rows
            rows, cols = 1, like_cols
        elif shape[-1] == 1 and math.prod(shape) == like_rows:  # a column, broadcast over the columns
            rows, cols = like_rows, 1
        else:
            rows, cols = like_rows, like_cols
        name = f"{param}@{dtype.value}" + (f"*{alpha:g}" if alpha != 1.0 else "")
        if name not in self.buffers:
            data = None if p.virtual else _to_numpy(p.tensor.detach().to(torch.float32) * alpha, dtype)
            self.buffers[name] = Buffer(
                name,
                rows,
                cols,
                dtype,
                "weight",
                None if data is None else data.reshape(rows, cols),
                p.virtual,
            )
        return name

    def _op_cast(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if self.dtypes[x] == self.dtypes[y]:
            self.alias_of[y] = x
            return
        if DYNAMIC in self.shapes[x]:
            raise self.fail(
                node, f"a {self.dtypes[x].value} -> {self.dtypes[y].value} cast of rows known per call"
            )
        self.kop("eltwise", [x], [y], {"op": "cast", "params": ()}, node)

    def _op_reshape(self, node: Node) -> None:
        self.alias_of[node.outputs[0]] = node.inputs[0]

    def _op_quantize(self, node: Node) -> None:
        attrs = {"scale": node.attrs["scale"], "zero_point": node.attrs["zero_point"]}
        self.kop(KernelKind.QUANTIZE, [node.inputs[0]], [node.outputs[0]], attrs, node)

    def _op_dequantize(self, node: Node) -> None:
        attrs = {"scale": node.attrs["scale"], "zero_point": node.attrs["zero_point"]}
        self.kop(KernelKind.DEQUANTIZE, [node.inputs[0]], [node.outputs[0]], attrs, node)

    def _op_copy(self, node: Node) -> None:
        self.kop(KernelKind.COPY, [node.inputs[0]], [node.outputs[0]], {}, node)

    def _op_permute(self, node: Node) -> None:
        x = node.inputs[0]
        rank = len(self.shapes[x])
        dims = tuple(node.attrs["dims"])
        swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
        if rank < 2 or dims != swap:
            raise self.fail(node, f"permute {dims} is not supported (only swapping the last two dims)")
        self.kop(KernelKind.TRANSPOSE, [x], [node.outputs[0]], {}, node)

    def _op_slice(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        d = node.attrs["dim"]
        shape = self.shapes[x]
        inner = math.prod(shape[d + 1 :])
        self.kop(
            KernelKind.SLICE,
            [x],
            [y],
            {
                "rows": math.prod(shape[:d]),
                "col0": node.attrs["start"] * inner,
                "cols": math.prod(self.shapes[y][d:]),
            },
            node,
        )

    def _op_reduce(self, node: Node) -> None:
        self.kop(KernelKind.REDUCE, [node.inputs[0]], [node.outputs[0]], {"op": node.attrs["op"]}, node)

    def _op_host_call(self, node: Node) -> None:
        attrs = {"call": node.attrs["call"], "aten": node.attrs["aten"]}
        self.kop(KernelKind.HOST_CALL, list(node.inputs), [node.outputs[0]], attrs, node)

    def _op_jagged_to_dense(self, node: Node) -> None:
        self._jagged(node, KernelKind.JAGGED_TO_DENSE, self.shapes[node.outputs[0]][0])

    def _op_dense_to_jagged(self, node: Node) -> None:
        self._jagged(node, KernelKind.DENSE_TO_JAGGED, self.shapes[node.inputs[0]][0])

    def _jagged(self, node: Node, kind: KernelKind, sequences: int) -> None:
        """Row copies placed per call by the offsets (a graph input the host hands over, or the model's
        constants); padding rows come from a constant tensor of one tile's rows."""
        x, offsets = node.inputs
        y = node.outputs[0]
        dt, cols = self.dtypes[y], self.shapes[y][-1]
        pad = f"{node.name}@pad"
        rows = pad_rows(cols, dt.itemsize)
        data = _to_numpy(torch.full((rows, cols), float(node.attrs.get("padding", 0.0))), dt)
        self.buffers[pad] = Buffer(pad, rows, cols, dt, "weight", data)
        p = self.g.params.get(offsets)
        const = None if p is None else tuple(int(v) for v in p.tensor.reshape(-1).tolist())
        attrs = {"offsets": offsets, "const_offsets": const, "sequences": sequences,
                 "max_len": node.attrs["max_len"], "pad": pad, "aten": node.attrs.get("aten", node.op),
                 "whole": node.attrs.get("whole", False), "rows_per_call": self.shapes[y][0] == DYNAMIC}  # fmt: skip
        self.kop(kind, [x, pad], [y], attrs, node)

    def _op_index(self, node: Node) -> None:
        self.kop(
            KernelKind.GATHER, [node.inputs[0]], [node.outputs[0]], {"columns": node.attrs["columns"]}, node
        )

    # ------------------------------------------------------------------------------------ lookups
    def _group_lookups(self) -> None:
        """Lookups of one row format, dim, mode and output dtype, with or without weights, run as one batched
        TBE job (their output is the concatenation of their tables', in this order). A lookup whose row count
        is known per call only (`call_rows`) runs alone."""
        groups: dict[tuple, list[KOp]] = {}
        order: list[tuple] = []
        for op in self.kops:
            if op.kind != KernelKind.LOOKUP:
                continue
            a = op.attrs
            out = op.writes[0]
            key = (
                a["format"],
                a["dim"],
                a["mode"],
                self.dtypes[out],
                a["weights"] is not None,
                self.shapes[out][0],
                (a.get("stack") or op.name) if a.get("call_rows") else None,
            )
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(op)
        stacks = [groups[key][0].attrs.get("stack") for key in order]
        split = next((s for s in stacks if s is not None and stacks.count(s) > 1), None)
        if split is not None:
            raise UnsupportedOperatorError(
                f"model {self.g.name}: {split} concatenates rows known per call of lookups of different row "
                "formats, dims or dtypes"
            )
        read = {self._root(v) for op in self.kops if op.kind != KernelKind.LOOKUP for v in op.reads}
        read |= {self._root(v) for v in self.g.outputs}
        for op in self.kops:
            if op.kind == KernelKind.LOOKUP and op.attrs.get("stack") and op.writes[0] in read:
                raise UnsupportedOperatorError(
                    f"model {self.g.name}: {op.writes[0]}, rows known per call, is used beside its "
                    f"concatenation {op.attrs['stack']} ({op.source.describe()})"
                )
        for key in order:
            members = groups[key]
            stack = members[0].attrs.get("stack")
            first = min(self.kops.index(op) for op in members)
            if stack:  # the tables in the concatenation's order
                members.sort(key=lambda op: op.attrs["stack_position"])
            fmt, dim = key[0], key[1]
            name = members[0].name if len(members) == 1 else f"tbe{len(self.lookups)}"
            table_name = f"{name}@tables"
            tables: list[Lookup] = []
            datas = []
            virtual = False
            start = 0
            row_cols = RowFormat(fmt).row_cols(dim)
            for t, op in enumerate(members):
                a = op.attrs
                p = self.g.params[a["param"]]
                virtual |= p.virtual
                tables.append(
                    Lookup(
                        t,
                        a["rows"],
                        start,
                        a["indices"],
                        a["offsets"],
                        a["weights"],
                        a["include_last_offset"],
                        a["padding_idx"],
                        a["one_per_bag"],
                        a.get("batched"),
                    )
                )
                start += a["rows"]
                if not p.virtual:
                    datas.append(self._table_rows(p.tensor, a, fmt))
            data = None if virtual else np.concatenate(datas, axis=0)
            self.buffers[table_name] = Buffer(
                table_name, start, row_cols, RowFormat(fmt).dtype, "table", data, virtual
            )
            out_cols = dim if stack else sum(self.shapes[op.writes[0]][1] for op in members)
            # the bags (indices, offsets, weights) are packed per call into index tensors of their own
            kop = KOp(
                name,
                KernelKind.TBE,
                [table_name],
                [stack] if stack else [op.writes[0] for op in members],
                {
                    "format": fmt,
                    "dim": dim,
                    "mode": members[0].attrs["mode"],
                    "out_cols": out_cols,
                    "call_rows": members[0].attrs.get("call_rows", False),
                    "stacked": stack is not None,
                },
                members[0].source,
                "sparse",
            )
            self.lookups[name] = tables
            for op in members:
                self.kops.remove(op)
            self.kops.insert(first, kop)
            for w in kop.writes:
                self.producer_kind[w] = KernelKind.TBE

    def _table_rows(self, tensor: torch.Tensor, a: dict, fmt: str) -> np.ndarray:
        """A table's rows in the device's row format."""
        if "fbgemm" in a:  # already in FBGEMM's layout: unpack this table (rows may be padded)
            start, dim, rows, row_bytes = a["fbgemm"]
            raw = tensor.detach().reshape(-1)[start : start + rows * row_bytes].reshape(rows, row_bytes)
            if RowFormat(fmt).is_quantized:  # the rows without their padding
                return raw[:, : RowFormat(fmt).row_cols(dim)].cpu().numpy()
            table = tbe_table(tensor, a["fbgemm"], fmt)
            return _to_numpy(table, DType.FP16 if fmt == "fp16" else DType.FP32)
        if fmt == "int8_fbgemm":
            return rowwise_int8(tensor)
        if RowFormat(fmt).is_quantized:  # the model's own ATen rows
            return tensor.detach().cpu().numpy()
        return _to_numpy(tensor, DType.FP16 if fmt == "fp16" else DType.FP32)

    # ------------------------------------------------------------------------------------- layout
    def _root(self, v: str) -> str:
        while v in self.alias_of:
            v = self.alias_of[v]
        return v

    def _layout(self) -> None:
        """Place cat inputs as windows of their outputs (newest cat first), then give every value a view."""
        graph_inputs = set(self.g.inputs) | set(self.g.params)
        const = set(self.buffers)
        placed: dict[str, tuple[str, int, int]] = {}
        new_kops: list[KOp] = []
        for op in reversed(list(self.kops)):
            if op.kind != KernelKind.CAT:
                continue
            y = op.writes[0]
            d = op.attrs["dim"]
            shape = self.shapes[y]
            rows = math.prod(shape[:d])
            col = 0
            for i, x in enumerate(op.reads):
                cols = math.prod(self.shapes[x][d:])
                r = self._root(x)
                ok = (
                    r not in placed
                    and r not in graph_inputs
                    and r not in const
                    and self.producer_kind.get(r) in WINDOW_WRITERS
                    and _natural(self.shapes[r])[0] == rows
                    and r not in self.g.outputs
                )
                if ok:
                    placed[r] = (y, rows, col)
                else:
                    c = self.fresh(f"{x}_into_{y}")
                    self.shapes[c] = (rows, cols)
                    self.dtypes[c] = self.dtypes[x]
                    new_kops.append(KOp(c, KernelKind.COPY, [x], [c], {}, op.source))
                    self.producer_kind[c] = KernelKind.COPY
                    placed[c] = (y, rows, col)
                    op.reads[i] = c
                col += cols
        # copies run right before their cat
        for c in new_kops:
            cat = next(op for op in self.kops if c.writes[0] in op.reads and op.kind == KernelKind.CAT)
            self.kops.insert(self.kops.index(cat), c)
        self.parent = placed
        # slices become windows when their source is a plain buffer grid of the right rows, else copies; each
        # when its view is first asked for (a reshape of a slice is a view of the slice's window)
        self.pending_slices = {op.writes[0]: op for op in self.kops if op.kind == KernelKind.SLICE}
        self._views()
        for op in list(self.pending_slices.values()):
            self._slice_view(op)
        self.kops = [op for op in self.kops if op.kind not in (KernelKind.CAT, KernelKind.SLICE)]

    def _views(self) -> None:
        used = {v for op in self.kops for v in op.reads + op.writes} | set(self.g.outputs)
        for v in list(self.shapes):
            if v in used and v not in self.buffers:
                self._view_of(v)

    def _view_of(self, v: str) -> View:
        if v in self.views:
            return self.views[v]
        if v in self.pending_slices:
            self._slice_view(self.pending_slices[v])
            return self.views[v]
        shape = self.shapes[v]
        if v in self.alias_of:
            base = self._view_of(self.alias_of[v])
            # rows known per call: the same stand-in as the value it aliases
            view = base if DYNAMIC in shape else self._reshape_view(base, shape)
        elif v in self.parent:
            y, rows, col = self.parent[v]
            pv = self._view_of(y)
            cols = math.prod(shape) // rows
            if pv.rows == rows:
                view = View(pv.buffer, rows, pv.col0 + col, cols, shape)
            else:
                buf = self.buffers[pv.buffer]
                assert pv.col0 == 0 and pv.cols * pv.rows == buf.rows * buf.cols
                # the parent is a whole buffer: give it the grid its windows need (and so every whole view
                # of it made before, a reshape of the concatenation)
                buf.rows, buf.cols = rows, buf.rows * buf.cols // rows
                for u, uv in list(self.views.items()):
                    if uv.buffer == pv.buffer and uv.rows * uv.cols == buf.rows * buf.cols:
                        self.views[u] = View(pv.buffer, rows, 0, buf.cols, uv.shape)
                self.views[y] = View(pv.buffer, rows, 0, buf.cols, pv.shape)
                view = View(pv.buffer, rows, col, cols, shape)
        else:
            if DYNAMIC in shape:  # rows known per call: a one-row stand-in, placed per call by the runtime
                r, c = 1, shape[-1] if shape[-1] != DYNAMIC else 1
                shape = (r, c)
            else:
                r, c = _natural(shape)
            role = "input" if v in self.g.inputs else "activation"
            self.buffers[v] = Buffer(v, r, c, self.dtypes[v], role)
            view = View(v, r, 0, c, shape)
        self.views[v] = view
        return view

    def _reshape_view(self, base: View, shape: tuple[int, ...]) -> View:
        buf = self.buffers[base.buffer]
        whole = base.col0 == 0 and base.cols == buf.cols and base.rows == buf.rows
        if whole:
            r, c = _natural(shape)
            return View(base.buffer, base.rows, 0, base.cols, shape)
        r, c = _natural(shape)
        if r == base.rows:
            return View(base.buffer, base.rows, base.col0, base.cols, shape)
        # a reshape that crosses rows of a window: keep the window; consumers that need another shape copy
        return View(base.buffer, base.rows, base.col0, base.cols, shape)

    def _slice_view(self, op: KOp) -> None:
        x, y = op.reads[0], op.writes[0]
        del self.pending_slices[y]
        xv = self._view_of(x)
        rows, col0, cols = op.attrs["rows"], op.attrs["col0"], op.attrs["cols"]
        buf = self.buffers[xv.buffer]
        whole = xv.col0 == 0 and xv.cols == buf.cols
        if xv.rows == rows:
            self.views[y] = View(xv.buffer, rows, xv.col0 + col0, cols, self.shapes[y])
        elif whole and xv.rows == buf.rows and (buf.rows * buf.cols) % rows == 0:
            # x's bytes seen as another grid ([rows, its size / rows]): the slice is a window of that grid,
            # copied (strided DMA) into a buffer of its own
            r, c = _natural(self.shapes[y])
            self.buffers[y] = Buffer(y, r, c, self.dtypes[y], "activation")
            self.views[y] = View(y, r, 0, c, self.shapes[y])
            grid = (rows, buf.rows * buf.cols // rows)
            copy = KOp(op.name, KernelKind.COPY, [x], [y], {"window": (grid, col0, cols)}, op.source, op.lane)
            self.kops[self.kops.index(op)] = copy
            self.producer_kind[y] = KernelKind.COPY
        else:
            raise UnsupportedOperatorError(
                f"slice {op.name} ({op.source.describe()}): cannot view {x} with {rows} rows"
            )


def _to_numpy(t: torch.Tensor, dtype: DType) -> np.ndarray:
    x = t.detach().to(torch.float32).cpu()
    if dtype == DType.BF16:
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(dtype.numpy)
    return x.to(DTYPE_TO_TORCH[dtype]).numpy()


def lower(graph: Graph, formats: Formats) -> Lowered:
    return Lowering(graph, formats).run()


require({name[4:] for name in dir(Lowering) if name.startswith("_op_")}, "compiler.lower (Lowering._op_*)")
