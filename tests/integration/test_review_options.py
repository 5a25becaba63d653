"""Review options the first round left: reviewers per task set per request at intake, and the anchor
review split into several tasks for a long dictionary (the request resumes once all are decided).

Real app, database, Redis and arq worker; stages are the fast test double, and the anchors artifact
is seeded the way the mining stage leaves it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.artifacts.store import INPUT, SPEC_FILE, WORK, store_for
from service.settings import Settings
from tests.support.forget import app_client, auth, body, drive, make_key, submit
from tests.support.review import seed_anchors, seed_report

WORDS = ["Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Ginkgo", "Hazel", "Ivy", "Juniper", "Larch"]
CORPUS = [{"text": f"{word} Marsh lives in {word}ton and rows to Alderton."} for word in WORDS]


def _quiet(settings: Settings, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "heartbeat_interval_s": 0.2,
        "sweep_interval_s": 3600,
        "relay_interval_s": 3600,
        "review_interval_s": 3600,
    }
    return settings.model_copy(update={**values, **extra})


async def test_reviewers_per_task_is_a_request_option(settings: Settings) -> None:
    settings = _quiet(settings, review_overlap=1)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(
            client, key, options={"review_gates": ["evaluation_review"], "review_overlap": 3}
        )
        assert created["options"]["review_overlap"] == 3
        rid = created["id"]
        assert (await drive(client, settings, rid))["status"] == "awaiting_evaluation_review"
        seed_report(settings, rid, [("Who is she?", "Someone.", "Jane.")], [0])
        summary = (await client.get(f"/v1/review/requests/{rid}", headers=auth(reviewer))).json()
        assert summary["gates"][0]["overlap"] == 3  # the request's, not the server's 1
        task = (await client.get("/v1/review/tasks", headers=auth(reviewer))).json()["data"][0]
        answered = await client.post(
            f"/v1/review/tasks/{task['id']}/answer",
            json={"answer": {"label": "generic"}},
            headers=auth(reviewer),
        )
        assert answered.json()["status"] == "open" and answered.json()["required_answers"] == 3


@pytest.mark.parametrize("value", [0, 10, -1, "three", 2.5, [3]])
async def test_a_bad_review_overlap_is_4xx_naming_it(settings: Settings, value: object) -> None:
    async with app_client(settings) as client:
        key = await make_key(client)
        response = await client.post(
            "/v1/forget-requests",
            json=body(options={"review_overlap": value}),
            headers=auth(key, str(uuid.uuid4())),
        )
        assert response.status_code in (400, 422), response.text
        error = response.json()["error"]
        assert "review_overlap" in f"{error['message']} {error.get('param')}", error


async def test_a_long_dictionary_is_reviewed_in_parts_and_merged(settings: Settings) -> None:
    settings = _quiet(settings, review_anchor_task_size=4, review_anchor_max_passages=3)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewers = [await make_key(client, role="reviewer") for _ in range(3)]
        created = await submit(client, key, corpus=CORPUS, options={"review_gates": ["anchor_review"]})
        rid = created["id"]
        assert (await drive(client, settings, rid))["status"] == "awaiting_anchor_review"
        terms = [f"{word}ton" for word in WORDS]  # 11 anchors: parts of 4, 4 and 3
        seed_anchors(
            settings, rid, [{"term": t, "kind": "place", "translations": ["Greyford"]} for t in terms]
        )
        summary = (await client.get(f"/v1/review/requests/{rid}", headers=auth(reviewers[0]))).json()
        assert summary["open_tasks"] == 3
        tasks = []
        for reviewer in reviewers:
            claimed = await client.post("/v1/review/tasks/claim", json={}, headers=auth(reviewer))
            assert claimed.status_code == 200, claimed.text
            tasks.append((reviewer, claimed.json()))
        tasks.sort(key=lambda pair: pair[1]["input"]["part"])
        parts = [[a["term"] for a in task["input"]["anchors"]] for _, task in tasks]
        assert parts == [terms[:4], terms[4:8], terms[8:]]
        for _, task in tasks:
            shown = task["input"]["passages"]
            own = {a["term"] for a in task["input"]["anchors"]}
            # Each part shows the passages where its own anchors occur.
            assert shown and all(any(t in p["text"] for t in own) for p in shown)
            assert task["input"]["parts"] == 3 and task["input"]["total_anchors"] == 11

        async def answer(reviewer: str, task: dict[str, Any], anchors: list[dict[str, Any]]) -> Any:
            response = await client.post(
                f"/v1/review/tasks/{task['id']}/answer",
                json={"answer": {"anchors": anchors}},
                headers=auth(reviewer),
            )
            assert response.status_code == 200, response.text
            return response.json()

        def keep(names: list[str], translation: str = "Greyford") -> list[dict[str, Any]]:
            return [{"term": t, "kind": "place", "translations": [translation]} for t in names]

        # Part 1: one term removed, one edited, one added ("Alder Marsh" occurs in its passages).
        first = keep(terms[1:3]) + keep(terms[3:4], "Stonebury") + keep(["Alder Marsh"])
        await answer(*tasks[0], first)
        # Part 2 also "adds" a term part 1 decided (removed there): part 1's decision stands.
        await answer(*tasks[1], keep(terms[4:8]) + keep([terms[0]]))
        waiting = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert waiting["status"] == "awaiting_anchor_review" and waiting["open_review_tasks"] == 1
        await answer(*tasks[2], keep(terms[8:]))

        resumed = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert resumed["status"] == "generating_targets", resumed["status"]
        written = store_for(settings).get_json(rid, WORK, "anchors.json")
        by_term = {a["term"]: a for a in written["anchors"]}
        assert set(by_term) == (set(terms) - {terms[0]}) | {"Alder Marsh"}
        assert by_term[terms[3]]["translations"] == ["Stonebury"]
        assert by_term["Alder Marsh"]["sources"] == ["reviewer"]
        reason = resumed["decisions"][-1]["reason"]
        assert "11 kept, 1 added, 1 removed, 1 edited" in reason, reason
        # The reviewed dictionary is what the corpus supports (occurrences recomputed from it).
        spec = store_for(settings).get_json(rid, INPUT, SPEC_FILE)
        assert by_term["Alder Marsh"]["occurrences"] == [[0, 0, len("Alder Marsh")]] and spec["documents"]


async def test_a_fixed_block_is_handed_to_the_worker_to_regenerate(settings: Settings) -> None:
    from service.review import services
    from tests.support.forget import resources_of
    from tests.support.review import seed_gate, target_item

    settings = _quiet(settings)
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(client, key, options={"review_gates": ["target_review"]})
        rid = created["id"]
        assert (await drive(client, settings, rid))["status"] == "awaiting_target_review"
        targets = store_for(settings).local_dir(rid, WORK) / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        (targets / "stage.json").write_text('{"input_hash": "targets-v1", "summary": {}}')
        items = [target_item(0), target_item(1)]
        await seed_gate(resources_of(client).sessionmaker, settings, rid, "target_review", items)
        tasks = (await client.get("/v1/review/tasks", headers=auth(reviewer))).json()["data"]
        answers = [
            {"verdict": "fix", "replacement": "Harold Porter went to Greyford with Rob."},
            {"verdict": "reject"},
        ]
        for task, answer in zip(sorted(tasks, key=lambda t: t["position"]), answers, strict=True):
            response = await client.post(
                f"/v1/review/tasks/{task['id']}/answer", json={"answer": answer}, headers=auth(reviewer)
            )
            assert response.status_code == 200, response.text
        await services.maintain(resources_of(client))
        review = store_for(settings).get_json(rid, WORK, "target_review.json")
        assert review["replacements"] == {"0": "Harold Porter went to Greyford with Rob."}
        assert review["targets_hash"] == "targets-v1"  # the worker applies it to these targets only
        assert review["excluded_blocks"] == [0, 1] and review["rejected_blocks"] == [1]
        request = (await client.get(f"/v1/forget-requests/{rid}", headers=auth(key))).json()
        assert request["status"] == "unlearning"
        assert "1 dropped, 1 fixed" in request["decisions"][-1]["reason"]
