"""What the report says about one request, as plain JSON-ready data, read from the database only.

It shows no more personal data than ``GET /v1/forget-requests/{id}`` does (the subject, the requester's
references), and less: no options beyond the deploy settings, no free-text reasons but the failure the
request view states. The corpus and the probes appear as counts and hashes; per-probe numbers are
identified by their position only. The evaluation's work files are never read (they are purged).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import certificate as certificates
from service.audit import chain
from service.audit.models import AuditHead
from service.audit.signing import Signer
from service.db.base import utcnow
from service.forget.lifecycle import STAGE_WEIGHTS, Status
from service.forget.models import ForgetRequest, RequestEvent
from service.forget.service import acceptance_of
from service.forget.views import BASE

#: Probe kinds with answers (leak flags before and after), in the order the evaluation asks them.
ANSWER_KINDS = ("probe", "original", "paraphrase", "inverted", "completion")
#: Kinds scored from the model's probabilities instead of its answers.
SCORED_KINDS = ("ranking", "logprob")
KIND_LABELS = {
    "probe": "the request's probes",
    "original": "questions the corpus answers",
    "paraphrase": "held-out paraphrases",
    "inverted": "inverted questions",
    "completion": "sentence completions",
    "ranking": "prefers the true answer",
    "logprob": "true next token is top-1",
}
#: The timeline leaves out progress ticks (one per heartbeat); stage and status changes stay.
MAX_TIMELINE = 500


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _probabilities(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [min(1.0, max(0.0, float(v))) for v in values if _number(v) is not None]


def answer_probabilities(metrics: dict[str, Any]) -> dict[str, dict[str, list[float]]] | None:
    """Per kind, each probe's answer probability before and after (pairs cut to the shorter list)."""
    raw = metrics.get("answer_prob")
    if not isinstance(raw, dict):
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for kind in [*ANSWER_KINDS, *sorted(set(raw) - set(ANSWER_KINDS))]:
        section = raw.get(kind)
        if not isinstance(section, dict):
            continue
        before, after = _probabilities(section.get("before")), _probabilities(section.get("after"))
        n = min(len(before), len(after))
        if n:
            out[str(kind)] = {"before": before[:n], "after": after[:n]}
    return out


def leak_rates(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in ANSWER_KINDS:
        n = _count(metrics.get(f"n_{kind}"))
        if n is None:
            continue
        rows.append(
            {
                "kind": kind,
                "label": KIND_LABELS[kind],
                "n": n,
                "leaks_before": _count(metrics.get(f"leaks_before_{kind}")),
                "leaks_after": _count(metrics.get(f"leaks_after_{kind}")),
                "rate_before": _number(metrics.get(f"leak_rate_before_{kind}")),
                "rate_after": _number(metrics.get(f"leak_rate_after_{kind}")),
            }
        )
    for kind in SCORED_KINDS:
        n = _count(metrics.get(f"n_{kind}"))
        if not n:
            continue
        rows.append(
            {
                "kind": kind,
                "label": KIND_LABELS[kind],
                "n": n,
                "leaks_before": None,
                "leaks_after": None,
                "rate_before": _number(metrics.get(f"leak_rate_before_{kind}")),
                "rate_after": _number(metrics.get(f"leak_rate_after_{kind}")),
            }
        )
    return rows


def quality(metrics: dict[str, Any], residual: dict[str, Any]) -> dict[str, Any]:
    """Fluency and utility numbers (None where the evaluation did not measure them)."""
    keys = (
        "broken_rate_before",
        "broken_rate_after",
        "retain_rouge_before",
        "retain_rouge_after",
        "contrast_agreement_after",
        "retain_perplexity_before",
        "retain_perplexity_after",
        "kl_general",
        "judge_mean",
        "judge_familiarity_rate",
    )
    out: dict[str, Any] = {key: _number(metrics.get(key)) for key in keys}
    out["contrast_n"] = _count(metrics.get("contrast_n"))
    out["retain_ratio"] = _number(residual.get("retain_ratio"))
    out["forget_n"] = _count(metrics.get("forget_n"))
    return out


def acceptance(row: ForgetRequest) -> dict[str, Any]:
    """The gate's verdict on the latest evaluation, its thresholds, and every rung of the ladder."""
    gate = acceptance_of(row.metrics) or {}
    passed = gate.get("passed")
    attempts = []
    for attempt in gate.get("attempts") or []:
        if not isinstance(attempt, dict):
            continue
        attempts.append(
            {
                "escalation": _count(attempt.get("escalation")),
                "passed": attempt.get("passed") is True,
                "failures": [
                    {
                        "check": str(f.get("check")),
                        "value": _number(f.get("value")),
                        "threshold": _number(f.get("threshold")),
                    }
                    for f in attempt.get("failures") or []
                    if isinstance(f, dict)
                ],
                "rates": {str(k): _number(v) for k, v in (attempt.get("rates") or {}).items()},
            }
        )
    thresholds = gate.get("thresholds") or row.options.get("acceptance") or {}
    return {
        "verdict": "pending" if passed is None else ("passed" if passed is True else "failed"),
        "thresholds": {str(k): v for k, v in thresholds.items() if _number(v) is not None},
        "failures": [
            {
                "check": str(f.get("check")),
                "value": _number(f.get("value")),
                "threshold": _number(f.get("threshold")),
                "missing": [str(m) for m in f.get("missing") or []],
            }
            for f in gate.get("failures") or []
            if isinstance(f, dict)
        ],
        "skipped": [str(s) for s in gate.get("skipped") or []],
        "escalation": _count(gate.get("escalation")),
        "attempts": attempts,
        "overridden": any(
            d.get("gate") == "acceptance" and d.get("decision") == "override" for d in row.decisions
        ),
    }


def _event_label(kind: str, data: dict[str, Any]) -> str:
    """A short line per event, from its structured fields only (no free-text reasons)."""
    if kind == "status":
        return f"status: {data.get('status')}"
    if kind == "stage":
        return f"stage {data.get('stage')}: {data.get('state')}"
    if kind == "acceptance":
        verdict = "passed" if data.get("passed") else "failed"
        checks = ", ".join(str(c) for c in data.get("failed_checks") or [])
        tail = f" ({checks})" if checks else ""
        return (
            f"acceptance gate {verdict} at escalation {data.get('escalation')}{tail}: {data.get('outcome')}"
        )
    if kind == "review":
        return f"review {data.get('gate')}: {data.get('open_tasks')} of {data.get('total_tasks')} tasks open"
    if kind == "review_escalated":
        return f"review {data.get('gate')} escalated ({data.get('open_tasks')} open)"
    if kind == "requeued":
        return f"stage {data.get('stage')} requeued"
    return kind


async def timeline(session: AsyncSession, request_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(RequestEvent.id, RequestEvent.kind, RequestEvent.data, RequestEvent.created_at)
        .where(RequestEvent.request_id == request_id, RequestEvent.kind != "progress")
        .order_by(RequestEvent.created_at, RequestEvent.id)
        .limit(MAX_TIMELINE)
    )
    return [
        {"at": created.isoformat(), "kind": kind, "event": _event_label(kind, data or {})}
        for _id, kind, data, created in rows.all()
    ]


def stages(row: ForgetRequest) -> list[dict[str, Any]]:
    out = []
    for stage in STAGE_WEIGHTS:
        info: dict[str, Any] = row.stages.get(stage) or {}
        started, finished = info.get("started_at"), info.get("finished_at")
        seconds = None
        if isinstance(started, str) and isinstance(finished, str):
            try:
                seconds = round(
                    (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 1
                )
            except ValueError:
                seconds = None
        out.append(
            {
                "stage": stage,
                "state": str(info.get("state", "pending")),
                "started_at": started if isinstance(started, str) else None,
                "finished_at": finished if isinstance(finished, str) else None,
                "seconds": seconds,
                "attempts": _count(info.get("attempts")) or 0,
            }
        )
    return out


async def audit(session: AsyncSession, request_id: str) -> dict[str, Any]:
    """The request's links in the chain (recomputed) and the chain's head when the report was made."""
    events = await chain.for_request(session, request_id)
    ok = chain.links_intact(events)
    head = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).first()
    last = events[-1] if events else None
    return {
        "events": len(events),
        "chain_ok": ok,
        "last": {"seq": int(last.seq), "hash": last.hash, "action": last.action} if last else None,
        "head": {"seq": int(head.seq), "hash": str(head.hash)} if head else None,
        "url": f"{BASE}/{request_id}/audit",
    }


async def certificate(session: AsyncSession, row: ForgetRequest, signer: Signer | None) -> dict[str, Any]:
    url = f"{BASE}/{row.id}/certificate"
    if row.status not in certificates.CERTIFIED or signer is None:
        return {"available": False, "url": url}
    signed = await certificates.build(session, row, signer)
    return {
        "available": True,
        "url": url,
        "algorithm": signed["algorithm"],
        "key_id": signed["key_id"],
        "signature": signed["signature"],
        "issued_at": signed["certificate"]["timestamps"]["issued_at"],
        "public_key_url": signed["public_key_url"],
    }


async def build(session: AsyncSession, row: ForgetRequest, *, signer: Signer | None) -> dict[str, Any]:
    """The whole report of ``row`` (already checked to belong to the caller's tenant)."""
    metrics = dict(row.metrics or {})
    gate = acceptance_of(metrics) or {}
    residual = gate.get("residual") or {}
    status = Status(row.status)
    return {
        "object": "forget_request_report",
        "generated_at": utcnow().isoformat(),
        "request": {
            "id": row.id,
            "url": f"{BASE}/{row.id}",
            "subject": row.subject,
            "status": status.value,
            "data_subject_ref": row.meta.get("data_subject_ref"),
            "legal_basis": row.meta.get("legal_basis"),
            "created_at": row.created_at.isoformat(),
            "due_at": row.due_at.isoformat(),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
            "deployed_at": _iso(row.deployed_at),
            "failure": {"code": row.failure_code or "failed", "reason": row.failure_reason or ""}
            if status == Status.FAILED
            else None,
        },
        "asked": {
            "corpus_sha256": row.corpus_hash,
            "corpus_bytes": row.corpus_bytes,
            "documents": row.document_count,
            "hints": row.hint_count,
            "probes": len(row.probes),
            "corpus_purged_at": _iso(row.purged_at),
            "review_gates": [str(g) for g in row.gates],
            "deploy_policy": str(row.options.get("deploy_policy", "manual")),
            "target_alias": str(row.options.get("target_alias", "chat")),
            "adapter_sha256": row.adapter_hash,
            "deployed_version": row.deployed_version,
        },
        "stages": stages(row),
        "timeline": await timeline(session, row.id),
        "acceptance": acceptance(row),
        "leak_rates": leak_rates(metrics),
        "answer_probabilities": answer_probabilities(metrics),
        "quality": quality(metrics, residual),
        "earlier": {
            "n": _count(metrics.get("earlier_n")),
            "leaks_after": _count(metrics.get("earlier_leaks_after")),
        },
        "certificate": await certificate(session, row, signer),
        "audit": await audit(session, row.id),
    }
