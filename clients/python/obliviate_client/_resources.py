"""What each endpoint needs, independent of sync or async: paths, bodies, parsing.

The sync and async resources in ``_client.py`` only send what these functions build, so the two
twins cannot drift apart in what they ask of the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from httpx_sse import ServerSentEvent

from obliviate_client import _ed25519
from obliviate_client._exceptions import SignatureError
from obliviate_client._models import (
    GATE_STATUSES,
    SETTLED_STATUSES,
    Certificate,
    Document,
    ForgetRequest,
    Hint,
    Options,
    Probe,
    PublicKey,
    QAPair,
    RequestEvent,
)

FORGET = "/v1/forget-requests"
PUBLIC_KEY = "/v1/certificates/public-key"
LIVE = "/health/live"


@dataclass
class Call:
    """One HTTP call to make."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _as_dicts(
    items: Sequence[Any] | None, model: type[Any], text_field: str | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items or ():
        if isinstance(item, str) and text_field:
            item = {text_field: item}
        parsed = item if isinstance(item, model) else model.model_validate(item)
        out.append(parsed.model_dump(exclude_none=True))
    return out


def create_call(
    *,
    subject: str,
    corpus: Sequence[str | Document | Mapping[str, Any]] | None,
    qa_pairs: Sequence[QAPair | Mapping[str, Any]] | None,
    hints: Sequence[str | Hint | Mapping[str, Any]] | None,
    probes: Sequence[str | Probe | Mapping[str, Any]] | None,
    retain_examples: Sequence[str] | None,
    options: Options | Mapping[str, Any] | None,
    data_subject_ref: str | None,
    legal_basis: str | None,
    idempotency_key: str | None,
) -> Call:
    body: dict[str, Any] = {
        "subject": subject,
        "corpus": _as_dicts(corpus, Document, "text"),
        "qa_pairs": _as_dicts(qa_pairs, QAPair),
        "hints": _as_dicts(hints, Hint, "term"),
        "probes": _as_dicts(probes, Probe, "prompt"),
        "retain_examples": list(retain_examples or ()),
    }
    if options is not None:
        parsed = options if isinstance(options, Options) else Options.model_validate(options)
        body["options"] = parsed.model_dump(exclude_none=True)
    if data_subject_ref is not None:
        body["data_subject_ref"] = data_subject_ref
    if legal_basis is not None:
        body["legal_basis"] = legal_basis
    # One key per logical create, reused by every retry of it: the server replays, never duplicates.
    key = idempotency_key or f"sdk-{uuid.uuid4()}"
    return Call("POST", f"{FORGET}/", json=body, headers={"Idempotency-Key": key})


def deploy_body(
    request_id: str, alias: str | None, override: bool, reason: str | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id, **extra}
    if alias is not None:
        body["alias"] = alias
    if override:
        body["override"] = True
    if reason is not None:
        body["reason"] = reason
    return body


def list_params(
    *,
    status: str | Sequence[str] | None,
    subject: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    due: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status if isinstance(status, str) else ",".join(status)
    if subject is not None:
        params["subject"] = subject
    if created_after is not None:
        params["created_after"] = created_after.isoformat()
    if created_before is not None:
        params["created_before"] = created_before.isoformat()
    if due is not None:
        params["due"] = due
    if cursor is not None:
        params["cursor"] = cursor
    return params


def request_path(request_id: str, suffix: str = "") -> str:
    return f"{FORGET}/{_segment(request_id)}{suffix}"


def decision_body(decision: str, reason: str, gate: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"decision": decision, "reason": reason}
    if gate is not None:
        body["gate"] = gate
    return body


def verification_call(
    request_id: str | None,
    prompts: Sequence[str | Mapping[str, Any]],
    anchors: Sequence[str],
    options: Mapping[str, Any],
) -> Call:
    items = [{"prompt": p} if isinstance(p, str) else dict(p) for p in prompts]
    body: dict[str, Any] = {"prompts": items, "anchors": list(anchors), **options}
    if request_id is not None:
        body["request_id"] = request_id
    return Call("POST", "/v1/verifications", json=body)


def parse_event(sse: ServerSentEvent) -> RequestEvent | None:
    """The request event an SSE message carries; None for one without data (the stream's opening
    comment with its retry delay, keep-alives), which the WHATWG parser still reports."""
    if not sse.data and sse.event == "message":
        return None
    try:
        payload = json.loads(sse.data) if sse.data else {}
    except ValueError:
        payload = {"raw": sse.data}
    if not isinstance(payload, dict):
        payload = {"value": payload}
    return RequestEvent(id=sse.id or None, type=str(payload.get("type") or sse.event), data=payload)


def wait_is_over(request: ForgetRequest, until: str) -> bool:
    """``until="settled"``: ready/deployed/terminal; ``"gate"``: also stop at a review gate;
    ``"deployed"``: deployed or terminal, or stopped by the acceptance gate at the evaluation review
    (it is not deployed unless a person overrides the verdict: waiting on would hang)."""
    if until == "deployed":
        stopped = (
            request.status == "awaiting_evaluation_review"
            and request.acceptance is not None
            and request.acceptance.verdict == "failed"
        )
        return stopped or request.status == "deployed" or request.status in SETTLED_STATUSES - {"ready"}
    if until == "gate" and request.status in GATE_STATUSES:
        return True
    return request.status in SETTLED_STATUSES


def check_wait_until(until: str) -> None:
    if until not in {"settled", "gate", "deployed"}:
        raise ValueError("until must be 'settled', 'gate' or 'deployed'")


def key_id_of(raw_public_key: bytes) -> str:
    """The key id the service gives a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def decode_public_key(value: str | bytes) -> bytes:
    """A raw 32-byte Ed25519 public key from raw bytes, base64 of them, or a PEM SubjectPublicKeyInfo."""
    if isinstance(value, bytes) and len(value) == 32:
        raw = value
    else:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        text = text.strip()
        try:
            if text.startswith("-----BEGIN PUBLIC KEY-----"):
                body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
                der = base64.b64decode(body, validate=True)
                # Ed25519 SubjectPublicKeyInfo: a fixed 12-byte prefix, then the 32-byte key.
                if len(der) != 44 or der[:12] != bytes.fromhex("302a300506032b6570032100"):
                    raise SignatureError("the pinned PEM key is not an Ed25519 public key")
                raw = der[12:]
            else:
                raw = base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise SignatureError("the public key is not valid base64 or PEM") from exc
    if len(raw) != 32:
        raise SignatureError("an Ed25519 public key has 32 bytes")
    if _ed25519.weak_key(raw):
        raise SignatureError("the public key is malformed or of small order; it cannot vouch for anything")
    return raw


def verify_certificate(
    certificate: Certificate,
    public_key: PublicKey | None,
    *,
    pinned_key: str | bytes | None = None,
    pinned_key_id: str | None = None,
) -> Certificate:
    """Check the Ed25519 signature over the canonical JSON of ``certificate.certificate``.

    Without a pin, the key is the one the server serves (which proves the certificate was not
    altered, not who signed it). ``pinned_key`` (raw, base64 or PEM) checks against that key alone,
    whatever the server serves; ``pinned_key_id`` requires the server's key to have that id (computed
    from the key, not taken from the server's word).
    """
    if certificate.algorithm != "Ed25519" or (public_key is not None and public_key.algorithm != "Ed25519"):
        raise SignatureError(f"unsupported signature algorithm {certificate.algorithm!r}")
    if pinned_key is not None:
        key = decode_public_key(pinned_key)
    elif public_key is not None:
        key = decode_public_key(public_key.public_key)
        if key_id_of(key) != public_key.key_id:
            raise SignatureError("the server's key id does not match its public key")
    else:
        raise SignatureError("no public key to verify with")
    key_id = key_id_of(key)
    if pinned_key_id is not None and key_id != pinned_key_id:
        raise SignatureError(f"the signing key is {key_id!r}, not the pinned key {pinned_key_id!r}")
    if certificate.key_id != key_id:
        raise SignatureError(f"certificate signed by key {certificate.key_id!r}, expected key {key_id!r}")
    message = json.dumps(certificate.certificate, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        signature = base64.b64decode(certificate.signature, validate=True)
    except ValueError as exc:
        raise SignatureError("the signature is not valid base64") from exc
    if not _ed25519.verify(key, message.encode("utf-8"), signature):
        raise SignatureError("certificate signature does not verify: the certificate was altered or forged")
    return certificate
