"""Access-log redaction: query strings can carry personal data (``?subject=Jane Doe``).

uvicorn's access logger writes the full path with its query. The filter below keeps the parameter
names and the values of a short allow-list (pagination, status filters) and replaces every other value
with ``REDACTED``, so a subject name never reaches the logs. Database drivers that quote statement
parameters at DEBUG are held at INFO. Installed once per process at app start.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote, urlsplit

ACCESS_LOGGER = "uvicorn.access"
#: Query parameters whose values are never personal data.
SAFE_PARAMS = frozenset(
    {"limit", "cursor", "status", "follow", "due", "created_after", "created_before", "format", "page"}
)
REDACTED = "REDACTED"


def redact_path(path: str) -> str:
    """``path`` with every query value outside :data:`SAFE_PARAMS` replaced."""
    if "?" not in path:
        return path
    parts = urlsplit(path)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not pairs and parts.query:
        return f"{parts.path}?{REDACTED}"
    query = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='') if name in SAFE_PARAMS else REDACTED}"
        for name, value in pairs
    )
    return f"{parts.path}?{query}"


class QueryRedactingFilter(logging.Filter):
    """Rewrites uvicorn access records (``args = (client, method, path, http_version, status)``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


#: Libraries whose DEBUG records quote SQL parameters (subjects, probes): never below INFO.
QUOTING_LOGGERS = ("aiosqlite", "asyncpg")


def install() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QueryRedactingFilter) for f in logger.filters):
        logger.addFilter(QueryRedactingFilter())
    for name in QUOTING_LOGGERS:
        quoting = logging.getLogger(name)
        if quoting.level < logging.INFO:  # NOTSET (0) too: it would inherit a DEBUG root
            quoting.setLevel(logging.INFO)
