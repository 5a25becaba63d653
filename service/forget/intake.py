"""Intake: check a new request against the limits and prepare its rows (queued, with its first job).

The corpus goes to the artifact store; the database keeps its SHA-256 and sizes only. The hash uses
the pipeline's canonical encoding, so the certificate's corpus hash matches what the worker trains on.
Everything here is CPU work without I/O; ``service.forget.writer`` inserts the rows, batched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import msgspec

from service import jobs
from service.audit.chain import NewEvent
from service.auth.keys import Principal
from service.core.errors import BadRequest, PayloadTooLarge, Unprocessable
from service.db.base import utcnow
from service.forget.lifecycle import Status
from service.forget.models import ForgetRequest
from service.forget.schemas import CreateForgetRequest
from service.forget.service import add_months, new_request_id
from service.orchestration.outbox import job_id_for
from service.settings import Settings


def canonical_hash(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass
class Intake:
    """A validated request, ready to store."""

    body: CreateForgetRequest
    documents: list[str]
    sources: list[str | None]
    corpus_bytes: int
    corpus_hash: str
    #: The acceptance thresholds in force (defaults filled in): stored with the request, so its
    #: evaluation and its certificate use the bounds that applied when it was filed.
    acceptance: dict[str, Any]


def check(body: CreateForgetRequest, settings: Settings, extra_documents: list[str] | None = None) -> Intake:
    """Apply the limits and build the corpus (413 for size, 422 naming the field otherwise)."""
    documents = [doc.text for doc in body.corpus] + list(extra_documents or [])
    sources = [doc.source for doc in body.corpus] + [None] * len(extra_documents or [])
    qa = [{"question": pair.question, "answer": pair.answer} for pair in body.qa_pairs]
    if not any(text.strip() for text in documents) and not qa:
        raise Unprocessable(
            "The forget corpus is empty: give at least one document in 'corpus' or a pair in 'qa_pairs'",
            param="corpus",
        )
    _reject_nul(body)
    size = sum(len(text.encode("utf-8")) for text in documents)
    size += sum(len(p["question"].encode("utf-8")) + len(p["answer"].encode("utf-8")) for p in qa)
    # Retain examples are stored with the corpus: they count against the same limit.
    size += sum(len(text.encode("utf-8")) for text in body.retain_examples)
    if size > settings.max_corpus_bytes:
        raise PayloadTooLarge(
            f"The corpus is {size} bytes; the limit is {settings.max_corpus_bytes} bytes", param="corpus"
        )
    if len(body.hints) > settings.max_hints:
        raise Unprocessable(f"At most {settings.max_hints} hints are allowed", param="hints", code="too_many")
    if len(body.probes) > settings.max_probes:
        raise Unprocessable(
            f"At most {settings.max_probes} probes are allowed", param="probes", code="too_many"
        )
    if len(body.retain_examples) > settings.max_probes:
        raise Unprocessable(
            f"At most {settings.max_probes} retain examples are allowed",
            param="retain_examples",
            code="too_many",
        )
    terms = [hint.term.strip() for hint in body.hints]
    if any(not term for term in terms):
        raise Unprocessable("A hint term is blank", param="hints")
    if len(set(terms)) != len(terms):
        raise Unprocessable("Hint terms must be distinct", param="hints")
    # Same canonical form as gpu_runtime.pipeline.reinforce.corpus_hash.
    corpus_hash = canonical_hash({"documents": documents, "qa": qa})
    return Intake(body, documents, sources, size, corpus_hash, acceptance_thresholds(body))


def _reject_nul(body: CreateForgetRequest) -> None:
    """NUL characters cannot be stored in PostgreSQL text: say which field instead of failing later."""
    fields: list[tuple[str, str | None]] = [
        ("subject", body.subject),
        ("data_subject_ref", body.data_subject_ref),
        ("legal_basis", body.legal_basis),
    ]
    fields += [(f"probes[{i}].prompt", p.prompt) for i, p in enumerate(body.probes)]
    fields += [(f"probes[{i}].reference", p.reference) for i, p in enumerate(body.probes)]
    fields += [(f"hints[{i}].term", h.term) for i, h in enumerate(body.hints)]
    for name, value in fields:
        if isinstance(value, str) and "\x00" in value:
            raise BadRequest(f"{name} contains a NUL character (U+0000); remove it", param=name)


def acceptance_thresholds(body: CreateForgetRequest) -> dict[str, Any]:
    """The request's ``options.acceptance`` with the gate's defaults and bounds (422 naming the field)."""
    from pydantic import ValidationError

    from gpu_runtime.pipeline.gate import AcceptanceThresholds  # pydantic only, no torch

    given = body.options.acceptance
    values = {k: v for k, v in msgspec.structs.asdict(given).items() if v is not None} if given else {}
    try:
        return AcceptanceThresholds(**values).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = "options.acceptance." + ".".join(str(part) for part in error["loc"])
        raise Unprocessable(f"{field}: {error['msg']}", param=field) from None


def _gates(body: CreateForgetRequest, settings: Settings) -> list[str]:
    chosen = (
        body.options.review_gates if body.options.review_gates is not None else settings.default_review_gates
    )
    valid = {"anchor_review", "target_review", "evaluation_review"}
    unknown = [gate for gate in chosen if gate not in valid]
    if unknown:
        raise Unprocessable(f"Unknown review gate {unknown[0]!r}", param="options.review_gates")
    return sorted(set(chosen))


@dataclass
class Prepared:
    """A new request as rows to insert together (the idempotency row is added by the caller)."""

    request_id: str
    tenant: str
    row: ForgetRequest  # transient: rendered for the response, inserted as ``request``
    request: dict[str, Any]
    event: dict[str, Any]
    audit: list[NewEvent]
    outbox: dict[str, Any]
    spec: dict[str, Any]  # the corpus and hints, for the artifact store (never logged)


# Every column starts as None; ``prepare`` fills in what a new request has. (Reading unset
# attributes off the ORM object instead costs more than the rest of ``prepare``.)
_NULL_ROW: dict[str, Any] = {column.key: None for column in ForgetRequest.__table__.columns}


def prepare(intake: Intake, *, principal: Principal, settings: Settings) -> Prepared:
    """Build the queued request, its event, its two audit links and its first job."""
    body = intake.body
    gates = _gates(body, settings)
    request_id = new_request_id()
    now = utcnow()
    spec = {
        "documents": intake.documents,
        "sources": intake.sources,
        "qa_pairs": [{"question": p.question, "answer": p.answer} for p in body.qa_pairs],
        "hints": [
            {"term": h.term.strip(), "kind": h.kind, "translations": h.translations} for h in body.hints
        ],
        "retain_texts": list(body.retain_examples),
    }
    options: dict[str, Any] = {
        "deploy_policy": body.options.deploy_policy,
        "target_alias": body.options.target_alias,
        "retention_s": body.options.retention_s
        if body.options.retention_s is not None
        else settings.retention_s,
        "acceptance": intake.acceptance,
    }
    if body.options.alpha is not None:
        options["alpha"] = body.options.alpha
    if body.options.review_overlap is not None:
        options["review_overlap"] = body.options.review_overlap  # the review gates read it (open_gate)
    meta = {"data_subject_ref": body.data_subject_ref, "legal_basis": body.legal_basis}
    values: dict[str, Any] = dict(
        id=request_id,
        tenant=principal.tenant,
        subject=body.subject,
        status=Status.QUEUED.value,
        attempt=1,
        gates=gates,
        options=options,
        meta=meta,
        probes=[{"prompt": p.prompt, "reference": p.reference} for p in body.probes],
        corpus_hash=intake.corpus_hash,
        corpus_bytes=intake.corpus_bytes,
        document_count=len(intake.documents) + len(body.qa_pairs),
        hint_count=len(body.hints),
        stages={},
        progress=0.0,
        metrics={},
        decisions=[],
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        due_at=add_months(now, 1),
    )
    row = ForgetRequest(**values)
    transition = {"status": "queued", "from": "received"}
    audit = [
        NewEvent(
            action="request.received",
            actor=principal.actor,
            tenant=principal.tenant,
            request_id=request_id,
            data={
                "corpus_sha256": intake.corpus_hash,
                "corpus_bytes": intake.corpus_bytes,
                "documents": row.document_count,
                "hints": row.hint_count,
                "probes": len(row.probes),
                "gates": gates,
                "due_at": row.due_at.isoformat(),
            },
        ),
        NewEvent(
            action="status.queued",
            actor=principal.actor,
            tenant=principal.tenant,
            request_id=request_id,
            data=dict(transition),
        ),
    ]
    return Prepared(
        request_id=request_id,
        tenant=principal.tenant,
        row=row,
        request={**_NULL_ROW, **values},
        event={"request_id": request_id, "kind": "status", "data": transition, "created_at": now},
        audit=audit,
        outbox={
            "request_id": request_id,
            "job_name": jobs.REINFORCE,
            "job_id": job_id_for(request_id, jobs.REINFORCE, 1),
            "args": [request_id, jobs.REINFORCE, 1],
            "created_at": now,
            "attempts": 0,
        },
        spec=spec,
    )
