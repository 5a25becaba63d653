"""The sweeper: every active request must have a live job; runs the purge (``purge.py``).

A request in an active state (queued or a stage) whose job is gone from Redis (restart, flush) or whose
running job stopped heart-beating (worker killed) gets a fresh attempt: the attempt counter is bumped
and a new outbox row written in one transaction, so the old job, should it ever run, finds itself
stale and does nothing. Multiple sweepers are safe: the bump is a compare-and-set.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from arq.jobs import Job, JobStatus
from sqlalchemy import select, update

from service import jobs
from service.audit import chain
from service.core.state import Resources
from service.db.base import utcnow
from service.forget.lifecycle import ACTIVE, STATUS_STAGE, Status
from service.forget.models import ForgetRequest, RequestEvent
from service.orchestration.models import OutboxEntry
from service.orchestration.outbox import add_job, job_id_for

logger = logging.getLogger("obliviate.sweeper")


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    purge: Any = None  # the purge pass's report (service.orchestration.purge.PurgeReport)


def stage_for(status: str) -> str:
    return jobs.REINFORCE if status in {Status.QUEUED, Status.RECEIVED} else STATUS_STAGE[Status(status)]


async def requeue(
    resources: Resources, request_id: str, status: str, attempt: int, stage: str, reason: str
) -> bool:
    """Give the stage a new attempt (compare-and-set on status and attempt)."""
    async with resources.sessionmaker() as session:
        result = await session.execute(
            update(ForgetRequest)
            .where(
                ForgetRequest.id == request_id,
                ForgetRequest.status == status,
                ForgetRequest.attempt == attempt,
            )
            .values(attempt=attempt + 1, updated_at=utcnow(), heartbeat_at=None)
            .returning(ForgetRequest.tenant)
        )
        tenant = result.scalar_one_or_none()
        if tenant is None:
            await session.rollback()
            return False
        add_job(session, request_id, stage, attempt + 1)
        session.add(
            RequestEvent(request_id=request_id, kind="requeued", data={"stage": stage, "reason": reason})
        )
        await chain.append(
            session,
            action="job.requeued",
            actor=chain.SYSTEM,
            tenant=tenant,
            request_id=request_id,
            data={"stage": stage, "attempt": attempt + 1, "reason": reason},
        )
        await session.commit()
    # The old job must not keep a burst worker waiting for it, nor run again later.
    try:
        await resources.arq.zrem(jobs.QUEUE_NAME, job_id_for(request_id, stage, attempt))
    except Exception as exc:
        logger.warning("could not drop stale job of %s: %s", request_id, type(exc).__name__)
    kick = resources.extras.get("relay_kick")
    if kick is not None:
        kick()
    return True


async def fail(resources: Resources, request_id: str, status: str, attempt: int, reason: str) -> bool:
    from service.forget.service import transition

    async with resources.sessionmaker() as session:
        moved = await transition(
            session,
            request_id,
            expected=[status],
            to=Status.FAILED,
            actor=chain.SYSTEM,
            attempt=attempt,
            values={"failure_code": "stage_lost", "failure_reason": reason, "finished_at": utcnow()},
        )
        await session.commit()
    return moved is not None


async def sweep_jobs(resources: Resources, report: SweepReport) -> None:
    settings = resources.settings
    now = utcnow()
    async with resources.sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    ForgetRequest.id,
                    ForgetRequest.status,
                    ForgetRequest.attempt,
                    ForgetRequest.heartbeat_at,
                    ForgetRequest.updated_at,
                    ForgetRequest.stages,
                ).where(ForgetRequest.status.in_([s.value for s in ACTIVE]))
            )
        ).all()
        pending: dict[str, Any] = {}
        if rows:
            job_ids = [job_id_for(r.id, stage_for(r.status), r.attempt) for r in rows]
            for entry in (
                await session.execute(
                    select(OutboxEntry.job_id, OutboxEntry.dispatched_at).where(
                        OutboxEntry.job_id.in_(job_ids)
                    )
                )
            ).all():
                pending[entry.job_id] = entry.dispatched_at
    if rows:
        await flag_if_no_worker(resources, [row.id for row in rows])
    grace = timedelta(seconds=settings.enqueue_grace_s)
    stall = timedelta(seconds=settings.stall_timeout_s)
    for row in rows:
        stage = stage_for(row.status)
        job_id = job_id_for(row.id, stage, row.attempt)
        if job_id in pending and pending[job_id] is None:
            continue  # the relay has not enqueued it yet
        just_enqueued = job_id in pending and now - pending[job_id] < grace
        state = await Job(
            job_id, resources.arq, _queue_name=jobs.QUEUE_NAME, _deserializer=jobs.deserialize
        ).status()
        reason: str | None = None
        if state == JobStatus.not_found and not just_enqueued:
            reason = "job lost (queue emptied or Redis restarted)"
        elif state == JobStatus.in_progress:
            beat = row.heartbeat_at
            if beat is not None and now - beat > stall:
                reason = f"no heartbeat for {int((now - beat).total_seconds())} s (worker died?)"
            elif beat is None:
                # A worker took the job but never claimed the request (its claim writes the first
                # heartbeat in milliseconds): it died in between. arq keeps the job's in-progress
                # marker for the job's whole timeout (hours), so count from the enqueue instead.
                since = pending.get(job_id) or row.updated_at
                if since is not None and now - since > stall:
                    waited = int((now - since).total_seconds())
                    reason = f"job taken {waited} s ago and never started (worker died?)"
        elif state == JobStatus.complete:
            reason = "job ended without finishing the stage"
        if reason is None:
            continue
        tries = int(((row.stages or {}).get(stage) or {}).get("attempts", 0))
        if state == JobStatus.complete and tries >= settings.stage_max_tries:
            if await fail(resources, row.id, row.status, row.attempt, f"stage {stage} stopped: {reason}"):
                report.failed.append(row.id)
            continue
        logger.info("re-enqueueing %s stage %s: %s", row.id, stage, reason)
        if await requeue(resources, row.id, row.status, row.attempt, stage, reason):
            report.requeued.append(row.id)


async def flag_if_no_worker(resources: Resources, request_ids: list[str]) -> list[str]:
    """Mark requests that wait while no worker is alive (an event on each, once; readiness says it too)."""
    from service.orchestration.workers import COUNTERS, live_workers

    flagged: set[str] = resources.extras.setdefault("flagged_no_worker", set())
    if await live_workers(resources.arq):
        flagged.clear()
        return []
    new = [request_id for request_id in request_ids if request_id not in flagged]
    if not new:
        return []
    async with resources.sessionmaker() as session:
        for request_id in new:
            session.add(
                RequestEvent(
                    request_id=request_id,
                    kind="worker_unavailable",
                    data={"reason": "no worker is alive to run this request's stage; it waits for one"},
                )
            )
        await session.commit()
    flagged.update(new)
    COUNTERS.flagged_requests += len(new)
    logger.warning("%d request(s) wait with no live worker", len(new))
    return new


async def sweep_once(resources: Resources) -> SweepReport:
    report = SweepReport()
    from service.orchestration.purge import purge_pass

    try:
        await sweep_jobs(resources, report)
    finally:  # a failing job sweep must not hold personal data past its purge time
        purged = await purge_pass(resources, resources.extras["artifacts"])
        report.purged.extend(purged.purged)
        report.purge = purged
    return report


async def run(resources: Resources) -> None:
    interval = resources.settings.sweep_interval_s
    task = asyncio.current_task()
    # Stop once a cancel was requested, even if a call below swallowed its CancelledError.
    while task is None or task.cancelling() == 0:
        await asyncio.sleep(interval)
        try:
            await sweep_once(resources)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("sweep failed: %s", type(exc).__name__)
