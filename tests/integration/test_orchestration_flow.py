"""Orchestration with a real arq worker (burst mode), the embedded Redis and real databases.

Stage work is done by ``fake_stage_runner``, a test double for the pipeline (fast, no model); the
state machine, outbox, relay, sweeper, heartbeats and cancel are all real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from service.audit.models import AuditEvent
from service.forget.models import ForgetRequest
from service.orchestration.relay import dispatch_once
from service.orchestration.sweeper import sweep_once
from service.settings import Settings
from tests.support.forget import app_client, auth, drive, fake_stage_runner, make_key, resources_of, submit


def _fast(settings: Settings, **extra: Any) -> Settings:
    values: dict[str, Any] = {"heartbeat_interval_s": 0.2, "sweep_interval_s": 3600, "relay_interval_s": 3600}
    values.update(extra)
    return settings.model_copy(update=values)


async def _count(client: Any, action: str, request_id: str) -> int:
    async with resources_of(client).sessionmaker() as session:
        return int(
            await session.scalar(
                select(func.count()).where(AuditEvent.action == action, AuditEvent.request_id == request_id)
            )
            or 0
        )


async def test_request_goes_through_every_stage(database_url: str, clean_redis: str, tmp_path: Path) -> None:
    settings = _fast(Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis))
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        state = await drive(client, settings, created["id"])
        assert state["status"] == "ready"
        body = (await client.get(created["url"], headers=auth(key))).json()
        assert body["progress"]["overall"] == 1.0
        assert all(s["state"] == "done" for s in body["progress"]["stages"].values())
        assert body["metrics"]["forget"]["leak_rate"] == 0.0
        assert body["timings"]["finished_at"] is not None
        events = await client.get(f"{created['url']}/events?follow=false", headers=auth(key))
        assert events.status_code == 200
        statuses = [line for line in events.text.splitlines() if line.startswith("event: status")]
        assert len(statuses) == 7  # queued + five stages + ready
        last_id = [line for line in events.text.splitlines() if line.startswith("id: ")][3].split()[1]
        resumed = await client.get(
            f"{created['url']}/events?follow=false", headers={**auth(key), "Last-Event-ID": last_id}
        )
        assert resumed.text.count("id: ") == events.text.count("id: ") - 4


async def test_review_gate_blocks_until_approved(settings: Settings) -> None:
    settings = _fast(settings)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(client, key, options={"review_gates": ["anchor_review"]})
        state = await drive(client, settings, created["id"])
        assert state["status"] == "awaiting_anchor_review"
        url = created["url"]
        assert (await client.post(f"{url}/approve", json={}, headers=auth(key))).status_code == 403
        wrong = await client.post(f"{url}/approve", json={"gate": "target_review"}, headers=auth(reviewer))
        assert wrong.status_code == 409
        ok = await client.post(
            f"{url}/approve", json={"reason": "anchors look right"}, headers=auth(reviewer)
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "generating_targets"
        assert ok.json()["decisions"][0]["decision"] == "approved"
        state = await drive(client, settings, created["id"])
        assert state["status"] == "ready"
        again = await client.post(f"{url}/approve", json={}, headers=auth(reviewer))
        assert again.status_code == 409


async def test_reject_needs_reason_and_fails_request(settings: Settings) -> None:
    settings = _fast(settings)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(client, key, options={"review_gates": ["anchor_review"]})
        await drive(client, settings, created["id"])
        url = created["url"]
        assert (
            await client.post(f"{url}/approve", json={"decision": "reject"}, headers=auth(reviewer))
        ).status_code == 422
        rejected = await client.post(
            f"{url}/approve", json={"decision": "reject", "reason": "wrong person"}, headers=auth(reviewer)
        )
        assert rejected.json()["status"] == "failed"
        assert "wrong person" in rejected.json()["failure"]["reason"]


async def test_bad_input_fails_with_readable_reason(settings: Settings) -> None:
    settings = _fast(settings)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key, hints=[{"term": "BAD-INPUT"}])
        state = await drive(client, settings, created["id"])
        assert state["status"] == "failed"
        body = (await client.get(created["url"], headers=auth(key))).json()
        assert body["failure"]["code"] == "bad_input"
        assert "does not occur in the corpus" in body["failure"]["reason"]


async def test_cancel_stops_a_running_stage(settings: Settings) -> None:
    from gpu_runtime.worker import create_worker

    settings = _fast(settings)
    started = asyncio.Event()
    stopped: list[str] = []
    loop = asyncio.get_running_loop()

    def slow(inp: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if inp.should_cancel():
                stopped.append(inp.stage)
                from gpu_runtime.pipeline.errors import Cancelled

                raise Cancelled("stop", stage=inp.stage)
            inp.progress(0.5, "working")
            time.sleep(0.02)
        return fake_stage_runner(inp)

    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        await dispatch_once(resources_of(client))
        worker = create_worker(
            settings,
            settings.redis_url or "",
            burst=True,
            handle_signals=False,
            extra_ctx={"stage_runner": slow},
        )
        task = asyncio.create_task(worker.async_run())
        await asyncio.wait_for(started.wait(), 10)
        began = time.monotonic()
        cancelled = await client.post(
            f"{created['url']}/cancel", json={"reason": "changed our mind"}, headers=auth(key)
        )
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        await asyncio.wait_for(task, 10)
        await worker.close()
        assert stopped == ["reinforce"]
        assert time.monotonic() - began < 3
        again = await client.post(f"{created['url']}/cancel", headers=auth(key))
        assert again.status_code == 409


async def test_flushed_redis_request_completes_once(settings: Settings) -> None:
    settings = _fast(settings, enqueue_grace_s=0)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        await dispatch_once(resources_of(client))
        # The POST also woke the app's own relay; let that pass finish, so the job it may enqueue is
        # gone with the flush too and only the sweeper can bring the request back.
        await asyncio.sleep(0.5)
        redis.Redis.from_url(settings.redis_url or "").flushdb()
        report = await sweep_once(resources_of(client))
        assert report.requeued == [created["id"]]
        state = await drive(client, settings, created["id"])
        assert state["status"] == "ready"
        assert await _count(client, "status.ready", created["id"]) == 1
        assert await _count(client, "job.requeued", created["id"]) == 1


WORKER_SCRIPT = """
import sys, time
from tests.support.forget import app_client, fake_stage_runner
from gpu_runtime.worker import create_worker
from service.settings import Settings

def slow(inp):
    if inp.stage == "reinforce":
        for _ in range(600):
            inp.progress(0.3, "slow")
            time.sleep(0.05)
    return fake_stage_runner(inp)

settings = Settings()
create_worker(settings, settings.redis_url, burst=False, extra_ctx={"stage_runner": slow}).run()
"""


async def test_killed_worker_mid_stage_request_completes_once(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = _fast(
        Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis),
        stall_timeout_s=1.0,
    )
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        await dispatch_once(resources_of(client))
        env = {
            **os.environ,
            "OBLIVIATE_DATA_DIR": str(settings.data_dir),
            "OBLIVIATE_REDIS_URL": clean_redis,
            "OBLIVIATE_DATABASE_URL": database_url,
            "OBLIVIATE_HEARTBEAT_INTERVAL_S": "0.2",
        }
        process = subprocess.Popen(  # noqa: ASYNC220 - a real process to kill -9
            [sys.executable, "-c", WORKER_SCRIPT], env=env, cwd=Path(__file__).parents[2]
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with resources_of(client).sessionmaker() as session:
                    row = await session.get(ForgetRequest, created["id"], populate_existing=True)
                    assert row is not None
                    if (
                        row.status == "reinforcing"
                        and (row.stages.get("reinforce") or {}).get("progress", 0) > 0
                    ):
                        break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the worker never started the stage")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        await asyncio.sleep(1.5)  # let the heartbeat go stale
        report = await sweep_once(resources_of(client))
        assert report.requeued == [created["id"]]
        state = await drive(client, settings, created["id"])
        assert state == {"status": "ready", "attempt": 6}
        assert await _count(client, "status.ready", created["id"]) == 1
        assert await _count(client, "status.reinforcing", created["id"]) == 1


async def test_no_job_means_no_requeue_while_healthy(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _fast(settings)
    caplog.set_level(logging.DEBUG)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        await dispatch_once(resources_of(client))
        report = await sweep_once(resources_of(client))
        assert report.requeued == []
        state = await drive(client, settings, created["id"])
        assert state["status"] == "ready"
