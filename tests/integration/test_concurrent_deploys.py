"""Deploys racing on two API replicas that share the database: each ends deployed once or refused with
a 409, never a 500, and the loser of a race for the same request is told it is already deployed.

Found by the many-hosts test (``tests/integration/test_many_hosts.py``), where both replicas' auto-deploy
passes pick up the same ready request: two replicas that numbered their new versions alike hit the
``(alias, version)`` unique constraint, which escaped as an ``IntegrityError``.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings
from tests.support.forget import app_client, auth, make_key
from tests.support.serving import _make_ready_requests


def _adapter(root: Path, seed: int) -> Path:
    path = root / f"adapter-{seed}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(random.Random(seed).randbytes(256))
    return path


async def _deploy(client: httpx.AsyncClient, key: str, request_id: str) -> httpx.Response:
    return await client.post(
        "/v1/deployments", json={"request_id": request_id}, headers=auth(key, str(uuid.uuid4()))
    )


async def test_racing_deploys_on_two_replicas_answer_201_or_409(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    def settings(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name,
            database_url=database_url,
            redis_url=clean_redis,
            workers=0,
            sweep_interval_s=3600,
            relay_interval_s=3600,
            reconcile_interval=3600,  # the replicas' own passes stay out of the race
        )

    a_settings, b_settings = settings("replica-a"), settings("replica-b")
    async with app_client(a_settings) as a, app_client(b_settings) as b:
        key = await make_key(a, role="admin")
        seeds = iter(range(100))
        (first,) = await _make_ready_requests(
            a_settings, [_adapter(tmp_path, next(seeds))], "acme", [], "manual"
        )
        assert (await _deploy(a, key, first)).status_code == 201
        outcomes: list[tuple[int, str]] = []
        for _ in range(4):
            # Two different requests at once: both may win (one after the other) or one is refused.
            adapters = [_adapter(tmp_path, next(seeds)), _adapter(tmp_path, next(seeds))]
            one, two = await _make_ready_requests(a_settings, adapters, "acme", [], "manual")
            replies = await asyncio.gather(_deploy(a, key, one), _deploy(b, key, two))
            outcomes += [(r.status_code, _code(r)) for r in replies]
            # The same request on both replicas at once: deployed once; the other is told so.
            (same,) = await _make_ready_requests(
                a_settings, [_adapter(tmp_path, next(seeds))], "acme", [], "manual"
            )
            replies = await asyncio.gather(_deploy(a, key, same), _deploy(b, key, same))
            statuses = sorted(r.status_code for r in replies)
            assert statuses[0] == 201, [r.text for r in replies]
            if statuses[1] != 201:
                loser = next(r for r in replies if r.status_code != 201)
                assert loser.status_code == 409 and _code(loser) in {"not_ready", "concurrent_change"}, (
                    loser.text
                )
            else:
                raise AssertionError("one request was deployed twice")
        assert all(status in (201, 409) for status, _ in outcomes), outcomes
        assert all(code in ("", "concurrent_change") for status, code in outcomes if status == 409), outcomes
        # The versions are numbered 1, 2, 3 ... without gaps or duplicates.
        listing = (await a.get("/v1/deployments", headers=auth(key))).json()
        numbers = sorted(v["version"] for v in listing["versions"])
        assert numbers == list(range(1, len(numbers) + 1)), numbers


def _code(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or "")
    return str(body.get("code") or "") if isinstance(body, dict) else ""
