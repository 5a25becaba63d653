"""Group commit of new forget requests: concurrent POSTs share one write transaction.

Each POST's rows (request, status event, two audit links, outbox job, idempotency record with its
response) are queued; one flush task inserts everything queued in a single transaction under the
write lock, with one audit-head reservation for the whole batch, commits once and wakes the callers.
On SQLite this turns N lock hand-overs and N fsync-free commits into one, which is where intake time
went (see docs/benchmarks.md, "Intake"). The semantics stay per request: every request is atomic
with its outbox row and idempotency record, and a batch that fails is retried one request at a time so
one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.audit import chain
from service.db.engine import write_session
from service.forget.intake import Prepared
from service.forget.models import ForgetRequest, IdempotencyRecord, RequestEvent
from service.orchestration.models import OutboxEntry

logger = logging.getLogger("obliviate.intake")


def _table(model: type[Any]) -> Table:
    """The model's Core table: plain INSERTs skip the ORM unit of work on the hot path."""
    table: Table = model.__table__
    return table


#: Most requests written in one transaction (bounds the transaction's time and size).
MAX_BATCH = 256


@dataclass
class Pending:
    """One request waiting to be written, and where its outcome goes."""

    prepared: Prepared
    key: str
    idempotency: dict[str, Any]
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class IntakeWriter:
    """Writes queued requests in batches; ``submit`` answers True (created) or False (key taken)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> None:
        self._sessionmaker = sessionmaker
        self._engine = engine
        self._queue: list[Pending] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, prepared: Prepared, *, key: str, idempotency: dict[str, Any]) -> bool:
        """Queue the request and wait for its commit; False if the key was stored meanwhile."""
        pending = Pending(prepared, key, idempotency)
        self._queue.append(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="obliviate-intake-writer")
        # A cancelled caller must not cancel the flush its neighbours wait for.
        return await asyncio.shield(pending.done)

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _drain(self) -> None:
        # Yield once so the requests that arrive in this loop iteration join the first batch.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                outcomes = await self._write(batch)
            except Exception:
                # One request may be at fault (or another process took a key): retry alone.
                outcomes = []
                for pending in batch:
                    try:
                        outcomes.extend(await self._write([pending]))
                    except IntegrityError:
                        outcomes.append(False)
                    except Exception as exc:
                        logger.warning("intake write failed: %s", type(exc).__name__)
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                        outcomes.append(False)
            for pending, created in zip(batch, outcomes, strict=True):
                if not pending.done.done():
                    pending.done.set_result(created)

    async def _write(self, batch: list[Pending]) -> list[bool]:
        async with write_session(self._sessionmaker, self._engine) as session:
            taken = await self._taken_keys(session, batch)
            outcomes: list[bool] = []
            accepted: list[Pending] = []
            for pending in batch:
                ident = (pending.prepared.tenant, pending.key)
                fresh = ident not in taken
                if fresh:
                    taken.add(ident)  # a duplicate later in this batch replays this one
                    accepted.append(pending)
                outcomes.append(fresh)
            if accepted:
                await session.execute(insert(_table(IdempotencyRecord)), [p.idempotency for p in accepted])
                await session.execute(insert(_table(ForgetRequest)), [p.prepared.request for p in accepted])
                await session.execute(insert(_table(RequestEvent)), [p.prepared.event for p in accepted])
                await chain.append_many(session, [event for p in accepted for event in p.prepared.audit])
                await session.execute(insert(_table(OutboxEntry)), [p.prepared.outbox for p in accepted])
                await session.commit()
            return outcomes

    @staticmethod
    async def _taken_keys(session: AsyncSession, batch: list[Pending]) -> set[tuple[str, str]]:
        keys = {pending.key for pending in batch}
        tenants = {pending.prepared.tenant for pending in batch}
        rows = await session.execute(
            select(IdempotencyRecord.tenant, IdempotencyRecord.key).where(
                IdempotencyRecord.key.in_(keys), IdempotencyRecord.tenant.in_(tenants)
            )
        )
        return {(str(tenant), str(key)) for tenant, key in rows.all()}
