"""The acceptance gate in the worker: a real arq burst worker, real databases and Redis, and a stage
runner test double that reports synthetic evaluation summaries.

A request that cannot pass climbs the escalation ladder (unlearn → evaluate again, one level up each
time), then waits at the evaluation review with every attempt recorded; it is not deployed. One that
passes on a higher rung goes on to ready.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from service.audit.models import AuditEvent
from service.forget.models import RequestEvent
from service.review.services import sync_gates
from service.settings import Settings
from tests.support.acceptance import LadderRunner
from tests.support.forget import app_client, auth, drive, make_key, resources_of, submit


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def _fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 0.2, "sweep_interval_s": 3600, "relay_interval_s": 3600}
    )


async def _audit(client: Any, request_id: str, action: str) -> list[dict[str, Any]]:
    async with resources_of(client).sessionmaker() as session:
        rows = await session.scalars(
            select(AuditEvent)
            .where(AuditEvent.request_id == request_id, AuditEvent.action == action)
            .order_by(AuditEvent.seq)
        )
        return [dict(row.data) for row in rows.all()]


async def test_a_request_that_cannot_pass_stops_at_the_evaluation_review(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = _fast(Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis))
    runner = LadderRunner(passes_at=None, report=True)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key, options={"deploy_policy": "auto", "review_gates": []})
        assert created["options"]["acceptance"]["max_attempts"] == 3  # the defaults in force are stored
        assert created["acceptance"]["verdict"] == "pending"
        assert created["acceptance"]["thresholds"]["max_original_leaks"] == 0

        state = await drive(client, settings, created["id"], rounds=14, stage_runner=runner)

        assert state["status"] == "awaiting_evaluation_review"
        # Three rungs: unlearn and evaluate ran at escalation 0, 1 and 2; earlier stages ran once.
        assert runner.levels == {"unlearn": [0, 1, 2], "evaluate": [0, 1, 2]}
        body = (await client.get(created["url"], headers=auth(key))).json()
        assert body["awaiting_review"] == "evaluation_review"
        assert "evaluation_review" in body["gates"], "the gate is opened even though the request had it off"
        assert body["options"]["pipeline"]["escalation"] == 2
        gate = body["metrics"]["gate"]
        assert body["metrics"]["passed"] is False and gate["passed"] is False
        assert [a["escalation"] for a in gate["attempts"]] == [0, 1, 2]
        assert all(not a["passed"] for a in gate["attempts"])
        failed = {f["check"] for f in gate["attempts"][-1]["failures"]}
        assert failed == {"original_leaks", "heldout_leak_rate", "broken_rate"}
        assert gate["attempts"][-1]["rates"]["leak_rate_original"] == 0.3
        assert gate["residual"]["heldout_leak_rate"] == 5 / 30
        assert gate["thresholds"]["max_heldout_leak_rate"] == 0.02
        assert body["adapter"]["deployed_version"] is None
        summary = body["acceptance"]
        assert (summary["verdict"], summary["attempts"], summary["escalation"]) == ("failed", 3, 2)
        assert "original_leaks 3 > 0" in summary["failed"] and not summary["overridden"]

        attempts = await _audit(client, created["id"], "acceptance.attempt")
        assert [(a["escalation"], a["outcome"]) for a in attempts] == [
            (0, "escalate"),
            (1, "escalate"),
            (2, "evaluation_review"),
        ]
        async with resources_of(client).sessionmaker() as session:
            events = (
                await session.scalars(select(RequestEvent).where(RequestEvent.request_id == created["id"]))
            ).all()
        assert [e.data["outcome"] for e in events if e.kind == "acceptance"] == ["escalate"] * 2 + [
            "evaluation_review"
        ]
        assert sum(1 for e in events if e.kind == "status" and e.data["status"] == "unlearning") == 3

        # Not ready, so no deploy: the auto policy never sees it and a manual deploy is refused.
        admin = await make_key(client, role="admin")
        refused = await client.post(
            "/v1/deployments", json={"request_id": created["id"]}, headers=auth(admin)
        )
        assert refused.status_code == 409, refused.text

        # The evaluation review shows the residual leaks and the failing checks.
        await sync_gates(resources_of(client), created["id"])  # (the app's review loop may be first)
        reviewer = await make_key(client, role="reviewer")
        review = (await client.get(f"/v1/review/requests/{created['id']}", headers=auth(reviewer))).json()
        (opened,) = review["gates"]
        acceptance = opened["summary"]["acceptance"]
        assert acceptance["verdict"] == "failed" and acceptance["attempts"] == 3
        assert acceptance["residual_leak_rates"]["original"] == 0.3
        assert "original_leaks 3 > 0" in acceptance["failed"]

        # ... and so does each task page of the review UI.
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client.app), base_url="https://testserver"
        ) as web:
            form = await web.get("/review/login")
            await web.post("/review/login", data={"api_key": reviewer, "csrf_token": _csrf(form.text)})
            start = await web.get("/review/next?kind=evaluation")
            assert start.status_code == 303, start.text
            page = (await web.get(start.headers["location"].split("?")[0])).text
        assert "Acceptance gate: failed after 3 attempt(s)" in page
        assert "original_leaks 3 &gt; 0" in page and "original 0.300" in page
        assert "needs an admin's override" in page
        # The answers the automatic check flagged come first: the residual leak, then broken text.
        tasks = (
            await client.get(f"/v1/review/tasks?request_id={created['id']}", headers=auth(reviewer))
        ).json()["data"]
        assert len(tasks) == 6  # one probe, three corpus questions, two paraphrases
        assert "original question 2" in page and "the automatic check flags a leak" in page


async def test_a_failed_gate_with_nothing_to_show_still_waits_for_a_person(settings: Settings) -> None:
    settings = _fast(settings)
    runner = LadderRunner(passes_at=None, report="empty")
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key, options={"acceptance": {"max_attempts": 1}})
        assert (await drive(client, settings, created["id"], stage_runner=runner))["status"] == (
            "awaiting_evaluation_review"
        )
        await sync_gates(resources_of(client), created["id"])
        reviewer = await make_key(client, role="reviewer")
        review = (await client.get(f"/v1/review/requests/{created['id']}", headers=auth(reviewer))).json()
        (opened,) = review["gates"]
        # A gate without tasks would approve itself; one opened by a failed acceptance gate does not.
        assert opened["status"] == "open" and opened["total_tasks"] == 0
        body = (await client.get(created["url"], headers=auth(key))).json()
        assert body["status"] == "awaiting_evaluation_review"
        rejected = await client.post(
            f"{created['url']}/approve",
            json={"decision": "reject", "reason": "still leaks"},
            headers=auth(reviewer),
        )
        assert rejected.json()["status"] == "failed"


async def test_a_request_that_passes_on_a_higher_rung_becomes_ready(settings: Settings) -> None:
    settings = _fast(settings)
    runner = LadderRunner(passes_at=1)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key, options={"review_gates": []})
        state = await drive(client, settings, created["id"], rounds=12, stage_runner=runner)
        assert state["status"] == "ready"
        assert runner.levels == {"unlearn": [0, 1], "evaluate": [0, 1]}
        passed = (await client.get(created["url"], headers=auth(key))).json()
        assert passed["acceptance"]["verdict"] == "passed" and passed["acceptance"]["failed"] is None
        gate = passed["metrics"]["gate"]
        assert gate["passed"] is True and gate["failures"] == []
        assert [(a["escalation"], a["passed"]) for a in gate["attempts"]] == [(0, False), (1, True)]
        outcomes = [a["outcome"] for a in await _audit(client, created["id"], "acceptance.attempt")]
        assert outcomes == ["escalate", "passed"]


async def test_acceptance_option_bounds_the_ladder_and_is_validated(settings: Settings) -> None:
    settings = _fast(settings)
    runner = LadderRunner(passes_at=None)
    async with app_client(settings) as client:
        key = await make_key(client)
        for bad, field in (
            ({"max_attempts": 0}, "max_attempts"),
            ({"max_attempts": 7}, "max_attempts"),
            ({"max_heldout_leak_rate": 1.5}, "max_heldout_leak_rate"),
            ({"max_leaks": 1}, "max_leaks"),
        ):
            response = await client.post(
                "/v1/forget-requests",
                json={"subject": "Jane Example", "corpus": [{"text": "x"}], "options": {"acceptance": bad}},
                headers=auth(key, f"bad-{field}-{len(str(bad))}"),
            )
            assert response.status_code == 422, response.text
            assert field in response.json()["error"]["message"]

        # One attempt only, with a looser held-out bound: still fails (leaks on the corpus's questions).
        created = await submit(
            client, key, options={"acceptance": {"max_attempts": 1, "max_heldout_leak_rate": 0.5}}
        )
        stored = created["options"]["acceptance"]
        assert stored["max_attempts"] == 1 and stored["max_heldout_leak_rate"] == 0.5
        assert stored["max_broken_rate"] == 0.05  # defaults fill what was not given
        state = await drive(client, settings, created["id"], stage_runner=runner)
        assert state["status"] == "awaiting_evaluation_review"
        assert runner.levels["unlearn"] == [0]
        gate = (await client.get(created["url"], headers=auth(key))).json()["metrics"]["gate"]
        assert {f["check"] for f in gate["failures"]} == {"original_leaks", "broken_rate"}
