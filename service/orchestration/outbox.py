"""Writing to the outbox: called inside the transaction that changes a request's state."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.orchestration.models import OutboxEntry


def job_id_for(request_id: str, job_name: str, attempt: int) -> str:
    """Deterministic: arq refuses a second job with the same id, so re-enqueueing is idempotent."""
    return f"{request_id}:{job_name}:{attempt}"


def add_job(session: AsyncSession, request_id: str, job_name: str, attempt: int) -> OutboxEntry:
    """Queue ``job_name(request_id, stage=job_name, attempt)`` for the relay; the caller commits."""
    entry = OutboxEntry(
        request_id=request_id,
        job_name=job_name,
        job_id=job_id_for(request_id, job_name, attempt),
        args=[request_id, job_name, attempt],
        created_at=utcnow(),
        attempts=0,
    )
    session.add(entry)
    return entry
