from pathlib import Path

import pytest
from pydantic import ValidationError

from service import jobs
from service.settings import Settings, normalise_database_url


def test_defaults_use_sqlite_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("OBLIVIATE_DATABASE_URL", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'obliviate.db'}"


def test_environment_prefix_and_plain_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBLIVIATE_PORT", "9123")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    settings = Settings()
    assert settings.port == 9123
    assert settings.resolved_database_url == "postgresql+asyncpg://u@db:5432/x"
    assert settings.redis_url == "redis://cache:6379/2"


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="port"):
        Settings(port=70000)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://a/b", "postgresql+asyncpg://a/b"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+asyncpg://a/b", "postgresql+asyncpg://a/b"),
    ],
)
def test_normalise_database_url(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_msgpack_serializer_round_trips_and_never_pickles() -> None:
    payload = {"f": "ping", "a": ["x"], "k": {"n": 1}, "r": ValueError("boom")}
    decoded = jobs.deserialize(jobs.serialize(payload))
    assert decoded["a"] == ["x"]
    assert decoded["r"] == "ValueError('boom')"
    assert not jobs.serialize({"a": 1}).startswith(b"\x80")  # pickle protocol marker


def test_worker_environment_reproduces_settings_and_drops_foreign_urls(tmp_path: Path) -> None:
    from service.settings import settings_env

    parent = {"DATABASE_URL": "postgresql://shell/db", "OBLIVIATE_BASE_MODEL": "/stale", "PATH": "/bin"}
    settings = Settings(data_dir=tmp_path, database_url=None, redis_url="unix:///tmp/r.sock", workers=3)
    env = settings_env(settings, base=parent)
    assert "DATABASE_URL" not in env and "OBLIVIATE_BASE_MODEL" not in env and env["PATH"] == "/bin"
    assert env["OBLIVIATE_DATABASE_URL"] == settings.resolved_database_url
    import os

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        reread = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert reread.resolved_database_url == settings.resolved_database_url
    assert reread.redis_url == settings.redis_url and reread.workers == 3 and reread.data_dir == tmp_path
