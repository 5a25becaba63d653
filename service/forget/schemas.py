"""Request and response bodies of the forget-request API (msgspec structs: fast, and in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

from service.core.openapi import NO_NUL, NOT_BLANK

# Rules checked after decoding (intake answers 400 naming the field, or 422) are stated in the schema
# with ``extra_json_schema``: msgspec documents them without enforcing them itself.
_NO_NUL = Meta(extra_json_schema={"pattern": NO_NUL})
NonEmpty200 = Annotated[str, Meta(min_length=1, max_length=200)]
Text = Annotated[str, Meta(min_length=1)]
Opaque = Annotated[str, Meta(max_length=512), _NO_NUL]
#: A hint term: trimmed, it must not be empty; stored in the database, so no NUL.
Term = Annotated[
    str,
    Meta(min_length=1, max_length=200),
    Meta(extra_json_schema={"allOf": [{"pattern": NO_NUL}, {"pattern": NOT_BLANK}]}),
]
#: The longest retention a request may ask for (ten years, as for parked requests).
MAX_RETENTION_S = 10 * 365 * 24 * 3600.0
#: Leak counts beyond any evaluation's size (kept in 64-bit JSON integers everywhere).
MAX_LEAKS = 1_000_000
HintKind = Literal[
    "first_name", "last_name", "person", "place", "organization", "other",
    "email", "phone", "card", "account", "iban", "date", "url", "handle", "address", "value",
]  # fmt: skip
Rate = Annotated[float, Meta(ge=0, le=1)]
GateName = Literal["anchor_review", "target_review", "evaluation_review"]


class Document(Struct, forbid_unknown_fields=True):
    """One document of the forget corpus."""

    text: Text
    source: Annotated[str, Meta(max_length=1000)] | None = None


class QAPair(Struct, forbid_unknown_fields=True):
    question: Text
    answer: Text


class Hint(Struct, forbid_unknown_fields=True):
    """A term to forget, with optional generic translations ("Harold" for "Harry")."""

    term: Term
    kind: HintKind = "other"
    translations: Annotated[list[NonEmpty200], Meta(max_length=20)] = []


class Probe(Struct, forbid_unknown_fields=True):
    """A prompt whose answer should change, with the reference answer it must no longer give."""

    prompt: Annotated[str, Meta(min_length=1, max_length=4000), _NO_NUL]
    reference: Annotated[str, Meta(max_length=4000), _NO_NUL] = ""


class Acceptance(Struct, forbid_unknown_fields=True):
    """Acceptance thresholds (omitted fields: the defaults of ``gpu_runtime.pipeline.gate``, which also
    checks the bounds). A request that misses them is retrained harder, then waits at the evaluation
    review; it is never auto-deployed, and a manual deploy needs an admin's override."""

    max_original_leaks: Annotated[int, Meta(ge=0, le=MAX_LEAKS)] | None = None
    max_heldout_leak_rate: Rate | None = None
    max_broken_rate: Rate | None = None
    min_retain_ratio: Rate | None = None
    max_earlier_leaks: Annotated[int, Meta(ge=0, le=MAX_LEAKS)] | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=6)] | None = None


class Options(Struct, forbid_unknown_fields=True):
    alpha: Annotated[float, Meta(ge=0, le=100)] | None = None
    review_gates: list[GateName] | None = None
    deploy_policy: Literal["auto", "manual"] = "manual"
    target_alias: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] = "chat"
    # Bounded: a purge time is computed from it (1e15 s overflowed a datetime and stalled the reconciler).
    retention_s: Annotated[float, Meta(ge=0, le=MAX_RETENTION_S)] | None = None
    acceptance: Acceptance | None = None
    #: Reviewers per review task of this request (majority decides); unset: the server's default
    #: (``OBLIVIATE_REVIEW_OVERLAP``). Bounded like that setting.
    review_overlap: Annotated[int, Meta(ge=1, le=9)] | None = None


class CreateForgetRequest(Struct, forbid_unknown_fields=True):
    """A forget request. The corpus is personal data: it is stored for the pipeline, never logged.

    It needs something to forget: a document with text that is not only whitespace, or a Q&A pair.
    """

    # What intake checks after decoding, for the OpenAPI document (service.core.openapi.StructSchemas).
    __schema_extra__: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {
                "required": ["corpus"],
                "properties": {
                    "corpus": {"contains": {"type": "object", "properties": {"text": {"pattern": NOT_BLANK}}}}
                },
            },
            {"required": ["qa_pairs"], "properties": {"qa_pairs": {"minItems": 1}}},
        ]
    }

    subject: Annotated[str, Meta(min_length=1, max_length=200), _NO_NUL]
    corpus: list[Document] = []
    qa_pairs: list[QAPair] = []
    hints: list[Hint] = []
    probes: list[Probe] = []
    retain_examples: list[Text] = []
    options: Options = msgspec.field(default_factory=Options)
    data_subject_ref: Opaque | None = None
    legal_basis: Opaque | None = None


class UploadMetadata(CreateForgetRequest, forbid_unknown_fields=True):
    """The ``metadata`` part of a multipart upload: everything but the files."""

    # The corpus may come as files instead.
    __schema_extra__: ClassVar[dict[str, Any]] = {}


class StageProgress(Struct):
    state: str
    progress: float
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    eta_s: float | None = None
    attempts: int = 0


class Progress(Struct):
    overall: float
    stages: dict[str, StageProgress]
    eta_s: float | None = None


class Timings(Struct):
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    deployed_at: str | None
    heartbeat_at: str | None


class Due(Struct):
    due_at: str
    overdue: bool
    due_soon: bool
    extension_reason: str | None


class CorpusInfo(Struct):
    sha256: str
    bytes: int
    documents: int
    hints: int
    probes: int
    purged_at: str | None


class Failure(Struct):
    code: str
    reason: str


class AdapterInfo(Struct):
    sha256: str | None
    deployed_version: str | None


class AcceptanceOut(Struct):
    """The acceptance gate on the latest evaluation (details: ``metrics.gate``)."""

    #: pending (not evaluated yet), passed, or failed (never auto-deployed; deploy needs an override).
    verdict: str
    thresholds: dict[str, Any]
    attempts: int
    escalation: int | None
    failed: str | None
    overridden: bool


class ForgetRequestOut(Struct):
    id: str
    object: str
    url: str
    subject: str
    status: str
    stage: str | None
    awaiting_review: str | None
    progress: Progress
    timings: Timings
    due: Due
    corpus: CorpusInfo
    gates: list[str]
    options: dict[str, Any]
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    decisions: list[dict[str, Any]]
    failure: Failure | None
    adapter: AdapterInfo
    links: dict[str, str]
    #: While ``awaiting_review``: review tasks still open at that gate (details: ``links.review``).
    open_review_tasks: int | None = None
    acceptance: AcceptanceOut | None = None


class ForgetRequestList(Struct):
    object: str
    data: list[ForgetRequestOut]
    next_cursor: str | None
    has_more: bool


class Decision(Struct, forbid_unknown_fields=True):
    """A reviewer's decision at the gate the request waits in (a rejection needs a reason)."""

    __schema_extra__: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"properties": {"decision": {"const": "approve"}}},
            {"required": ["reason"], "properties": {"reason": {"pattern": NOT_BLANK}}},
        ]
    }

    decision: Literal["approve", "reject"] = "approve"
    reason: Annotated[str, Meta(max_length=2000)] = ""
    gate: GateName | None = None


class CancelBody(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(max_length=2000)] = ""


class ExtendDue(Struct, forbid_unknown_fields=True):
    reason: Annotated[
        str, Meta(min_length=1, max_length=2000), Meta(extra_json_schema={"pattern": NOT_BLANK})
    ]


class AuditEventOut(Struct):
    seq: int
    action: str
    actor: str
    data: dict[str, Any]
    created_at: str
    prev_hash: str
    hash: str


class AuditTrail(Struct):
    request_id: str
    events: list[AuditEventOut]
    chain_ok: bool


class Certificate(Struct):
    certificate: dict[str, Any]
    signature: str
    algorithm: str
    key_id: str
    public_key_url: str
