"""Sequential composition in the worker: a new request's evaluation re-checks every request in the
lineage of the version its alias serves (their probes, their corpus's questions, their hint terms).

A real arq burst worker on real databases and Redis, with a stage runner test double that records
what the evaluate stage was given.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from service.artifacts.store import ADAPTER, store_for
from service.deployments.models import AdapterVersion, ServedAlias
from service.settings import Settings
from tests.support.forget import app_client, drive, fake_stage_runner, make_key, resources_of, submit

EARLIER_QA = [
    {"question": "Where did Harry Potter go to school?", "answer": "Harry Potter went to Hogwarts."}
]


class Recorder:
    """``fake_stage_runner`` that keeps the spec each evaluate stage received."""

    def __init__(self) -> None:
        self.evaluated: list[dict[str, Any]] = []

    def __call__(self, inp: Any) -> Any:
        if inp.stage == "evaluate":
            self.evaluated.append(dict(inp.spec))
        return fake_stage_runner(inp)


async def _serve(client: Any, settings: Settings, request_id: str, parent: str | None = None) -> str:
    """Record ``request_id``'s adapter as the version alias ``chat`` serves (what a deploy writes)."""
    version_id = uuid.uuid4().hex
    path = store_for(settings).local_dir(request_id, ADAPTER)
    async with resources_of(client).sessionmaker() as session:
        count = 1 if parent is None else 2
        session.add(
            AdapterVersion(
                id=version_id,
                alias="chat",
                version=count,
                request_id=request_id,
                tenant="acme",
                parent_id=parent,
                path=str(path),
                sha256="0" * 64,
            )
        )
        await session.flush()
        alias = await session.get(ServedAlias, "chat")
        if alias is None:
            session.add(ServedAlias(alias="chat", version_id=version_id, generation=1))
        else:
            alias.version_id = version_id
            alias.generation += 1
        await session.commit()
    return version_id


async def test_evaluation_rechecks_every_request_in_the_served_lineage(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=clean_redis,
        heartbeat_interval_s=0.2,
        sweep_interval_s=3600,
        relay_interval_s=3600,
    )
    recorder = Recorder()
    async with app_client(settings) as client:
        key = await make_key(client)
        first = await submit(client, key, qa_pairs=EARLIER_QA)
        assert (await drive(client, settings, first["id"], stage_runner=recorder))["status"] == "ready"
        # Nothing served yet: nothing earlier to re-check.
        assert recorder.evaluated[-1]["earlier_probes"] == []
        v1 = await _serve(client, settings, first["id"])

        second = await submit(
            client,
            key,
            subject="Ron Example",
            corpus=[{"text": "Ron Weasley has a rat named Scabbers.", "source": "doc-2"}],
            hints=[{"term": "Ron Weasley", "kind": "person"}],
            probes=[{"prompt": "Who owns Scabbers?", "reference": "Ron Weasley"}],
        )
        assert (await drive(client, settings, second["id"], stage_runner=recorder))["status"] == "ready"
        spec = recorder.evaluated[-1]
        prompts = {p["prompt"] for p in spec["earlier_probes"]}
        assert prompts == {"Who went to Hogwarts?", "Where did Harry Potter go to school?"}
        assert "Harry Potter" in spec["earlier_terms"]
        assert "Who owns Scabbers?" not in prompts  # its own probes are not "earlier"
        await _serve(client, settings, second["id"], parent=v1)

        # A third request sees both earlier requests through the lineage (v2 -> v1).
        third = await submit(client, key, subject="Third Example")
        assert (await drive(client, settings, third["id"], stage_runner=recorder))["status"] == "ready"
        prompts = {p["prompt"] for p in recorder.evaluated[-1]["earlier_probes"]}
        assert {"Who owns Scabbers?", "Where did Harry Potter go to school?"} <= prompts
