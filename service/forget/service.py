"""Forget-request operations: create, transition (with audit, event and outbox), cancel, approve.

Every state change is a compare-and-set ``UPDATE ... WHERE status IN (expected)`` in the caller's
transaction, together with its audit event, its SSE event and (when a stage must run) its outbox
row. Whoever loses a race (a cancel against a finishing stage, say) sees ``None`` and changes nothing.

Functions for other domains (deployments, review) are at the bottom: ``mark_deployed``,
``mark_superseded``, ``mark_rolled_back``, ``ready_adapter``.
"""

from __future__ import annotations

import calendar
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import chain
from service.core.errors import Conflict, NotFound, Unprocessable
from service.db.base import utcnow
from service.forget.lifecycle import (
    ALLOWED,
    CANCELLABLE,
    GATE_STATUS,
    STATUS_GATE,
    Gate,
    Status,
    after_gate,
    stage_of_gate,
)
from service.forget.models import ForgetRequest, RequestEvent
from service.orchestration.outbox import add_job


def new_request_id() -> str:
    """``fr_`` + 12 hex digits of milliseconds + 12 random: sorts by creation time."""
    return f"fr_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months (GDPR Art. 12(3)): 31 Jan + 1 month = 28/29 Feb."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class Moved:
    """The outcome of a successful transition."""

    request_id: str
    tenant: str
    previous: tuple[str, ...]
    status: Status
    attempt: int


async def transition(
    session: AsyncSession,
    request_id: str,
    *,
    expected: Iterable[str],
    to: Status,
    actor: str,
    enqueue: str | None = None,
    attempt: int | None = None,
    values: dict[str, Any] | None = None,
    audit_data: dict[str, Any] | None = None,
    event_data: dict[str, Any] | None = None,
) -> Moved | None:
    """Move the request from one of ``expected`` to ``to``; None if it was not in ``expected``.

    ``enqueue``: a job to start, with the attempt counter bumped (older jobs become stale).
    ``attempt``: also require the current attempt (a job may only move the request it was run for).
    """
    previous = tuple(expected)
    for state in previous:
        if to not in ALLOWED[Status(state)] and to.value != state:
            raise ValueError(f"lifecycle forbids {state} → {to}")
    now = utcnow()
    changes: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
    if enqueue is not None:
        changes["attempt"] = ForgetRequest.attempt + 1
    statement = update(ForgetRequest).where(
        ForgetRequest.id == request_id, ForgetRequest.status.in_(previous)
    )
    if attempt is not None:
        statement = statement.where(ForgetRequest.attempt == attempt)
    row = (
        await session.execute(
            statement.values(**changes).returning(ForgetRequest.tenant, ForgetRequest.attempt),
            execution_options={"synchronize_session": False},
        )
    ).first()
    if row is None:
        return None
    tenant, new_attempt = str(row.tenant), int(row.attempt)
    data = {"status": to.value, "from": list(previous) if len(previous) > 1 else previous[0]}
    session.add(
        RequestEvent(
            request_id=request_id, kind="status", data={**data, **(event_data or {})}, created_at=now
        )
    )
    await chain.append(
        session,
        action=f"status.{to.value}",
        actor=actor,
        tenant=tenant,
        request_id=request_id,
        data={**data, **(audit_data or {})},
    )
    if enqueue is not None:
        add_job(session, request_id, enqueue, new_attempt)
    return Moved(request_id, tenant, previous, to, new_attempt)


async def get_for_tenant(session: AsyncSession, tenant: str, request_id: str) -> ForgetRequest:
    """The request if it belongs to ``tenant``; otherwise NotFound (never reveal other tenants' ids)."""
    row = await session.get(ForgetRequest, request_id, populate_existing=True)
    if row is None or row.tenant != tenant:
        raise NotFound(f"No forget request {request_id!r}", param="id")
    return row


async def cancel(session: AsyncSession, row: ForgetRequest, *, actor: str, reason: str) -> Moved:
    """Cancel now; a running stage notices at its next heartbeat and stops within one batch."""
    if Status(row.status) not in CANCELLABLE:
        raise Conflict(f"A request in status {row.status!r} cannot be cancelled", code="invalid_state")
    moved = await transition(
        session,
        row.id,
        expected=[row.status],
        to=Status.CANCELLED,
        actor=actor,
        values={"cancel_requested": True, "finished_at": utcnow(), "purge_after": utcnow()},
        audit_data={"reason": reason},
    )
    if moved is None:
        raise Conflict("The request changed state meanwhile; fetch it and retry", code="state_changed")
    return moved


async def decide(
    session: AsyncSession, row: ForgetRequest, *, actor: str, approve: bool, reason: str, gate: str | None
) -> Moved:
    """Approve (continue the pipeline) or reject (fail the request) at the gate it waits in."""
    status = Status(row.status)
    waiting = STATUS_GATE.get(status)
    if waiting is None:
        raise Conflict(f"The request is not waiting for a review (status {row.status!r})", code="not_at_gate")
    if gate is not None and gate != waiting.value:
        raise Conflict(f"The request waits at {waiting.value!r}, not {gate!r}", code="wrong_gate")
    decision = {
        "gate": waiting.value,
        "decision": "approved" if approve else "rejected",
        "reason": reason,
        "actor": actor,
        "at": utcnow().isoformat(),
    }
    values: dict[str, Any] = {"decisions": [*row.decisions, decision]}
    if approve:
        target, job = after_gate(stage_of_gate(waiting))
        if target == Status.READY:
            values["finished_at"] = utcnow()
        moved = await transition(
            session,
            row.id,
            expected=[status],
            to=target,
            actor=actor,
            enqueue=job,
            values=values,
            audit_data={"gate": waiting.value, "decision": "approved", "reason": reason},
        )
    else:
        values.update(
            failure_code="rejected",
            failure_reason=f"Rejected at {waiting.value}: {reason}",
            finished_at=utcnow(),
            purge_after=utcnow(),
        )
        moved = await transition(
            session,
            row.id,
            expected=[status],
            to=Status.FAILED,
            actor=actor,
            values=values,
            audit_data={"gate": waiting.value, "decision": "rejected", "reason": reason},
        )
    if moved is None:
        raise Conflict("The request changed state meanwhile; fetch it and retry", code="state_changed")
    return moved


async def extend_due(session: AsyncSession, row: ForgetRequest, *, actor: str, reason: str) -> None:
    """Art. 12(3) extension: two further months at most, with a reason recorded and audited."""
    if row.due_extension_reason:
        raise Conflict("The deadline was already extended once", code="already_extended")
    if not reason.strip():
        raise Unprocessable("An extension needs a reason", param="reason")
    new_due = add_months(row.due_at, 2)
    await session.execute(
        update(ForgetRequest)
        .where(ForgetRequest.id == row.id)
        .values(due_at=new_due, due_extension_reason=reason, updated_at=utcnow())
    )
    await chain.append(
        session,
        action="due.extended",
        actor=actor,
        tenant=row.tenant,
        request_id=row.id,
        data={"from": row.due_at.isoformat(), "to": new_due.isoformat(), "reason": reason},
    )


async def record_access(session: AsyncSession, row: ForgetRequest, *, actor: str, what: str) -> None:
    """Evidence reads (audit trail, certificate) are themselves audited."""
    await chain.append(
        session, action=f"evidence.{what}", actor=actor, tenant=row.tenant, request_id=row.id, data={}
    )


# ---------------------------------------------------------------------------------------------------
# For the deployments domain (service/deployments) and others.


@dataclass(frozen=True)
class AdapterRef:
    """A ready request's adapter: a local directory (safetensors) and its content hash."""

    request_id: str
    tenant: str
    path: str
    sha256: str
    target_alias: str
    deploy_policy: str
    #: The acceptance gate's verdict on the evaluation (``metrics["gate"]``); None: never gated.
    acceptance: dict[str, Any] | None = None

    @property
    def acceptance_passed(self) -> bool:
        """Only an explicit pass counts: no verdict (an old row, a missing evaluation) is a fail."""
        return bool(self.acceptance and self.acceptance.get("passed") is True)


def acceptance_of(metrics: Any) -> dict[str, Any] | None:
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    return gate if isinstance(gate, dict) else None


def describe_failures(acceptance: dict[str, Any] | None) -> str:
    """The failed checks in words, e.g. ``original_leaks 3 > 0; broken_rate: missing broken_rate_after``."""
    if not acceptance:
        return "no acceptance verdict was recorded"
    parts = []
    for failure in acceptance.get("failures") or []:
        check, value, bound = failure.get("check"), failure.get("value"), failure.get("threshold")
        if check == "original_coverage":
            parts.append(f"{check}: no corpus questions were evaluated")
        elif value is None:
            parts.append(f"{check}: missing {', '.join(failure.get('missing') or []) or 'data'}")
        else:
            parts.append(f"{check} {value:.4g} {'<' if check == 'retain_ratio' else '>'} {bound:.4g}")
    return "; ".join(parts) or "the verdict was not a pass"


async def ready_adapter(session: AsyncSession, request_id: str) -> AdapterRef:
    """The adapter of a request in ``ready`` (Conflict otherwise: no deploy before evaluation)."""
    row = await session.get(ForgetRequest, request_id, populate_existing=True)
    if row is None:
        raise NotFound(f"No forget request {request_id!r}", param="id")
    if row.status != Status.READY or not row.adapter_path or not row.adapter_hash:
        raise Conflict(f"Request {request_id} is {row.status}, not ready to deploy", code="not_ready")
    return AdapterRef(
        request_id=row.id,
        tenant=row.tenant,
        path=row.adapter_path,
        sha256=row.adapter_hash,
        target_alias=str(row.options.get("target_alias", "chat")),
        deploy_policy=str(row.options.get("deploy_policy", "manual")),
        acceptance=acceptance_of(row.metrics),
    )


async def mark_deployed(
    session: AsyncSession,
    request_id: str,
    version: str,
    adapter_hash: str,
    *,
    actor: str = chain.SYSTEM,
    retention_s: float | None = None,
    override: dict[str, Any] | None = None,
) -> Moved:
    """ready → deployed (in the caller's transaction); schedules the corpus purge after retention.

    ``override``: an admin deploys a request that failed the acceptance gate (``actor``, ``reason``,
    ``failed_checks``); kept in the request's decisions (the certificate shows it) and audited.
    """
    row = await session.get(ForgetRequest, request_id, populate_existing=True)
    if row is None:
        raise NotFound(f"No forget request {request_id!r}", param="id")
    if row.adapter_hash and adapter_hash != row.adapter_hash:
        raise Conflict("adapter hash does not match the request's adapter", code="hash_mismatch")
    now = utcnow()
    retention = float(row.options.get("retention_s", retention_s if retention_s is not None else 7 * 86400))
    values: dict[str, Any] = {
        "deployed_version": version,
        "deployed_at": now,
        "purge_after": now + timedelta(seconds=retention),
    }
    audit_data: dict[str, Any] = {"version": version, "adapter_hash": adapter_hash}
    if override is not None:
        decision = {
            "gate": "acceptance",
            "decision": "override",
            "reason": str(override.get("reason", "")),
            "actor": str(override.get("actor", actor)),
            "at": now.isoformat(),
        }
        values["decisions"] = [*row.decisions, decision]
        audit_data["acceptance_override"] = True
        await chain.append(
            session,
            action="acceptance.override",
            actor=decision["actor"],
            tenant=row.tenant,
            request_id=request_id,
            data={
                "reason": decision["reason"],
                "version": version,
                "failed_checks": list(override.get("failed_checks") or []),
            },
        )
    moved = await transition(
        session,
        request_id,
        expected=[Status.READY],
        to=Status.DEPLOYED,
        actor=actor,
        values=values,
        audit_data=audit_data,
    )
    if moved is None:
        raise Conflict(f"Request {request_id} is {row.status}, not ready", code="not_ready")
    return moved


async def _leave_deployed(
    session: AsyncSession, request_id: str, to: Status, actor: str, **data: Any
) -> Moved:
    moved = await transition(
        session, request_id, expected=[Status.DEPLOYED], to=to, actor=actor, audit_data=data
    )
    if moved is None:
        raise Conflict(f"Request {request_id} is not deployed", code="not_deployed")
    return moved


async def mark_superseded(
    session: AsyncSession, request_id: str, *, by_version: str, actor: str = chain.SYSTEM
) -> Moved:
    """deployed → superseded (a later version that includes this one is served)."""
    return await _leave_deployed(session, request_id, Status.SUPERSEDED, actor, by_version=by_version)


async def mark_rolled_back(
    session: AsyncSession, request_id: str, *, reason: str, actor: str = chain.SYSTEM
) -> Moved:
    """deployed → rolled_back (the previous version is served again)."""
    return await _leave_deployed(session, request_id, Status.ROLLED_BACK, actor, reason=reason)


async def latest_events(
    session: AsyncSession, request_id: str, after: int, limit: int = 200
) -> list[RequestEvent]:
    rows = await session.scalars(
        select(RequestEvent)
        .where(RequestEvent.request_id == request_id, RequestEvent.id > after)
        .order_by(RequestEvent.id)
        .limit(limit)
    )
    return list(rows.all())


__all__ = [
    "GATE_STATUS",
    "AdapterRef",
    "Gate",
    "Moved",
    "acceptance_of",
    "add_months",
    "cancel",
    "decide",
    "describe_failures",
    "extend_due",
    "get_for_tenant",
    "mark_deployed",
    "mark_rolled_back",
    "mark_superseded",
    "ready_adapter",
    "record_access",
    "transition",
]
