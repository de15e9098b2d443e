"""The models `mtiasim run` takes: a user's own, as a torch.export archive or a Python factory.

- ``FILE.pt2``: an archive written by ``torch.export.save``; its example inputs are the archive's own
  (``ExportedProgram.example_inputs``) or those of ``--inputs FILE`` (``torch.save`` of the tuple of positional
  arguments, or of ``{"args": tuple, "kwargs": dict}``). The exported program is compiled as it is.
- ``FILE.py:FUNCTION``: the file is imported (its folder on ``sys.path`` meanwhile, so that its sibling modules
  import) and ``FUNCTION()`` returns ``(model, args)`` or ``(model, args, kwargs)``.

Anything that is not what it claims to be is a `UsageError` of one line naming the file (and the line of
the user's code where it failed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from mtiasim.errors import UsageError
from mtiasim.frontend.capture import _first_line, flat_graph_inputs

ARCHIVE, FACTORY = "torch.export archive", "python factory"
INPUTS_FORMS = 'a tuple of positional arguments or a dict {"args": tuple, "kwargs": dict}'


@dataclass
class UserModel:
    """A user's model and the inputs of the batch it runs."""

    spec: str  # as given on the command line
    kind: str  # ARCHIVE or FACTORY
    model: torch.nn.Module | ExportedProgram
    args: tuple
    kwargs: dict = field(default_factory=dict)
    inputs_from: str = ""  # where the inputs came from, for the report

    def eager(self) -> Any:
        """The model's outputs in PyTorch on the CPU (the reference of `--check`)."""
        module = self.model.module() if isinstance(self.model, ExportedProgram) else self.model
        with torch.no_grad():
            return module(*self.args, **self.kwargs)


def is_user_model(spec: str) -> bool:
    """Whether `spec` names a model file rather than a zoo workload."""
    return spec.endswith(".pt2") or _split_factory(spec)[0].endswith(".py")


def load_user_model(spec: str, inputs: str | None = None) -> UserModel:
    """The model `spec` names (``FILE.pt2`` or ``FILE.py:FUNCTION``), with its example inputs."""
    if spec.endswith(".pt2"):
        return _load_archive(spec, inputs)
    if inputs is not None:
        raise UsageError(f"--inputs applies to a FILE.pt2; {spec}: the factory returns the inputs")
    return _load_factory(spec)


# ---------------------------------------------------------------------------------------- torch.export


def _load_archive(path: str, inputs: str | None) -> UserModel:
    _require_file(path)
    ep = _read_archive(path)
    if inputs is not None:
        args, kwargs = _read_inputs(inputs)
        where = inputs
    elif ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        where = f"{path} (its example inputs)"
    else:
        raise UsageError(
            f"{path}: the archive holds no example inputs; give them with --inputs FILE "
            f"(torch.save of {INPUTS_FORMS})"
        )
    flat_graph_inputs(ep, args, kwargs, f"{where}: the inputs do not match the model's signature")
    return UserModel(path, ARCHIVE, ep, tuple(args), dict(kwargs), where)


def _read_archive(path: str) -> ExportedProgram:
    try:
        with _quiet("torch.export"):  # torch logs a traceback of its own before raising
            ep = torch.export.load(path)
    except Exception as exc:  # torch raises many kinds for a file that is not its archive
        if not zipfile.is_zipfile(path):
            why = "not a zip file"
        elif _pickled(path):
            why = "written by torch.save, not torch.export.save"
        else:
            why = _first_line(exc)
        raise UsageError(f"{path}: not a torch.export archive ({why})") from None
    if not isinstance(ep, ExportedProgram):
        raise UsageError(f"{path}: not a torch.export archive (it holds a {type(ep).__name__})")
    return ep


def _pickled(path: str) -> bool:
    """Whether a zip file is torch.save's format (a pickle and its tensors)."""
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/data.pkl") for name in archive.namelist())


def _read_inputs(path: str) -> tuple[tuple, dict]:
    _require_file(path)
    try:
        obj = torch.load(path, weights_only=True)
    except Exception as exc:
        raise UsageError(f"{path}: cannot read the inputs: {_first_line(exc)}") from None
    if isinstance(obj, tuple):
        return obj, {}
    if isinstance(obj, dict) and set(obj) <= {"args", "kwargs"} and "args" in obj:
        args, kwargs = obj["args"], obj.get("kwargs", {})
        if isinstance(args, tuple) and isinstance(kwargs, dict):
            return args, kwargs
        got = f'"args" a {type(args).__name__}, "kwargs" a {type(kwargs).__name__}'
    elif isinstance(obj, dict):
        got = f"a dict with keys {', '.join(map(repr, obj)) or '(none)'}"
    else:
        got = f"a {type(obj).__name__}"
    raise UsageError(f"{path}: the inputs must be {INPUTS_FORMS}; got {got}")


# ---------------------------------------------------------------------------------------------- factory


def _split_factory(spec: str) -> tuple[str, str]:
    path, sep, function = spec.rpartition(":")
    return (path, function) if sep and path.endswith(".py") else (spec, "")


def _load_factory(spec: str) -> UserModel:
    path, function = _split_factory(spec)
    if not function:
        raise UsageError(f"{spec}: name the function that builds the model: {path}:FUNCTION")
    _require_file(path)
    module = _import(path)
    factory = getattr(module, function, None)
    if not callable(factory):
        found = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and getattr(v, "__module__", "") == module.__name__
        )
        raise UsageError(f"{path}: no function {function!r} (defined there: {', '.join(found) or 'none'})")
    try:
        made = factory()
    except Exception as exc:
        raise UsageError(f"{_where(path, exc)}: {function}() raised {_described(exc)}") from None
    model, args, kwargs = _unpack(made, f"{path}: {function}()")
    model.eval()  # an inference simulator: the model as it serves
    return UserModel(spec, FACTORY, model, args, kwargs, f"{function}()")


def _unpack(made: Any, what: str) -> tuple[torch.nn.Module, tuple, dict]:
    shape = "(model, args) or (model, args, kwargs)"
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        got = f"a tuple of {len(made)}" if isinstance(made, tuple) else f"a {type(made).__name__}"
        raise UsageError(f"{what} returned {got}; expected {shape}")
    model, args, kwargs = (*made, {}) if len(made) == 2 else made
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{what} returned a {type(model).__name__} as the model; expected a torch.nn.Module")
    if not isinstance(args, tuple):
        raise UsageError(
            f"{what} returned a {type(args).__name__} as the inputs; expected a tuple of positional arguments"
        )
    if not isinstance(kwargs, dict):
        raise UsageError(
            f"{what} returned a {type(kwargs).__name__} as the keyword arguments; expected a dict"
        )
    return model, args, kwargs


def _import(path: str) -> Any:
    """Import the file as a module named after it (its folder on sys.path while it runs)."""
    file = Path(path).resolve()
    name = file.stem if file.stem.isidentifier() and file.stem not in sys.modules else f"_mtiasim_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot import (not a Python source file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there name their module (in error messages, pickling)
    folder = str(file.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise UsageError(f"{path}:{exc.lineno}: cannot import: SyntaxError: {exc.msg}") from None
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise UsageError(f"{_where(path, exc)}: cannot import: {_described(exc)}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


# ------------------------------------------------------------------------------------------------ helpers


def _require_file(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if not p.is_file():
        raise UsageError(f"{path}: not a file")


def _where(path: str, exc: BaseException) -> str:
    """`path:line` of the innermost frame of the exception in the user's file; `path` if none."""
    target, line = str(Path(path).resolve()), None
    tb = exc.__traceback__
    while tb is not None:
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()) == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line is not None else path


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}" if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
