"""Server-sent event streams are capped per key and tenant, bounded in time, end when their key is
revoked, and do not hold a stopping server up.

Real HTTP: uvicorn serving the app on a local port (the in-memory ASGI transport buffers whole
responses, so it cannot show an open stream), the session Redis, SQLite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.auth.keys import revoke
from service.settings import Settings, settings_env
from tests.support.forget import auth, body, make_key
from tests.support.live import free_port, live_server

pytestmark = pytest.mark.timeout(120)


async def _queued_request(client: httpx.AsyncClient, key: str) -> str:
    import uuid

    response = await client.post("/v1/forget-requests", json=body(), headers=auth(key, str(uuid.uuid4())))
    assert response.status_code == 202, response.text
    return str(response.json()["url"])


async def _read_until(lines: AsyncIterator[str], needle: str, limit_s: float) -> list[str]:
    seen: list[str] = []

    async def read() -> None:
        async for line in lines:
            seen.append(line)
            if needle in line:
                return

    await asyncio.wait_for(read(), limit_s)
    return seen


def _settings(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(update={"relay_interval_s": 3600, "sweep_interval_s": 3600, **extra})


async def test_streams_are_capped_per_key_and_per_tenant(settings: Settings) -> None:
    settings = _settings(settings, sse_max_per_key=2, sse_max_per_tenant=3)
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        key = await make_key(live)
        other = await make_key(live)
        url = await _queued_request(client, key)
        async with (
            client.stream("GET", f"{url}/events", headers=auth(key)) as first,
            client.stream("GET", f"{url}/events", headers=auth(key)) as second,
        ):
            assert first.status_code == second.status_code == 200
            third = await client.get(f"{url}/events", headers=auth(key))
            assert third.status_code == 429, third.text
            assert third.json()["error"]["code"] == "too_many_streams" and third.headers["retry-after"]
            async with client.stream("GET", f"{url}/events", headers=auth(other)) as fourth:
                assert fourth.status_code == 200  # another key of the tenant: its own cap
                tenant_full = await client.get(f"{url}/events", headers=auth(other))
                assert tenant_full.status_code == 429 and "tenant" in tenant_full.json()["error"]["message"]
        # Closed streams free their places.
        for _ in range(50):
            async with client.stream("GET", f"{url}/events", headers=auth(key)) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.1)
        assert again.status_code == 200


async def test_stream_lifetime_is_bounded_and_resumes_with_last_event_id(settings: Settings) -> None:
    settings = _settings(settings, sse_max_lifetime_s=1.0)
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        key = await make_key(live)
        url = await _queued_request(client, key)
        started = time.monotonic()
        async with client.stream("GET", f"{url}/events", headers=auth(key)) as stream:
            lines = [line async for line in stream.aiter_lines()]
        assert time.monotonic() - started < 8
        text = "\n".join(lines)
        assert "retry:" in text and "reconnect with Last-Event-ID" in text
        last_id = [line.split(": ", 1)[1] for line in lines if line.startswith("id: ")][-1]
        async with client.stream(
            "GET", f"{url}/events", headers={**auth(key), "Last-Event-ID": last_id}
        ) as again:
            resumed = [line async for line in again.aiter_lines()]
        assert not [line for line in resumed if line.startswith("id: ")]  # nothing new since


async def test_revoked_key_ends_its_stream(settings: Settings) -> None:
    settings = _settings(settings, sse_recheck_s=0.3)
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        key = await make_key(live)
        url = await _queued_request(client, key)
        async with client.stream("GET", f"{url}/events", headers=auth(key)) as stream:
            lines = stream.aiter_lines()
            await _read_until(lines, "event: status", 5)
            resources = live.app.state.resources
            async with resources.sessionmaker() as session:
                from sqlalchemy import select

                from service.auth.models import ApiKey

                key_id = (await session.execute(select(ApiKey.id))).scalars().first()
                assert await revoke(session, str(key_id))
                await session.commit()
            tail = await _read_until(lines, "key_revoked", 5)
        assert any("key_revoked" in line for line in tail)


def test_serve_stops_promptly_with_an_open_stream(tmp_path: Any, clean_redis: str) -> None:
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=clean_redis,
        workers=0,
        port=port,
        shutdown_grace_s=2.0,
        relay_interval_s=3600,
    )
    env = settings_env(settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        key = subprocess.run(
            [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "acme"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with httpx.Client(base_url=base, timeout=10) as client:
            import uuid

            created = client.post("/v1/forget-requests", json=body(), headers=auth(key, str(uuid.uuid4())))
            assert created.status_code == 202, created.text
            with client.stream("GET", created.json()["url"] + "/events", headers=auth(key)) as stream:
                assert stream.status_code == 200
                next(stream.iter_lines())
                stopped = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        assert time.monotonic() - stopped < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_sdk_resumes_a_stream_the_server_ended_and_follows_to_the_end(settings: Settings) -> None:
    from obliviate_client import Client

    settings = _settings(settings, sse_max_lifetime_s=0.7)
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        key = await make_key(live)
        url = await _queued_request(client, key)
        request_id = url.rsplit("/", 1)[1]

        def follow() -> list[Any]:
            with Client(base_url=live.url, api_key=key) as sdk:
                return list(sdk.forget_requests.events(request_id))

        following = asyncio.create_task(asyncio.to_thread(follow))
        await asyncio.sleep(2.5)  # several lifetimes: the SDK reconnected each time
        assert not following.done()
        cancel = await client.post(f"{url}/cancel", json={"reason": "done"}, headers=auth(key))
        assert cancel.status_code in (200, 202), cancel.text
        events = await asyncio.wait_for(following, 30)
    ids = [e.id for e in events if e.id]
    assert len(ids) == len(set(ids)), "a resumed stream must not repeat events"
    assert [e.data.get("status") for e in events if e.type == "status"] == ["queued", "cancelled"]
    assert not [e for e in events if e.type == "stream_end"]


async def test_the_cap_holds_across_replicas(settings: Settings) -> None:
    settings = _settings(settings, sse_max_per_key=2, sse_max_per_tenant=10)
    async with (
        live_server(settings) as one,
        live_server(settings) as two,
        httpx.AsyncClient(timeout=10) as client,
    ):
        key = await make_key(one)  # one database: both replicas know the key
        url = await _queued_request(httpx.AsyncClient(base_url=one.url, timeout=10), key)
        async with (
            client.stream("GET", f"{one.url}{url}/events", headers=auth(key)) as first,
            client.stream("GET", f"{two.url}{url}/events", headers=auth(key)) as second,
        ):
            assert first.status_code == second.status_code == 200
            third = await client.get(f"{two.url}{url}/events", headers=auth(key))
            assert third.status_code == 429, third.text
        # Closed streams give their places back on every replica.
        for _ in range(50):
            async with client.stream("GET", f"{two.url}{url}/events", headers=auth(key)) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.1)
        assert again.status_code == 200
