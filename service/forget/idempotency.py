"""Idempotency-Key handling (IETF draft "The Idempotency-Key HTTP Header Field").

Per tenant and key, the record is inserted *with its response* in the transaction that creates the
forget request (one commit per POST; see ``service.forget.writer``), so a key can never name a request
that does not exist, nor survive a failed one. Then: same key + same body replays that response; same
key + another body is a 422; a retry while the first is still running in this process is a 409 (the
:class:`InFlight` registry). A retry racing the first from *another* process waits for the first's
commit (database lock or unique index) and then replays it. Records live ``settings.idempotency_ttl_s``
(≥ 24 h).

Operations that cannot write their record in their own transaction use the two-phase claim at the
bottom (``begin``: an ``in_flight`` record committed at once; ``complete`` or ``release`` after). An
in-flight record older than ``idempotency_lock_s`` belonged to a request that died and is taken over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.errors import BadRequest, Conflict, Unprocessable
from service.db.base import utcnow
from service.forget.models import IdempotencyRecord
from service.settings import Settings

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, Any]


def check_key(key: str | None) -> str:
    # 400, as the IETF draft says for a missing or malformed key (422 is for a key reused with
    # another body).
    if key is None or not key.strip():
        raise BadRequest(
            f"The {HEADER} header is required: send a unique value (a UUID) and reuse it on retries",
            param=HEADER,
            code="idempotency_key_missing",
        )
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"{HEADER} is longer than {MAX_KEY_LENGTH} characters",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return key


def _in_flight_error() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still being processed; retry shortly",
        param=HEADER,
        code="idempotency_in_flight",
        headers={"Retry-After": "1"},
    )


def _reused_error() -> Unprocessable:
    return Unprocessable(
        f"This {HEADER} was already used with a different request body; use a new key",
        param=HEADER,
        code="idempotency_key_reused",
    )


class InFlight:
    """Keys whose first request is running in this process: a concurrent retry is answered at once.

    Holding the key here before any database work also means duplicates never queue for the
    database write lock behind the request they repeat.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], str] = {}

    def enter(self, tenant: str, key: str, body_hash: str) -> None:
        """Mark the key as running; 409 (same body) or 422 (another body) if it already is."""
        running = self._running.get((tenant, key))
        if running is not None:
            raise _in_flight_error() if running == body_hash else _reused_error()
        self._running[(tenant, key)] = body_hash

    def leave(self, tenant: str, key: str) -> None:
        self._running.pop((tenant, key), None)


async def resolve(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    tenant: str,
    key: str,
    body_hash: str,
) -> Replay | None:
    """What a key already stored means: the response to replay, or None (absent, expired or dead).

    Raises 422 for another body and 409 for a live in-flight record of an earlier version.
    """
    now = utcnow()
    async with sessionmaker() as session:
        record = await session.get(IdempotencyRecord, (tenant, key))
        if record is None:
            return None
        if record.expires_at <= now:
            await _drop(session, tenant, key, record.created_at)
            return None
        if record.body_hash != body_hash:
            raise _reused_error()
        if record.state == "done" and record.response_status is not None:
            return Replay(record.response_status, record.response_body or {})
        if now - record.created_at < timedelta(seconds=settings.idempotency_lock_s):
            raise _in_flight_error()
        # An in-flight claim whose request died: drop it (compare-and-set on its timestamp).
        await _drop(session, tenant, key, record.created_at)
        return None


async def _drop(session: AsyncSession, tenant: str, key: str, created_at: datetime) -> None:
    await session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.tenant == tenant,
            IdempotencyRecord.key == key,
            IdempotencyRecord.created_at == created_at,
        )
    )
    await session.commit()


def record_row(
    settings: Settings, *, tenant: str, key: str, body_hash: str, body: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """The ``idempotency_keys`` row stored with a new request (its response included)."""
    now = utcnow()
    return {
        "tenant": tenant,
        "key": key,
        "body_hash": body_hash,
        "state": "done",
        "response_status": 202,
        "response_body": body,
        "request_id": request_id,
        "created_at": now,
        "expires_at": now + timedelta(seconds=settings.idempotency_ttl_s),
    }


# --- Two-phase claim, for operations that cannot share one transaction with their record
# (deployments: a rollback runs, then its response is stored).


async def begin(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    tenant: str,
    key: str,
    body_hash: str,
) -> Replay | None:
    """Claim the key (None: go ahead and create), or the stored response to replay; 409/422 otherwise."""
    for _ in range(3):
        now = utcnow()
        async with sessionmaker() as session:
            session.add(
                IdempotencyRecord(
                    tenant=tenant,
                    key=key,
                    body_hash=body_hash,
                    state="in_flight",
                    created_at=now,
                    expires_at=now + timedelta(seconds=settings.idempotency_ttl_s),
                )
            )
            try:
                await session.commit()
                return None
            except IntegrityError:
                await session.rollback()
            record = await session.get(IdempotencyRecord, (tenant, key))
            if record is None:
                continue  # expired and deleted meanwhile: try to claim again
            if record.expires_at <= now:
                await session.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.tenant == tenant,
                        IdempotencyRecord.key == key,
                        IdempotencyRecord.expires_at == record.expires_at,
                    )
                )
                await session.commit()
                continue
            if record.body_hash != body_hash:
                raise Unprocessable(
                    f"This {HEADER} was already used with a different request body; use a new key",
                    param=HEADER,
                    code="idempotency_key_reused",
                )
            if record.state == "done" and record.response_status is not None:
                return Replay(record.response_status, record.response_body or {})
            if now - record.created_at < timedelta(seconds=settings.idempotency_lock_s):
                raise Conflict(
                    "A request with this Idempotency-Key is still being processed; retry shortly",
                    param=HEADER,
                    code="idempotency_in_flight",
                    headers={"Retry-After": "1"},
                )
            # The first attempt died mid-way: take the key over (compare-and-set on its timestamp).
            taken = await session.execute(
                update(IdempotencyRecord)
                .where(
                    IdempotencyRecord.tenant == tenant,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.created_at == record.created_at,
                    IdempotencyRecord.state == "in_flight",
                )
                .values(created_at=now)
            )
            await session.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return None
    raise Conflict("Idempotency-Key is contended; retry shortly", param=HEADER, code="idempotency_in_flight")


async def complete(
    session: AsyncSession, *, tenant: str, key: str, status_code: int, body: dict[str, Any], request_id: str
) -> None:
    """Store the response, in the transaction that created the request."""
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == key)
        .values(state="done", response_status=status_code, response_body=body, request_id=request_id)
    )


async def release(sessionmaker: async_sessionmaker[AsyncSession], *, tenant: str, key: str) -> None:
    """Forget an in-flight claim whose request failed before creating anything (the client may retry)."""
    async with sessionmaker() as session:
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.tenant == tenant,
                IdempotencyRecord.key == key,
                IdempotencyRecord.state == "in_flight",
            )
        )
        await session.commit()


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
