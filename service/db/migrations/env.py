"""Alembic environment: runs on the connection handed in by service.db.engine.migrate."""

from __future__ import annotations

from alembic import context

from service.db.base import Base
from service.db.models import import_all_models

import_all_models()
target_metadata = Base.metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `obliviate migrate` (it supplies the connection)")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
