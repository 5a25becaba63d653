"""Review operations: open gates from artifacts, hand out tasks, take answers, resolve gates.

Quality controls, as crowd platforms run them:

- *overlap*: each task needs ``gate.overlap`` answers; the majority decides and the agreement is
  recorded (a tie asks for one more answer, up to overlap + 2, then the cautious choice);
- *control tasks* with known answers score reviewers; below ``review_min_control_accuracy`` (after
  3 controls) a reviewer's answers no longer count in majorities;
- *time limit*: a claim expires after ``review_task_time_limit_s`` and the task goes to someone else;
- *deadline*: a gate open past ``review_gate_deadline_s`` is escalated (audit event ``review.gate.escalated``).

When the last task of a gate resolves, the reviewed result is written back to the request's
artifacts and the forget domain's ``decide`` approves (the pipeline resumes) or rejects the request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.artifacts.store import ArtifactStore, store_for
from service.audit import chain
from service.core.errors import Conflict, NotFound, Unprocessable
from service.core.state import Resources
from service.db.base import utcnow
from service.forget import service as forget_service
from service.forget.lifecycle import GATE_STATUS, STATUS_GATE, Gate, Status
from service.forget.models import ForgetRequest, RequestEvent
from service.review import answers, materials
from service.review.models import ReviewAssignment, ReviewGate, ReviewTask
from service.settings import Settings

logger = logging.getLogger("obliviate.review")

G, T, A = ReviewGate, ReviewTask, ReviewAssignment
#: Every how many answers a reviewer is shown a control task (when the gate has one left for them).
CONTROL_EVERY = 4
MIN_CONTROLS_TO_SCORE = 3


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _store(resources: Resources) -> ArtifactStore:
    store: ArtifactStore | None = resources.extras.get("artifacts")
    return store if store is not None else store_for(resources.settings)


# ---------------------------------------------------------------------------------------------------
# Opening and closing gates.


async def open_gate(
    session: AsyncSession,
    row: ForgetRequest,
    gate: str,
    items: list[dict[str, Any]],
    settings: Settings,
    store: ArtifactStore,
) -> ReviewGate:
    """Create the gate and one task per item (the caller commits); a gate with nothing to review
    resolves at once."""
    now = utcnow()
    overlap = int(row.options.get("review_overlap", settings.review_overlap))
    summary: dict[str, Any] = {"tasks": len(items)}
    if gate == Gate.EVALUATION_REVIEW.value:
        # Reviewers see what the acceptance gate measured: residual leak rates per kind, failing checks.
        acceptance = evaluation_acceptance(row)
        summary["acceptance"] = acceptance
        items = [{**item, "acceptance": acceptance} for item in items]
    record = ReviewGate(
        id=new_id("rg"),
        tenant=row.tenant,
        request_id=row.id,
        gate=gate,
        status="open",
        overlap=overlap,
        summary=summary,
        created_at=now,
        deadline_at=now + timedelta(seconds=settings.review_gate_deadline_s),
    )
    session.add(record)
    kind = answers.GATE_KIND[gate]
    for position, payload in enumerate(items):
        session.add(
            ReviewTask(
                id=new_id("rt"),
                tenant=row.tenant,
                request_id=row.id,
                gate_id=record.id,
                kind=kind,
                position=position,
                payload=payload,
                control=False,
                required=overlap,
                status="open",
                created_at=now,
            )
        )
    await session.flush()
    await chain.append(
        session,
        action="review.gate.opened",
        actor=chain.SYSTEM,
        tenant=row.tenant,
        request_id=row.id,
        data={"gate": gate, "gate_id": record.id, "tasks": len(items), "overlap": overlap},
    )
    _review_event(session, row.id, gate, open_tasks=len(items), total=len(items))
    if not items and not _held_by_acceptance(gate, summary):
        await finalize_gate(session, record, settings, store)
    return record


def _held_by_acceptance(gate: str, summary: dict[str, Any]) -> bool:
    """An evaluation review opened by a failed acceptance gate never approves itself for want of
    completions to look at: a person decides (approve or reject at the request)."""
    acceptance = summary.get("acceptance") or {}
    return gate == Gate.EVALUATION_REVIEW.value and acceptance.get("verdict") != "passed"


def evaluation_acceptance(row: ForgetRequest) -> dict[str, Any]:
    """The acceptance gate's verdict as the certificate states it, plus the failed checks in words."""
    from service.audit.certificate import acceptance_statement

    statement = acceptance_statement(row)
    if statement["verdict"] != "passed":
        statement["failed"] = forget_service.describe_failures(forget_service.acceptance_of(row.metrics))
    return statement


def _review_event(session: AsyncSession, request_id: str, gate: str, *, open_tasks: int, total: int) -> None:
    session.add(
        RequestEvent(
            request_id=request_id,
            kind="review",
            data={"gate": gate, "open_tasks": open_tasks, "total_tasks": total},
        )
    )


_warned: set[tuple[str, str]] = set()


async def sync_gates(resources: Resources, request_id: str | None = None) -> list[str]:
    """Open a gate for every request waiting in one without it; close gates the request left.

    Returns the ids of the gates opened. Safe to run from several processes (a unique key on
    request and gate; the loser's insert is rolled back).
    """
    settings = resources.settings
    store = _store(resources)
    opened: list[str] = []
    waiting = [status.value for status in GATE_STATUS.values()]
    async with resources.sessionmaker() as session:
        query = select(ForgetRequest.id, ForgetRequest.status).where(
            ForgetRequest.status.in_(waiting),
            ~exists().where(
                G.request_id == ForgetRequest.id,
                G.gate == _gate_of_status_sql(),
            ),
        )
        if request_id is not None:
            query = query.where(ForgetRequest.id == request_id)
        pending = (await session.execute(query.limit(50))).all()
    for rid, status in pending:
        gate = STATUS_GATE[Status(status)].value
        async with resources.sessionmaker() as session:
            row = await session.get(ForgetRequest, rid)
            if row is None or row.status != status:
                continue
            try:
                items = await asyncio.to_thread(
                    materials.build_items, gate, store, rid, dict(row.options), list(row.probes), settings
                )
            except materials.MaterialsMissing as exc:
                if (rid, gate) not in _warned:
                    _warned.add((rid, gate))
                    logger.warning("cannot open %s of %s yet: %s is missing", gate, rid, exc)
                continue
            try:
                record = await open_gate(session, row, gate, items, settings, store)
                await session.commit()
            except IntegrityError:
                await session.rollback()
                continue
            opened.append(record.id)
    await close_stale_gates(resources)
    if opened:
        _kick(resources)
    return opened


def _gate_of_status_sql() -> Any:
    from sqlalchemy import case

    return case(
        *((ForgetRequest.status == status.value, gate.value) for gate, status in GATE_STATUS.items()),
        else_="",
    )


async def close_stale_gates(resources: Resources) -> int:
    """Gates whose request left the gate state another way (approved by hand, cancelled)."""
    async with resources.sessionmaker() as session:
        rows = (
            await session.execute(
                select(G.id, G.gate, ForgetRequest.status)
                .join(ForgetRequest, ForgetRequest.id == G.request_id)
                .where(G.status == "open")
            )
        ).all()
        stale = [gid for gid, gate, status in rows if status != GATE_STATUS[Gate(gate)].value]
        if stale:
            await session.execute(
                update(G)
                .where(G.id.in_(stale), G.status == "open")
                .values(status="closed", resolved_at=utcnow(), reason="the request left the gate")
            )
            await session.commit()
        return len(stale)


def _kick(resources: Resources) -> None:
    kick = resources.extras.get("relay_kick")
    if kick is not None:
        kick()


# ---------------------------------------------------------------------------------------------------
# Maintenance: expired claims, overdue gates, purged corpora.


async def expire_claims(session: AsyncSession, now: datetime | None = None) -> int:
    now = now or utcnow()
    expired = (
        await session.execute(
            select(A.id, A.task_id, A.tenant, A.reviewer, T.request_id)
            .join(T, T.id == A.task_id)
            .where(A.status == "active", A.expires_at <= now)
        )
    ).all()
    for aid, task_id, tenant, reviewer, request_id in expired:
        result = await session.execute(
            update(A).where(A.id == aid, A.status == "active").values(status="expired")
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await chain.append(
                session,
                action="review.task.reassigned",
                actor=chain.SYSTEM,
                tenant=tenant,
                request_id=request_id,
                data={"task_id": task_id, "reviewer": reviewer, "reason": "time limit passed"},
            )
    return len(expired)


async def escalate_overdue(session: AsyncSession, now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    overdue = (
        await session.execute(
            select(G).where(G.status == "open", G.escalated_at.is_(None), G.deadline_at <= now)
        )
    ).scalars()
    escalated = []
    for gate in list(overdue):
        gate.escalated_at = now
        open_tasks = await _open_count(session, gate.id)
        await chain.append(
            session,
            action="review.gate.escalated",
            actor=chain.SYSTEM,
            tenant=gate.tenant,
            request_id=gate.request_id,
            data={
                "gate": gate.gate,
                "gate_id": gate.id,
                "deadline_at": gate.deadline_at.isoformat(),
                "open_tasks": open_tasks,
            },
        )
        session.add(
            RequestEvent(
                request_id=gate.request_id,
                kind="review_escalated",
                data={"gate": gate.gate, "open_tasks": open_tasks},
            )
        )
        escalated.append(gate.id)
    return escalated


async def clear_purged_payloads(session: AsyncSession) -> int:
    """Task inputs quote the corpus: once the request's corpus is purged, they go too."""
    gates = list(
        (
            await session.execute(
                select(G.id)
                .join(ForgetRequest, ForgetRequest.id == G.request_id)
                .where(ForgetRequest.purged_at.is_not(None), G.inputs_purged_at.is_(None), G.status != "open")
            )
        ).scalars()
    )
    if gates:
        await session.execute(
            update(T)
            .where(T.gate_id.in_(gates))
            .values(payload={})
            .execution_options(synchronize_session=False)
        )
        await session.execute(update(G).where(G.id.in_(gates)).values(inputs_purged_at=utcnow()))
    return len(gates)


async def finish_resolved_gates(resources: Resources) -> int:
    """Gates whose tasks are all resolved but which were not finalised (a race between answers)."""
    async with resources.sessionmaker() as session:
        open_task = exists().where(T.gate_id == G.id, T.status == "open", T.control.is_(False))
        gates = list((await session.execute(select(G).where(G.status == "open", ~open_task))).scalars())
        for gate in gates:
            await finalize_gate(session, gate, resources.settings, _store(resources))
        await session.commit()
    if gates:
        _kick(resources)
    return len(gates)


async def maintain(resources: Resources) -> None:
    """One round of the review loop."""
    await sync_gates(resources)
    await finish_resolved_gates(resources)
    async with resources.sessionmaker() as session:
        await expire_claims(session)
        await escalate_overdue(session)
        await clear_purged_payloads(session)
        await session.commit()


async def run(resources: Resources) -> None:
    """The review loop (a start-up task)."""
    while True:
        try:
            await maintain(resources)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the loop alive; the type only (messages may quote data)
            logger.warning("review maintenance failed: %s", type(exc).__name__)
        await asyncio.sleep(resources.settings.review_interval_s)


# ---------------------------------------------------------------------------------------------------
# Claims and answers.


async def _open_count(session: AsyncSession, gate_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count()).where(T.gate_id == gate_id, T.status == "open", T.control.is_(False))
        )
        or 0
    )


async def get_task(session: AsyncSession, tenant: str, task_id: str) -> ReviewTask:
    task = await session.get(T, task_id, populate_existing=True)
    if task is None or task.tenant != tenant:
        raise NotFound(f"No review task {task_id!r}", param="task_id")
    return task


async def get_gate(session: AsyncSession, tenant: str, gate_id: str) -> ReviewGate:
    gate = await session.get(G, gate_id, populate_existing=True)
    if gate is None or gate.tenant != tenant:
        raise NotFound(f"No review gate {gate_id!r}", param="gate_id")
    return gate


async def active_assignment(session: AsyncSession, task_id: str, reviewer: str) -> ReviewAssignment | None:
    now = utcnow()
    result = await session.execute(
        select(A).where(
            A.task_id == task_id, A.reviewer == reviewer, A.status == "active", A.expires_at > now
        )
    )
    return result.scalars().first()


def _claimable(reviewer: str, now: datetime) -> list[Any]:
    live = and_(
        A.task_id == T.id, or_(A.status == "answered", and_(A.status == "active", A.expires_at > now))
    )
    taken = select(func.count()).where(live).correlate(T).scalar_subquery()
    mine = exists().where(
        A.task_id == T.id,
        A.reviewer == reviewer,
        or_(A.status == "answered", and_(A.status == "active", A.expires_at > now)),
    )
    return [T.status == "open", G.status == "open", ~mine, or_(T.control.is_(True), taken < T.required)]


async def _answered_count(session: AsyncSession, reviewer: str) -> int:
    return int(
        await session.scalar(select(func.count()).where(A.reviewer == reviewer, A.status == "answered")) or 0
    )


@dataclass(frozen=True)
class Claimed:
    task: ReviewTask
    assignment: ReviewAssignment


async def claim_next(
    session: AsyncSession,
    *,
    tenant: str,
    reviewer: str,
    settings: Settings,
    kind: str | None = None,
    request_id: str | None = None,
) -> Claimed | None:
    """The reviewer's current task, or a new claim on the next one (None when nothing is left)."""
    now = utcnow()
    held = (
        await session.execute(
            select(A, T)
            .join(T, T.id == A.task_id)
            .join(G, G.id == T.gate_id)
            .where(
                A.reviewer == reviewer,
                A.tenant == tenant,
                A.status == "active",
                A.expires_at > now,
                T.status == "open",
                G.status == "open",
            )
            .order_by(A.assigned_at)
        )
    ).first()
    if (
        held is not None
        and (kind is None or held[1].kind == kind)
        and (request_id is None or held[1].request_id == request_id)
    ):
        return Claimed(task=held[1], assignment=held[0])
    base = select(T).join(G, G.id == T.gate_id).where(T.tenant == tenant, *_claimable(reviewer, now))
    if kind is not None:
        base = base.where(T.kind == kind)
    if request_id is not None:
        base = base.where(T.request_id == request_id)
    order = (G.created_at, T.position, T.id)
    task = (
        (await session.execute(base.where(T.control.is_(False)).order_by(*order).limit(1))).scalars().first()
    )
    if task is None:
        return None
    if (await _answered_count(session, reviewer)) % CONTROL_EVERY == CONTROL_EVERY - 1:
        control = (
            (
                await session.execute(
                    base.where(T.control.is_(True), T.kind == task.kind).order_by(*order).limit(1)
                )
            )
            .scalars()
            .first()
        )
        task = control or task
    return await _assign(session, task, reviewer, settings, now)


async def _assign(
    session: AsyncSession, task: ReviewTask, reviewer: str, settings: Settings, now: datetime
) -> Claimed:
    assignment = ReviewAssignment(
        id=new_id("ra"),
        task_id=task.id,
        tenant=task.tenant,
        reviewer=reviewer,
        status="active",
        assigned_at=now,
        expires_at=now + timedelta(seconds=settings.review_task_time_limit_s),
    )
    session.add(assignment)
    await session.flush()
    return Claimed(task=task, assignment=assignment)


async def claim(
    session: AsyncSession, *, tenant: str, reviewer: str, task_id: str, settings: Settings
) -> Claimed:
    """Claim this task (or return the reviewer's live claim on it)."""
    task = await get_task(session, tenant, task_id)
    held = await active_assignment(session, task.id, reviewer)
    if held is not None:
        return Claimed(task=task, assignment=held)
    now = utcnow()
    row = (
        await session.execute(
            select(T.id).join(G, G.id == T.gate_id).where(T.id == task_id, *_claimable(reviewer, now))
        )
    ).first()
    if row is None:
        if task.status != "open":
            raise Conflict("This task is already resolved", code="task_resolved")
        answered = await session.scalar(
            select(func.count()).where(A.task_id == task.id, A.reviewer == reviewer, A.status == "answered")
        )
        if answered:
            raise Conflict("You already answered this task", code="already_answered")
        raise Conflict("This task has all the reviewers it needs; take the next one", code="task_full")
    return await _assign(session, task, reviewer, settings, now)


async def release(session: AsyncSession, *, tenant: str, reviewer: str, task_id: str) -> bool:
    """Give a claimed task back (skip): someone else may take it."""
    task = await get_task(session, tenant, task_id)
    result = await session.execute(
        update(A)
        .where(A.task_id == task.id, A.reviewer == reviewer, A.status == "active")
        .values(status="released")
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def answer(
    session: AsyncSession,
    *,
    tenant: str,
    reviewer: str,
    task_id: str,
    raw: Any,
    settings: Settings,
    store: ArtifactStore,
    external: bool = False,
) -> ReviewTask:
    """Record ``reviewer``'s answer; resolve the task (and the gate) when enough answers are in.

    Without a live claim, the answer is accepted if the task still has room (API convenience);
    after the time limit passed and the task went to someone else, it is a 409.
    """
    task = await get_task(session, tenant, task_id)
    if task.status != "open":
        raise Conflict("This task is already resolved", code="task_resolved")
    gate = await get_gate(session, tenant, task.gate_id)
    if gate.status != "open":
        raise Conflict(f"The {gate.gate} gate is {gate.status}", code="gate_closed")
    normalised = answers.validate(task.kind, raw, task.payload)
    now = utcnow()
    assignment = None if external else await active_assignment(session, task.id, reviewer)
    if assignment is None:
        if external:
            answered = await session.scalar(
                select(func.count()).where(
                    A.task_id == task.id, A.reviewer == reviewer, A.status == "answered"
                )
            )
            if answered:
                raise Conflict(f"{reviewer} already answered task {task.id}", code="already_answered")
            assignment = ReviewAssignment(
                id=new_id("ra"), task_id=task.id, tenant=tenant, reviewer=reviewer, assigned_at=now
            )
            session.add(assignment)
        else:
            expired = await session.scalar(
                select(func.count()).where(
                    A.task_id == task.id, A.reviewer == reviewer, A.status == "expired"
                )
            )
            try:
                assignment = (
                    await claim(session, tenant=tenant, reviewer=reviewer, task_id=task.id, settings=settings)
                ).assignment
            except Conflict as exc:
                if expired and exc.code == "task_full":
                    raise Conflict(
                        "The time limit for this task passed and it was given to another reviewer",
                        code="claim_expired",
                    ) from None
                raise
    assignment.status = "answered"
    assignment.answer = normalised
    assignment.answered_at = now
    if task.control and task.expected is not None:
        assignment.correct = answers.matches(task.kind, normalised, task.expected)
    await session.flush()
    await chain.append(
        session,
        action="review.answer",
        actor=reviewer,
        tenant=tenant,
        request_id=task.request_id,
        data={"task_id": task.id, "kind": task.kind, "control": task.control, "correct": assignment.correct},
    )
    if not task.control:
        await _maybe_resolve(session, task, gate, settings, store)
    return task


async def reviewer_scores(session: AsyncSession, tenant: str) -> dict[str, dict[str, Any]]:
    """Per reviewer: answers, control answers, correct ones and accuracy."""
    rows = (
        await session.execute(
            select(A.reviewer, T.control, A.correct, func.count())
            .join(T, T.id == A.task_id)
            .where(A.tenant == tenant, A.status == "answered")
            .group_by(A.reviewer, T.control, A.correct)
        )
    ).all()
    scores: dict[str, dict[str, Any]] = {}
    for reviewer, control, correct, count in rows:
        entry = scores.setdefault(reviewer, {"answered": 0, "controls": 0, "controls_correct": 0})
        entry["answered"] += count
        if control:
            entry["controls"] += count
            entry["controls_correct"] += count if correct else 0
    for entry in scores.values():
        entry["accuracy"] = (
            round(entry["controls_correct"] / entry["controls"], 4) if entry["controls"] else None
        )
    return scores


async def _trusted_answers(
    session: AsyncSession, task: ReviewTask, settings: Settings
) -> tuple[list[dict[str, Any]], int]:
    rows = (
        await session.execute(
            select(A.reviewer, A.answer)
            .where(A.task_id == task.id, A.status == "answered")
            .order_by(A.answered_at)
        )
    ).all()
    threshold = settings.review_min_control_accuracy
    if threshold <= 0:
        return [dict(a) for _, a in rows if a is not None], 0
    scores = await reviewer_scores(session, task.tenant)
    kept, dropped = [], 0
    for reviewer, value in rows:
        score = scores.get(reviewer, {})
        if score.get("controls", 0) >= MIN_CONTROLS_TO_SCORE and (score.get("accuracy") or 0.0) < threshold:
            dropped += 1
            continue
        if value is not None:
            kept.append(dict(value))
    return kept, dropped


async def _maybe_resolve(
    session: AsyncSession, task: ReviewTask, gate: ReviewGate, settings: Settings, store: ArtifactStore
) -> None:
    given, dropped = await _trusted_answers(session, task, settings)
    if len(given) < task.required:
        if dropped:
            task.required = max(task.required, len(given) + 1)
        return
    decision = answers.consensus(task.kind, given, task.payload)
    if not decision.decided:
        if task.required < gate.overlap + 2:
            task.required += 1  # a tie: one more reviewer breaks it
            return
        decision = answers.fallback(task.kind, given, task.payload)
    task.status = "resolved"
    task.resolution = decision.resolution
    task.agreement = decision.agreement
    task.resolved_at = utcnow()
    await session.flush()
    await chain.append(
        session,
        action="review.task.resolved",
        actor=chain.SYSTEM,
        tenant=task.tenant,
        request_id=task.request_id,
        data={"task_id": task.id, "kind": task.kind, "answers": len(given), "agreement": decision.agreement},
    )
    remaining = await _open_count(session, gate.id)
    _review_event(
        session, task.request_id, gate.gate, open_tasks=remaining, total=int(gate.summary.get("tasks", 0))
    )
    if remaining == 0:
        await finalize_gate(session, gate, settings, store)


# ---------------------------------------------------------------------------------------------------
# Resolving a gate.


@dataclass(frozen=True)
class Verdict:
    approve: bool
    reason: str
    summary: dict[str, Any]


async def _resolved_tasks(session: AsyncSession, gate_id: str) -> list[ReviewTask]:
    rows = await session.execute(
        select(T).where(T.gate_id == gate_id, T.control.is_(False)).order_by(T.position)
    )
    return list(rows.scalars())


def _agreement(tasks: list[ReviewTask]) -> float | None:
    values = [t.agreement for t in tasks if t.agreement is not None]
    return round(sum(values) / len(values), 4) if values else None


def merge_anchor_parts(tasks: list[ReviewTask]) -> dict[str, Any]:
    """One reviewed dictionary from the anchor tasks' resolutions (one task per part of it).

    A proposed term is decided by the task that showed it (a reviewer of another part who "adds" it
    again does not override that); a term no part proposed is kept once, as the first task added it.
    """
    owner: dict[str, int] = {}
    for index, task in enumerate(tasks):
        for anchor in task.payload.get("anchors", []):
            owner.setdefault(str(anchor.get("term")), index)
    anchors: list[dict[str, Any]] = []
    kept: set[str] = set()
    removed: set[str] = set()
    edited: set[str] = set()
    for index, task in enumerate(tasks):
        resolution = task.resolution or {}
        for anchor in resolution.get("anchors", []):
            term = anchor["term"]
            if owner.get(term, index) != index or term in kept:
                continue
            kept.add(term)
            anchors.append(anchor)
        removed |= {t for t in resolution.get("removed", []) if owner.get(t) == index}
        edited |= {t for t in resolution.get("edited", []) if owner.get(t) == index}
    added = sorted(term for term in kept if term not in owner)
    return {"anchors": anchors, "removed": sorted(removed), "added": added, "edited": sorted(edited)}


async def _anchor_verdict(tasks: list[ReviewTask], store: ArtifactStore, request_id: str) -> Verdict:
    if not tasks:
        return Verdict(True, "no anchors to review", {})
    resolution = merge_anchor_parts(tasks)
    if not resolution.get("anchors"):
        return Verdict(False, "reviewers removed every anchor: nothing left to forget", {"anchors": 0})
    await asyncio.to_thread(materials.write_anchors, store, request_id, resolution)
    summary = {
        "anchors": len(resolution["anchors"]),
        "removed": len(resolution.get("removed", [])),
        "added": len(resolution.get("added", [])),
        "edited": len(resolution.get("edited", [])),
        "parts": len(tasks),
    }
    reason = (
        f"anchor dictionary reviewed: {summary['anchors']} kept, {summary['added']} added, "
        f"{summary['removed']} removed, {summary['edited']} edited"
    )
    return Verdict(True, reason, summary)


async def _target_verdict(tasks: list[ReviewTask], store: ArtifactStore, request_id: str) -> Verdict:
    if not tasks:
        return Verdict(True, "no low-confidence blocks to review", {"blocks": 0})
    reviewed, excluded, replacements = [], [], {}
    for task in tasks:
        block = int(task.payload.get("block", task.position))
        verdict = (task.resolution or {}).get("verdict")
        reviewed.append(block)
        if verdict in ("reject", "fix"):
            excluded.append(block)
        if verdict == "fix":
            replacements[block] = str(task.resolution.get("replacement", "")) if task.resolution else ""
    await asyncio.to_thread(
        materials.write_target_review, store, request_id, reviewed, excluded, replacements
    )
    total = max((int(t.payload.get("total_blocks", 0)) for t in tasks), default=0)
    summary = {
        "reviewed": len(reviewed),
        "dropped": len(excluded) - len(replacements),
        "fixed": len(replacements),
        "total_blocks": total,
    }
    if total and len(excluded) - len(replacements) >= total:
        return Verdict(False, "reviewers rejected every block: no generic targets left to train on", summary)
    rejected = len(excluded) - len(replacements)
    return Verdict(
        True,
        f"target blocks reviewed: {len(reviewed) - len(excluded)} kept, {rejected} dropped"
        + (
            f", {len(replacements)} fixed (their targets are regenerated from the fix)"
            if replacements
            else ""
        ),
        summary,
    )


def _probe_outcome(task: ReviewTask) -> str:
    """Reviewers decide; an ``unsure`` majority defers to the judge (grade 2+ is a leak), and without
    a judge counts as a leak: what no human could clear must not be deployed."""
    label = str((task.resolution or {}).get("label", "unsure"))
    if label != "unsure":
        return label
    score = task.payload.get("judge_score")
    if isinstance(score, int):
        return "leaks" if score >= 2 else "generic"
    return "leaks"


def _evaluation_verdict(tasks: list[ReviewTask]) -> Verdict:
    if not tasks:
        return Verdict(True, "no probe completions to review", {"probes": 0})
    outcomes = Counter(_probe_outcome(t) for t in tasks)
    labels = Counter(str((t.resolution or {}).get("label")) for t in tasks)
    judged = [int(t.payload["judge_score"]) for t in tasks if isinstance(t.payload.get("judge_score"), int)]
    summary = {
        "probes": len(tasks),
        "leaks": outcomes["leaks"],
        "generic": outcomes["generic"],
        "reviewer_labels": dict(labels),
        "judge_familiar": sum(1 for s in judged if s >= 2),
    }
    if outcomes["leaks"]:
        return Verdict(
            False,
            f"reviewers found leaks in {outcomes['leaks']} of {len(tasks)} probe completion(s): deployment blocked",
            summary,
        )
    return Verdict(True, f"no leaks in {len(tasks)} probe completion(s) (reviewers and judge)", summary)


async def finalize_gate(
    session: AsyncSession, gate: ReviewGate, settings: Settings, store: ArtifactStore
) -> None:
    """Write the reviewed result back and approve or reject the request at its gate (caller commits)."""
    row = await session.get(ForgetRequest, gate.request_id, populate_existing=True)
    if row is None or row.status != GATE_STATUS[Gate(gate.gate)].value:
        await session.execute(
            update(G)
            .where(G.id == gate.id, G.status == "open")
            .values(status="closed", resolved_at=utcnow(), reason="the request left the gate")
        )
        return
    tasks = await _resolved_tasks(session, gate.id)
    if gate.gate == "anchor_review":
        verdict = await _anchor_verdict(tasks, store, gate.request_id)
    elif gate.gate == "target_review":
        verdict = await _target_verdict(tasks, store, gate.request_id)
    else:
        verdict = _evaluation_verdict(tasks)
    summary = {**gate.summary, **verdict.summary, "agreement": _agreement(tasks)}
    now = utcnow()
    claimed = await session.execute(
        update(G)
        .where(G.id == gate.id, G.status == "open")
        .values(
            status="resolved",
            outcome="approved" if verdict.approve else "rejected",
            reason=verdict.reason,
            summary=summary,
            resolved_at=now,
        )
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return
    await chain.append(
        session,
        action="review.gate.resolved",
        actor=chain.SYSTEM,
        tenant=gate.tenant,
        request_id=gate.request_id,
        data={"gate": gate.gate, "gate_id": gate.id, "approved": verdict.approve, **verdict.summary},
    )
    await forget_service.decide(
        session,
        row,
        actor=f"review:{gate.id}",
        approve=verdict.approve,
        reason=verdict.reason,
        gate=gate.gate,
    )


# ---------------------------------------------------------------------------------------------------
# Summaries, export and import.


async def request_summary(session: AsyncSession, row: ForgetRequest) -> dict[str, Any]:
    gates = list(
        (await session.execute(select(G).where(G.request_id == row.id).order_by(G.created_at))).scalars()
    )
    counts = {
        (gate_id, status): n
        for gate_id, status, n in (
            await session.execute(
                select(T.gate_id, T.status, func.count())
                .where(T.request_id == row.id, T.control.is_(False))
                .group_by(T.gate_id, T.status)
            )
        ).all()
    }
    waiting = STATUS_GATE.get(Status(row.status))
    out = []
    for gate in gates:
        open_tasks = counts.get((gate.id, "open"), 0)
        out.append(gate_out(gate, open_tasks, open_tasks + counts.get((gate.id, "resolved"), 0)))
    current = next(
        (g for g in out if waiting is not None and g["gate"] == waiting.value and g["status"] == "open"), None
    )
    return {
        "request_id": row.id,
        "status": row.status,
        "awaiting_review": waiting.value if waiting else None,
        "open_tasks": current["open_tasks"] if current else 0,
        "gates": out,
    }


def gate_out(gate: ReviewGate, open_tasks: int, total: int) -> dict[str, Any]:
    return {
        "id": gate.id,
        "request_id": gate.request_id,
        "gate": gate.gate,
        "status": gate.status,
        "outcome": gate.outcome,
        "reason": gate.reason,
        "overlap": gate.overlap,
        "open_tasks": open_tasks,
        "total_tasks": total,
        "summary": gate.summary,
        "created_at": gate.created_at.isoformat(),
        "deadline_at": gate.deadline_at.isoformat(),
        "escalated_at": gate.escalated_at.isoformat() if gate.escalated_at else None,
        "resolved_at": gate.resolved_at.isoformat() if gate.resolved_at else None,
    }


async def open_counts(session: AsyncSession, request_ids: list[str]) -> dict[str, int]:
    """Open (non-control) tasks of each request's open gate."""
    if not request_ids:
        return {}
    rows = await session.execute(
        select(T.request_id, func.count())
        .join(G, G.id == T.gate_id)
        .where(T.request_id.in_(request_ids), T.status == "open", T.control.is_(False), G.status == "open")
        .group_by(T.request_id)
    )
    return {rid: int(n) for rid, n in rows.all()}


async def queue_overview(session: AsyncSession, tenant: str, reviewer: str) -> list[dict[str, Any]]:
    """Open gates of the tenant with their open tasks and how many this reviewer can still take."""
    now = utcnow()
    gates = list(
        (
            await session.execute(
                select(G).where(G.tenant == tenant, G.status == "open").order_by(G.created_at)
            )
        ).scalars()
    )
    out = []
    for gate in gates:
        open_tasks = await _open_count(session, gate.id)
        available = int(
            await session.scalar(
                select(func.count())
                .select_from(T)
                .join(G, G.id == T.gate_id)
                .where(T.gate_id == gate.id, T.control.is_(False), *_claimable(reviewer, now))
            )
            or 0
        )
        subject = await session.scalar(
            select(ForgetRequest.subject).where(ForgetRequest.id == gate.request_id)
        )
        entry = gate_out(gate, open_tasks, int(gate.summary.get("tasks", 0)))
        entry.update(kind=answers.GATE_KIND[gate.gate], available=available, subject=subject or "")
        out.append(entry)
    return out


def export_lines(gate: ReviewGate, tasks: list[ReviewTask]) -> list[dict[str, Any]]:
    """One JSON object per task: input fields, the output fields expected, controls' known answers."""
    lines = []
    for task in tasks:
        line: dict[str, Any] = {
            "task_id": task.id,
            "gate_id": gate.id,
            "request_id": task.request_id,
            "kind": task.kind,
            "overlap": task.required,
            "control": task.control,
            "status": task.status,
            "input": task.payload,
            "output_fields": answers.OUTPUT_FIELDS[task.kind],
        }
        if task.control:
            line["known_solution"] = task.expected
        lines.append(line)
    return lines


@dataclass
class ImportReport:
    answers: int = 0
    controls: int = 0
    errors: list[dict[str, Any]] | None = None


async def import_lines(
    session: AsyncSession,
    gate: ReviewGate,
    lines: list[tuple[int, Any]],
    settings: Settings,
    store: ArtifactStore,
) -> ImportReport:
    """Answers from an external platform (``{"task_id", "worker", "output"}``) and new control tasks
    (``{"control": true, "input", "known_solution"}``). Bad lines are reported, good ones kept."""
    report = ImportReport(errors=[])
    assert report.errors is not None
    kind = answers.GATE_KIND[gate.gate]
    position = int(await session.scalar(select(func.count()).where(T.gate_id == gate.id)) or 0)
    for number, item in lines:
        try:
            if not isinstance(item, dict):
                raise Unprocessable("each line must be a JSON object")
            if item.get("control"):
                payload = item.get("input")
                if not isinstance(payload, dict):
                    raise Unprocessable("a control task needs an input object", param="input")
                expected = answers.validate(kind, item.get("known_solution"), payload)
                session.add(
                    ReviewTask(
                        id=new_id("rt"), tenant=gate.tenant, request_id=gate.request_id, gate_id=gate.id,
                        kind=kind, position=position, payload=payload, control=True, expected=expected,
                        required=1, status="open", created_at=utcnow(),
                    )
                )  # fmt: skip
                position += 1
                report.controls += 1
                continue
            given = item.get("answers")
            entries: list[Any] = given if isinstance(given, list) else [item]
            task_id = item.get("task_id")
            if not isinstance(task_id, str):
                raise Unprocessable("task_id is missing", param="task_id")
            task = await get_task(session, gate.tenant, task_id)
            if task.gate_id != gate.id:
                raise Unprocessable(f"task {task_id} belongs to another gate", param="task_id")
            for entry in entries:
                if not isinstance(entry, dict):
                    raise Unprocessable("each answer must be an object {worker, output}", param="answers")
                worker = str(entry.get("worker") or entry.get("worker_id") or "").strip()
                if not worker or len(worker) > 100:
                    raise Unprocessable(
                        "worker (the external reviewer's id, 1-100 characters) is missing", param="worker"
                    )
                async with session.begin_nested():
                    await answer(
                        session, tenant=gate.tenant, reviewer=f"external:{worker}", task_id=task_id,
                        raw=entry.get("output"), settings=settings, store=store, external=True,
                    )  # fmt: skip
                report.answers += 1
        except (Unprocessable, Conflict, NotFound) as exc:
            report.errors.append({"line": number, "error": exc.message})
    return report
