"""A worker killed after arq handed it a stage's job but before the stage claimed the request.

Found by bench/chaos.py: a worker SIGKILLed right after it took ``unlearn`` from the queue left the job
``in_progress`` in Redis (arq keeps that marker for the job's whole timeout, hours) while the request
had no heartbeat yet (the claim writes the first one). The sweeper only re-enqueued in-progress jobs
whose heartbeat went stale, so a request without any heartbeat waited for hours.
"""

from __future__ import annotations

import asyncio

from arq.constants import in_progress_key_prefix
from sqlalchemy import func, select

from service.audit.models import AuditEvent
from service.forget.models import ForgetRequest
from service.orchestration.outbox import job_id_for
from service.orchestration.relay import dispatch_once
from service.orchestration.sweeper import sweep_once
from service.settings import Settings
from tests.support.forget import app_client, drive, make_key, resources_of, submit


async def test_job_taken_but_never_claimed_is_requeued_after_the_stall_timeout(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
            "stall_timeout_s": 1.0,
        }
    )
    async with app_client(settings) as client:
        resources = resources_of(client)
        key = await make_key(client)
        created = await submit(client, key)
        rid = created["id"]
        await dispatch_once(resources)
        # A worker took the job (arq's in-progress marker, which outlives a SIGKILLed worker for the
        # job's whole timeout) and died before claiming the request: no heartbeat was ever written.
        job_id = job_id_for(rid, "reinforce", 1)
        await resources.arq.zrem("obliviate:queue", job_id)
        await resources.arq.set(in_progress_key_prefix + job_id, b"1", px=6 * 3600 * 1000)
        async with resources.sessionmaker() as session:
            row = await session.get(ForgetRequest, rid)
            assert row is not None and row.heartbeat_at is None and row.status == "queued"

        # Within the stall timeout a job just taken is left alone (the claim takes milliseconds) ...
        assert (await sweep_once(resources)).requeued == []
        # ... past it, the request gets a new attempt instead of waiting for arq's marker to expire.
        await asyncio.sleep(1.5)
        report = await sweep_once(resources)
        assert report.requeued == [rid]

        state = await drive(client, settings, rid)
        assert state["status"] == "ready"
        async with resources.sessionmaker() as session:
            ready = await session.scalar(
                select(func.count()).where(AuditEvent.action == "status.ready", AuditEvent.request_id == rid)
            )
        assert ready == 1
