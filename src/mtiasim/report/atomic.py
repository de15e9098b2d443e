"""All-or-nothing file writes: the one way mtiasim writes its output files (traces, reports, PNGs).

Every file is written to a hidden temporary in its own folder (``.NAME.XXXXXXXX.tmp``), flushed to disk and
renamed into place (`os.replace`) only once it is complete, so a reader never sees a half-written file and a
failure (a full disk, ``ulimit -f``, a read-only folder, an exception while drawing) leaves no partial file and no
temporary behind. `AtomicFiles` does the same for a group of files in one folder: all of them are written to
temporaries first and renamed at the end, so a failure leaves nothing new in the folder (and removes the folder
if this write created it and it is still empty).

Errors are `UsageError`s of one line naming the file that could not be written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from mtiasim.errors import UsageError


def _reason(err: OSError) -> str:
    return (err.strerror or str(err) or type(err).__name__).replace("\n", " ")


def cannot_write(path: str | Path, err: OSError) -> UsageError:
    return UsageError(f"cannot write {str(path)!r}: {_reason(err)}")


def _new_temp(final: Path) -> Path:
    """Create an empty, exclusive temporary beside `final` (mode as any new file: 0o666 less the umask)."""
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {final}")  # pragma: no cover


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def make_dirs(folder: str | Path) -> list[Path]:
    """`mkdir -p folder`; the folders it created, outermost first (for `remove_if_empty`)."""
    folder = Path(folder)
    missing: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders `make_dirs` created, innermost first, as long as they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            return


class AtomicFiles:
    """Write several files into `folder` all or nothing.

        with AtomicFiles(out_dir) as files:
            files.write_text("index.html", page)
            with files.path("roofline.png") as tmp:   # a temporary path to write to
                fig.savefig(tmp)

    Nothing appears under the final names until the block ends without an exception; then every file is renamed
    into place. On an exception every temporary is removed, and so is `folder` if this created it and it is
    empty. An OSError while writing becomes a one-line UsageError naming the file.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._temps: list[tuple[Path, Path, Path]] = []  # (temporary, where it goes, the name given)
        self._created: list[Path] = []

    def __enter__(self) -> AtomicFiles:
        try:
            self._created = make_dirs(self.folder)
        except OSError as err:
            raise UsageError(f"cannot create the folder {str(self.folder)!r}: {_reason(err)}") from None
        return self

    @contextlib.contextmanager
    def path(self, name: str) -> Iterator[Path]:
        """A fresh temporary for `name` (in `folder`) to write to; renamed to `name` when the group commits.

        A symbolic link is followed (the file it points to is replaced, the link kept); a device or a pipe
        (/dev/stdout, a FIFO) cannot be replaced by a rename and is written in place."""
        final = self.folder / name
        try:
            special = not stat.S_ISREG(mode := os.stat(final).st_mode) and not stat.S_ISDIR(mode)
        except OSError:
            special = False
        real = final if special else Path(os.path.realpath(final))
        try:
            tmp = real if special else _new_temp(real)
        except OSError as err:
            raise cannot_write(final, err) from None
        if not special:
            self._temps.append((tmp, real, final))
        try:
            yield tmp
        except OSError as err:
            raise cannot_write(final, err) from None

    def write_bytes(self, name: str, data: bytes) -> int:
        with self.path(name) as tmp:
            tmp.write_bytes(data)
        return len(data)

    def write_text(self, name: str, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(name, text.encode(encoding))

    def _commit(self) -> None:
        for tmp, _, final in self._temps:
            try:
                _fsync(tmp)
            except OSError as err:
                raise cannot_write(final, err) from None
        existed = {real for _, real, _ in self._temps if os.path.lexists(real)}
        done: list[Path] = []
        for tmp, real, final in self._temps:
            try:
                os.replace(tmp, real)
            except OSError as err:
                for f in done:  # take back the files this group added (replaced ones cannot be restored)
                    if f not in existed:
                        _unlink(f)
                raise cannot_write(final, err) from None
            done.append(real)

    def _abort(self) -> None:
        for tmp, _, _ in self._temps:
            _unlink(tmp)
        remove_if_empty(self._created)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                self._abort()
                raise
        else:
            self._abort()


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` all or nothing (see the module doc); the number of bytes written."""
    p = Path(path)
    if not p.parent.is_dir():
        raise UsageError(f"cannot write {str(p)!r}: folder {str(p.parent)!r} does not exist")
    with AtomicFiles(p.parent) as files:
        return files.write_bytes(p.name, data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> int:
    return atomic_write_bytes(path, text.encode(encoding))
