"""Async engine construction, the in-process write gate, readiness ping and migrations at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # WAL lets the API read while a worker writes; busy_timeout turns lock contention into waiting
    # rather than "database is locked" errors between the serve and worker processes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Deleted or overwritten content is zeroed on disk: the purge must not leave corpus text behind.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the async engine; SQLite files get their parent directory and WAL pragmas."""
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """The process-wide gate for SQLite write transactions (a no-op on PostgreSQL).

    SQLite has one writer at a time. Pooled connections that race for it wait in SQLite's busy
    handler, which sleeps and backs off (1, 2, 5 ... 100 ms) and misses the moment the lock frees:
    at 16 concurrent POSTs that cost ~35 req/s with a 4 s p99. Queueing writers on an asyncio lock
    instead hands the database over without sleeping. Other processes (the worker) still meet
    ``busy_timeout``. PostgreSQL locks rows, so it needs no gate.
    """
    if not is_sqlite(engine):
        return contextlib.nullcontext()
    key = engine.sync_engine
    lock = _WRITE_LOCKS.get(key)
    if lock is None:
        lock = _WRITE_LOCKS[key] = asyncio.Lock()
    return lock


@contextlib.asynccontextmanager
async def write_session(
    sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> AsyncIterator[AsyncSession]:
    """A session whose transaction holds the write lock from its first statement (caller commits).

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``: a deferred one that reads first and
    writes later fails at once with SQLITE_BUSY (no retry) when another connection wrote meanwhile.
    """
    async with write_lock(engine), sessionmaker() as session:
        if is_sqlite(engine):
            # Python's sqlite3 issues no implicit BEGIN once a transaction is open, and its
            # commit()/rollback() end this one, so SQLAlchemy's transaction handling still applies.
            await session.execute(text("BEGIN IMMEDIATE"))
        yield session


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database cannot answer a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` on the given engine."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)
