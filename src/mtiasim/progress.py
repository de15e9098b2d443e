"""Progress bars for long commands: shown on stderr (a terminal only) once a command has run for a second,
removed when it ends; never with --json, never when stderr is not a terminal (logs, pipes, tests).

    with Progress(enabled=not as_json, total=3) as p:
        p.step("compiling")          # advance one step, show what runs now
        p.update("case 3/54", completed=3)
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

SHOW_AFTER_S = 1.0


class Progress:
    def __init__(
        self, *, enabled: bool, total: int | None = None, show_after_s: float = SHOW_AFTER_S
    ) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.show_after_s = show_after_s
        self._bar: RichProgress | None = None
        self._task = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._started = False
        self._steps = 0

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        # rich is imported here: a command that shows no bar (--json, a pipe, a log) does not load it
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        if self.total:
            columns.append(MofNCompleteColumn())
        columns.append(TimeElapsedColumn())
        self._bar = RichProgress(*columns, console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task("", total=self.total)
        self._timer = threading.Timer(self.show_after_s, self._show)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _show(self) -> None:
        with self._lock:
            if self._bar is not None and not self._started:
                self._bar.start()
                self._started = True

    def step(self, description: str) -> None:
        """The previous step is done; `description` runs now."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description, completed=self._steps)
        self._steps += 1

    def update(self, description: str, completed: float | None = None) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description, completed=completed)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._bar is not None and self._started:
                self._bar.stop()
            self._bar = None
