"""Compile a corpus model for the simulated chip, run it and check it against eager PyTorch.

`check_model` is what both `scripts/corpus_status.py` and `tests/test_corpus.py` run: `mtiasim.compile(model,
inputs, mode="functional", precision=...)`, one call, then `CompiledModel.check()`, which holds the device's
outputs to the per-element error bounds of docs/numerics.md against the model in fp32.
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import re
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

PRECISIONS = ("fp16", "int8")
OK, MISMATCH, FAILS = "ok", "mismatch", "fails"

_OPERATOR = re.compile(r"operator (\S+) has no MTIA kernel")
_MODEL_PREFIX = re.compile(r"^model [^:]+: ")
_SHAPE = re.compile(r"\[[\d, ]*\]")
_NUMBER = re.compile(r"\d+")
_DIRECTORY = re.compile(r"(?<=at )\S*?/(?:site-packages/|(?=tests/))")


@dataclass(frozen=True)
class Outcome:
    """One model at one precision: `status` ok / mismatch / fails; for a run, the largest error, bound and
    error/bound ratio and how many elements fell outside; for a failure, the error's type, its first line
    and `blocker`, what blocked (the aten op with no kernel, or the unsupported case with shapes elided)."""

    status: str
    max_abs_err: float | None = None
    max_bound: float | None = None
    max_err_over_bound: float | None = None
    outside: int | None = None
    error_type: str | None = None
    error: str | None = None
    blocker: str | None = None

    def describe(self) -> str:
        if self.status == OK:
            return f"ok (err {self.max_abs_err:.2g} <= bound {self.max_bound:.2g})"
        if self.status == MISMATCH:
            return f"MISMATCH (err {self.max_abs_err:.3g}, {self.max_err_over_bound:.3g}x bound, {self.outside} outside)"
        return f"fails: {self.error_type}: {self.error}"

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def load_fbgemm_ops() -> None:
    """Load fbgemm_gpu's operators (torchrec's int8 tables use them), if installed.

    Call it before mtiasim's front end is imported: `mtiasim.frontend.aten` registers its converter for
    `fbgemm.int_nbit_split_embedding_codegen_lookup_function` at import time, and only if the op exists then,
    so a process that imports mtiasim before torchrec refuses torchrec's quantized EmbeddingBagCollection.
    """
    with contextlib.suppress(ImportError):
        import fbgemm_gpu  # noqa: F401


def first_line(err: BaseException, limit: int = 300) -> str:
    """The error's message without the model name, the list of supported ops, a traceback or the directories of
    source files: one line."""
    text = str(err).split("; supported:")[0].strip().splitlines()
    line = _MODEL_PREFIX.sub("", text[0] if text else type(err).__name__)
    line = _DIRECTORY.sub("", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def blocker_of(err: BaseException) -> str:
    """What blocked compilation: "aten::op" for an operator with no kernel, else the message's "what" part
    (before the location in parentheses) with tensor shapes elided, so equal causes in different models
    count together."""
    text = str(err)
    found = _OPERATOR.search(text)
    if found:
        return found.group(1)
    line = _MODEL_PREFIX.sub("", text.splitlines()[0] if text else type(err).__name__)
    what = re.split(r" \((?:module|op) ", line)[0]
    if what != line and "): " in line:  # a message that goes on after its location
        what += ": " + _NUMBER.sub("N", line.rsplit("): ", 1)[1])
    return f"{type(err).__name__}: {_SHAPE.sub('[..]', what)}"


def check_model(model: nn.Module, inputs: tuple, precision: str) -> Outcome:
    """Compile `model` for `precision`, run it on `inputs` and check it; any exception becomes a `fails`
    outcome (the caller's loop goes on to the next model)."""
    import mtiasim

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = mtiasim.compile(model, inputs, mode="functional", precision=precision)
            compiled(*inputs)
            report = compiled.check()
    except Exception as err:  # noqa: BLE001 - each model's failure is reported, not raised
        return Outcome(FAILS, error_type=type(err).__name__, error=first_line(err), blocker=blocker_of(err))
    return Outcome(
        OK if report["passed"] else MISMATCH,
        max_abs_err=report["max_abs_err"],
        max_bound=report["max_bound"],
        max_err_over_bound=report["max_err_over_bound"],
        outside=sum(int(o["outside"]) for o in report["outputs"]),
    )


def missing_operators(model: nn.Module, inputs: tuple) -> list[str]:
    """Every operator of the exported model that mtiasim's front end would refuse, sorted: an estimate of all
    the kernels the model still needs, where compilation stops at the first. It follows the capture's rule
    (mtiasim.frontend.capture.convert: an op reading activations needs a device converter; an op on weights
    alone is folded if it has one; index bookkeeping runs on the host; anything else is refused) without
    stopping at the first refusal. Ops a converter takes but refuses for their shapes (a permute, a broadcast)
    are not listed: they show in `check_model`'s blocker. Empty when the model does not export."""
    from torch.export.graph_signature import InputKind

    from mtiasim.frontend.aten import CONVERTERS
    from mtiasim.frontend.host import is_host_op

    capture = importlib.import_module(
        "mtiasim.frontend.capture"
    )  # the module (the package exports a function)
    try:
        program = capture.export(model, inputs)
        # the front end's own decomposition pass, where it has one, runs first as it does in mtiasim.compile
        decompose = getattr(capture, "to_core_aten", None)
        if decompose is not None:
            program = decompose(program)
    except Exception:  # noqa: BLE001 - export failures show in check_model's outcome
        return []
    side: dict[str, str] = {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, program.graph_signature.input_specs, strict=True):
        val = node.meta.get("val")
        if spec.kind != InputKind.USER_INPUT:
            side[node.name] = "param"
        elif isinstance(val, torch.Tensor):
            side[node.name] = "device" if val.is_floating_point() else "host"
    missing = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        sides = {side.get(i.name, "none") for i in node.all_input_nodes}
        conv = CONVERTERS.get(node.target)
        refused = False
        if node.target is operator.getitem:
            side[node.name] = "device" if "device" in sides else "host"
        elif "device" in sides or (conv is not None and conv.index_args):
            side[node.name] = "device"
            refused = conv is None and node.target is not torch.ops.aten._assert_tensor_metadata.default
        elif "param" in sides and sides <= {"param", "none"} and conv is not None:
            side[node.name] = "param"
        elif is_host_op(node.target) or "host" in sides and sides <= {"host", "none"}:
            side[node.name] = "host"  # (arithmetic on index data alone: a mask from lengths, say)
        else:  # the capture refuses it, whatever its inputs (a float op on host values, say)
            side[node.name] = "device"
            refused = True
        if not isinstance(node.meta.get("val"), torch.Tensor | tuple | list):
            side[node.name] = "host"  # a size or flag: what reads it is bookkeeping, not a kernel
        if refused:
            name = getattr(node.target, "name", None)
            missing.add(name() if callable(name) else str(node.target))
    return sorted(missing)
