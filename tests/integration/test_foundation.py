"""The app boots on SQLite and PostgreSQL, reports dead dependencies, and round-trips a real job."""

from __future__ import annotations

import asyncio
from pathlib import Path

from litestar.testing import AsyncTestClient

from gpu_runtime.worker import create_worker
from service import jobs
from service.app import create_app
from service.queue import EmbeddedRedis
from service.settings import Settings


async def test_app_boots_and_is_ready(database_url: str, clean_redis: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis)
    async with AsyncTestClient(create_app(settings)) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"]["ok"] is True
        assert ready.json()["checks"]["redis"]["ok"] is True
        # Booting again (migrations already applied) is a no-op.
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200


async def test_readiness_names_a_dead_redis(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", redis_url="redis://127.0.0.1:1/0")
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["redis"]
    assert body["checks"]["database"]["ok"] is True
    assert "error" in body["checks"]["redis"]


async def test_unknown_route_uses_the_error_envelope(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/no-such-thing")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_embedded_redis_default_starts_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    settings = Settings(data_dir=data_dir, redis_url=None)
    async with AsyncTestClient(create_app(settings)) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert (data_dir / "obliviate.db").exists()
        socket_path = EmbeddedRedis(data_dir).socket_path
        assert socket_path.exists()
    assert not socket_path.exists(), "the embedded Redis should shut down with the app"


async def test_ping_job_round_trips_through_a_real_worker(settings: Settings, arq_pool: object) -> None:
    from arq.connections import ArqRedis

    assert isinstance(arq_pool, ArqRedis)
    job = await arq_pool.enqueue_job(jobs.PING, "hello")
    assert job is not None
    worker = create_worker(settings, settings.redis_url or "", burst=True, handle_signals=False)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=30)
    finally:
        await worker.close()
    result = await job.result(timeout=5)
    assert result["pong"] == "hello"
    assert result["worker"]
    assert worker.jobs_complete == 1
    # The payload on the queue was msgpack, not pickle.
    info = await job.info()
    assert info is not None and info.function == jobs.PING
