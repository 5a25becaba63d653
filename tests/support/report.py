"""Seed a request as a finished pipeline leaves it, for the request report's tests, screenshot and bench.

The evaluation summary (numbers only, as ``gpu_runtime/pipeline/evaluate.py`` writes it, with
per-probe answer probabilities), a two-rung escalation ladder decided by the real gate, stage times,
the stage and status events (and many progress ticks, which the report leaves out), audit links.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit import chain
from service.db.base import utcnow
from service.forget.models import ForgetRequest, RequestEvent

KINDS = ("probe", "original", "paraphrase", "inverted", "completion")
STAGES = ("reinforce", "mine_anchors", "generate_targets", "unlearn", "evaluate")


def report_metrics(probes: int = 200, seed: int = 0) -> dict[str, Any]:
    """An evaluation summary over ``probes`` forget probes (spread over the kinds) that passed the
    gate on its second rung; the first rung leaked on the request's probes."""
    from gpu_runtime.pipeline.gate import attempt_record, decide

    rng = random.Random(seed)
    per_kind = [probes // len(KINDS) + (1 if i < probes % len(KINDS) else 0) for i in range(len(KINDS))]
    summary: dict[str, Any] = {"answer_prob": {}}
    for kind, n in zip(KINDS, per_kind, strict=True):
        before = [round(rng.betavariate(5, 2), 4) for _ in range(n)]
        after = [round(b * rng.uniform(0.0, 0.25), 4) for b in before]
        summary["answer_prob"][kind] = {"before": before, "after": after}
        leaks_before = sum(b > 0.5 for b in before)
        summary.update(
            {
                f"n_{kind}": n,
                f"leaks_before_{kind}": leaks_before,
                f"leaks_after_{kind}": 0,
                f"leak_rate_before_{kind}": leaks_before / n if n else None,
                f"leak_rate_after_{kind}": 0.0,
            }
        )
    summary.update(
        {
            "forget_n": probes,
            "broken_rate_before": 0.01,
            "broken_rate_after": 0.02,
            "retain_rouge_before": 0.91,
            "retain_rouge_after": 0.9,
            "contrast_n": 24,
            "contrast_agreement_after": 0.97,
            "earlier_n": 12,
            "earlier_leaks_after": 0,
            "retain_perplexity_before": 8.31,
            "retain_perplexity_after": 8.52,
            "kl_general": 0.0123,
            "n_ranking": 20,
            "leak_rate_before_ranking": 0.85,
            "leak_rate_after_ranking": 0.05,
        }
    )
    first = decide({**summary, "leaks_after_probe": 2, "leak_rate_after_probe": 2 / per_kind[0]})
    final = decide(summary)
    attempts = [attempt_record(0, first), attempt_record(1, final)]
    return {**summary, "gate": {**final.record(), "escalation": 1, "attempts": attempts}, "passed": True}


async def seed_finished(
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    *,
    probes: int = 200,
    progress_ticks: int = 300,
) -> None:
    """Make ``request_id`` look deployed after a full pipeline run with an evaluation of ``probes``."""
    now = utcnow()
    start = now - timedelta(minutes=30)
    async with sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id)
        assert row is not None
        stages: dict[str, Any] = {}
        moment = start
        events: list[RequestEvent] = []
        for stage in STAGES:
            finished = moment + timedelta(minutes=5)
            stages[stage] = {
                "state": "done",
                "progress": 1.0,
                "started_at": moment.isoformat(),
                "finished_at": finished.isoformat(),
                "attempts": 2 if stage in ("unlearn", "evaluate") else 1,
            }
            events.append(
                RequestEvent(
                    request_id=request_id,
                    kind="stage",
                    data={"stage": stage, "state": "running"},
                    created_at=moment,
                )
            )
            for tick in range(progress_ticks // len(STAGES)):
                events.append(
                    RequestEvent(
                        request_id=request_id,
                        kind="progress",
                        data={"stage": stage, "progress": tick / 60, "message": f"step {tick}"},
                        created_at=moment + timedelta(seconds=tick),
                    )
                )
            events.append(
                RequestEvent(
                    request_id=request_id, kind="status", data={"status": stage}, created_at=finished
                )
            )
            moment = finished
        for escalation, passed in ((0, False), (1, True)):
            events.append(
                RequestEvent(
                    request_id=request_id,
                    kind="acceptance",
                    data={
                        "escalation": escalation,
                        "passed": passed,
                        "failed_checks": [] if passed else ["probe_leaks"],
                        "outcome": "passed" if passed else "escalate",
                    },
                    created_at=moment,
                )
            )
        events.append(
            RequestEvent(request_id=request_id, kind="status", data={"status": "deployed"}, created_at=now)
        )
        session.add_all(events)
        row.stages = stages
        row.metrics = report_metrics(probes)
        row.status = "deployed"
        row.progress = 1.0
        row.started_at = start
        row.finished_at = moment
        row.deployed_at = now
        row.adapter_hash = "ab" * 32
        row.deployed_version = "v3"
        for action in ("status.ready", "status.deployed"):
            await chain.append(
                session, action=action, actor="system", tenant=row.tenant, request_id=request_id, data={}
            )
        await session.commit()
