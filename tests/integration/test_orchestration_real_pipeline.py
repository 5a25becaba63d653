"""Orchestration with the real pipeline: a burst worker runs every ``gpu_runtime.pipeline`` stage.

The other orchestration tests swap in ``fake_stage_runner``; this one keeps ``pipeline_runner`` so the
seam between the worker's job code and the real stages (spec and options hand-over, progress, the
adapter copied out of the work directory, metrics kept numbers-only) is covered end to end, on a tiny
Llama built in memory and one epoch per training stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from gpu_runtime.jobs import pipeline_runner
from gpu_runtime.pipeline.testing import save_tiny_model_dir
from service.audit import chain
from service.forget.models import ForgetRequest
from service.settings import Settings
from tests.support.forget import (
    TINY_PIPELINE,
    WIDE_OPEN,
    app_client,
    auth,
    drive,
    make_key,
    resources_of,
    submit,
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny Llama and its tokenizer as a Hugging Face directory (built in memory, about a second)."""
    return save_tiny_model_dir(tmp_path / "tiny-model")


def _has_weights(adapter_dir: str) -> bool:
    # A PEFT adapter (config + safetensors): the test double writes only a stub weights file.
    path = Path(adapter_dir)
    return (path / "adapter_config.json").is_file() and any(path.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_real_pipeline_from_intake_to_ready(settings: Settings, model_dir: Path) -> None:
    settings = settings.model_copy(
        update={
            "base_model": model_dir,
            "device": "cpu",
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
        }
    )
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key, options={"deploy_policy": "manual", "review_gates": []})
        request_id = created["id"]
        # The API keeps pipeline tuning out of its schema; a test sets it on the stored options. One
        # epoch on a random model forgets nothing: the acceptance bounds are opened wide (one attempt),
        # so what decides is that the evaluation reports every metric the gate needs.
        async with resources_of(client).sessionmaker() as session:
            options = {**created["options"], "pipeline": TINY_PIPELINE, "acceptance": WIDE_OPEN}
            await session.execute(
                update(ForgetRequest).where(ForgetRequest.id == request_id).values(options=options)
            )
            await session.commit()

        state = await drive(client, settings, request_id, rounds=8, stage_runner=pipeline_runner)

        body = (await client.get(created["url"], headers=auth(key))).json()
        assert state["status"] == "ready", (state, body["metrics"].get("gate", {}).get("failures"))
        assert body["acceptance"]["verdict"] == "passed"
        assert body["progress"]["overall"] == 1.0
        assert all(stage["state"] == "done" for stage in body["progress"]["stages"].values())
        assert body["adapter"]["sha256"], "the unlearn stage's adapter is recorded by its hash"
        assert body["metrics"], "evaluation metrics are stored"
        async with resources_of(client).sessionmaker() as session:
            row = await session.get(ForgetRequest, request_id)
            assert row is not None and row.adapter_path
            assert _has_weights(row.adapter_path)
            assert (await chain.verify(session)).ok
