"""Database layer: the async engine, the ORM base and Alembic migrations (SQLite and PostgreSQL)."""

from service.db.base import Base
from service.db.engine import create_engine, migrate, ping

__all__ = ["Base", "create_engine", "migrate", "ping"]
