"""``obliviate serve`` migrates at start-up unless ``OBLIVIATE_RUN_MIGRATIONS=false``, as on API replicas
of the production topology, where one migration job runs them before any replica starts (replicas
that migrate as they start race each other and the job on a new release's DDL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.cli import prepared_service
from service.settings import Settings


def _tables(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_serve_migrates_by_default(tmp_path: Path, clean_redis: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", redis_url=clean_redis, workers=0)
    with prepared_service(settings) as served:
        assert served.run_migrations is False  # done here: the app must not run them again
    assert "alembic_version" in _tables(tmp_path / "data" / "obliviate.db")


def test_serve_leaves_migrations_to_the_migration_job_when_told(tmp_path: Path, clean_redis: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", redis_url=clean_redis, workers=0, run_migrations=False)
    with prepared_service(settings) as served:
        assert served.run_migrations is False
    assert "alembic_version" not in _tables(tmp_path / "data" / "obliviate.db")
