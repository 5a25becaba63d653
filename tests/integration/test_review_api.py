"""Review through the API: gates open from artifacts, answers resolve them, the request moves on.

Real app, database, Redis and arq worker; the pipeline stages are the fast test double
(``fake_stage_runner``), and each gate's artifacts or tasks are seeded the way its stage leaves them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from service.artifacts.store import WORK, store_for
from service.audit.models import AuditEvent
from service.db.base import utcnow
from service.forget.models import ForgetRequest
from service.review import services
from service.review.models import ReviewGate
from service.settings import Settings
from tests.support.forget import AppClient, app_client, auth, drive, make_key, resources_of, submit
from tests.support.review import seed_anchors, seed_gate, seed_report, target_item

CORPUS = [{"text": "Harry Potter went to Hogwarts with Ron Weasley. Ron liked Hogwarts.", "source": "doc-1"}]


def _quiet(settings: Settings, **extra: Any) -> Settings:
    """No background loops: the test drives relay, worker and review rounds itself."""
    values: dict[str, Any] = {
        "heartbeat_interval_s": 0.2,
        "sweep_interval_s": 3600,
        "relay_interval_s": 3600,
        "review_interval_s": 3600,
    }
    values.update(extra)
    return settings.model_copy(update=values)


async def _at_gate(client: AppClient, settings: Settings, key: str, gates: list[str]) -> str:
    created = await submit(client, key, corpus=CORPUS, options={"review_gates": gates})
    state = await drive(client, settings, created["id"])
    assert state["status"] == f"awaiting_{gates[0]}", state
    return str(created["id"])


async def _actions(client: AppClient, request_id: str) -> list[str]:
    async with resources_of(client).sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent.action).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)
        )
        return list(rows)


async def test_anchor_review_writes_the_dictionary_and_resumes(settings: Settings) -> None:
    settings = _quiet(settings)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        rid = await _at_gate(client, settings, key, ["anchor_review"])
        seed_anchors(settings, rid)

        summary = (await client.get(f"/v1/review/requests/{rid}", headers=auth(reviewer))).json()
        assert summary["awaiting_review"] == "anchor_review"
        assert summary["open_tasks"] == 1
        waiting = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert waiting["awaiting_review"] == "anchor_review" and waiting["open_review_tasks"] == 1
        assert waiting["links"]["review"] == f"/v1/review/requests/{rid}"
        claimed = await client.post("/v1/review/tasks/claim", json={}, headers=auth(reviewer))
        assert claimed.status_code == 200, claimed.text
        task = claimed.json()
        assert task["kind"] == "anchor" and task["assignment"]["expires_at"]
        assert task["input"]["passages"][0]["text"] == CORPUS[0]["text"]
        assert {a["term"]: a["sources"] for a in task["input"]["anchors"]}["Hogwarts"] == ["mined"]
        assert "control" not in task  # reviewers cannot tell control tasks apart

        bad = await client.post(
            f"/v1/review/tasks/{task['id']}/answer",
            json={"answer": {"anchors": [{"term": "Voldemort", "kind": "person", "translations": ["Val"]}]}},
            headers=auth(reviewer),
        )
        assert bad.status_code == 422 and "does not occur" in bad.json()["error"]["message"]
        answer = {
            "anchors": [
                {"term": "Harry Potter", "kind": "person", "translations": ["Henry Porter"]},  # edited
                {"term": "Hogwarts", "kind": "place", "translations": ["Greyford"]},
                {"term": "Ron Weasley", "kind": "person", "translations": ["Rob Wesley"]},  # added
            ]  # "Ron" removed
        }
        done = await client.post(
            f"/v1/review/tasks/{task['id']}/answer", json={"answer": answer}, headers=auth(reviewer)
        )
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "resolved"

        request = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert request["status"] == "generating_targets" and request["open_review_tasks"] is None
        assert request["decisions"][-1]["decision"] == "approved"
        assert "1 added, 1 removed, 1 edited" in request["decisions"][-1]["reason"]
        written = store_for(settings).get_json(rid, WORK, "anchors.json")
        assert written["reviewed"] is True and written["input_hash"] == "seeded"
        by_term = {a["term"]: a for a in written["anchors"]}
        assert set(by_term) == {"Harry Potter", "Hogwarts", "Ron Weasley"}
        assert by_term["Harry Potter"]["translations"] == ["Henry Porter"]
        assert by_term["Ron Weasley"]["sources"] == ["reviewer"]
        assert by_term["Hogwarts"]["occurrences"] == [[0, 21, 29], [0, 58, 66]]
        actions = await _actions(client, rid)
        for action in ("review.gate.opened", "review.answer", "review.task.resolved", "review.gate.resolved"):
            assert action in actions
        after = (await client.get(f"/v1/review/requests/{rid}", headers=auth(reviewer))).json()
        assert after["gates"][0]["outcome"] == "approved" and after["open_tasks"] == 0


async def test_overlap_majority_leak_blocks_and_tenants_are_separate(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    # On SQLite and, when configured, PostgreSQL: the claim and majority queries run on both.
    settings = _quiet(
        Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis),
        review_overlap=3,
    )
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewers = [await make_key(client, role="reviewer") for _ in range(3)]
        stranger = await make_key(client, tenant="other", role="reviewer")
        submitter = await make_key(client)
        created = await submit(client, key, corpus=CORPUS, options={"review_gates": ["evaluation_review"]})
        rid = created["id"]
        assert (await drive(client, settings, rid))["status"] == "awaiting_evaluation_review"
        rows = [
            ("Who went to Hogwarts?", "Harry Potter went there.", "Harry Potter did."),
            ("Tell me about the castle.", "It is an old building.", "Hogwarts is a castle."),
        ]
        seed_report(settings, rid, rows, [3, 0])

        listed = (await client.get("/v1/review/tasks", headers=auth(reviewers[0]))).json()["data"]
        assert [t["kind"] for t in listed] == ["evaluation", "evaluation"]
        assert "input" not in listed[0]
        assert (await client.get("/v1/review/tasks", headers=auth(stranger))).json()["data"] == []
        other = await client.get(f"/v1/review/tasks/{listed[0]['id']}", headers=auth(stranger))
        assert other.status_code == 404
        assert (await client.get("/v1/review/tasks", headers=auth(submitter))).status_code == 403
        shown = (await client.get(f"/v1/review/tasks/{listed[0]['id']}", headers=auth(reviewers[0]))).json()
        assert shown["input"]["judge_score"] == 3 and shown["input"]["base_completion"] == "Harry Potter did."

        votes = [["leaks", "generic"], ["leaks", "generic"], ["generic", "generic"]]
        for reviewer, labels in zip(reviewers, votes, strict=True):
            for task, label in zip(listed, labels, strict=True):
                response = await client.post(
                    f"/v1/review/tasks/{task['id']}/answer",
                    json={"answer": {"label": label}},
                    headers=auth(reviewer),
                )
                assert response.status_code == 200, response.text
        again = await client.post(
            f"/v1/review/tasks/{listed[0]['id']}/answer",
            json={"answer": {"label": "generic"}},
            headers=auth(reviewers[0]),
        )
        assert again.status_code == 409

        first = (await client.get(f"/v1/review/tasks/{listed[0]['id']}", headers=auth(reviewers[0]))).json()
        assert first["resolution"]["label"] == "leaks"
        assert first["agreement"] == 0.6667
        request = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert request["status"] == "failed"
        assert "leaks in 1 of 2" in request["failure"]["reason"]

        # Task inputs quote the corpus: they go when the corpus is purged.
        async with resources_of(client).sessionmaker() as session:
            await session.execute(
                update(ForgetRequest).where(ForgetRequest.id == rid).values(purged_at=utcnow())
            )
            await session.commit()
        await services.maintain(resources_of(client))
        purged = (await client.get(f"/v1/review/tasks/{listed[0]['id']}", headers=auth(reviewers[0]))).json()
        assert purged["input"] == {} and purged["resolution"]["label"] == "leaks"


async def test_tie_asks_for_one_more_reviewer(settings: Settings) -> None:
    settings = _quiet(settings, review_overlap=2)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewers = [await make_key(client, role="reviewer") for _ in range(3)]
        rid = await _at_gate(client, settings, key, ["target_review"])
        await seed_gate(resources_of(client).sessionmaker, settings, rid, "target_review", [target_item(0)])
        task_id = (await client.get("/v1/review/tasks", headers=auth(reviewers[0]))).json()["data"][0]["id"]
        for reviewer, verdict in zip(reviewers[:2], ["ok", "reject"], strict=True):
            response = await client.post(
                f"/v1/review/tasks/{task_id}/answer",
                json={"answer": {"verdict": verdict}},
                headers=auth(reviewer),
            )
            assert response.json()["status"] == "open"
        assert response.json()["required_answers"] == 3
        last = await client.post(
            f"/v1/review/tasks/{task_id}/answer",
            json={"answer": {"verdict": "fix", "replacement": "Harold Porter went to school with Rob."}},
            headers=auth(reviewers[2]),
        )
        assert last.json()["resolution"] == {"verdict": "reject", "replacement": ""}  # 2 of 3 say not ok
        review = store_for(settings).get_json(rid, WORK, "target_review.json")
        assert review["excluded_blocks"] == [0]
        status = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()["status"]
        assert status == "unlearning"


async def test_claim_time_limit_reassigns_and_gate_deadline_escalates(settings: Settings) -> None:
    settings = _quiet(settings, review_task_time_limit_s=0.3, review_gate_deadline_s=0.3)
    async with app_client(settings) as client:
        key = await make_key(client)
        slow, quick = [await make_key(client, role="reviewer") for _ in range(2)]
        rid = await _at_gate(client, settings, key, ["target_review"])
        await seed_gate(resources_of(client).sessionmaker, settings, rid, "target_review", [target_item(0)])
        task = (await client.post("/v1/review/tasks/claim", headers=auth(slow))).json()
        assert (await client.post("/v1/review/tasks/claim", headers=auth(quick))).status_code == 204
        await asyncio.sleep(0.4)
        await services.maintain(resources_of(client))
        taken = (await client.post("/v1/review/tasks/claim", headers=auth(quick))).json()
        assert taken["id"] == task["id"]
        late = await client.post(
            f"/v1/review/tasks/{task['id']}/answer", json={"answer": {"verdict": "ok"}}, headers=auth(slow)
        )
        assert late.status_code == 409 and late.json()["error"]["code"] == "claim_expired"
        actions = await _actions(client, rid)
        assert "review.task.reassigned" in actions and "review.gate.escalated" in actions
        async with resources_of(client).sessionmaker() as session:
            gate = (await session.scalars(select(ReviewGate).where(ReviewGate.request_id == rid))).one()
            assert gate.escalated_at is not None and gate.status == "open"
        events = await client.get(f"/v1/forget-requests/{rid}/events?follow=false", headers=auth(key))
        assert "event: review_escalated" in events.text


async def test_export_import_jsonl_with_control_tasks(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = _quiet(Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis))
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        admin = await make_key(client, role="admin")
        rid = await _at_gate(client, settings, key, ["target_review"])
        gate_id = await seed_gate(
            resources_of(client).sessionmaker,
            settings,
            rid,
            "target_review",
            [target_item(0), target_item(2)],
        )
        exported = await client.get(f"/v1/review/gates/{gate_id}/export", headers=auth(reviewer))
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in exported.text.splitlines()]
        assert [line["input"]["block"] for line in lines] == [0, 2]
        assert set(lines[0]["output_fields"]) == {"verdict", "replacement"}
        forbidden = await client.post(
            f"/v1/review/gates/{gate_id}/import", content=b"", headers=auth(reviewer)
        )
        assert forbidden.status_code == 403

        control = {"control": True, "input": target_item(9), "known_solution": {"verdict": "reject"}}
        made = await client.post(
            f"/v1/review/gates/{gate_id}/import", content=json.dumps(control).encode(), headers=auth(admin)
        )
        assert made.json()["controls"] == 1
        exported = await client.get(f"/v1/review/gates/{gate_id}/export", headers=auth(admin))
        control_id = next(
            json.loads(x)["task_id"] for x in exported.text.splitlines() if '"known_solution"' in x
        )
        answers = [
            {"task_id": control_id, "worker": "w1", "output": {"verdict": "reject"}},
            {"task_id": control_id, "worker": "w2", "output": {"verdict": "ok"}},
            {"task_id": lines[0]["task_id"], "worker": "w1", "output": {"verdict": "reject"}},
            {"task_id": lines[1]["task_id"], "worker": "w2", "output": {"verdict": "maybe"}},
            "not an object",
            {"task_id": lines[1]["task_id"], "answers": [{"worker": "w1", "output": {"verdict": "ok"}}]},
        ]
        body = "\n".join(json.dumps(a) for a in answers) + "\n{broken\n"
        report = (
            await client.post(
                f"/v1/review/gates/{gate_id}/import", content=body.encode(), headers=auth(admin)
            )
        ).json()
        assert report["answers"] == 4 and report["gate_status"] == "resolved"
        assert sorted(e["line"] for e in report["errors"]) == [4, 5, 7]
        review = store_for(settings).get_json(rid, WORK, "target_review.json")
        assert review["excluded_blocks"] == [0] and review["reviewed_blocks"] == [0, 2]
        scores = (await client.get("/v1/review/reviewers", headers=auth(admin))).json()["data"]
        accuracy = {s["reviewer"]: s["accuracy"] for s in scores}
        assert accuracy == {"external:w1": 1.0, "external:w2": 0.0}
        status = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()["status"]
        assert status == "unlearning"
