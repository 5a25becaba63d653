"""Idempotency-Key for deploy and rollback: a retried call replays the first answer.

A rollback retried after a lost response must not roll back a second time. Keys live in the shared
``idempotency_keys`` table under a ``deployments:`` namespace, claimed with an insert (the primary key
picks one winner across replicas), answered once the call succeeds, dropped if it fails. A claim left
``in_flight`` by a process that crashed is taken over after ``idempotency_lock_s`` (not 409 for 24 h).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from service.core.errors import BadRequest, Conflict, Unprocessable
from service.core.state import Resources
from service.db.base import utcnow
from service.forget.models import IdempotencyRecord

HEADER = "Idempotency-Key"


async def once(
    resources: Resources,
    tenant: str,
    key: str | None,
    what: tuple[Any, ...],
    run: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run ``run`` at most once per (tenant, key); ``what`` identifies the call (same key, other call: 422)."""
    if key is None:
        return await run()
    if not key.strip() or len(key) > 255:
        raise BadRequest(f"{HEADER} must be 1-255 characters", param=HEADER, code="invalid_idempotency_key")
    # Hashed so the namespaced key fits the column whatever the client sent.
    name = "deployments:" + hashlib.sha256(key.strip().encode()).hexdigest()
    digest = hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()
    now = utcnow()
    ttl = timedelta(seconds=resources.settings.idempotency_ttl_s)
    async with resources.sessionmaker() as session:
        record = await session.get(IdempotencyRecord, (tenant, name))
        if record is not None and record.expires_at <= now:
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == name
                )
            )
            await session.commit()
            record = None
        if record is None:
            session.add(
                IdempotencyRecord(
                    tenant=tenant,
                    key=name,
                    body_hash=digest,
                    state="in_flight",
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(
                    f"A call with this {HEADER} is in progress; retry shortly",
                    param=HEADER,
                    code="idempotency_in_flight",
                    headers={"Retry-After": "1"},
                ) from None
        else:
            if record.body_hash != digest:
                raise Unprocessable(
                    f"This {HEADER} was already used for another call; use a new key",
                    param=HEADER,
                    code="idempotency_key_reused",
                )
            if record.state == "done" and record.response_body is not None:
                return record.response_body
            lock = timedelta(seconds=resources.settings.idempotency_lock_s)
            taken_over = False
            if record.state == "in_flight" and now - record.created_at >= lock:
                # The first call died mid-way (a crash): take the key over, compare-and-set on its time.
                taken = await session.execute(
                    update(IdempotencyRecord)
                    .where(
                        IdempotencyRecord.tenant == tenant,
                        IdempotencyRecord.key == name,
                        IdempotencyRecord.state == "in_flight",
                        IdempotencyRecord.created_at == record.created_at,
                    )
                    .values(created_at=now, expires_at=now + ttl)
                )
                await session.commit()
                taken_over = taken.rowcount == 1  # type: ignore[attr-defined]
            if not taken_over:
                raise Conflict(
                    f"A call with this {HEADER} is in progress; retry shortly",
                    param=HEADER,
                    code="idempotency_in_flight",
                    headers={"Retry-After": "1"},
                )
    return await _run_once(resources, tenant, name, run)


async def _run_once(
    resources: Resources, tenant: str, name: str, run: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    try:
        body = await run()
    except BaseException:
        async with resources.sessionmaker() as session, session.begin():
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == name
                )
            )
        raise
    async with resources.sessionmaker() as session, session.begin():
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == name)
            .values(state="done", response_status=200, response_body=body)
        )
    return body
