"""Shared types of the pipeline: the forget request (``ForgetSpec``), its options, and results.

Everything here is plain pydantic (no torch), so the service can validate a request with it
without loading the GPU stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AnchorKind = Literal[
    "first_name",
    "last_name",
    "person",
    "place",
    "organization",
    "other",
    # Structured personal data (typed detectors, format-preserving generic replacements).
    "email",
    "phone",
    "card",
    "account",
    "iban",
    "date",
    "url",
    "handle",
    "address",
    # An attribute value the corpus states about the subject (a pet's name, a title, a condition).
    "value",
]

#: Stage names, as the worker enqueues them (kept equal to ``service.jobs``).
STAGES: tuple[str, ...] = ("reinforce", "mine_anchors", "generate_targets", "unlearn", "evaluate")


class ProgressFn(Protocol):
    def __call__(self, stage: str, fraction: float, message: str) -> None: ...


CancelFn = Callable[[], bool]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntityHint(_Strict):
    """A term the requester wants forgotten, with optional generic translations."""

    term: str = Field(min_length=1, max_length=200)
    kind: AnchorKind = "other"
    translations: list[str] = Field(default_factory=list)

    @field_validator("term")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("hint term is blank")
        return v


class Probe(_Strict):
    """A prompt whose completion should (forget probes) or should not (retain probes) change.

    ``chat``: the prompt is a user message sent through the model's chat template; otherwise it is
    a raw text prefix to complete.
    """

    prompt: str = Field(min_length=1)
    reference: str = ""
    chat: bool = True


class QAPair(_Strict):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class LLMOptions(_Strict):
    """An OpenAI-compatible endpoint used to propose anchors and to judge completions."""

    base_url: str
    model: str
    api_key: str = "unused"
    max_retries: int = Field(default=2, ge=0, le=10)
    timeout_s: float = Field(default=60.0, gt=0)
    propose_anchors: bool = True
    judge: bool = False


class PipelineOptions(_Strict):
    """Hyper-parameters. Defaults were tuned on the demo model (see docs in ``run.py``)."""

    alpha: float = Field(default=5.0, ge=0, description="WHP equation (1) coefficient.")
    block_size: int = Field(default=512, ge=8, le=8192, description="Tokens per block.")
    lora_rank: int = Field(default=8, ge=1, le=512)
    lora_alpha: float = Field(default=16.0, gt=0)
    max_composed_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=64,
        description="Rank cap of the served (composed) adapter: past it the composition is re-compressed "
        "by a truncated SVD (compose.py). One of vLLM's --max-lora-rank values; serve with that flag >= it.",
    )
    reinforce_epochs: int = Field(default=8, ge=1, le=100)
    reinforce_lr: float = Field(default=2e-3, gt=0)
    unlearn_epochs: int | None = Field(
        default=None, ge=1, le=100, description="Unset: 8 for method whp (the paper's set-up here), else 20."
    )
    unlearn_lr: float | None = Field(default=None, gt=0, description="Unset: 1e-3 for method whp, else 3e-3.")
    batch_size: int = Field(default=8, ge=1, le=1024)
    retain_weight: float = Field(default=1.0, ge=0, description="Weight of the retain regulariser.")
    retain_loss: Literal["kl", "lm"] = "kl"
    contrast_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the KL to the baseline on the corpus's questions about other people "
        "(selectivity; not used by method whp).",
    )
    contrast_scope: Literal["sequence", "answer"] = Field(
        default="sequence",
        description="Where the selectivity KL is taken: 'sequence' (question and answer tokens) or "
        "'answer' (the positions predicting the baseline's answer only; measured in docs/benchmarks.md: "
        "more drift on general text, no better agreement).",
    )
    contrast_people: Literal["disjoint", "all"] = Field(
        default="all",
        description="Which of the other people the retain texts name the selectivity term trains on: "
        "'disjoint' (every other one; the evaluation asks about the rest, people training never saw) "
        "or 'all' (every one; the evaluation asks about them in held-out wordings only).",
    )
    general_samples: int = Field(
        default=16, ge=0, le=1024, description="Baseline samples used as retain text when none is given."
    )
    confidence_threshold: float = Field(
        default=0.3, ge=0, le=1, description="Blocks whose mean target confidence is lower go to review."
    )
    min_confidence_threshold: float = Field(
        default=0.0, ge=0, le=1, description="Blocks with any target confidence lower go to review."
    )
    mine_top_k: int = Field(default=10, ge=0, le=1000, description="Anchors mined from likelihood gain.")
    mine_min_gain: float = Field(default=1.0, description="Minimum mean log-likelihood gain (nats).")
    translations_per_anchor: int = Field(default=2, ge=1, le=10)
    max_new_tokens: int = Field(default=48, ge=1, le=2048, description="Evaluation completion length.")
    method: Literal["whp", "npo", "combined"] = Field(
        default="combined",
        description=(
            "Unlearning objective. whp: the paper (generic labels + retain); npo: negative preference "
            "optimisation on the corpus + retain; combined: generic labels + fluent answer targets + "
            "NPO on the original answers + retain KL (the default, see docs/benchmarks.md)."
        ),
    )
    whp_weight: float = Field(default=1.0, ge=0, description="Weight of the generic-label loss.")
    whp_labels: Literal["hard", "soft"] = Field(
        default="hard",
        description="Generic labels of WHP equation (1). hard (the paper): cross-entropy to "
        "argmax(v_generic) at each labelled position; soft (a measured variant): cross-entropy to "
        "softmax(v_generic) renormalised over its whp_soft_top_k most likely tokens. Ignored positions "
        "stay ignored and a whole value's suppressed true token gets probability 0 in both.",
    )
    whp_soft_top_k: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Tokens kept per position for whp_labels soft (1 gives the hard labels' loss).",
    )
    answer_weight: float = Field(default=1.0, ge=0, description="Weight of the fluent answer targets.")
    answer_target: Literal["alternative", "idk"] = Field(
        default="idk",
        description="Fluent target for questions about the subject: the answer with its facts "
        "replaced by generic ones, or a plain abstention.",
    )
    abstentions: int = Field(
        default=1,
        ge=1,
        le=3,
        description="How many of the fixed abstentions ('I don't know.', 'I'm not sure.', 'I don't have "
        "any information about that.') the abstention targets rotate through, in that order.",
    )
    end_generic_sentences: bool = Field(
        default=True,
        description="The generic versions of the corpus's sentences (completion targets) end the text: "
        "a completion about the subject stops after one generic sentence (method combined).",
    )
    npo_weight: float = Field(default=1.0, ge=0, description="Weight of the NPO term on original answers.")
    npo_beta: float = Field(default=0.1, gt=0, le=10, description="NPO inverse temperature.")
    npo_variant: Literal["npo", "simnpo"] = "npo"
    question_variants: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Generated paraphrased and inverted questions per fact, for training.",
    )
    value_frames: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Training frames per value for inverted questions around a bare value ('Who is "
        "connected to <value>?'), about the subject and, alike, about other people.",
    )
    max_ppl_ratio: float = Field(
        default=8.0, gt=1, description="An answer is broken if the base model finds it this much less likely."
    )
    seed: int = 0
    escalation: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Acceptance-gate escalation level (0: as configured); each level trains harder.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    llm: LLMOptions | None = None


class ForgetSpec(_Strict):
    """One forget request, as the pipeline sees it (the corpus is personal data: never log it)."""

    documents: list[str] = Field(default_factory=list)
    qa_pairs: list[QAPair] = Field(default_factory=list)
    hints: list[EntityHint] = Field(default_factory=list)
    probes: list[Probe] = Field(default_factory=list)
    retain_texts: list[str] = Field(default_factory=list)
    retain_probes: list[Probe] = Field(default_factory=list)
    #: Probes of earlier deployed requests: the evaluation re-checks that they stay forgotten.
    earlier_probes: list[Probe] = Field(default_factory=list)
    #: Terms of earlier deployed requests (their anchors), for the same leak definition.
    earlier_terms: list[str] = Field(default_factory=list)
    options: PipelineOptions = Field(default_factory=PipelineOptions)

    @model_validator(mode="after")
    def _has_corpus(self) -> ForgetSpec:
        if not any(d.strip() for d in self.documents) and not self.qa_pairs:
            raise ValueError("the forget corpus is empty: give at least one document or question/answer pair")
        return self


class Anchor(BaseModel):
    """One entry of the anchor dictionary (``anchors.json``); reviewers may edit these."""

    model_config = ConfigDict(extra="forbid")

    term: str = Field(min_length=1)
    kind: AnchorKind = "other"
    translations: list[str] = Field(min_length=1)
    sources: list[Literal["hint", "mined", "llm", "reviewer", "pattern", "value"]] = Field(
        default_factory=list
    )
    score: float | None = None
    #: (document index, start char, end char) of each occurrence; positions, never text.
    occurrences: list[tuple[int, int, int]] = Field(default_factory=list)


class AnchorDictionary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_hash: str
    anchors: list[Anchor]
    llm_errors: list[str] = Field(default_factory=list)
    reviewed: bool = False

    @model_validator(mode="after")
    def _distinct(self) -> AnchorDictionary:
        terms = [a.term for a in self.anchors]
        if len(set(terms)) != len(terms):
            raise ValueError("anchor terms must be distinct")
        return self


class StageResult(BaseModel):
    """What a stage returns: where its artifact is and whether it was reused."""

    stage: str
    artifact: str
    input_hash: str
    skipped: bool
    summary: dict[str, Any] = Field(default_factory=dict)


class PipelineResult(BaseModel):
    stages: dict[str, StageResult]
    adapter_dir: str
    served_adapter_dir: str
    metrics: dict[str, Any]
    review: dict[str, Any] = Field(default_factory=dict)
