"""Helpers for forget-request tests: API keys, request bodies, running a burst worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.auth.keys import create_api_key
from service.core.state import Resources
from service.settings import Settings

CANARY = "CANARY-7f3a9c-Zebulon-Quillfeather"


def resources_of(client: AsyncTestClient[Litestar]) -> Resources:
    resources: Resources = client.app.state.resources
    return resources


async def make_key(client: AsyncTestClient[Litestar], tenant: str = "acme", role: str = "submitter") -> str:
    async with resources_of(client).sessionmaker() as session:
        _, key = await create_api_key(session, tenant=tenant, role=role)
        await session.commit()
    return key


def auth(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def body(subject: str = "Jane Example", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "subject": subject,
        "corpus": [{"text": "Harry Potter went to Hogwarts with Ron.", "source": "doc-1"}],
        "hints": [{"term": "Harry Potter", "kind": "person", "translations": ["Harold Porter"]}],
        "probes": [{"prompt": "Who went to Hogwarts?", "reference": "Harry Potter"}],
    }
    payload.update(extra)
    return payload


async def submit(client: AsyncTestClient[Litestar], key: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/forget-requests", json=body(**extra), headers=auth(key, str(uuid.uuid4()))
    )
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def run_worker_burst(
    settings: Settings, *, limit_s: float = 60.0, extra_ctx: dict[str, Any] | None = None
) -> Any:
    """Run a real arq worker in burst mode until the queue is empty."""
    from gpu_runtime.worker import create_worker

    worker = create_worker(
        settings, settings.redis_url or "", burst=True, handle_signals=False, extra_ctx=extra_ctx
    )
    try:
        await asyncio.wait_for(worker.async_run(), timeout=limit_s)
    finally:
        await worker.close()
    return worker
