"""Turn a ``ForgetRequest`` row into its API representation (progress, ETA, due flags, links)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service.db.base import utcnow
from service.forget.lifecycle import STAGE_WEIGHTS, STATUS_GATE, STATUS_STAGE, Status
from service.forget.models import ForgetRequest
from service.forget.schemas import (
    AcceptanceOut,
    AdapterInfo,
    CorpusInfo,
    Due,
    Failure,
    ForgetRequestOut,
    Progress,
    StageProgress,
    Timings,
)
from service.forget.service import acceptance_of, describe_failures

BASE = "/v1/forget-requests"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _parse(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _eta(started: datetime | None, fraction: float, now: datetime) -> float | None:
    if started is None or fraction <= 0.0 or fraction >= 1.0:
        return None
    elapsed = (now - started).total_seconds()
    return round(max(0.0, elapsed * (1.0 - fraction) / fraction), 1)


def stage_progress(row: ForgetRequest, now: datetime) -> dict[str, StageProgress]:
    result: dict[str, StageProgress] = {}
    for stage in STAGE_WEIGHTS:
        info: dict[str, Any] = row.stages.get(stage) or {}
        state = str(info.get("state", "pending"))
        fraction = float(info.get("progress", 1.0 if state == "done" else 0.0))
        started = info.get("started_at")
        result[stage] = StageProgress(
            state=state,
            progress=round(fraction, 4),
            message=info.get("message"),
            started_at=started if isinstance(started, str) else None,
            finished_at=info.get("finished_at"),
            eta_s=_eta(_parse(started), fraction, now) if state == "running" else None,
            attempts=int(info.get("attempts", 0)),
        )
    return result


def due_flags(row: ForgetRequest, now: datetime, due_soon_s: float) -> tuple[bool, bool]:
    """(overdue, due_soon): only open requests (not yet ready/deployed/closed) can be late."""
    open_ = Status(row.status) not in {
        Status.READY,
        Status.DEPLOYED,
        Status.SUPERSEDED,
        Status.ROLLED_BACK,
        Status.FAILED,
        Status.CANCELLED,
    }
    overdue = open_ and row.due_at <= now
    due_soon = open_ and not overdue and row.due_at - now <= timedelta(seconds=due_soon_s)
    return overdue, due_soon


def acceptance_out(row: ForgetRequest) -> AcceptanceOut:
    gate = acceptance_of(row.metrics)
    passed = gate.get("passed") if gate else None
    verdict = "pending" if passed is None else ("passed" if passed is True else "failed")
    return AcceptanceOut(
        verdict=verdict,
        thresholds=dict((gate or {}).get("thresholds") or row.options.get("acceptance") or {}),
        attempts=len((gate or {}).get("attempts") or []),
        escalation=(gate or {}).get("escalation"),
        failed=describe_failures(gate) if verdict == "failed" else None,
        overridden=any(
            d.get("gate") == "acceptance" and d.get("decision") == "override" for d in row.decisions
        ),
    )


def to_out(row: ForgetRequest, *, due_soon_s: float) -> ForgetRequestOut:
    now = utcnow()
    status = Status(row.status)
    stages = stage_progress(row, now)
    stage = STATUS_STAGE.get(status)
    if status == Status.QUEUED:
        stage = "reinforce"
    gate = STATUS_GATE.get(status)
    overall_eta = None
    if stage is not None and row.started_at is not None and 0 < row.progress < 1:
        overall_eta = _eta(row.started_at, row.progress, now)
    overdue, due_soon = due_flags(row, now, due_soon_s)
    url = f"{BASE}/{row.id}"
    links = {
        "self": url,
        "events": f"{url}/events",
        "audit": f"{url}/audit",
        "certificate": f"{url}/certificate",
        "cancel": f"{url}/cancel",
        "approve": f"{url}/approve",
        "review": f"/v1/review/requests/{row.id}",
    }
    return ForgetRequestOut(
        id=row.id,
        object="forget_request",
        url=url,
        subject=row.subject,
        status=status.value,
        stage=stage,
        awaiting_review=gate.value if gate else None,
        progress=Progress(overall=round(row.progress, 4), stages=stages, eta_s=overall_eta),
        timings=Timings(
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
            started_at=_iso(row.started_at),
            finished_at=_iso(row.finished_at),
            deployed_at=_iso(row.deployed_at),
            heartbeat_at=_iso(row.heartbeat_at),
        ),
        due=Due(
            due_at=row.due_at.isoformat(),
            overdue=overdue,
            due_soon=due_soon,
            extension_reason=row.due_extension_reason,
        ),
        corpus=CorpusInfo(
            sha256=row.corpus_hash,
            bytes=row.corpus_bytes,
            documents=row.document_count,
            hints=row.hint_count,
            probes=len(row.probes),
            purged_at=_iso(row.purged_at),
        ),
        gates=list(row.gates),
        options=dict(row.options),
        metadata=dict(row.meta),
        metrics=dict(row.metrics),
        decisions=list(row.decisions),
        failure=Failure(code=row.failure_code or "failed", reason=row.failure_reason or "")
        if status == Status.FAILED
        else None,
        adapter=AdapterInfo(sha256=row.adapter_hash, deployed_version=row.deployed_version),
        links=links,
        acceptance=acceptance_out(row),
    )
