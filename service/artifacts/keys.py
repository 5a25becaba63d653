"""Per-request data keys in the database, for the artifact store's synchronous methods.

The store is called from worker threads (and, for small corpora, from the event loop), while the
project's database layer is async. ``KeyRing`` runs its own small event loop on a daemon thread with
its own engine (no pooled connections, so nothing outlives a call) and answers synchronously from
any thread. Keys are never cached: once the purge deleted a key, no process can open its blobs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from sqlalchemy import delete, event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.artifacts.envelope import new_key
from service.artifacts.models import DataKey
from service.db.base import utcnow

T = TypeVar("T")
_CALL_TIMEOUT_S = 60.0


class KeyRing:
    """Create, read and delete data keys (thread-safe, synchronous)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: AsyncEngine | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="obliviate-keyring", daemon=True)
                thread.start()
                engine = create_async_engine(self.database_url, poolclass=NullPool)
                if self.database_url.startswith("sqlite"):
                    from service.db.engine import _sqlite_pragmas

                    # secure_delete above all: a deleted key's page is zeroed in the file.
                    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
                self._engine = engine
                self._loop = loop
            return self._loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._start()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_CALL_TIMEOUT_S)

    async def _get(self, request_id: str) -> bytes | None:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(select(DataKey.key).where(DataKey.request_id == request_id))
            ).scalar_one_or_none()
        return bytes(value) if value is not None else None

    async def _create(self, request_id: str) -> bytes:
        assert self._engine is not None
        key = new_key()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(DataKey).values(request_id=request_id, key=key, created_at=utcnow())
                )
        except IntegrityError:  # another writer created it first: use theirs
            existing = await self._get(request_id)
            if existing is None:
                raise
            return existing
        return key

    async def _delete(self, request_id: str) -> bool:
        assert self._engine is not None
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(DataKey).where(DataKey.request_id == request_id))
        return bool(result.rowcount)

    async def _ids(self) -> list[tuple[str, float]]:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(DataKey.request_id, DataKey.created_at))).all()
        now = utcnow()
        return [(rid, (now - created).total_seconds()) for rid, created in rows]

    def get(self, request_id: str) -> bytes | None:
        """The request's key, or None (never created, or shredded)."""
        return self._call(self._get(request_id))

    def get_or_create(self, request_id: str) -> bytes:
        existing = self.get(request_id)
        return existing if existing is not None else self._call(self._create(request_id))

    def delete(self, request_id: str) -> bool:
        """Shred the key; returns whether there was one."""
        return self._call(self._delete(request_id))

    def request_ids_with_age(self) -> list[tuple[str, float]]:
        """Every request that still has a key, with the key's age in seconds (for the orphan sweep)."""
        return self._call(self._ids())

    def close(self) -> None:
        with self._lock:
            loop, engine = self._loop, self._engine
            self._loop = self._engine = None
        if loop is None:
            return
        if engine is not None:
            asyncio.run_coroutine_threadsafe(engine.dispose(), loop).result(timeout=_CALL_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)


_RINGS: dict[str, KeyRing] = {}
_RINGS_LOCK = threading.Lock()


def keyring_for(database_url: str) -> KeyRing:
    """One key ring per database per process (the store is built per job; its ring is not)."""
    with _RINGS_LOCK:
        ring = _RINGS.get(database_url)
        if ring is None:
            ring = _RINGS[database_url] = KeyRing(database_url)
        return ring


__all__ = ["KeyRing", "keyring_for"]
