"""Which event core runs the timing simulation: `eventloop.py` compiled by Cython, or the same file as Python.

The compiled core is the extension module `mtiasim.engine.eventloop` that `pip install` builds from
`eventloop.py` and `eventloop.pxd` (setup.py); the build records the digest of the sources it compiled in
`eventloop.sha256`. The compiled core is used when it exists and was built from the current sources;
otherwise the engine warns once and runs the Python core. `MTIASIM_EVENT_CORE=python|compiled` (or
`simulate(core=...)`) picks one; asking for `compiled` when it cannot be used is an error.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from functools import cache
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

from mtiasim.errors import UsageError

CORES = ("compiled", "python")
ENV_VAR = "MTIASIM_EVENT_CORE"
HERE = Path(__file__).resolve().parent
SOURCES = ("eventloop.py", "eventloop.pxd")
DIGEST_FILE = "eventloop.sha256"


def source_digest(folder: Path = HERE) -> str:
    """sha256 of the sources the compiled core is built from (setup.py writes it next to the extension)."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((folder / name).read_bytes())
    return h.hexdigest()


@cache
def python_core() -> ModuleType:
    """eventloop.py run by the interpreter, even where the compiled module shadows it."""
    name = "mtiasim.engine._eventloop_python"
    spec = importlib.util.spec_from_file_location(name, HERE / "eventloop.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@cache
def compiled_core() -> tuple[ModuleType | None, str]:
    """(the compiled module, "") or (None, why it cannot be used)."""
    try:
        mod = importlib.import_module("mtiasim.engine.eventloop")
    except ImportError as err:  # a broken build: the Python core still works
        return None, f"cannot import it ({err})"
    if not str(mod.__file__).endswith(tuple(EXTENSION_SUFFIXES)):
        return None, "it is not built (pip install -e . builds it; it needs a C compiler)"
    try:
        built_from = (Path(str(mod.__file__)).parent / DIGEST_FILE).read_text().strip()
        current = source_digest()
    except OSError as err:
        return None, f"cannot check its sources ({err.strerror})"
    if built_from != current:
        return None, "it was built from other sources than eventloop.py/.pxd: rebuild it (pip install -e .)"
    return mod, ""


def selected(core: str | None = None) -> str:
    """The core asked for (argument, else MTIASIM_EVENT_CORE, else compiled), checked."""
    name = core or os.environ.get(ENV_VAR) or "compiled"
    if name not in CORES:
        where = "core" if core else ENV_VAR
        raise UsageError(f"{where}: unknown event core {name!r} (known: {', '.join(CORES)})")
    return name


def sim_module(core: str | None = None) -> ModuleType:
    """The module whose `Sim` runs the simulation: the compiled core when asked for (the default) and usable."""
    name = selected(core)
    if name == "python":
        return python_core()
    mod, why = compiled_core()
    if mod is not None:
        return mod
    if core == "compiled" or os.environ.get(ENV_VAR) == "compiled":
        raise UsageError(f"{ENV_VAR}=compiled: the compiled event core cannot be used: {why}")
    _warn_fallback(why)
    return python_core()


@cache
def _warn_fallback(why: str) -> None:
    warnings.warn(
        f"mtiasim: the compiled event core is unavailable ({why}); using the Python core", stacklevel=3
    )
