"""The certificate of a deployed forget request: what was forgotten, how, and with what result.

Its ``acceptance`` section states the residual leak rates per probe kind, the broken-answer rate, the
retain ratio, the thresholds in force, the gate's verdict, the attempts, and an override (who, why).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditHead
from service.audit.signing import ALGORITHM, Signer
from service.core.errors import Conflict
from service.db.base import utcnow
from service.forget.models import ForgetRequest
from service.forget.service import acceptance_of

CERTIFIED = {"deployed", "superseded", "rolled_back"}
PUBLIC_KEY_PATH = "/v1/certificates/public-key"


def acceptance_statement(row: ForgetRequest) -> dict[str, Any]:
    """What the acceptance gate found and in force of which thresholds, and who overrode it, if anyone.

    ``verdict``: ``passed``, ``failed`` (deployed only through an admin's override, stated here), or
    ``not_evaluated`` (a request from before the gate; no claim that it was forgotten).
    """
    gate = acceptance_of(row.metrics) or {}
    residual = gate.get("residual") or {}
    kinds = ("probe", "original", "paraphrase", "inverted", "completion")
    overrides = [
        d for d in row.decisions if d.get("gate") == "acceptance" and d.get("decision") == "override"
    ]
    override = overrides[-1] if overrides else None
    passed = gate.get("passed")
    return {
        "verdict": "passed" if passed is True else ("failed" if passed is False else "not_evaluated"),
        "thresholds": gate.get("thresholds") or row.options.get("acceptance"),
        "residual_leak_rates": {kind: residual.get(f"leak_rate_{kind}") for kind in kinds},
        "residual_leaks": {
            kind: {"leaks": residual.get(f"leaks_{kind}"), "n": residual.get(f"n_{kind}")} for kind in kinds
        },
        "heldout_leak_rate": residual.get("heldout_leak_rate"),
        "broken_rate": residual.get("broken_rate"),
        "retain_ratio": residual.get("retain_ratio"),
        "earlier_leaks": residual.get("earlier_leaks"),
        "failed_checks": [
            {"check": f.get("check"), "value": f.get("value"), "threshold": f.get("threshold")}
            for f in gate.get("failures") or []
        ],
        "attempts": len(gate.get("attempts") or []),
        "escalation": gate.get("escalation"),
        "override": {"by": override.get("actor"), "reason": override.get("reason"), "at": override.get("at")}
        if override
        else None,
    }


async def build(session: AsyncSession, row: ForgetRequest, signer: Signer) -> dict[str, Any]:
    """Signed certificate for a request that has been deployed (409 before that)."""
    if row.status not in CERTIFIED:
        raise Conflict(
            f"A certificate exists once the request is deployed; it is {row.status}", code="not_deployed"
        )
    head = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    payload: dict[str, Any] = {
        "type": "obliviate.forget-certificate/v1",
        "request_id": row.id,
        "tenant": row.tenant,
        "subject": row.subject,
        "data_subject_ref": row.meta.get("data_subject_ref"),
        "legal_basis": row.meta.get("legal_basis"),
        "status": row.status,
        "corpus_sha256": row.corpus_hash,
        "corpus_bytes": row.corpus_bytes,
        "adapter_sha256": row.adapter_hash,
        "deployed_version": row.deployed_version,
        "evaluation": row.metrics,
        "acceptance": acceptance_statement(row),
        "review": [
            {"gate": d.get("gate"), "decision": d.get("decision"), "at": d.get("at")} for d in row.decisions
        ],
        "timestamps": {
            "received_at": row.created_at.isoformat(),
            "due_at": row.due_at.isoformat(),
            "ready_at": row.finished_at.isoformat() if row.finished_at else None,
            "deployed_at": row.deployed_at.isoformat() if row.deployed_at else None,
            "corpus_purged_at": row.purged_at.isoformat() if row.purged_at else None,
            "issued_at": utcnow().isoformat(),
        },
        "audit_head": {"seq": int(head.seq), "hash": str(head.hash)},
    }
    return {
        "certificate": payload,
        "signature": signer.sign(payload),
        "algorithm": ALGORITHM,
        "key_id": signer.key_id,
        "public_key_url": PUBLIC_KEY_PATH,
    }
