"""Migration 0002 creates exactly the tables the ORM models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from service.db import Base, create_engine, migrate
from service.db.models import import_all_models

OUR_TABLES = {"api_keys", "forget_requests", "request_events", "idempotency_keys", "outbox", "audit_events"}


def _diff(connection: Connection) -> list[Any]:
    import_all_models()
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return compare_metadata(context, Base.metadata)


def _touches_ours(diff: Any) -> bool:
    text = repr(diff)
    return any(f"'{table}'" in text or f"table={table}" in text for table in OUR_TABLES)


async def test_migration_matches_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine, "0002")
        async with engine.connect() as conn:
            diffs = await conn.run_sync(_diff)
            head = (await conn.exec_driver_sql("SELECT seq, hash FROM audit_head")).all()
    finally:
        await engine.dispose()
    # Other domains' later migrations are not applied here; only our tables must match exactly.
    ours = [d for d in diffs if _touches_ours(d)]
    assert ours == [], ours
    assert head == [(0, "0" * 64)]
