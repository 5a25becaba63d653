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


class Acceptance(_Model):
    """Acceptance thresholds of a request (None: the server's default). A request whose evaluation
    misses them is retrained harder, then waits at the evaluation review; it is never auto-deployed."""

    max_original_leaks: int | None = None
    max_heldout_leak_rate: float | None = None
    max_broken_rate: float | None = None
    min_retain_ratio: float | None = None
    max_earlier_leaks: int | None = None
    max_attempts: int | None = None


class Options(_Model):
    alpha: float | None = None
    review_gates: list[Literal["anchor_review", "target_review", "evaluation_review"]] | None = None
    deploy_policy: Literal["auto", "manual"] = "manual"
    target_alias: str = "chat"
    retention_s: float | None = None
    acceptance: Acceptance | None = None
    #: Reviewers per review task (1-9; None: the server's default).
    review_overlap: int | None = None


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


class AcceptanceSummary(_Model):
    """The acceptance gate on a request's latest evaluation (``pending`` until evaluated)."""

    verdict: Literal["pending", "passed", "failed"]
    thresholds: dict[str, float | int] = Field(default_factory=dict)
    attempts: int = 0
    escalation: int | None = None
    failed: str | None = None
    overridden: bool = False


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
    acceptance: AcceptanceSummary | None = None

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


class AcceptanceOverride(_Model):
    by: str | None = None
    reason: str | None = None
    at: datetime | None = None


class AcceptanceStatement(_Model):
    """The certificate's ``acceptance`` section: what the acceptance gate measured and decided."""

    verdict: Literal["passed", "failed", "not_evaluated"]
    thresholds: dict[str, float | int] | None = None
    residual_leak_rates: dict[str, float | None] = Field(default_factory=dict)
    residual_leaks: dict[str, dict[str, int | None]] = Field(default_factory=dict)
    heldout_leak_rate: float | None = None
    broken_rate: float | None = None
    retain_ratio: float | None = None
    earlier_leaks: int | None = None
    failed_checks: list[dict[str, Any]] = Field(default_factory=list)
    attempts: int = 0
    escalation: int | None = None
    override: AcceptanceOverride | None = None


class Certificate(_Model):
    """A signed certificate. ``certificate`` is the signed payload, kept as received (the signature is
    checked over exactly these bytes); the typed views below read from it."""

    certificate: dict[str, Any]
    signature: str
    algorithm: str = "Ed25519"
    key_id: str
    public_key_url: str | None = None

    @property
    def acceptance(self) -> AcceptanceStatement | None:
        """The acceptance gate's verdict, residual rates, thresholds in force, attempts and override."""
        section = self.certificate.get("acceptance")
        return AcceptanceStatement.model_validate(section) if isinstance(section, dict) else None

    @property
    def overridden(self) -> bool:
        """True when an admin deployed the request although it failed the acceptance gate."""
        return bool(self.acceptance and self.acceptance.override)


class PublicKey(_Model):
    algorithm: str
    key_id: str
    public_key: str


class ServerVersion(_Model):
    """The API version a server speaks and whether this SDK speaks it (``Client.server_version()``)."""

    api_version: str | None
    client_version: str
    compatible: bool


class Deployment(_Model):
    alias: str
    version: str | None = None


class Verification(_Model):
    id: str | None = None
    results: list[dict[str, Any]] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
