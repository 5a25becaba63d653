"""What the lifespan creates once and handlers receive by dependency injection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.settings import Settings


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    arq: ArqRedis
    redis_url: str
    # Domain extensions (inference engine, signing key, ...) keyed by name.
    extras: dict[str, Any] = field(default_factory=dict)
