"""Process logging: plain text or one JSON object per line, with the forget request id on each line.

The entry points (``obliviate`` commands, the ASGI factory) call :func:`configure` once with the
settings' ``log_level`` and ``log_format``. While an HTTP request about one forget request
(``/v1/forget-requests/{request_id}/...``, intake once it has the id) or a stage job runs, the id is
held in a context variable: :class:`RequestIdFilter` puts it on every record, so every line of that
work carries it, whichever library wrote it. Stage threads get it through ``contextvars.copy_context``.

Alembic's INFO lines ("Context impl SQLiteImpl", "Running upgrade ...") are start-up noise: they are
shown only at DEBUG. Nothing here adds message content: what is logged stays what callers log (never
corpus text).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

LogFormat = Literal["text", "json"]
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
#: Loggers whose INFO lines are chatter (start-up, every HTTP call): only shown when the level is DEBUG.
CHATTY_LOGGERS: Final = ("alembic", "httpx", "httpcore")

#: The forget request the current HTTP request or job is about (None: none).
request_id_var: ContextVar[str | None] = ContextVar("obliviate_request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()


def bind_request_id(request_id: str | None) -> None:
    """Tag the rest of the current task (an HTTP request's) with ``request_id``."""
    request_id_var.set(request_id)


@contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Tag every record logged inside the block (a job) with ``request_id``."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the bound forget request id, or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, pid (and exc, stack)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_handler(log_format: LogFormat, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    handler.set_name("obliviate")
    return handler


def configure(level: str = "INFO", log_format: LogFormat = "text", stream: Any = None) -> None:
    """Give the root logger one handler in ``log_format`` at ``level`` (call at entry points).

    Replaces the root logger's handlers, so calling it again (a command after the group) is safe.
    """
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_format, stream)]
    root.setLevel(level)
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def configure_from_env(environ: dict[str, str] | None = None) -> None:
    """:func:`configure` from ``OBLIVIATE_LOG_LEVEL`` and ``OBLIVIATE_LOG_FORMAT`` alone (the CLI
    group, before any command reads the rest of the settings); a bad value raises ``ValueError``."""
    env = os.environ if environ is None else environ
    level = env.get("OBLIVIATE_LOG_LEVEL", "INFO").strip().upper()
    log_format = env.get("OBLIVIATE_LOG_FORMAT", "text").strip().lower()
    configure(check_level(level), check_format(log_format))


def check_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"OBLIVIATE_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {value!r}")
    return level


def check_format(value: str) -> LogFormat:
    log_format = value.strip().lower()
    if log_format == "json":
        return "json"
    if log_format == "text":
        return "text"
    raise ValueError(f"OBLIVIATE_LOG_FORMAT must be 'text' or 'json', not {value!r}")


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Binds the path's ``request_id`` (a forget request) for everything the request logs.

    Set, not reset: the exception handlers and the server's access line run after this middleware
    returns, in the same task (one per HTTP request), and must carry the id too.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params") or {}
        request_id = params.get("request_id")
        request_id_var.set(request_id if isinstance(request_id, str) else None)
        await app(scope, receive, send)

    return middleware
