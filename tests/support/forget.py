"""Helpers for forget-request tests: API keys, request bodies, running a burst worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from litestar import Litestar

from service.auth.keys import create_api_key
from service.core.state import Resources
from service.settings import Settings

CANARY = "CANARY-7f3a9c-Zebulon-Quillfeather"

#: The smallest training the stages accept, for tests of the plumbing rather than the forgetting.
TINY_PIPELINE: dict[str, Any] = {
    "reinforce_epochs": 1,
    "unlearn_epochs": 1,
    "block_size": 16,
    "max_new_tokens": 4,
    "general_samples": 2,
    "lora_rank": 2,
    "mine_top_k": 2,
    "dtype": "float32",
}
#: One attempt, acceptance bounds wide open: every request that evaluates passes.
WIDE_OPEN: dict[str, Any] = {
    "max_original_leaks": 10_000,
    "max_heldout_leak_rate": 1.0,
    "max_broken_rate": 1.0,
    "min_retain_ratio": 0.0,
    "max_earlier_leaks": 10_000,
    "max_attempts": 1,
}


class AppClient(httpx.AsyncClient):
    """An httpx client on the app, with the app's lifespan run in the test's own event loop.

    (Litestar's AsyncTestClient runs the lifespan in a portal thread, so the Redis and asyncpg
    connections it opens belong to another loop than the test's; tests here also use them directly.)
    """

    app: Litestar


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[AppClient]:
    from service.app import create_app

    app = create_app(settings)
    async with app.lifespan():
        async with AppClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            client.app = app
            yield client


def resources_of(client: Any) -> Resources:
    resources: Resources = client.app.state.resources
    return resources


async def make_key(client: Any, tenant: str = "acme", role: str = "submitter") -> str:
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


async def submit(client: Any, key: str, **extra: Any) -> dict[str, Any]:
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


# --- A stage runner test double: fast, deterministic, no model. Real stages are tested separately. ---

#: An evaluation summary (the evaluate stage's metrics contract) that meets the default acceptance gate.
PASSING_METRICS: dict[str, Any] = {
    **{
        f"{prefix}_{kind}": value
        for kind in ("probe", "original", "paraphrase", "inverted", "completion")
        for prefix, value in (
            ("leaks_after", 0),
            ("n", 10),
            ("leak_rate_after", 0.0),
            ("leak_rate_before", 0.8),
        )
    },
    "broken_rate_after": 0.0,
    "broken_rate_before": 0.0,
    "contrast_n": 10,
    "contrast_agreement_after": 1.0,
}


def fake_stage_runner(inp: Any) -> Any:
    """Test double for ``gpu_runtime.jobs.pipeline_runner``: reports progress, honours cancel, writes a tiny adapter."""
    import hashlib
    import time

    from gpu_runtime.jobs import StageOutput
    from gpu_runtime.pipeline.errors import BadInput, Cancelled

    delay = float(inp.options.get("pipeline", {}).get("test_delay_s", 0.0))
    if inp.spec.get("hints") and inp.spec["hints"][0]["term"] == "BAD-INPUT":
        raise BadInput("hint BAD-INPUT does not occur in the corpus", stage=inp.stage)
    steps = 4
    for step in range(steps):
        if inp.should_cancel():
            raise Cancelled("cancelled", stage=inp.stage)
        inp.progress((step + 1) / steps, f"step {step + 1}/{steps}")
        if delay:
            time.sleep(delay / steps)
    out = StageOutput(summary={"steps": steps})
    if inp.stage == "unlearn":
        inp.adapter_dir.mkdir(parents=True, exist_ok=True)
        weights = inp.adapter_dir / "adapter_model.safetensors"
        weights.write_bytes(b"fake-weights-" + inp.request_id.encode())
        out.adapter_path = str(inp.adapter_dir)
        out.adapter_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    if inp.stage == "evaluate":
        out.metrics = {"forget": {"leak_rate": 0.0}, "retain": {"perplexity_ratio": 1.01}, **PASSING_METRICS}
    return out


async def drive(
    client: Any, settings: Settings, request_id: str, *, rounds: int = 12, **ctx: Any
) -> dict[str, Any]:
    """Relay pending jobs and run a burst worker until the request stops moving."""
    from service.orchestration.relay import dispatch_once

    resources = resources_of(client)
    extra = {"stage_runner": fake_stage_runner, **ctx}
    state: dict[str, Any] = {}
    for _ in range(rounds):
        await dispatch_once(resources)
        await run_worker_burst(settings, extra_ctx=extra)
        async with resources.sessionmaker() as session:
            from service.forget.models import ForgetRequest

            row = await session.get(ForgetRequest, request_id, populate_existing=True)
            assert row is not None
            state = {"status": row.status, "attempt": row.attempt}
        if state["status"] not in {
            "queued",
            "reinforcing",
            "mining_anchors",
            "generating_targets",
            "unlearning",
            "evaluating",
        }:
            break
    return state
