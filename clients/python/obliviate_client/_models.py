"""Typed response and request models. Unknown fields are kept (``extra="allow"``) so a newer server
does not break an older SDK."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"failed", "cancelled", "superseded", "rolled_back"})
SETTLED_STATUSES = frozenset({"ready", "deployed", *TERMINAL_STATUSES})
GATE_STATUSES = frozenset({"awaiting_anchor_review", "awaiting_target_review", "awaiting_evaluation_review"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---- inputs -------------------------------------------------------------------------------------


class Document(_Model):
    text: str
    source: str | None = None


class QAPair(_Model):
    question: str
    answer: str


class Hint(_Model):
    term: str
    kind: Literal["first_name", "last_name", "person", "place", "organization", "other"] = "other"
    translations: list[str] = Field(default_factory=list)


class Probe(_Model):
    prompt: str
    reference: str = ""


class Options(_Model):
    alpha: float | None = None
    review_gates: list[Literal["anchor_review", "target_review", "evaluation_review"]] | None = None
    deploy_policy: Literal["auto", "manual"] = "manual"
    target_alias: str = "chat"
    retention_s: float | None = None


# ---- outputs ------------------------------------------------------------------------------------


class StageProgress(_Model):
    state: str
    progress: float
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    eta_s: float | None = None
    attempts: int = 0


class Progress(_Model):
    overall: float
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    eta_s: float | None = None


class Due(_Model):
    due_at: datetime
    overdue: bool
    due_soon: bool
    extension_reason: str | None = None


class CorpusInfo(_Model):
    sha256: str
    bytes: int
    documents: int
    hints: int
    probes: int
    purged_at: datetime | None = None


class Failure(_Model):
    code: str
    reason: str


class AdapterInfo(_Model):
    sha256: str | None = None
    deployed_version: str | None = None


class ForgetRequest(_Model):
    id: str
    url: str
    subject: str
    status: str
    stage: str | None = None
    awaiting_review: str | None = None
    progress: Progress
    due: Due
    corpus: CorpusInfo
    gates: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    failure: Failure | None = None
    adapter: AdapterInfo | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def is_settled(self) -> bool:
        """Nothing more happens without a human: ready, deployed, or a terminal state."""
        return self.status in SETTLED_STATUSES

    @property
    def is_awaiting_review(self) -> bool:
        return self.status in GATE_STATUSES


class ForgetRequestPage(_Model):
    data: list[ForgetRequest]
    next_cursor: str | None = None
    has_more: bool = False


class RequestEvent(_Model):
    """One server-sent event of a request's stream (stage change, progress, gate, ...)."""

    id: str | None = None
    type: str
    data: dict[str, Any] = Field(default_factory=dict)


class AuditEvent(_Model):
    seq: int
    action: str
    actor: str
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    prev_hash: str
    hash: str


class AuditTrail(_Model):
    request_id: str
    events: list[AuditEvent]
    chain_ok: bool


class Certificate(_Model):
    certificate: dict[str, Any]
    signature: str
    algorithm: str = "Ed25519"
    key_id: str
    public_key_url: str | None = None


class PublicKey(_Model):
    algorithm: str
    key_id: str
    public_key: str


class Deployment(_Model):
    alias: str
    version: str | None = None


class Verification(_Model):
    id: str | None = None
    results: list[dict[str, Any]] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
