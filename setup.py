"""Builds the compiled event core (mtiasim.engine.eventloop, Cython) when it can; everything else is in
pyproject.toml. A failed build is not an error: the engine then runs eventloop.py as Python (with a warning)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ENGINE = Path("src/mtiasim/engine")
SOURCES = ("eventloop.py", "eventloop.pxd")  # as mtiasim.engine.eventcore.SOURCES
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "annotation_typing": False,  # the C types come from eventloop.pxd, not from the type hints
}


def _warn(what: str, err: BaseException) -> None:
    print(f"mtiasim: {what} failed ({err}); the Python event core will be used", file=sys.stderr)


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize

        return cythonize(
            [Extension("mtiasim.engine.eventloop", [str(ENGINE / "eventloop.py")])],
            compiler_directives=DIRECTIVES,
            quiet=True,
        )
    except Exception as err:  # no Cython, or it rejects the source: build without the compiled core
        _warn("cythonizing the event core", err)
        return []


def _digest() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((ENGINE / name).read_bytes())
    return h.hexdigest() + "\n"


class OptionalBuildExt(build_ext):
    """Builds the extension and records the digest of the sources it was built from (eventloop.sha256, next
    to the module and, for an in-place or editable build, next to its copy in the sources); a compiler error
    leaves the package without it."""

    def run(self) -> None:
        self.built = False
        try:
            super().run()
        except Exception as err:
            _warn("building the event core", err)
            return
        if self.built and (self.inplace or getattr(self, "editable_mode", False)):
            (ENGINE / "eventloop.sha256").write_text(_digest())

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:
            _warn(f"compiling {ext.name}", err)
            return
        Path(self.get_ext_fullpath(ext.name)).with_name("eventloop.sha256").write_text(_digest())
        self.built = True


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
