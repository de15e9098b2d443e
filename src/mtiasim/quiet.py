"""Log messages of the libraries mtiasim drives that tell its users nothing, dropped by their opening words."""

from __future__ import annotations

import logging


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)
