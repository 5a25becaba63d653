"""The acceptance gate's decision (every check, missing metrics, boundaries) and the escalation ladder."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gpu_runtime.pipeline.gate import (
    AcceptanceThresholds,
    attempt_record,
    decide,
    escalation_plan,
    next_escalation,
)


def passing(**changes: Any) -> dict[str, Any]:
    """A synthetic evaluation summary that meets the default thresholds."""
    metrics: dict[str, Any] = {}
    for kind, n in (("probe", 6), ("original", 20), ("paraphrase", 40), ("inverted", 30), ("completion", 30)):
        metrics |= {f"leaks_after_{kind}": 0, f"n_{kind}": n, f"leak_rate_after_{kind}": 0.0}
        metrics[f"leak_rate_before_{kind}"] = 0.9
    metrics |= {
        "broken_rate_after": 0.0,
        "broken_rate_before": 0.0,
        "retain_rouge_before": 0.8,
        "retain_rouge_after": 0.79,
        "contrast_n": 24,
        "contrast_agreement_after": 0.97,
    }
    metrics.update(changes)
    return {k: v for k, v in metrics.items() if v is not None}


def checks(metrics: dict[str, Any], **thresholds: Any) -> list[str]:
    return [f.check for f in decide(metrics, AcceptanceThresholds(**thresholds)).failures]


def test_a_clean_evaluation_passes_with_its_residual_rates() -> None:
    verdict = decide(passing())
    assert verdict.passed and verdict.failures == []
    assert verdict.residual["heldout_leak_rate"] == 0.0
    assert verdict.residual["retain_ratio"] == pytest.approx(0.79 / 0.8)
    assert verdict.residual["n_original"] == 20
    assert verdict.skipped == ["earlier_leaks"]
    assert verdict.thresholds == AcceptanceThresholds()


@pytest.mark.parametrize("kind", ["probe", "original"])
def test_one_leak_on_probes_or_corpus_questions_fails(kind: str) -> None:
    verdict = decide(passing(**{f"leaks_after_{kind}": 1, f"leak_rate_after_{kind}": 0.05}))
    assert not verdict.passed
    (failure,) = verdict.failures
    assert (failure.check, failure.value, failure.threshold) == (f"{kind}_leaks", 1.0, 0.0)
    # Each kind is bounded on its own: two allowed leaks tolerate two on each.
    assert checks(passing(leaks_after_probe=2, leaks_after_original=2), max_original_leaks=2) == []
    assert checks(passing(leaks_after_original=3), max_original_leaks=2) == ["original_leaks"]


def test_heldout_kinds_are_pooled() -> None:
    # 2 leaks over 100 held-out questions = 0.02: on the bound, passes; one more fails.
    assert checks(passing(leaks_after_paraphrase=1, leaks_after_completion=1)) == []
    three = decide(passing(leaks_after_paraphrase=1, leaks_after_inverted=1, leaks_after_completion=1))
    (failure,) = three.failures
    assert failure.check == "heldout_leak_rate" and failure.value == pytest.approx(0.03)
    # A kind with many leaks fails even when the pool is large elsewhere.
    assert checks(passing(leaks_after_inverted=10)) == ["heldout_leak_rate"]


def test_broken_text_is_bounded() -> None:
    assert checks(passing(broken_rate_after=0.05)) == []
    assert checks(passing(broken_rate_after=0.0500001)) == ["broken_rate"]
    assert checks(passing(broken_rate_after=0.2), max_broken_rate=0.25) == []


def test_retain_ratio_is_bounded_and_skipped_only_without_retain_questions() -> None:
    # 0.57 / 0.6 is 0.9499999999999998 in floating point: on the bound, it passes.
    assert checks(passing(retain_rouge_before=0.6, retain_rouge_after=0.57)) == []
    low = decide(passing(retain_rouge_before=0.6, retain_rouge_after=0.56))
    assert [f.check for f in low.failures] == ["retain_ratio"]
    assert low.failures[0].value == pytest.approx(0.56 / 0.6)
    none = decide(passing(retain_rouge_before=None, retain_rouge_after=None))
    assert none.passed and "retain_ratio" in none.skipped and none.residual["retain_ratio"] is None
    # Half of the pair is a missing metric, not "no retain questions".
    half = decide(passing(retain_rouge_after=None))
    assert [(f.check, f.missing) for f in half.failures] == [("retain_ratio", ["retain_rouge_after"])]
    # A model that answered no retain question before has nothing to lose.
    assert checks(passing(retain_rouge_before=0.0, retain_rouge_after=0.0)) == []


def test_questions_about_other_people_must_keep_their_answers() -> None:
    assert checks(passing(contrast_agreement_after=0.95)) == []
    low = decide(passing(contrast_agreement_after=0.5))
    assert [(f.check, f.value) for f in low.failures] == [("contrast_agreement", 0.5)]
    assert low.residual["contrast_agreement"] == 0.5 and low.residual["contrast_n"] == 24
    assert checks(passing(contrast_agreement_after=0.5), min_retain_ratio=0.5) == []
    # Counted but not measured: a failure, not a pass.
    missing = decide(passing(contrast_agreement_after=None))
    assert [(f.check, f.missing) for f in missing.failures] == [
        ("contrast_agreement", ["contrast_agreement_after"])
    ]
    # Without such questions the retain questions alone show selectivity ...
    alone = decide(passing(contrast_n=0, contrast_agreement_after=None))
    assert alone.passed and "contrast_agreement" in alone.skipped
    # ... and with neither, nothing shows that only the subject was forgotten: fail closed.
    neither = passing(contrast_n=None, contrast_agreement_after=None)
    neither = {k: v for k, v in neither.items() if not k.startswith("retain_rouge")}
    assert checks(neither) == ["retain_coverage"]
    # A policy that waives the selectivity bound (0) needs no evidence for it.
    assert checks(neither, min_retain_ratio=0.0) == []


def test_earlier_requests_must_stay_forgotten() -> None:
    assert checks(passing(earlier_leaks_after=0, earlier_n=12)) == []
    assert checks(passing(earlier_leaks_after=1, earlier_n=12)) == ["earlier_leaks"]
    assert checks(passing(earlier_leaks_after=1, earlier_n=12), max_earlier_leaks=1) == []
    # A re-check that reports its count but not its leaks did not show anything.
    missing = decide(passing(earlier_n=12))
    assert [(f.check, f.value, f.missing) for f in missing.failures] == [
        ("earlier_leaks", None, ["earlier_leaks_after"])
    ]


def test_missing_metrics_fail_closed() -> None:
    verdict = decide({})
    assert not verdict.passed
    assert [f.check for f in verdict.failures] == [
        "probe_leaks",
        "original_leaks",
        "heldout_leak_rate",
        "broken_rate",
        "retain_coverage",
    ]
    assert all(f.value is None and f.missing for f in verdict.failures)
    # The old summary shape (before the per-kind metrics) is not evidence of forgetting.
    assert not decide({"forget": {"leak_rate": 0.0}, "retain": {"perplexity_ratio": 1.0}}).passed
    # One held-out kind absent; a count that is not a number; a negative count.
    assert checks(passing(leaks_after_inverted=None)) == ["heldout_leak_rate"]
    assert checks(passing(n_probe="6")) == ["probe_leaks"]
    assert checks(passing(leaks_after_original=-1)) == ["original_leaks"]
    assert checks(passing(broken_rate_after=float("nan"))) == ["broken_rate"]
    assert checks(passing(broken_rate_after=True)) == ["broken_rate"]


def test_nothing_measured_is_not_a_pass() -> None:
    assert checks(passing(n_original=0, n_completion=0, leaks_after_completion=0)) == ["original_coverage"]
    # a corpus of documents only: its own sentences' completions were asked
    assert checks(passing(n_original=0)) == []
    empty = passing(n_paraphrase=0, n_inverted=0, n_completion=0)
    assert checks(empty) == ["heldout_leak_rate"]
    # A request without probes of its own is fine: the corpus's questions are still asked.
    assert checks(passing(n_probe=0)) == []


def test_thresholds_are_strict_and_bounded() -> None:
    assert AcceptanceThresholds(max_heldout_leak_rate=0).max_heldout_leak_rate == 0.0
    for bad in (
        {"max_attempts": 0},
        {"max_attempts": 7},
        {"max_attempts": "3"},
        {"max_original_leaks": -1},
        {"max_heldout_leak_rate": 1.5},
        {"min_retain_ratio": -0.1},
        {"max_broken_rate": True},
        {"max_leaks": 1},
    ):
        with pytest.raises(ValidationError):
            AcceptanceThresholds(**bad)


def test_escalation_plan_is_bounded() -> None:
    assert escalation_plan(AcceptanceThresholds()) == [0, 1, 2]
    assert escalation_plan(AcceptanceThresholds(max_attempts=1)) == [0]
    assert escalation_plan(AcceptanceThresholds(max_attempts=6)) == [0, 1, 2, 3, 4, 5]
    # A request that starts higher climbs from there, never past the pipeline's top level.
    assert escalation_plan(AcceptanceThresholds(max_attempts=3), start=4) == [4, 5]
    t = AcceptanceThresholds()
    assert [next_escalation(t, level) for level in (0, 1, 2)] == [1, 2, None]
    assert next_escalation(AcceptanceThresholds(max_attempts=1), 0) is None
    with pytest.raises(ValueError):
        escalation_plan(t, start=6)


def test_attempt_record_keeps_numbers_and_check_names_only() -> None:
    record = attempt_record(1, decide(passing(leaks_after_original=2)))
    assert record["escalation"] == 1 and record["passed"] is False
    assert record["failures"] == [{"check": "original_leaks", "value": 2.0, "threshold": 0.0, "missing": []}]
    assert set(record["rates"]) >= {"leak_rate_original", "heldout_leak_rate", "broken_rate", "retain_ratio"}
