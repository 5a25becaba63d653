"""The purge leaves no personal data: a canary in a request's corpus, subject, probes, hints, stage
outputs and review answers is found nowhere (database, data directory, Redis, logs) once every request
has reached its terminal or parked state and the purge ran.

Real parts: the app over HTTP, a real arq worker, the relay, the sweeper and purge, the review API,
SQLite (and PostgreSQL when configured), the test Redis. The stage runner is the test double.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from arq.constants import in_progress_key_prefix
from sqlalchemy import inspect, select, text, update

from service.artifacts.store import INPUT, WORK, store_for
from service.audit import chain
from service.db.base import utcnow
from service.forget import service as forget_service
from service.forget.models import ForgetRequest
from service.forget.service import new_request_id
from service.orchestration.outbox import job_id_for
from service.orchestration.purge import purge_pass
from service.orchestration.sweeper import fail, sweep_once
from service.settings import Settings
from tests.support.forget import app_client, auth, drive, fake_stage_runner, make_key, resources_of, submit
from tests.support.logs import captured_logs

CANARY = f"CANARY{uuid.uuid4().hex[:12]}Quillfeather"


def canary_runner(inp: Any) -> Any:
    """The fake stage runner, plus what real stages do with personal data: progress messages and
    work files that quote the corpus, and BadInput messages that name a hint."""
    from gpu_runtime.pipeline.errors import BadInput

    for hint in inp.spec.get("hints") or []:
        if hint["term"].startswith("BAD"):
            raise BadInput(f"hint {hint['term']!r} does not occur in the corpus", stage=inp.stage)
    inp.progress(0.5, f"looking at {CANARY}")
    (inp.work_dir / f"{inp.stage}.json").write_text(f'{{"anchor": "{CANARY}"}}')
    if inp.stage == "mine_anchors":
        store_for(inp.settings).put_json(
            inp.request_id,
            WORK,
            "anchors.json",
            {
                "input_hash": "x",
                "anchors": [
                    {"term": CANARY, "kind": "person", "translations": ["Harold Porter"], "sources": ["hint"]}
                ],
                "llm_errors": [],
            },
        )
    out = fake_stage_runner(inp)
    out.summary = {**out.summary, "anchors": [CANARY]}
    return out


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "subject": f"Person {CANARY}",
        "corpus": [{"text": f"{CANARY} went to Hogwarts with Ron.", "source": f"doc-{CANARY}"}],
        "hints": [{"term": CANARY, "kind": "person", "translations": ["Harold Porter"]}],
        "probes": [{"prompt": f"Who is {CANARY}?", "reference": CANARY}],
        "retain_examples": [f"retain {CANARY}"],
        "data_subject_ref": f"ref-{CANARY}",
        **extra,
    }


async def _status(client: Any, request_id: str) -> str:
    async with resources_of(client).sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id, populate_existing=True)
        assert row is not None
        return row.status


async def _db_hits(client: Any) -> list[str]:
    engine = resources_of(client).engine
    hits: list[str] = []
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        for table in tables:
            for row in (await conn.execute(text(f'SELECT * FROM "{table}"'))).all():
                if CANARY in repr(tuple(row)):
                    hits.append(f"{table}: {repr(tuple(row))[:300]}")
    return hits


def _file_hits(root: Path) -> list[str]:
    needle = CANARY.encode()
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def _redis_hits(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    needle = CANARY.encode()
    hits = []
    try:
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key) or b""]
            elif kind == "zset":
                values = list(client.zrange(key, 0, -1))
            elif kind == "hash":
                values = [b"".join(pair) for pair in client.hgetall(key).items()]
            elif kind == "list":
                values = list(client.lrange(key, 0, -1))
            elif kind == "set":
                values = list(client.smembers(key))
            else:
                values = []
            if needle in key or any(needle in v for v in values):
                hits.append(key.decode(errors="replace"))
    finally:
        client.close()
    return hits


async def test_no_canary_survives_the_purge_in_any_terminal_or_parked_state(
    database_url: str, clean_redis: str, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = contextlib.ExitStack()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis)
    settings = settings.model_copy(
        update={
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
            "review_interval_s": 3600,
            "retention_s": 0,
            "parked_retention_s": 0,
            "orphan_grace_s": 0,
        }
    )
    async with app_client(settings) as client:
        logs = stack.enter_context(captured_logs())  # after the app: its logging config drops caplog's
        resources = resources_of(client)
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")

        async def file(**extra: Any) -> str:
            response = await client.post(
                "/v1/forget-requests", json=_body(**extra), headers=auth(key, str(uuid.uuid4()))
            )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        ids: dict[str, str] = {}
        # failed: bad input (the failure message names the hint)
        ids["failed_bad_input"] = await file(
            hints=[{"term": f"BAD{CANARY}", "kind": "person"}],
            corpus=[{"text": f"BAD{CANARY} and {CANARY} went to Hogwarts."}],
        )
        assert (await drive(client, settings, ids["failed_bad_input"], stage_runner=canary_runner))[
            "status"
        ] == "failed"
        # cancelled before any worker took it
        ids["cancelled"] = await file()
        cancel = await client.post(
            f"/v1/forget-requests/{ids['cancelled']}/cancel", json={"reason": "asked"}, headers=auth(key)
        )
        assert cancel.status_code in (200, 202), cancel.text
        # anchor review answered by a reviewer, then parked in ready (manual deploy policy)
        ids["ready"] = await file(options={"review_gates": ["anchor_review"], "deploy_policy": "manual"})
        assert (await drive(client, settings, ids["ready"], stage_runner=canary_runner))[
            "status"
        ] == "awaiting_anchor_review"
        summary = await client.get(f"/v1/review/requests/{ids['ready']}", headers=auth(reviewer))
        assert summary.status_code == 200, summary.text
        task = (await client.post("/v1/review/tasks/claim", json={}, headers=auth(reviewer))).json()
        answer = {"anchors": [{"term": CANARY, "kind": "person", "translations": [f"Henry {CANARY[:6]}"]}]}
        done = await client.post(
            f"/v1/review/tasks/{task['id']}/answer", json={"answer": answer}, headers=auth(reviewer)
        )
        assert done.status_code == 200, done.text
        assert (await drive(client, settings, ids["ready"], stage_runner=canary_runner))["status"] == "ready"
        # rejected at a review gate (the reason a reviewer types is audited as typed: no canary there)
        ids["rejected"] = await file(options={"review_gates": ["evaluation_review"]})
        assert (await drive(client, settings, ids["rejected"], stage_runner=canary_runner))[
            "status"
        ] == "awaiting_evaluation_review"
        rejected = await client.post(
            f"/v1/forget-requests/{ids['rejected']}/approve",
            json={"decision": "reject", "reason": "still leaks"},
            headers=auth(reviewer),
        )
        assert rejected.status_code == 200, rejected.text
        # parked at a review gate
        ids["gate"] = await file(options={"review_gates": ["target_review"]})
        assert (await drive(client, settings, ids["gate"], stage_runner=canary_runner))[
            "status"
        ] == "awaiting_target_review"
        # deployed, then superseded / rolled back (the deployments domain's calls, without a model)
        for name, leave in (("superseded", forget_service.mark_superseded), ("rolled_back", None)):
            ids[name] = await file()
            assert (await drive(client, settings, ids[name], stage_runner=canary_runner))["status"] == "ready"
            async with resources.sessionmaker() as session:
                row = await session.get(ForgetRequest, ids[name])
                assert row is not None
                await forget_service.mark_deployed(session, ids[name], "v1", row.adapter_hash or "")
                if leave is not None:
                    await leave(session, ids[name], by_version="v2")
                else:
                    await forget_service.mark_rolled_back(session, ids[name], reason="test")
                await session.commit()
        # failed by the sweeper (its worker died mid-stage and the tries ran out)
        ids["stage_lost"] = await file()
        row_status = await _status(client, ids["stage_lost"])
        assert await fail(resources, ids["stage_lost"], row_status, 1, "stage reinforce stopped")
        # an orphaned corpus folder (the process died before the request's row was committed)
        orphan = new_request_id()
        store_for(settings).put_json(orphan, INPUT, "spec.json", {"documents": [CANARY]})

        assert await _db_hits(client), "the canary should be in the database before the purge"
        for _ in range(2):
            await sweep_once(resources)

        statuses = {name: await _status(client, rid) for name, rid in ids.items()}
        assert statuses == {
            "failed_bad_input": "failed",
            "cancelled": "cancelled",
            "rejected": "failed",
            "ready": "failed",  # expired while parked
            "gate": "failed",
            "superseded": "superseded",
            "rolled_back": "rolled_back",
            "stage_lost": "failed",
        }
        async with resources.sessionmaker() as session:
            purged = {r.id: r.purged_at for r in (await session.scalars(select(ForgetRequest))).all()}
        assert all(purged[rid] is not None for rid in ids.values()), purged
        assert not (Path(settings.artifacts_dir) / orphan).exists()
        # The request is still readable (what stays: ids, hashes, metrics), without the personal data.
        shown = (await client.get(f"/v1/forget-requests/{ids['ready']}", headers=auth(key))).json()
        assert shown["subject"] == "(purged)" and shown["failure"]["code"] == "expired"

        assert await _db_hits(client) == []
        # The audit chain still verifies after the purge.
        async with resources.sessionmaker() as session:
            assert (await chain.verify(session)).ok
    stack.close()
    assert _file_hits(settings.data_dir) == []
    assert _redis_hits(settings.redis_url or "") == []
    assert CANARY not in caplog.text
    assert len(logs.records) > 20 and CANARY not in logs.text


async def test_purge_waits_for_a_running_stage_to_stop(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"sweep_interval_s": 3600, "relay_interval_s": 3600, "retention_s": 0, "stall_timeout_s": 60}
    )
    async with app_client(settings) as client:
        resources = resources_of(client)
        key = await make_key(client)
        created = await submit(client, key)
        rid = created["id"]
        # A worker runs the reinforce stage (its arq job in progress, its heartbeat fresh) ...
        async with resources.sessionmaker() as session:
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == rid)
                .values(
                    status="reinforcing",
                    stages={"reinforce": {"state": "running", "attempts": 1}},
                    heartbeat_at=utcnow(),
                )
            )
            await session.commit()
        job_key = in_progress_key_prefix + job_id_for(rid, "reinforce", 1)
        await resources.arq.set(job_key, b"1", px=60_000)
        # ... when the request is cancelled: its purge must wait for the stage to stop writing.
        cancel = await client.post(f"{created['url']}/cancel", json={"reason": "stop"}, headers=auth(key))
        assert cancel.status_code in (200, 202), cancel.text
        store = store_for(settings)
        report = await purge_pass(resources, store)
        assert rid in report.deferred and store.exists(rid, INPUT)
        # The worker acknowledged (its job ended): now it is purged.
        await resources.arq.delete(job_key)
        report = await purge_pass(resources, store)
        assert rid in report.purged and not store.exists(rid, INPUT) and not store.exists(rid, WORK)
        # A worker that died (no heartbeat for longer than the stall timeout) is not waited for.
        other = (await submit(client, key))["id"]
        async with resources.sessionmaker() as session:
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == other)
                .values(
                    status="cancelled",
                    stages={"reinforce": {"state": "running", "attempts": 1}},
                    heartbeat_at=utcnow() - timedelta(seconds=120),
                    purge_after=utcnow(),
                )
            )
            await session.commit()
        await resources.arq.set(in_progress_key_prefix + job_id_for(other, "reinforce", 1), b"1", px=60_000)
        assert other in (await purge_pass(resources, store)).purged


async def test_one_request_that_cannot_be_purged_does_not_stop_the_others(settings: Settings) -> None:
    import shutil

    settings = settings.model_copy(update={"sweep_interval_s": 3600, "relay_interval_s": 3600})
    async with app_client(settings) as client:
        resources = resources_of(client)
        key = await make_key(client)
        first, second = (await submit(client, key))["url"], (await submit(client, key))["url"]
        for url in (first, second):
            cancel = await client.post(f"{url}/cancel", json={"reason": "stop"}, headers=auth(key))
            assert cancel.status_code in (200, 202), cancel.text
        broken, fine = first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]
        store = store_for(settings)
        # A damaged store entry: where the input folder should be there is a file.
        folder = store.local_dir(broken, INPUT)
        shutil.rmtree(folder)
        folder.write_text("not a folder")
        report = await purge_pass(resources, store)
        assert broken in report.errors and fine in report.purged
