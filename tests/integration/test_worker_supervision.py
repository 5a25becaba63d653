"""The workers `serve` starts are supervised, and readiness tells when requests wait without a worker.

Real parts: `obliviate worker` subprocesses on the test Redis, SIGKILL, the app over HTTP, the sweeper.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import redis
from sqlalchemy import select

from gpu_runtime.worker import create_worker
from service import jobs
from service.cli import prepared_service
from service.forget.models import RequestEvent
from service.orchestration.sweeper import sweep_once
from service.orchestration.workers import COUNTERS, WorkerSupervisor
from service.settings import Settings
from tests.support.forget import app_client, fake_stage_runner, make_key, resources_of, submit


def _live(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(
            k.decode()[len(jobs.WORKER_HEALTH_PREFIX) :] for k in client.keys(f"{jobs.WORKER_HEALTH_PREFIX}*")
        )
    finally:
        client.close()


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pid(worker_id: str) -> int:
    return int(worker_id.rsplit(":", 1)[1])


def test_killed_worker_is_restarted_and_stopped_at_the_end(tmp_path: Path, clean_redis: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=clean_redis, workers=1, worker_health_interval_s=0.5
    )
    restarts = COUNTERS.restarts
    with prepared_service(settings):
        first = _wait_for(lambda: _live(clean_redis), 60, "the first worker's health key")
        assert len(first) == 1
        old_pid = _pid(first[0])
        os.kill(old_pid, signal.SIGKILL)  # what the OOM killer does
        second = _wait_for(
            lambda: [w for w in _live(clean_redis) if _pid(w) != old_pid], 60, "a restarted worker"
        )
        assert COUNTERS.restarts == restarts + 1
        new_pid = _pid(second[0])
        # The restarted worker runs jobs (a round trip through the queue).
        answer = asyncio.run(_ping(clean_redis))
        assert answer["pong"] == "after-restart" and answer["pid"] == new_pid
        # The dead worker's key expires within about one interval.
        _wait_for(lambda: all(_pid(w) != old_pid for w in _live(clean_redis)), 10, "the dead key to expire")
    # Leaving the block stops the (restarted) worker too; a clean stop deletes its key.
    _wait_for(lambda: not _process_alive(new_pid), 20, "the worker to stop")
    assert _live(clean_redis) == []


async def _ping(url: str) -> dict[str, object]:
    from service.queue import create_pool

    pool = create_pool(url)
    try:
        job = await pool.enqueue_job(jobs.PING, "after-restart")
        assert job is not None
        result: dict[str, object] = await job.result(timeout=30)
        return result
    finally:
        await pool.aclose()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped counts as stopped.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_supervisor_backs_off_between_restarts(tmp_path: Path) -> None:
    import shutil
    import subprocess

    starts: list[float] = []
    crash = [shutil.which("false") or "/bin/false"]  # exits at once with status 1

    def spawn() -> subprocess.Popen[bytes]:
        starts.append(time.monotonic())
        return subprocess.Popen(crash)

    supervisor = WorkerSupervisor(spawn, 1, backoff_initial_s=0.2, backoff_max_s=0.8, poll_s=0.02).start()
    try:
        _wait_for(lambda: len(starts) >= 5, 20, "five starts")
    finally:
        supervisor.stop()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each restart waits at least its back-off: 0.2, 0.4, 0.8, then capped at 0.8.
    for gap, delay in zip(gaps, (0.2, 0.4, 0.8, 0.8), strict=False):
        assert gap >= delay, gaps
    assert gaps[3] < 1.5, gaps  # capped at 0.8 (uncapped it would be 1.6)
    assert supervisor.counters.last_exit_code == 1


async def test_readiness_and_request_flag_when_no_worker_is_alive(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"worker_health_interval_s": 0.5, "sweep_interval_s": 3600, "relay_interval_s": 3600}
    )
    async with app_client(settings) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text  # nothing waits: no worker needed
        assert ready.json()["checks"]["workers"]["live"] == 0
        key = await make_key(client)
        created = await submit(client, key)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        workers = ready.json()["checks"]["workers"]
        assert workers["waiting_without_worker"] == 1 and "workers" in ready.json()["failed"]
        resources = resources_of(client)
        await sweep_once(resources)
        await sweep_once(resources)  # flagged once, not on every pass
        async with resources.sessionmaker() as session:
            kinds = (
                await session.scalars(
                    select(RequestEvent.kind).where(RequestEvent.request_id == created["id"])
                )
            ).all()
        assert kinds.count("worker_unavailable") == 1
        events = await client.get(
            f"{created['url']}/events?follow=false", headers={"Authorization": f"Bearer {key}"}
        )
        assert "event: worker_unavailable" in events.text
        # A live worker makes it ready again.
        worker = create_worker(
            settings,
            settings.redis_url or "",
            handle_signals=False,
            extra_ctx={"stage_runner": fake_stage_runner},
        )
        task = asyncio.create_task(worker.async_run())
        try:
            for _ in range(100):
                ready = await client.get("/health/ready")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["workers"]["live"] == 1
        finally:
            task.cancel()
            await worker.close()


async def test_readiness_can_report_without_failing(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"ready_requires_worker": False, "sweep_interval_s": 3600, "relay_interval_s": 3600}
    )
    async with app_client(settings) as client:
        await submit(client, await make_key(client))
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["workers"]["waiting_without_worker"] == 1
