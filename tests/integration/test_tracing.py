"""Tracing: one trace per forget request from intake through the outbox, each stage job and the deploy.

Uses the SDK's in-memory exporter (``tracing=global`` reads the provider set here). Span attributes
carry ids, stage names, statuses and counts only: the subject and the corpus appear nowhere.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.observability import tracing
from service.settings import Settings
from tests.support.forget import app_client, drive, make_key, submit

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def exporter() -> Any:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.set_provider(provider)
    yield memory
    tracing.set_provider(None)


async def test_request_trace_spans_intake_outbox_stages(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    fast = settings.model_copy(
        update={
            "engine": "none",
            "tracing": "global",
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
        }
    )
    async with app_client(fast) as client:
        key = await make_key(client)
        created = await submit(client, key, subject="Traced Subject")
        rid = created["id"]
        state = await drive(client, fast, rid)
        assert state["status"] == "ready"
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert "obliviate.intake" in names
    assert "obliviate.outbox.dispatch" in names
    for stage in ("reinforce", "mine_anchors", "generate_targets", "unlearn", "evaluate"):
        assert f"obliviate.stage.{stage}" in names, names
    ours = [s for s in spans if s.attributes.get("obliviate.request_id") == rid]
    assert len(ours) == len([s for s in spans if s.name.startswith("obliviate.")])
    # One trace: every span of the request shares the intake's trace id (context kept beside the job).
    root = next(s for s in ours if s.name == "obliviate.intake")
    assert {s.context.trace_id for s in ours} == {root.context.trace_id}
    assert all(
        s.parent is not None and s.parent.span_id == root.context.span_id for s in ours if s is not root
    )
    stage_span = next(s for s in ours if s.name == "obliviate.stage.evaluate")
    assert stage_span.attributes["obliviate.stage"] == "evaluate"
    assert stage_span.attributes["obliviate.outcome"] == "ok"
    # No personal data in attributes.
    for span in ours:
        for value in span.attributes.values():
            assert "Traced Subject" not in str(value) and "Hogwarts" not in str(value)


async def test_tracing_off_makes_no_spans(settings: Settings, exporter: InMemorySpanExporter) -> None:
    fast = settings.model_copy(update={"engine": "none", "relay_interval_s": 3600, "sweep_interval_s": 3600})
    assert fast.tracing == "off"
    async with app_client(fast) as client:
        key = await make_key(client)
        await submit(client, key)
    assert exporter.get_finished_spans() == ()
