"""The OpenAPI document is the contract: schemathesis, every check, against the app in-process.

The real app (SQLite, the session's embedded Redis) answers ``/docs/openapi.json``; schemathesis reads
it, generates schema-valid and schema-invalid requests for every operation (an API key in the
documented security scheme, so authenticated routes are exercised), and checks each answer against the
document: status codes, bodies (the error envelope included), headers, content types, auth enforcement,
valid data accepted and invalid data rejected. Any failure fails the test with schemathesis's report.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

schemathesis = pytest.importorskip("schemathesis")

MAX_EXAMPLES = 5


@schemathesis.serializer("application/x-ndjson")
def _jsonl(ctx: Any, value: Any) -> bytes:
    # The review import body: the schema says it is JSONL text; send the generated text as it is.
    return value.encode("utf-8") if isinstance(value, str) else b""


async def _prepare(settings: Settings, role: str) -> str:
    """Migrate the database and make one API key (the app's own lifespan runs in schemathesis's loop)."""
    from service.auth.keys import create_api_key
    from service.db import create_engine, migrate

    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        from sqlalchemy.ext.asyncio import async_sessionmaker

        async with async_sessionmaker(engine)() as session:
            _, key = await create_api_key(session, tenant="acme", role=role)
            await session.commit()
    finally:
        await engine.dispose()
    return key


def _fresh_idempotency_keys(app: Any) -> Any:
    """The app, with a unique suffix on every valid ``Idempotency-Key`` it receives.

    A key names one request: clients send a new one per request (the same key with another body is a
    422, as the IETF draft says), which no schema can express. Missing or invalid keys pass unchanged.
    """

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [
                (name, value + b"-" + uuid.uuid4().hex.encode())
                if name == b"idempotency-key" and value.strip() and len(value) <= 200
                else (name, value)
                for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
        await app(scope, receive, send)

    return wrapped


def _run(app: Any, key: str) -> Any:
    from schemathesis.engine import events as ev
    from schemathesis.engine import from_schema
    from schemathesis.engine.statistic import Statistic

    config = schemathesis.Config.from_dict(
        {
            "seed": 1,
            "checks": {"enabled": True},
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
            "auth": {"openapi": {"BearerAuth": {"bearer": key}}},
            "operations": [
                {
                    # No model is served in tests (OBLIVIATE_ENGINE=none): a valid request to these
                    # answers 503 engine_disabled. Their validation, errors and auth are checked here
                    # with schema-violating requests; test_gateway_wire / test_gateway_verification
                    # and the engine tests cover valid requests against a real model.
                    "include-path-regex": "^/v1/((chat/)?completions|verifications)/?$",
                    "generation": {"mode": "negative"},
                },
                {
                    # multipart: how a part is read depends on its file name and content type, which the
                    # generator does not control. Covered by test_intake_api's upload tests.
                    "include-path": "/v1/forget-requests/upload",
                    "enabled": False,
                },
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/docs/openapi.json", _fresh_idempotency_keys(app), config=config)

    statistic = Statistic()
    errors: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, ev.ScenarioFinished | ev.FuzzScenarioFinished):
            statistic.on_scenario_finished(event.recorder)
        elif isinstance(event, ev.NonFatalError):
            errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, ev.FatalError):
            errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, ev.EngineFinished):
            for failure in event.failures:
                statistic.unique_failures_map[failure] = "run"
    return statistic, errors


def test_openapi_contract_holds(tmp_path: Path, clean_redis: str) -> None:
    from schemathesis.python import asgi

    from service.app import create_app

    # No worker runs here: readiness reports queued requests without one but stays 200 (it answers
    # 503 otherwise, as documented; test_worker_supervision covers that).
    # Event streams end after a second (then the client reconnects with Last-Event-ID), so a stream
    # of a live request does not hold the run.
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=clean_redis,
        database_url=None,
        ready_requires_worker=False,
        sse_max_lifetime_s=1.0,
    )
    key = asyncio.run(_prepare(settings, "admin"))
    app = create_app(settings)
    try:
        statistic, errors = _run(app, key)
    finally:
        asgi.shutdown_lifespans()
    lines = [f"{statistic.total_cases} cases, {len(statistic.unique_failures_map)} unique failures"]
    for label, groups in sorted(statistic.failures.items()):
        for group in groups.values():
            for failure in group.failures:
                lines.append(f"- {label}: {failure.title}\n  {failure.message}".replace("\n", "\n  "))
            lines.append(f"  reproduce: {group.code_sample}")
    report = "\n".join([*lines, *errors])
    print(report)
    assert not errors and not statistic.unique_failures_map, report
