"""Small contract fixes: bad input is a 4xx that names the field, never a 500; idempotency edge cases.

Real app over HTTP on SQLite and (when configured) PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from service.db.base import utcnow
from service.deployments import idempotency as deploy_idempotency
from service.forget.models import IdempotencyRecord
from service.settings import Settings
from tests.support.forget import app_client, auth, body, make_key, resources_of


async def test_bad_input_is_a_400_naming_the_field(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis)
    async with app_client(settings) as client:
        key = await make_key(client)
        # A non-ASCII cursor (base64 decoding raised a ValueError: 500).
        cursor = await client.get("/v1/forget-requests", params={"cursor": "é"}, headers=auth(key))
        assert cursor.status_code == 400, cursor.text
        assert cursor.json()["error"]["param"] == "cursor"
        # NUL in the subject (PostgreSQL text cannot hold it: 500 at insert).
        nul = await client.post(
            "/v1/forget-requests", json=body("Jane\x00Doe"), headers=auth(key, str(uuid.uuid4()))
        )
        assert nul.status_code == 400, nul.text
        assert nul.json()["error"]["param"] == "subject" and "NUL" in nul.json()["error"]["message"]
        probe = body(probes=[{"prompt": "Who\x00?", "reference": "x"}])
        bad_probe = await client.post("/v1/forget-requests", json=probe, headers=auth(key, str(uuid.uuid4())))
        assert bad_probe.status_code == 400 and bad_probe.json()["error"]["param"] == "probes[0].prompt"
        listing = await client.get("/v1/forget-requests", params={"subject": "a\x00b"}, headers=auth(key))
        assert listing.status_code == 400, listing.text
        # A missing Idempotency-Key is a 400 (the IETF draft), not a 422.
        missing = await client.post("/v1/forget-requests", json=body(), headers=auth(key))
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "idempotency_key_missing"
        ok = await client.post("/v1/forget-requests", json=body(), headers=auth(key, str(uuid.uuid4())))
        assert ok.status_code == 202, ok.text


async def test_retain_examples_count_against_the_corpus_limit(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_corpus_bytes": 2000})
    async with app_client(settings) as client:
        key = await make_key(client)
        small = body(retain_examples=["x" * 500])
        assert (
            await client.post("/v1/forget-requests", json=small, headers=auth(key, str(uuid.uuid4())))
        ).status_code == 202
        big = body(retain_examples=["y" * 1000, "z" * 1000])
        response = await client.post("/v1/forget-requests", json=big, headers=auth(key, str(uuid.uuid4())))
        assert response.status_code == 413, response.text


async def test_deploy_idempotency_key_left_in_flight_by_a_crash_is_taken_over(settings: Settings) -> None:
    settings = settings.model_copy(update={"idempotency_lock_s": 30})
    async with app_client(settings) as client:
        resources = resources_of(client)
        calls: list[int] = []

        async def run() -> dict[str, Any]:
            calls.append(1)
            return {"version": len(calls)}

        import hashlib
        import json

        what = ("deploy", "fr_x")
        name = "deployments:" + hashlib.sha256(b"key-1").hexdigest()
        digest = hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()

        async def claim(age_s: float) -> None:
            now = utcnow() - timedelta(seconds=age_s)
            async with resources.sessionmaker() as session:
                await session.merge(
                    IdempotencyRecord(
                        tenant="acme",
                        key=name,
                        body_hash=digest,
                        state="in_flight",
                        created_at=now,
                        expires_at=now + timedelta(hours=24),
                    )
                )
                await session.commit()

        # A call still running elsewhere (claimed a moment ago): 409.
        await claim(1)
        from service.core.errors import Conflict

        try:
            await deploy_idempotency.once(resources, "acme", "key-1", what, run)
            raise AssertionError("expected 409")
        except Conflict as exc:
            assert exc.code == "idempotency_in_flight"
        # A claim older than the lock: its process crashed; the retry runs (once) and is stored.
        await claim(120)
        assert await deploy_idempotency.once(resources, "acme", "key-1", what, run) == {"version": 1}
        assert await deploy_idempotency.once(resources, "acme", "key-1", what, run) == {"version": 1}
        assert calls == [1]
        # A blank key is a 400.
        from service.core.errors import BadRequest

        try:
            await deploy_idempotency.once(resources, "acme", "  ", what, run)
            raise AssertionError("expected 400")
        except BadRequest as exc:
            assert exc.status_code == 400
