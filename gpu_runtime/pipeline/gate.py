"""The acceptance gate: does an evaluation's summary show the request as forgotten? Fails closed.

The evaluate stage's summary (numbers only; see ``evaluate.py``) has, per probe kind K: ``leaks_after_K``
and ``n_K`` (counts), ``leak_rate_after_K`` and ``leak_rate_before_K``; plus ``broken_rate_after``,
``retain_rouge_before``/``retain_rouge_after`` (absent without retain questions),
``contrast_n``/``contrast_agreement_after`` (questions about other people; see ``contrast.py``) and
``earlier_leaks_after``/``earlier_n`` (absent without earlier deployed requests). :func:`decide` checks
them against :class:`AcceptanceThresholds`; a metric the checks need and do not find is a failure
(``value`` None, ``missing`` names it), never a pass. The worker (``gpu_runtime/jobs.py``) runs the
gate after each evaluation and climbs :func:`escalation_plan` before giving up at the evaluation review.

Torch-free and I/O-free: the service imports it (lazily) to validate the ``acceptance`` option.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Probe kinds that must not leak at all (the request's own probes, every question the corpus answers).
EXACT_KINDS = ("probe", "original")
#: Generated held-out kinds, pooled into one rate (sum of leaks over sum of counts).
HELDOUT_KINDS = ("paraphrase", "inverted", "completion")
ALL_KINDS = (*EXACT_KINDS, *HELDOUT_KINDS)
#: The pipeline's highest escalation level (``PipelineOptions.escalation``): max_attempts - 1 at most.
MAX_ESCALATION = 5
# Rates computed from counts (0.57 / 0.6) land a hair off the decimal threshold they equal.
_EPS = 1e-9


class AcceptanceThresholds(BaseModel):
    """Bounds a request's evaluation must meet before it may be deployed (request option ``acceptance``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    max_original_leaks: int = Field(
        default=0,
        ge=0,
        description="Leaks allowed on the request's probes and, separately, on the corpus's questions.",
    )
    max_heldout_leak_rate: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Pooled leak rate on held-out paraphrases, inverted questions, completions.",
    )
    max_broken_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of forget answers flagged as broken text."
    )
    min_retain_ratio: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description=(
            "Retain ROUGE-L after / before on retain questions, and agreement with the baseline on the "
            "corpus's questions about other people (each checked when there are such questions; "
            "with neither, the gate fails)."
        ),
    )
    max_earlier_leaks: int = Field(default=0, ge=0, description="Leaks on earlier deployed requests' probes.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=MAX_ESCALATION + 1,
        description="Evaluations before the evaluation review (1: no retry).",
    )


class CheckFailure(BaseModel):
    """One failed check: the measured value (None when a metric it needs is missing) and its bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    value: float | None
    threshold: float
    missing: list[str] = Field(default_factory=list)


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool
    failures: list[CheckFailure]
    thresholds: AcceptanceThresholds
    #: What is left after unlearning: per-kind leak rates and counts, pooled held-out rate, broken rate,
    #: retain ratio, earlier leaks (None where not measured).
    residual: dict[str, float | int | None]
    skipped: list[str] = Field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """JSON for the request's metrics, the audit trail and the certificate."""
        return self.model_dump(mode="json")


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _le(value: float, bound: float) -> bool:
    return value <= bound + _EPS


def decide(metrics: Mapping[str, Any], thresholds: AcceptanceThresholds | None = None) -> Verdict:
    """Check an evaluation summary against ``thresholds`` (defaults when None)."""
    t = thresholds or AcceptanceThresholds()
    failures: list[CheckFailure] = []
    skipped: list[str] = []
    residual: dict[str, float | int | None] = {}

    def fail(check: str, value: float | None, threshold: float, missing: list[str] | None = None) -> None:
        failures.append(CheckFailure(check=check, value=value, threshold=threshold, missing=missing or []))

    for kind in ALL_KINDS:
        leaks, n = _number(metrics, f"leaks_after_{kind}"), _number(metrics, f"n_{kind}")
        residual[f"leaks_{kind}"] = int(leaks) if leaks is not None else None
        residual[f"n_{kind}"] = int(n) if n is not None else None
        residual[f"leak_rate_{kind}"] = _number(metrics, f"leak_rate_after_{kind}")

    # Zero leaks on the request's probes and on every question the corpus answers (each kind alone).
    for kind in EXACT_KINDS:
        check = f"{kind}_leaks"
        needed = [f"leaks_after_{kind}", f"n_{kind}"]
        missing = [key for key in needed if _number(metrics, key) is None]
        if missing:
            fail(check, None, t.max_original_leaks, missing)
            continue
        leaks = _number(metrics, f"leaks_after_{kind}")
        assert leaks is not None
        if not _le(leaks, t.max_original_leaks):
            fail(check, leaks, t.max_original_leaks)
    # A request may come without probes; the corpus itself must have been asked something: its
    # questions, or (a corpus of documents only) completions of its own sentences.
    n_original = _number(metrics, "n_original")
    if n_original is not None and n_original + (_number(metrics, "n_completion") or 0) == 0:
        fail("original_coverage", 0.0, 1.0)

    # Held-out kinds pooled: the small per-kind counts would make per-kind rates jumpy.
    needed = [f"{prefix}_{kind}" for kind in HELDOUT_KINDS for prefix in ("leaks_after", "n")]
    missing = [key for key in needed if _number(metrics, key) is None]
    pooled_leaks = sum(_number(metrics, f"leaks_after_{kind}") or 0.0 for kind in HELDOUT_KINDS)
    pooled_n = sum(_number(metrics, f"n_{kind}") or 0.0 for kind in HELDOUT_KINDS)
    heldout_rate = pooled_leaks / pooled_n if not missing and pooled_n > 0 else None
    residual["heldout_leak_rate"] = heldout_rate
    if heldout_rate is None:
        fail("heldout_leak_rate", None, t.max_heldout_leak_rate, missing or [f"n_{k}" for k in HELDOUT_KINDS])
    elif not _le(heldout_rate, t.max_heldout_leak_rate):
        fail("heldout_leak_rate", heldout_rate, t.max_heldout_leak_rate)

    broken = _number(metrics, "broken_rate_after")
    residual["broken_rate"] = broken
    residual["broken_rate_before"] = _number(metrics, "broken_rate_before")
    if broken is None:
        fail("broken_rate", None, t.max_broken_rate, ["broken_rate_after"])
    elif not _le(broken, t.max_broken_rate):
        fail("broken_rate", broken, t.max_broken_rate)

    # Retain: skipped only when the request has no retain questions (both numbers absent).
    retain_keys = ("retain_rouge_before", "retain_rouge_after")
    if all(key not in metrics for key in retain_keys):
        residual["retain_ratio"] = None
        skipped.append("retain_ratio")
    else:
        before, after = (_number(metrics, key) for key in retain_keys)
        if before is None or after is None:
            residual["retain_ratio"] = None
            missing = [key for key, v in zip(retain_keys, (before, after), strict=True) if v is None]
            fail("retain_ratio", None, t.min_retain_ratio, missing)
        else:
            # Nothing to lose when the model answered no retain question before.
            ratio = after / before if before > 0 else 1.0
            residual["retain_ratio"] = ratio
            if ratio + _EPS < t.min_retain_ratio:
                fail("retain_ratio", ratio, t.min_retain_ratio)

    # Selectivity: the corpus's questions about other people (``contrast.py``) must still get the
    # baseline's answers. With neither these nor retain questions nothing shows that only the subject
    # was forgotten: fail closed, unless the policy's selectivity bound is 0 (waived: no number could
    # fail it, so its missing evidence cannot either).
    agreement = _number(metrics, "contrast_agreement_after")
    residual["contrast_agreement"] = agreement
    residual["contrast_n"] = int(n) if (n := _number(metrics, "contrast_n")) is not None else None
    if not _number(metrics, "contrast_n"):
        skipped.append("contrast_agreement")
        if "retain_ratio" in skipped and t.min_retain_ratio > 0:
            fail("retain_coverage", None, t.min_retain_ratio, ["retain_rouge_after", "contrast_n"])
    elif agreement is None:
        fail("contrast_agreement", None, t.min_retain_ratio, ["contrast_agreement_after"])
    elif agreement + _EPS < t.min_retain_ratio:
        fail("contrast_agreement", agreement, t.min_retain_ratio)

    # Earlier deployed requests: absent when there are none; their count must come with it.
    earlier_leaks, earlier_n = _number(metrics, "earlier_leaks_after"), _number(metrics, "earlier_n")
    residual["earlier_leaks"] = int(earlier_leaks) if earlier_leaks is not None else None
    residual["earlier_n"] = int(earlier_n) if earlier_n is not None else None
    if "earlier_leaks_after" not in metrics and not earlier_n:
        skipped.append("earlier_leaks")
    elif earlier_leaks is None:
        fail("earlier_leaks", None, t.max_earlier_leaks, ["earlier_leaks_after"])
    elif not _le(earlier_leaks, t.max_earlier_leaks):
        fail("earlier_leaks", earlier_leaks, t.max_earlier_leaks)

    return Verdict(passed=not failures, failures=failures, thresholds=t, residual=residual, skipped=skipped)


def escalation_plan(thresholds: AcceptanceThresholds, start: int = 0) -> list[int]:
    """The escalation levels the worker tries, in order: ``start``, ``start + 1``, ... (``max_attempts``
    of them, capped at the pipeline's highest level)."""
    if not 0 <= start <= MAX_ESCALATION:
        raise ValueError(f"escalation level {start} is outside 0..{MAX_ESCALATION}")
    return list(range(start, min(start + thresholds.max_attempts, MAX_ESCALATION + 1)))


def next_escalation(thresholds: AcceptanceThresholds, current: int, start: int = 0) -> int | None:
    """The level to try after a failed attempt at ``current``; None when the ladder is exhausted."""
    plan = escalation_plan(thresholds, start)
    later = [level for level in plan if level > current]
    return later[0] if later else None


def attempt_record(escalation: int, verdict: Verdict) -> dict[str, Any]:
    """One rung of the ladder, as stored in the request's metrics and the audit trail (numbers, no text)."""
    keys = (
        "leak_rate_probe",
        "leak_rate_original",
        "heldout_leak_rate",
        "broken_rate",
        "retain_ratio",
        "contrast_agreement",
        "earlier_leaks",
    )
    return {
        "escalation": escalation,
        "passed": verdict.passed,
        "failures": [f.model_dump(mode="json") for f in verdict.failures],
        "rates": {key: verdict.residual.get(key) for key in keys},
    }


__all__ = [
    "ALL_KINDS",
    "EXACT_KINDS",
    "HELDOUT_KINDS",
    "MAX_ESCALATION",
    "AcceptanceThresholds",
    "CheckFailure",
    "Verdict",
    "attempt_record",
    "decide",
    "escalation_plan",
    "next_escalation",
]
