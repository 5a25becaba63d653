"""The migrations create exactly the tables the ORM models describe, on SQLite and PostgreSQL.

One check at head covers every domain: a model changed without a migration (or the reverse) shows
up here as a difference, whichever domain's table it is.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from service.db import Base, create_engine, migrate
from service.db.models import import_all_models

DOMAIN_TABLES = {
    "service_meta",
    # intake and compliance (0002)
    "api_keys", "forget_requests", "request_events", "idempotency_keys", "outbox", "audit_events",
    "audit_head",
    # deployments (0003)
    "adapter_versions", "served_aliases", "alias_events",
    # human review (0004)
    "review_gates", "review_tasks", "review_assignments",
    # per-request data keys of the object store (0006)
    "data_keys",
}  # fmt: skip


def _diff(connection: Connection) -> list[Any]:
    import_all_models()
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return compare_metadata(context, Base.metadata)


async def test_migrations_at_head_match_every_model(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine, "head")
        async with engine.connect() as conn:
            diffs = await conn.run_sync(_diff)
            tables = set(await conn.run_sync(lambda c: c.dialect.get_table_names(c)))
            head = (await conn.exec_driver_sql("SELECT seq, hash FROM audit_head")).all()
    finally:
        await engine.dispose()
    assert diffs == [], diffs
    assert DOMAIN_TABLES <= tables, DOMAIN_TABLES - tables
    # The audit chain starts from a seeded genesis head.
    assert head == [(0, "0" * 64)]
