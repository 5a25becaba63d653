"""The purge: every request's personal data goes once its time has come, wherever it was kept.

What it covers (the sweeper runs :func:`purge_pass` on every pass):

* **A purge time for every terminal or parked request.** Failed, cancelled, superseded and rolled-back
  requests without one get ``retention_s`` after they finished; requests parked at a review gate or
  ``ready`` under a manual deploy policy get ``parked_retention_s`` after they stopped moving. A parked
  request whose time has come first fails (``expired``), then is purged: it can no longer go on.
* **Every copy.** The corpus and the stage outputs (``input/``, ``work/``) and, in the database: the
  subject, probes, the data-subject reference, free-text failure reasons and decision reasons, stage
  messages and summaries, event texts, review inputs, answers, resolutions and control answers, and
  the stored Idempotency-Key response. What stays: ids, hashes, counts, metrics and the audit chain
  (which holds hashes and counts, never corpus text).
* **Not under a running stage.** A request whose stage job is still running (its arq job in progress
  and its heartbeat recent) is purged on a later pass, once the worker has stopped.
* **Orphans.** A corpus folder without a request row (a crash between storing the corpus and
  committing its row) is deleted once older than ``orphan_grace_s``; in the object store, its
  objects and its data key (and every replica drops its scratch copies of purged requests).
* **Crypto-shredding.** In the object store the purge deletes the request's data key with its
  objects (``S3Store.purge``): a copy of the bucket taken before cannot be decrypted after.
* **Expired idempotency records** are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from arq.jobs import Job, JobStatus
from sqlalchemy import delete, select, update

from service import jobs
from service.artifacts.store import ArtifactStore
from service.audit import chain
from service.core.state import Resources
from service.db.base import utcnow
from service.forget.lifecycle import GATE_STATUS, STAGE_STATUS, TERMINAL, Status
from service.forget.models import ForgetRequest, IdempotencyRecord, RequestEvent
from service.orchestration.outbox import job_id_for

logger = logging.getLogger("obliviate.purge")

PURGED_SUBJECT = "(purged)"
#: States a request may sit in for good unless someone acts: they get a purge time too.
PARKED: frozenset[Status] = frozenset({*GATE_STATUS.values(), Status.READY})
#: Event fields kept after the purge (state names and numbers; never texts).
_EVENT_KEYS = frozenset(
    {"status", "from", "stage", "state", "progress", "gate", "decision", "version", "type"}
)
_STAGE_KEYS = frozenset({"state", "progress", "started_at", "finished_at", "attempts"})


@dataclass
class PurgeReport:
    scheduled: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    idempotency_expired: int = 0


def _retention(row: Any, default: float) -> float:
    try:
        return max(0.0, float((row.options or {}).get("retention_s", default)))
    except (TypeError, ValueError, OverflowError):
        return default


def _plus(moment: datetime, seconds: float) -> datetime:
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


async def schedule(resources: Resources, report: PurgeReport) -> None:
    """Give every terminal or parked request without a purge time one."""
    settings = resources.settings
    states = [s.value for s in (*TERMINAL, *PARKED)]
    async with resources.sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    ForgetRequest.id,
                    ForgetRequest.status,
                    ForgetRequest.options,
                    ForgetRequest.updated_at,
                    ForgetRequest.finished_at,
                ).where(
                    ForgetRequest.purge_after.is_(None),
                    ForgetRequest.purged_at.is_(None),
                    ForgetRequest.status.in_(states),
                )
            )
        ).all()
        for row in rows:
            since = row.updated_at if Status(row.status) in PARKED else (row.finished_at or row.updated_at)
            seconds = (
                settings.parked_retention_s
                if Status(row.status) in PARKED
                else _retention(row, settings.retention_s)
            )
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == row.id, ForgetRequest.purge_after.is_(None))
                .values(purge_after=_plus(since, seconds))
            )
            report.scheduled.append(row.id)
        await session.commit()


async def _stage_running(resources: Resources, row: Any, now: datetime) -> bool:
    """Whether a stage job of this request may still be writing its files."""
    running = [stage for stage, info in (row.stages or {}).items() if (info or {}).get("state") == "running"]
    if not running:
        return False
    beat = row.heartbeat_at
    if beat is not None and now - beat > timedelta(seconds=resources.settings.stall_timeout_s):
        return False  # its worker died: nothing is writing any more
    for stage in running:
        for attempt in {row.attempt, row.attempt - 1}:
            state = await Job(
                job_id_for(row.id, stage, attempt),
                resources.arq,
                _queue_name=jobs.QUEUE_NAME,
                _deserializer=jobs.deserialize,
            ).status()
            if state == JobStatus.in_progress:
                return True
    return False


async def _expire(resources: Resources, row: Any) -> bool:
    """A parked request past its purge time fails (it cannot go on without its corpus)."""
    from service.forget.service import transition

    async with resources.sessionmaker() as session:
        moved = await transition(
            session,
            row.id,
            expected=[row.status],
            to=Status.FAILED,
            actor=chain.SYSTEM,
            values={
                "failure_code": "expired",
                "failure_reason": f"Waited in {row.status} past its retention; its corpus was purged",
                "finished_at": utcnow(),
            },
            audit_data={"reason": "parked past retention", "code": "expired"},
        )
        await session.commit()
    return moved is not None


def _scrub_stages(stages: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {k: v for k, v in (info or {}).items() if k in _STAGE_KEYS}
        for name, info in (stages or {}).items()
    }


async def scrub_database(resources: Resources, request_id: str) -> None:
    """Clear the request's personal data from every table (one transaction)."""
    from service.review.models import ReviewAssignment, ReviewGate, ReviewTask

    async with resources.sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id, populate_existing=True)
        if row is None:
            return
        meta = {k: v for k, v in (row.meta or {}).items() if k == "legal_basis"}
        decisions = [{k: v for k, v in d.items() if k != "reason"} for d in (row.decisions or [])]
        failure = (
            None if row.failure_code is None else f"({row.failure_code}; details purged with the corpus)"
        )
        await session.execute(
            update(ForgetRequest)
            .where(ForgetRequest.id == request_id)
            .values(
                subject=PURGED_SUBJECT,
                probes=[],
                meta=meta,
                decisions=decisions,
                failure_reason=failure,
                stages=_scrub_stages(row.stages),
                due_extension_reason=None if row.due_extension_reason is None else "(purged)",
            )
        )
        # Progress events (many per stage, each with a message) are transient: they go in one statement.
        await session.execute(
            delete(RequestEvent).where(RequestEvent.request_id == request_id, RequestEvent.kind == "progress")
        )
        events = (
            await session.execute(
                select(RequestEvent.id, RequestEvent.data).where(RequestEvent.request_id == request_id)
            )
        ).all()
        for event_id, data in events:
            kept = {k: v for k, v in (data or {}).items() if k in _EVENT_KEYS and not isinstance(v, dict)}
            if kept != data:
                await session.execute(
                    update(RequestEvent).where(RequestEvent.id == event_id).values(data=kept)
                )
        tasks = select(ReviewTask.id).where(ReviewTask.request_id == request_id).scalar_subquery()
        await session.execute(
            update(ReviewAssignment)
            .where(ReviewAssignment.task_id.in_(tasks))
            .values(answer=None)
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(ReviewTask)
            .where(ReviewTask.request_id == request_id)
            .values(payload={}, resolution=None, expected=None)
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(ReviewGate)
            .where(ReviewGate.request_id == request_id)
            .values(reason=None, summary={}, inputs_purged_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        # A replay of the POST answers with the request as it is now (purged), not its old body.
        await session.flush()
        row = await session.get(ForgetRequest, request_id, populate_existing=True)
        if row is not None:
            import msgspec

            from service.forget.views import to_out

            body = msgspec.to_builtins(to_out(row, due_soon_s=resources.settings.due_soon_s))
            await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.request_id == request_id)
                .values(response_body=body)
            )
        await session.commit()


async def purge_request(resources: Resources, store: ArtifactStore, row: Any) -> bool:
    removed = await asyncio.to_thread(store.purge, row.id)
    await scrub_database(resources, row.id)
    async with resources.sessionmaker() as session:
        result = await session.execute(
            update(ForgetRequest)
            .where(ForgetRequest.id == row.id, ForgetRequest.purged_at.is_(None))
            .values(purged_at=utcnow())
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await chain.append(
                session,
                action="corpus.purged",
                actor=chain.SYSTEM,
                tenant=row.tenant,
                request_id=row.id,
                data={"areas": removed, "fields": "subject, probes, reasons, review inputs and answers"},
            )
        await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def purge_due(resources: Resources, store: ArtifactStore, report: PurgeReport) -> None:
    now = utcnow()
    async with resources.sessionmaker() as session:
        due = (
            await session.execute(
                select(
                    ForgetRequest.id,
                    ForgetRequest.tenant,
                    ForgetRequest.status,
                    ForgetRequest.stages,
                    ForgetRequest.attempt,
                    ForgetRequest.heartbeat_at,
                ).where(ForgetRequest.purge_after <= now, ForgetRequest.purged_at.is_(None))
            )
        ).all()
    for row in due:
        try:
            await _purge_one(resources, store, row, now, report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one request's failure must not stop the others' purge
            report.errors.append(row.id)
            logger.warning("purge of %s failed (retried next pass): %s", row.id, type(exc).__name__)


async def _purge_one(
    resources: Resources, store: ArtifactStore, row: Any, now: datetime, report: PurgeReport
) -> None:
    status = Status(row.status)
    if status in STAGE_STATUS.values() or status in {Status.QUEUED, Status.RECEIVED}:
        # Left its parked state meanwhile (a gate approved): it gets a new time when it stops again.
        async with resources.sessionmaker() as session:
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == row.id, ForgetRequest.status == row.status)
                .values(purge_after=None)
            )
            await session.commit()
        return
    if status in PARKED:
        if not await _expire(resources, row):
            return
        report.expired.append(row.id)
    if await _stage_running(resources, row, now):
        report.deferred.append(row.id)
        return
    if await purge_request(resources, store, row):
        report.purged.append(row.id)


def _orphan_dirs(root: Path, known: set[str], grace_s: float) -> list[Path]:
    if not root.is_dir():
        return []
    cutoff = time.time() - grace_s
    found = []
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in known and not entry.name.startswith("."):
            try:
                if entry.stat().st_mtime < cutoff:
                    found.append(entry)
            except FileNotFoundError:
                continue
    return found


async def _collect_stored_orphans(resources: Resources, store: Any, report: PurgeReport) -> None:
    """The object store: this host's scratch copies of purged requests, and objects or data keys of
    requests that were never committed (keys older than the grace period; objects without a key)."""
    await asyncio.to_thread(store.prune_local)
    candidates: set[str] = await asyncio.to_thread(
        store.stored_request_ids, resources.settings.orphan_grace_s
    )
    if not candidates:
        return
    async with resources.sessionmaker() as session:
        known = set(
            (
                await session.execute(select(ForgetRequest.id).where(ForgetRequest.id.in_(candidates)))
            ).scalars()
        )
    for request_id in sorted(candidates - known):
        await asyncio.to_thread(store.purge, request_id)
        report.orphans.append(request_id)


async def collect_orphans(resources: Resources, store: ArtifactStore, report: PurgeReport) -> None:
    """Delete artifact folders of requests that were never committed (older than the grace period)."""
    if hasattr(store, "stored_request_ids"):
        await _collect_stored_orphans(resources, store, report)
        return
    root = getattr(store, "root", None)
    if root is None:
        return
    candidates = await asyncio.to_thread(_orphan_dirs, Path(root), set(), resources.settings.orphan_grace_s)
    if not candidates:
        return
    names = [path.name for path in candidates]
    async with resources.sessionmaker() as session:
        known = set(
            (await session.execute(select(ForgetRequest.id).where(ForgetRequest.id.in_(names)))).scalars()
        )
    for path in candidates:
        if path.name in known:
            continue
        await asyncio.to_thread(shutil.rmtree, path, True)
        report.orphans.append(path.name)
    if report.orphans:
        logger.info("deleted %d orphaned artifact folder(s)", len(report.orphans))


async def expire_idempotency(resources: Resources, report: PurgeReport) -> None:
    async with resources.sessionmaker() as session:
        result = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
        )
        report.idempotency_expired = int(result.rowcount or 0)  # type: ignore[attr-defined]
        await session.commit()


async def purge_pass(resources: Resources, store: ArtifactStore) -> PurgeReport:
    report = PurgeReport()
    await schedule(resources, report)
    await purge_due(resources, store, report)
    await collect_orphans(resources, store, report)
    await expire_idempotency(resources, report)
    if report.purged or report.idempotency_expired:
        await _compact_sqlite(resources)
    return report


async def _compact_sqlite(resources: Resources) -> None:
    """SQLite keeps old page images in its write-ahead log: fold it into the file (where deleted
    content is zeroed, ``secure_delete``) and truncate it, so purged text is gone from the disk too."""
    from sqlalchemy import text

    from service.db.engine import is_sqlite

    if not is_sqlite(resources.engine):
        return
    try:
        async with resources.engine.connect() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    except Exception as exc:  # busy readers: the next pass tries again
        logger.warning("WAL checkpoint after purge failed: %s", type(exc).__name__)
