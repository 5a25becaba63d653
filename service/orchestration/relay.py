"""The outbox relay: enqueue undispatched outbox rows into arq under their deterministic job ids.

Runs as a background task in every API process. Two relays enqueueing the same row is harmless (arq
ignores a second job with the same id); a Redis outage leaves rows undispatched until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import select, update

from service.core.state import Resources
from service.db.base import utcnow
from service.db.engine import write_session
from service.observability import tracing
from service.orchestration.models import OutboxEntry

logger = logging.getLogger("obliviate.relay")
BATCH = 200


async def dispatch_once(resources: Resources) -> int:
    """Enqueue every pending row once; returns how many were dispatched."""
    async with resources.sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    OutboxEntry.id,
                    OutboxEntry.job_name,
                    OutboxEntry.job_id,
                    OutboxEntry.args,
                    OutboxEntry.request_id,
                )
                .where(OutboxEntry.dispatched_at.is_(None))
                .order_by(OutboxEntry.id)
                .limit(BATCH)
            )
        ).all()
    # The read transaction is closed before Redis is called: on SQLite a read transaction that
    # later writes fails with SQLITE_BUSY if anyone committed in between, and on PostgreSQL it would
    # sit idle in transaction while Redis answers.
    done: list[int] = []
    failure: tuple[int, str] | None = None
    for row in rows:
        try:
            await _enqueue(resources, row)
        except Exception as exc:  # Redis away: keep the row, note why, try later
            failure = (row.id, f"{type(exc).__name__}: {exc}"[:500])
            logger.warning("outbox relay could not enqueue %s: %s", row.job_id, type(exc).__name__)
            break
        done.append(row.id)
    if done or failure is not None:
        async with write_session(resources.sessionmaker, resources.engine) as session:
            if done:
                await session.execute(
                    update(OutboxEntry).where(OutboxEntry.id.in_(done)).values(dispatched_at=utcnow())
                )
            if failure is not None:
                await session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id == failure[0])
                    .values(attempts=OutboxEntry.attempts + 1, last_error=failure[1])
                )
            await session.commit()
    return len(done)


async def _enqueue(resources: Resources, row: Any) -> None:
    # A span per dispatch, in the request's trace when tracing is on (ids and the job name only).
    async with tracing.request_span(
        resources.settings, resources.arq, "obliviate.outbox.dispatch", row.request_id, job=row.job_name
    ):
        await resources.arq.enqueue_job(row.job_name, *row.args, _job_id=row.job_id)


def _cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Relay:
    """Polls every ``relay_interval_s``; ``kick()`` wakes it at once after a commit in this process."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self._wake = asyncio.Event()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        interval = self.resources.settings.relay_interval_s
        # Loop only until a cancel was requested: a CancelledError swallowed anywhere below (a
        # library catching it mid-call) must not keep this task alive while shutdown awaits it.
        while not _cancel_requested():
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives just as the
            # event is set (a kick() in the same loop iteration as shutdown), so this loop ran on
            # and the app's shutdown waited for it forever (the PostgreSQL "50 concurrent POSTs"
            # test timeout). asyncio.timeout counts cancellations and re-raises them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await dispatch_once(self.resources) >= BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("outbox relay pass failed: %s", type(exc).__name__)
                await asyncio.sleep(min(5.0, interval * 4))
