"""Helpers for review tests: seed a gate's artifacts or tasks for a request waiting at a gate."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.artifacts.store import WORK, store_for
from service.forget.models import ForgetRequest
from service.review import services
from service.settings import Settings

ANCHORS = [
    {"term": "Harry Potter", "kind": "person", "translations": ["Harold Porter"], "sources": ["hint"]},
    {"term": "Hogwarts", "kind": "place", "translations": ["Greyford"], "sources": ["mined"], "score": 2.5},
    {"term": "Ron", "kind": "first_name", "translations": ["Rob"], "sources": ["llm"]},
]


def seed_anchors(settings: Settings, request_id: str, anchors: list[dict[str, Any]] | None = None) -> None:
    """Write ``work/anchors.json`` as the anchors stage would (what the fake stage runner skips)."""
    entries = [{"occurrences": [], "score": None, **a} for a in (anchors or ANCHORS)]
    store_for(settings).put_json(
        request_id, WORK, "anchors.json", {"input_hash": "seeded", "anchors": entries, "llm_errors": []}
    )


def seed_report(
    settings: Settings, request_id: str, rows: list[tuple[str, str, str]], scores: list[int | None]
) -> None:
    """Write ``work/evaluate/report.json`` with (prompt, unlearned completion, base completion) rows."""
    report = {
        "probes_derived": False,
        "forget": {
            "before": {"rows": [{"prompt": p, "completion": b} for p, _a, b in rows]},
            "after": {"rows": [{"prompt": p, "completion": a, "leaked_terms": []} for p, a, _b in rows]},
        },
        "judge": {"scores": scores},
    }
    directory = store_for(settings).local_dir(request_id, WORK) / "evaluate"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report), encoding="utf-8")


def target_item(block: int, total: int = 4) -> dict[str, Any]:
    return {
        "block": block,
        "doc": 0,
        "original": "Harry Potter went to Hogwarts with Ron.",
        "translated": "Harold Porter went to Greyford with Rob.",
        "generic": "Harry Porter went to school with John.",
        "generic_tokens": [
            ["Harry", 0.9],
            [" Porter", 0.2],
            [" went", 0.8],
            [" to", 0.9],
            [" school", 0.1],
            [" with", 0.9],
            [" John", 0.05],
            [".", 0.9],
        ],
        "mean_confidence": 0.21,
        "min_confidence": 0.05,
        "threshold": 0.3,
        "total_blocks": total,
    }


async def seed_gate(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    request_id: str,
    gate: str,
    items: list[dict[str, Any]],
) -> str:
    """Open ``gate`` with these task inputs (the request must wait at that gate)."""
    async with sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id)
        assert row is not None
        record = await services.open_gate(session, row, gate, items, settings, store_for(settings))
        await session.commit()
        return record.id
