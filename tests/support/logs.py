"""Capture log records reliably inside an app test.

Litestar's logging config replaces the root logger's handlers when an app is built, which drops
pytest's ``caplog`` handler: a "no secret in the logs" check on ``caplog`` alone would pass vacuously.
``captured_logs`` attaches its own handler (after the app exists) to the given loggers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in self.records)


@contextmanager
def captured_logs(*names: str) -> Iterator[_Collector]:
    """Collect every record that reaches these loggers (default: the root logger)."""
    collector = _Collector()
    loggers = [logging.getLogger(name) for name in (names or ("",))]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(collector)
        logger.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.removeHandler(collector)
            logger.setLevel(level)
