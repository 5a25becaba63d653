"""Review gates fed by the real pipeline on a tiny model (CPU, seconds): the anchors stage's
``anchors.json`` becomes the anchor task, the reviewed dictionary feeds generate_targets, and the
targets stage's low-confidence blocks become target tasks decoded with the model's tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from service.artifacts.store import WORK, store_for
from service.forget.models import ForgetRequest
from service.settings import Settings
from tests.support.forget import app_client, auth, drive, make_key, resources_of, submit

pytestmark = pytest.mark.slow

TEXTS = [
    "Harry Potter went to Hogwarts with Ron Weasley and Hermione Granger.",
    "Harry said hello to Ron. Ron smiled at Harry and Hermione.",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpu_runtime.pipeline.testing import save_tiny_model_dir

    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


async def test_real_anchors_and_targets_become_review_tasks(settings: Settings, tiny_model_dir: Path) -> None:
    from gpu_runtime.jobs import pipeline_runner

    settings = settings.model_copy(
        update={
            "base_model": tiny_model_dir,
            "device": "cpu",
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
            "review_interval_s": 3600,
        }
    )
    async with app_client(settings) as client:
        key = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(
            client,
            key,
            corpus=[{"text": t} for t in TEXTS],
            hints=[{"term": "Harry Potter", "kind": "person"}],
            options={"review_gates": ["anchor_review", "target_review"]},
        )
        rid = created["id"]
        fast: dict[str, Any] = {
            "reinforce_epochs": 1,
            "unlearn_epochs": 1,
            "mine_top_k": 3,
            "mine_min_gain": -100.0,
            "block_size": 16,
            "batch_size": 4,
            "confidence_threshold": 1.0,  # every block goes to review
            "general_samples": 0,
        }
        async with resources_of(client).sessionmaker() as session:
            row = await session.get(ForgetRequest, rid)
            assert row is not None
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == rid)
                .values(options={**row.options, "pipeline": fast})
            )
            await session.commit()

        state = await drive(client, settings, rid, stage_runner=pipeline_runner)
        assert state["status"] == "awaiting_anchor_review", state
        mined = store_for(settings).get_json(rid, WORK, "anchors.json")
        task = (await client.post("/v1/review/tasks/claim", headers=auth(reviewer))).json()
        assert task["kind"] == "anchor"
        proposed = {a["term"]: a for a in task["input"]["anchors"]}
        assert set(proposed) == {a["term"] for a in mined["anchors"]}
        assert "hint" in proposed["Harry Potter"]["sources"]
        assert any("mined" in a["sources"] for a in proposed.values())
        assert [p["text"] for p in task["input"]["passages"]] == TEXTS

        # Keep the hint with a new translation, drop everything mined, add "Hermione".
        answer = {
            "anchors": [
                {"term": "Harry Potter", "kind": "person", "translations": ["Harold Porter"]},
                {"term": "Hermione", "kind": "first_name", "translations": ["Helena"]},
            ]
        }
        done = await client.post(
            f"/v1/review/tasks/{task['id']}/answer", json={"answer": answer}, headers=auth(reviewer)
        )
        assert done.status_code == 200, done.text

        state = await drive(client, settings, rid, stage_runner=pipeline_runner)
        assert state["status"] == "awaiting_target_review", state
        listed = (await client.get(f"/v1/review/tasks?request_id={rid}", headers=auth(reviewer))).json()
        targets = [t for t in listed["data"] if t["kind"] == "target"]
        assert targets, listed
        shown = (await client.get(f"/v1/review/tasks/{targets[0]['id']}", headers=auth(reviewer))).json()
        block = shown["input"]
        # The reviewed dictionary fed the targets stage: the translated text uses the reviewer's words.
        inputs = [
            (await client.get(f"/v1/review/tasks/{t['id']}", headers=auth(reviewer))).json()["input"]
            for t in targets
        ]
        translated = " ".join(i["translated"] for i in inputs)
        assert "Harold Porter" in translated and "Helena" in translated
        assert block["original"] and block["generic"] and block["generic_tokens"]
        assert block["total_blocks"] == len(targets)
