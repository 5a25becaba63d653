"""Append to and verify the audit hash chain.

``hash = sha256(canonical JSON of (seq, tenant, request_id, action, actor, data, created_at, prev_hash))``.
Appending first bumps the single head row with ``UPDATE ... RETURNING``, which takes the write lock (a
row lock on PostgreSQL, the database lock on SQLite) and reads the previous hash in one statement, so
concurrent writers cannot fork the chain. ``append_many`` reserves several sequence numbers at once
(intake writes a whole batch of requests in one transaction).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from service.db.base import utcnow

SYSTEM = "system"


def _table(model: type[Any]) -> Table:
    """The model's Core table: plain INSERTs skip the ORM unit of work on the hot path."""
    table: Table = model.__table__
    return table


def event_hash(
    *,
    seq: int,
    tenant: str | None,
    request_id: str | None,
    action: str,
    actor: str,
    data: dict[str, Any],
    created_at: datetime,
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "tenant": tenant,
        "request_id": request_id,
        "action": action,
        "actor": actor,
        "data": data,
        # Microseconds survive both databases; the ISO form pins the time zone to UTC.
        "created_at": created_at.isoformat(timespec="microseconds"),
        "prev_hash": prev_hash,
    }
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewEvent:
    """An event to append: everything but its place in the chain."""

    action: str
    actor: str
    tenant: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


async def _reserve(session: AsyncSession, count: int) -> tuple[int, str]:
    """Bump the head by ``count``; returns (first new seq, hash of the event before it)."""
    head = (
        await session.execute(
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(seq=AuditHead.seq + count)
            .returning(AuditHead.seq, AuditHead.hash),
            execution_options={"synchronize_session": False},
        )
    ).one()
    # RETURNING gives the new seq and the hash not yet moved on: the last event's.
    return int(head.seq) - count + 1, str(head.hash)


def _link(event: NewEvent, seq: int, prev: str) -> dict[str, Any]:
    payload = _plain(event.data)
    created = utcnow()
    digest = event_hash(
        seq=seq,
        tenant=event.tenant,
        request_id=event.request_id,
        action=event.action,
        actor=event.actor,
        data=payload,
        created_at=created,
        prev_hash=prev,
    )
    return {
        "seq": seq,
        "tenant": event.tenant,
        "request_id": event.request_id,
        "action": event.action,
        "actor": event.actor,
        "data": payload,
        "created_at": created,
        "prev_hash": prev,
        "hash": digest,
    }


async def append_many(session: AsyncSession, events: Sequence[NewEvent]) -> list[str]:
    """Append ``events`` in order inside the caller's transaction; returns their hashes."""
    if not events:
        return []
    seq, prev = await _reserve(session, len(events))
    rows: list[dict[str, Any]] = []
    for offset, event in enumerate(events):
        row = _link(event, seq + offset, prev)
        rows.append(row)
        prev = row["hash"]
    await session.execute(insert(_table(AuditEvent)), rows)
    await session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(hash=prev),
        execution_options={"synchronize_session": False},
    )
    return [row["hash"] for row in rows]


async def append(
    session: AsyncSession,
    *,
    action: str,
    actor: str,
    tenant: str | None = None,
    request_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction (commit is the caller's)."""
    seq, prev = await _reserve(session, 1)
    row = _link(NewEvent(action, actor, tenant, request_id, data or {}), seq, prev)
    event = AuditEvent(**row)
    session.add(event)
    await session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(hash=row["hash"]),
        execution_options={"synchronize_session": False},
    )
    return event


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON so what is hashed is exactly what the JSON column gives back later.
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


@dataclass
class VerifyResult:
    ok: bool
    events: int
    problems: list[str] = field(default_factory=list)


def verify_events(events: Sequence[AuditEvent], head_seq: int, head_hash: str) -> VerifyResult:
    """Check sequence continuity, each link and each hash, and that the head matches the last event."""
    problems: list[str] = []
    prev = GENESIS_HASH
    expected_seq = 1
    for event in events:
        if event.seq != expected_seq:
            problems.append(f"event {expected_seq} is missing (next present: {event.seq})")
            expected_seq = event.seq
        if event.prev_hash != prev:
            problems.append(f"event {event.seq}: link to the previous event is broken")
        recomputed = event_hash(
            seq=event.seq,
            tenant=event.tenant,
            request_id=event.request_id,
            action=event.action,
            actor=event.actor,
            data=event.data,
            created_at=event.created_at,
            prev_hash=event.prev_hash,
        )
        if recomputed != event.hash:
            problems.append(f"event {event.seq}: contents do not match its hash (edited)")
        prev = event.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if head_seq != last_seq or head_hash != prev:
        problems.append(f"chain head says {head_seq} events; the table ends at {last_seq} (events removed?)")
    return VerifyResult(ok=not problems, events=len(events), problems=problems)


async def verify(session: AsyncSession, *, batch: int = 5000) -> VerifyResult:
    """Verify the whole chain, reading it in batches."""
    head = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    events: list[AuditEvent] = []
    last = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
            )
        ).all()
        if not rows:
            break
        events.extend(rows)
        last = rows[-1].seq
    return verify_events(events, int(head.seq), str(head.hash))


async def for_request(session: AsyncSession, request_id: str) -> list[AuditEvent]:
    rows = await session.scalars(
        select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)
    )
    return list(rows.all())


def links_intact(events: Sequence[AuditEvent]) -> bool:
    """True when every event's stored hash matches its recomputed one (links only; ``verify``
    also checks the chain's order and head)."""
    return all(
        event_hash(
            seq=e.seq,
            tenant=e.tenant,
            request_id=e.request_id,
            action=e.action,
            actor=e.actor,
            data=e.data,
            created_at=e.created_at,
            prev_hash=e.prev_hash,
        )
        == e.hash
        for e in events
    )
