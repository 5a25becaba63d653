"""Migration 0004 creates exactly the review tables the ORM models describe (SQLite, PostgreSQL)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from service.db import Base, create_engine, migrate
from service.db.models import import_all_models

OUR_TABLES = {"review_gates", "review_tasks", "review_assignments"}


def _diff(connection: Connection) -> list[Any]:
    import_all_models()
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return compare_metadata(context, Base.metadata)


async def test_migration_0004_matches_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine, "0004")
        async with engine.connect() as conn:
            diffs = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    ours = [d for d in diffs if any(f"'{t}'" in repr(d) or f"table={t}" in repr(d) for t in OUR_TABLES)]
    assert ours == [], ours
