"""HTTP routes of forget requests under ``/v1/forget-requests`` and the certificate public key.

Every object route loads the request through ``get_for_tenant``: another tenant's request is a 404.
Roles: submitters create, cancel and extend; reviewers decide at gates; everyone in the tenant reads;
admins do everything.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, MultipartBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.artifacts.store import INPUT, SPEC_FILE, ArtifactStore
from service.audit import certificate as certificates
from service.audit import chain
from service.audit.signing import Signer
from service.auth.dependencies import AUTH_DEPENDENCIES, Principal, Role, require_role
from service.core import logs
from service.core.errors import BadRequest, Conflict, PayloadTooLarge, Unprocessable
from service.core.openapi import AUTH, NO_NUL, PLAIN, SECURITY, allow, errors, operation
from service.core.state import Resources
from service.db.base import utcnow
from service.forget import idempotency, intake
from service.forget import service as forget_service
from service.forget.lifecycle import TERMINAL, Status
from service.forget.models import ForgetRequest
from service.forget.schemas import (
    AuditEventOut,
    AuditTrail,
    CancelBody,
    CreateForgetRequest,
    Decision,
    ExtendDue,
    ForgetRequestList,
    ForgetRequestOut,
    UploadMetadata,
)
from service.forget.views import BASE, to_out
from service.forget.writer import IntakeWriter
from service.observability import tracing

SUBMIT = require_role(Role.SUBMITTER)
REVIEW = require_role(Role.REVIEWER)
READ = require_role(Role.SUBMITTER, Role.REVIEWER)
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key", required=False, description="Required: a unique key per request."
    ),
]
# Explicit markers (Litestar 3 stops inferring dependencies and parameters from plain annotations).
PrincipalDep = NamedDependency[Principal]
ResourcesDep = NamedDependency[Resources]
# Checked by the handler (400 idempotency_key_missing / invalid_idempotency_key), documented as required.
WITH_IDEMPOTENCY_KEY = operation(
    required_headers={
        idempotency.HEADER: {
            "type": "string",
            "minLength": 1,
            "maxLength": idempotency.MAX_KEY_LENGTH,
            "pattern": r"\S",
            "description": "A unique key per request (a UUID); a retry reuses it.",
        }
    }
)
_STATUSES = "|".join(status.value for status in Status)
# Cursors are request ids (``fr_`` + hex); the handler answers 400 for non-ASCII and 422 otherwise.
CURSOR_PATTERN = r"^fr_[A-Za-z0-9]{1,60}$"


def _store(resources: Resources) -> ArtifactStore:
    store: ArtifactStore = resources.extras["artifacts"]
    return store


def _kick_relay(resources: Resources) -> None:
    kick = resources.extras.get("relay_kick")
    if kick is not None:
        kick()


def _created_response(body: dict[str, Any], status_code: int, replayed: bool) -> Response[dict[str, Any]]:
    headers = {"Location": str(body.get("url", ""))} if status_code < 300 else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(body, status_code=status_code, headers=headers)


def _writer(resources: Resources) -> IntakeWriter:
    writer: IntakeWriter | None = resources.extras.get("intake_writer")
    if writer is None:  # apps built without the forget start-up hook (tests of other domains)
        writer = resources.extras["intake_writer"] = IntakeWriter(resources.sessionmaker, resources.engine)
    return writer


def _in_flight(resources: Resources) -> idempotency.InFlight:
    registry: idempotency.InFlight = resources.extras.setdefault(
        "idempotency_in_flight", idempotency.InFlight()
    )
    return registry


# Corpora larger than this (and any corpus bound for an object store) are written from a thread, so a
# big upload does not stall the event loop.
_INLINE_SPEC_BYTES = 64 * 1024


async def _create(
    resources: Resources, principal: Principal, checked: intake.Intake, key: str, body_hash: str
) -> Response[dict[str, Any]]:
    settings = resources.settings
    store = _store(resources)
    in_flight = _in_flight(resources)
    started_ns = time.time_ns()
    in_flight.enter(principal.tenant, key, body_hash)
    try:
        for _ in range(3):
            prepared = intake.prepare(checked, principal=principal, settings=settings)
            logs.bind_request_id(prepared.request_id)  # what intake logs from here on carries the id
            body: dict[str, Any] = msgspec.to_builtins(to_out(prepared.row, due_soon_s=settings.due_soon_s))
            # The corpus is stored before its row exists: a crash in between leaves an orphan
            # folder, never a request without its corpus.
            if checked.corpus_bytes > _INLINE_SPEC_BYTES or store.remote:
                await asyncio.to_thread(store.put_json, prepared.request_id, INPUT, SPEC_FILE, prepared.spec)
            else:
                store.put_json(prepared.request_id, INPUT, SPEC_FILE, prepared.spec)
            record = idempotency.record_row(
                settings,
                tenant=principal.tenant,
                key=key,
                body_hash=body_hash,
                body=body,
                request_id=prepared.request_id,
            )
            try:
                created = await _writer(resources).submit(prepared, key=key, idempotency=record)
            except BaseException:
                store.purge(prepared.request_id, (INPUT,))
                raise
            if created:
                # The request's trace starts here (before the relay can dispatch its first job).
                await tracing.intake_span(
                    settings,
                    resources.arq,
                    prepared.request_id,
                    started_ns,
                    documents=prepared.row.document_count,
                )
                _kick_relay(resources)
                return _created_response(body, 202, replayed=False)
            # Another process stored this key first: drop our copy of the corpus and answer as it says.
            await asyncio.to_thread(store.purge, prepared.request_id, (INPUT,))
            replay = await idempotency.resolve(
                resources.sessionmaker, settings, tenant=principal.tenant, key=key, body_hash=body_hash
            )
            if replay is not None:
                return _created_response(replay.body, replay.status_code, replayed=True)
    finally:
        in_flight.leave(principal.tenant, key)
    raise Conflict(
        "Idempotency-Key is contended; retry shortly", param=idempotency.HEADER, code="idempotency_in_flight"
    )


# RFC 3339 date-times, as the document says (Litestar's own parsing also took bare numbers as epochs).
Moment = Annotated[
    str | None,
    QueryParameter(
        description="An RFC 3339 date-time with a time zone, e.g. 2025-01-01T00:00:00Z.",
        schema_extra={"format": "date-time"},
    ),
]
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        if _RFC3339.fullmatch(value) is None:
            raise ValueError
        return datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise Unprocessable(
            f"{name} must be an RFC 3339 date-time with a time zone (e.g. 2025-01-01T00:00:00Z)", param=name
        ) from None


def _encode_cursor(request_id: str) -> str:
    # The last request id of the page: opaque to clients, and a rule the OpenAPI document can state
    # (a base64 form let schema-valid cursors decode to bytes that are not text: 422 or worse).
    return request_id


def _decode_cursor(cursor: str) -> str:
    if not cursor.isascii():
        raise BadRequest(
            "Invalid cursor (not ASCII); pass next_cursor from the previous page", param="cursor"
        )
    if re.fullmatch(CURSOR_PATTERN, cursor) is None:
        raise Unprocessable("Invalid cursor; pass next_cursor from the previous page", param="cursor")
    return cursor


async def _upload_documents(files: list[UploadFile], limit: int) -> list[str]:
    """Text files are one document each; JSONL files give one document per line ({"text": ...})."""
    documents: list[str] = []
    total = 0
    for upload in files:
        data = await upload.read(limit + 1 - total)
        total += len(data)
        if total > limit:
            raise PayloadTooLarge(f"The uploaded corpus exceeds {limit} bytes", param="corpus")
        name = (upload.filename or "").lower()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Unprocessable(f"{upload.filename}: not UTF-8 text", param="corpus") from None
        if name.endswith(".jsonl") or upload.content_type in {"application/jsonl", "application/x-ndjson"}:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    raise Unprocessable(
                        f"{upload.filename} line {number}: not valid JSON", param="corpus"
                    ) from None
                doc = item.get("text") if isinstance(item, dict) else None
                if not isinstance(doc, str) or not doc.strip():
                    raise Unprocessable(
                        f"{upload.filename} line {number}: expected an object with a non-empty 'text'",
                        param="corpus",
                    )
                documents.append(doc)
        elif name.endswith(".txt") or upload.content_type.startswith("text/"):
            if text.strip():
                documents.append(text)
        else:
            raise Unprocessable(
                f"{upload.filename}: upload .txt or .jsonl files (one document per file or per line)",
                param="corpus",
            )
    return documents


class ForgetRequestController(Controller):
    path = BASE
    tags = ["forget requests"]
    dependencies = AUTH_DEPENDENCIES
    security = SECURITY
    options = allow("GET", "POST")

    @post(
        "/",
        guards=[SUBMIT],
        status_code=202,
        summary="File a forget request",
        description=(
            "Creates the request and queues its pipeline. Requires `Idempotency-Key`: the same key and body"
            " replay the first response; another body is a 422; a retry while the first runs is a 409."
        ),
        operation_class=WITH_IDEMPOTENCY_KEY,
        responses=errors(
            400,
            *AUTH,
            409,
            413,
            422,
            s400="Missing or malformed `Idempotency-Key`, or a NUL character in a stored field; `param` names it.",
            s409="A request with this `Idempotency-Key` is still being processed; retry shortly.",
            s422="Invalid field, an empty corpus, or an `Idempotency-Key` reused with another body.",
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateForgetRequest],
        principal: PrincipalDep,
        resources: ResourcesDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[dict[str, Any]]:
        key = idempotency.check_key(idempotency_key)
        checked = intake.check(data, resources.settings)
        body_hash = hashlib.sha256(await request.body()).hexdigest()
        return await _create(resources, principal, checked, key, body_hash)

    @post(
        "/upload",
        guards=[SUBMIT],
        status_code=202,
        summary="File a forget request with a large corpus as files",
        description=(
            "multipart/form-data: a `metadata` part (the JSON body of `POST /v1/forget-requests`, corpus"
            " optional) and one or more `corpus` files: `.txt` (one document each) or `.jsonl`"
            ' (one `{"text": ...}` per line).'
        ),
        operation_class=WITH_IDEMPOTENCY_KEY,
        responses=errors(400, *AUTH, 409, 413, 422),
    )
    async def upload(
        self,
        data: MultipartBody[dict[str, Any]],
        principal: PrincipalDep,
        resources: ResourcesDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[dict[str, Any]]:
        key = idempotency.check_key(idempotency_key)
        raw_meta = data.get("metadata")
        if isinstance(raw_meta, UploadFile):
            raw_meta = (await raw_meta.read(1 << 20)).decode("utf-8", "replace")
        if not isinstance(raw_meta, str):
            raise Unprocessable("Missing the 'metadata' part (the request as JSON)", param="metadata")
        try:
            meta = msgspec.json.decode(raw_meta.encode(), type=UploadMetadata)
        except msgspec.ValidationError as exc:
            raise Unprocessable(f"metadata: {exc}", param="metadata") from None
        except msgspec.DecodeError:
            raise Unprocessable("metadata is not valid JSON", param="metadata") from None
        files = data.get("corpus")
        uploads = [f for f in (files if isinstance(files, list) else [files]) if isinstance(f, UploadFile)]
        documents = await _upload_documents(uploads, resources.settings.max_corpus_bytes)
        checked = intake.check(meta, resources.settings, extra_documents=documents)
        digest = hashlib.sha256(raw_meta.encode())
        for document in documents:
            digest.update(hashlib.sha256(document.encode()).digest())
        return await _create(resources, principal, checked, key, digest.hexdigest())

    @get(
        "/",
        guards=[READ],
        summary="List forget requests (newest first, cursor pagination)",
        responses=errors(400, *AUTH, 422, s400="A non-ASCII `cursor`, or a NUL character in `subject`."),
    )
    async def list_requests(
        self,
        principal: PrincipalDep,
        resources: ResourcesDep,
        status: Annotated[
            list[str] | None,
            QueryParameter(
                description="Repeat or comma-separate.",
                schema_extra={"items": {"type": "string", "pattern": f"^({_STATUSES})?(,({_STATUSES})?)*$"}},
            ),
        ] = None,
        subject: Annotated[str | None, QueryParameter(schema_extra={"pattern": NO_NUL})] = None,
        created_after: Moment = None,
        created_before: Moment = None,
        due: Annotated[
            str | None,
            QueryParameter(description="overdue or due_soon", schema_extra={"enum": ["overdue", "due_soon"]}),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[
            str | None,
            QueryParameter(
                description="`next_cursor` of the previous page.", schema_extra={"pattern": CURSOR_PATTERN}
            ),
        ] = None,
    ) -> ForgetRequestList:
        query = select(ForgetRequest).where(ForgetRequest.tenant == principal.tenant)
        statuses = [part for value in status or [] for part in value.split(",") if part]
        for value in statuses:
            if value not in Status.__members__.values():
                raise Unprocessable(f"Unknown status {value!r}", param="status")
        if statuses:
            query = query.where(ForgetRequest.status.in_(statuses))
        if subject is not None:
            if "\x00" in subject:
                raise BadRequest("subject contains a NUL character (U+0000); remove it", param="subject")
            query = query.where(ForgetRequest.subject == subject)
        after, before = _moment("created_after", created_after), _moment("created_before", created_before)
        if after is not None:
            query = query.where(ForgetRequest.created_at >= after)
        if before is not None:
            query = query.where(ForgetRequest.created_at < before)
        if due is not None:
            now = utcnow()
            open_states = [s.value for s in Status if s.value not in _CLOSED]
            query = query.where(ForgetRequest.status.in_(open_states))
            if due == "overdue":
                query = query.where(ForgetRequest.due_at <= now)
            elif due == "due_soon":
                from datetime import timedelta

                soon = now + timedelta(seconds=resources.settings.due_soon_s)
                query = query.where(ForgetRequest.due_at > now, ForgetRequest.due_at <= soon)
            else:
                raise Unprocessable("due must be 'overdue' or 'due_soon'", param="due")
        if cursor is not None:
            query = query.where(ForgetRequest.id < _decode_cursor(cursor))
        query = query.order_by(ForgetRequest.id.desc()).limit(limit + 1)
        async with resources.sessionmaker() as session:
            rows = list((await session.scalars(query)).all())
        has_more = len(rows) > limit
        rows = rows[:limit]
        return ForgetRequestList(
            object="list",
            data=[to_out(row, due_soon_s=resources.settings.due_soon_s) for row in rows],
            next_cursor=_encode_cursor(rows[-1].id) if has_more and rows else None,
            has_more=has_more,
        )

    @get(
        "/{request_id:str}",
        guards=[READ],
        summary="A forget request: status, progress, ETA, due date",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def get_one(
        self, request_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> ForgetRequestOut:
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            out = to_out(row, due_soon_s=resources.settings.due_soon_s)
            await _add_review_counts(session, [out])
        return out

    @get(
        "/{request_id:str}/events",
        guards=[READ],
        summary="Server-sent events: stage changes and progress",
        description="Resumable: send `Last-Event-ID`. `follow=false` returns what exists and closes. "
        "A stream ends after `sse_max_lifetime_s`, when the key is revoked, or at shutdown: reconnect "
        "with `Last-Event-ID`. Too many open streams per key or tenant: 429.",
        media_type="text/event-stream",
        operation_class=operation(
            optional_headers={"Last-Event-ID": {"type": "string", "pattern": "^[0-9]{0,18}$"}}
        ),
        responses=errors(*AUTH, 404, 422, 429, s422="`Last-Event-ID` is not an event id of this stream."),
    )
    async def events(
        self,
        request_id: FromPath[str],
        principal: PrincipalDep,
        resources: ResourcesDep,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
        follow: FromQuery[bool] = True,
    ) -> ServerSentEvent:
        try:
            after = int(last_event_id) if last_event_id else 0
        except ValueError:
            raise Unprocessable(
                "Last-Event-ID must be an event id from this stream", param="Last-Event-ID"
            ) from None
        async with resources.sessionmaker() as session:
            await forget_service.get_for_tenant(session, principal.tenant, request_id)
        # Capped per key and tenant (429), bounded in time, ended when the key is revoked or at shutdown.
        from service.forget.streams import limited

        stream = await limited(
            resources, principal, lambda: _event_stream(resources, request_id, after, follow)
        )
        return ServerSentEvent(stream)

    @post(
        "/{request_id:str}/cancel",
        guards=[SUBMIT],
        status_code=202,
        summary="Cancel a request",
        operation_class=operation(optional_body=True),
        responses=errors(
            400, *AUTH, 404, 409, 413, 422, s409="The request has finished; it cannot be cancelled."
        ),
    )
    async def cancel(
        self,
        request_id: FromPath[str],
        principal: PrincipalDep,
        resources: ResourcesDep,
        data: JSONBody[CancelBody | None] = None,
    ) -> ForgetRequestOut:
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            await forget_service.cancel(
                session,
                row,
                actor=principal.actor,
                reason=(data.reason if data else "") or "cancelled by request",
            )
            await session.commit()
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
        return to_out(row, due_soon_s=resources.settings.due_soon_s)

    @post(
        "/{request_id:str}/approve",
        guards=[REVIEW],
        status_code=200,
        summary="Approve or reject at the review gate the request waits in",
        responses=errors(400, *AUTH, 404, 409, 413, 422, s409="The request is not waiting at that gate."),
    )
    async def approve(
        self,
        request_id: FromPath[str],
        data: JSONBody[Decision],
        principal: PrincipalDep,
        resources: ResourcesDep,
    ) -> ForgetRequestOut:
        if data.decision == "reject" and not data.reason.strip():
            raise Unprocessable("A rejection needs a reason", param="reason")
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            await forget_service.decide(
                session,
                row,
                actor=principal.actor,
                approve=data.decision == "approve",
                reason=data.reason,
                gate=data.gate,
            )
            await session.commit()
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
        _kick_relay(resources)
        return to_out(row, due_soon_s=resources.settings.due_soon_s)

    @post(
        "/{request_id:str}/extend-due",
        guards=[SUBMIT],
        status_code=200,
        summary="Extend the deadline by two months (GDPR Art. 12(3)); a reason is required",
        responses=errors(400, *AUTH, 404, 409, 413, 422, s409="The deadline was extended already."),
    )
    async def extend_due(
        self,
        request_id: FromPath[str],
        data: JSONBody[ExtendDue],
        principal: PrincipalDep,
        resources: ResourcesDep,
    ) -> ForgetRequestOut:
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            await forget_service.extend_due(session, row, actor=principal.actor, reason=data.reason)
            await session.commit()
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
        return to_out(row, due_soon_s=resources.settings.due_soon_s)

    @get(
        "/{request_id:str}/audit",
        guards=[READ],
        summary="The request's audit trail (hash-chained)",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def audit(
        self, request_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> AuditTrail:
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            events = await chain.for_request(session, request_id)
            ok = chain.links_intact(events)
            await forget_service.record_access(session, row, actor=principal.actor, what="audit")
            await session.commit()
        return AuditTrail(
            request_id=request_id,
            chain_ok=ok,
            events=[
                AuditEventOut(
                    seq=e.seq,
                    action=e.action,
                    actor=e.actor,
                    data=e.data,
                    created_at=e.created_at.isoformat(),
                    prev_hash=e.prev_hash,
                    hash=e.hash,
                )
                for e in events
            ],
        )

    @get(
        "/{request_id:str}/certificate",
        guards=[READ],
        summary="Signed certificate (Ed25519) of a deployed request",
        description=f"Verify the signature over the canonical JSON of `certificate` with {certificates.PUBLIC_KEY_PATH}.",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404, 409, s409="The request has no certificate yet (not deployed)."),
    )
    async def certificate(
        self, request_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> dict[str, Any]:
        signer: Signer = resources.extras["signer"]
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            signed = await certificates.build(session, row, signer)
            await forget_service.record_access(session, row, actor=principal.actor, what="certificate")
            await session.commit()
        return signed


async def _add_review_counts(session: AsyncSession, outs: list[ForgetRequestOut]) -> None:
    """How many review tasks are open for requests waiting at a gate (the review domain counts)."""
    from service.review.services import open_counts

    waiting = [out.id for out in outs if out.awaiting_review]
    counts = await open_counts(session, waiting) if waiting else {}
    for out in outs:
        if out.awaiting_review:
            out.open_review_tasks = counts.get(out.id, 0)


_CLOSED = {"ready", "deployed", "superseded", "rolled_back", "failed", "cancelled"}


async def _event_stream(
    resources: Resources, request_id: str, after: int, follow: bool
) -> AsyncIterator[ServerSentEventMessage]:
    last = after
    idle = 0.0
    poll = 0.25
    while True:
        async with resources.sessionmaker() as session:
            # Status first: its change commits with its event, so events read after it include that
            # event (read the other way round, a change landing in between ended the stream early).
            status = (
                await session.execute(select(ForgetRequest.status).where(ForgetRequest.id == request_id))
            ).scalar_one_or_none()
            events = await forget_service.latest_events(session, request_id, last)
        for event in events:
            last = event.id
            payload = {"type": event.kind, **event.data, "created_at": event.created_at.isoformat()}
            yield ServerSentEventMessage(data=json.dumps(payload), event=event.kind, id=event.id)
        if events:
            idle = 0.0
            continue
        if not follow or status is None or Status(status) in TERMINAL or status == Status.DEPLOYED:
            return
        idle += poll
        if idle >= 15.0:
            idle = 0.0
            yield ServerSentEventMessage(comment="keep-alive")
        await asyncio.sleep(poll)


class CertificateKeyController(Controller):
    path = "/v1/certificates"
    tags = ["certificates"]

    @get("/public-key", summary="The Ed25519 public key that signs certificates (no auth needed)")
    async def public_key(self, resources: ResourcesDep) -> dict[str, str]:
        signer: Signer = resources.extras["signer"]
        return {
            "algorithm": "Ed25519",
            "key_id": signer.key_id,
            "public_key": base64.b64encode(signer.public_raw).decode("ascii"),
            "public_key_pem": signer.public_pem(),
            "signed_bytes": "UTF-8 JSON of `certificate` with sorted keys and no whitespace",
        }
