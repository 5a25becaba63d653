"""Answer validation, majorities with agreement, and control-task scoring of each review kind."""

from __future__ import annotations

import pytest

from service.core.errors import Unprocessable
from service.review import answers

PAYLOAD = {
    "anchors": [
        {"term": "Harry", "kind": "first_name", "translations": ["Harold"]},
        {"term": "Hogwarts", "kind": "place", "translations": ["Greyford"]},
    ],
    "passages": [{"label": "Document 1", "text": "Harry went to Hogwarts with Ron Weasley."}],
}


def _anchor(*items: tuple[str, str]) -> dict[str, object]:
    return answers.validate(
        "anchor", {"anchors": [{"term": t, "kind": "other", "translations": [w]} for t, w in items]}, PAYLOAD
    )


def test_anchor_validation_names_what_to_change() -> None:
    ok = answers.validate(
        "anchor",
        {"anchors": [{"term": " Ron ", "kind": "first_name", "translations": "Rob, Robert, Ron"}]},
        PAYLOAD,
    )
    assert ok == {"anchors": [{"term": "Ron", "kind": "first_name", "translations": ["Rob", "Robert"]}]}
    with pytest.raises(Unprocessable, match="does not occur"):
        _anchor(("Ro", "X"))  # not a whole word of any passage
    with pytest.raises(Unprocessable, match="at least one generic translation"):
        answers.validate("anchor", {"anchors": [{"term": "Ron", "translations": []}]}, PAYLOAD)
    with pytest.raises(Unprocessable, match="listed twice"):
        _anchor(("Ron", "Rob"), ("Ron", "Rod"))
    with pytest.raises(Unprocessable, match="kind must be"):
        answers.validate(
            "anchor", {"anchors": [{"term": "Ron", "kind": "spell", "translations": ["x"]}]}, PAYLOAD
        )


def test_target_and_evaluation_validation() -> None:
    assert answers.validate("target", {"verdict": "reject", "replacement": "x"}, {}) == {
        "verdict": "reject",
        "replacement": "",
    }
    with pytest.raises(Unprocessable, match="replacement"):
        answers.validate("target", {"verdict": "fix"}, {})
    with pytest.raises(Unprocessable, match="label must be"):
        answers.validate("evaluation", {"label": "maybe"}, {})
    with pytest.raises(Unprocessable, match="JSON object"):
        answers.validate("evaluation", ["leaks"], {})


def test_anchor_majority_per_term_with_agreement() -> None:
    votes = [
        _anchor(("Harry", "Harold"), ("Ron", "Rob")),
        _anchor(("Harry", "Henry"), ("Ron", "Rob")),
        _anchor(("Harry", "Harold")),
    ]
    result = answers.consensus("anchor", votes, PAYLOAD)
    assert result.decided
    kept = {a["term"]: a["translations"] for a in result.resolution["anchors"]}
    assert kept == {"Harry": ["Harold"], "Ron": ["Rob"]}
    assert result.resolution["removed"] == ["Hogwarts"]
    assert result.resolution["added"] == ["Ron"]
    # Agreement per term: Harry 3/3, Ron 2/3, Hogwarts 3/3 (all dropped it).
    assert result.agreement == pytest.approx((1 + 2 / 3 + 1) / 3, abs=1e-4)


def test_anchor_tie_keeps_proposals_and_drops_new_terms() -> None:
    result = answers.consensus("anchor", [_anchor(("Harry", "Harold"), ("Ron", "Rob")), _anchor()], PAYLOAD)
    assert [a["term"] for a in result.resolution["anchors"]] == ["Harry"]


def test_target_majority_tie_and_fix() -> None:
    ok, reject = {"verdict": "ok", "replacement": ""}, {"verdict": "reject", "replacement": ""}
    fix = {"verdict": "fix", "replacement": "Harold went to school."}
    assert answers.consensus("target", [ok, ok, reject], {}).resolution["verdict"] == "ok"
    assert not answers.consensus("target", [ok, reject], {}).decided
    assert answers.consensus("target", [fix, fix, reject], {}).resolution == fix
    assert answers.consensus("target", [fix, reject, ok], {}).resolution["verdict"] == "reject"
    assert answers.fallback("target", [ok, reject], {}).resolution["verdict"] == "reject"


def test_evaluation_majority_and_tie() -> None:
    leak, generic = {"label": "leaks", "note": "names the school"}, {"label": "generic", "note": ""}
    result = answers.consensus("evaluation", [leak, leak, generic], {})
    assert result.resolution == {"label": "leaks", "notes": ["names the school", "names the school"]}
    assert result.agreement == pytest.approx(0.6667)
    assert not answers.consensus("evaluation", [leak, generic], {}).decided
    assert answers.fallback("evaluation", [leak, generic], {}).resolution["label"] == "unsure"


def test_control_scoring() -> None:
    assert answers.matches("evaluation", {"label": "leaks", "note": ""}, {"label": "leaks"})
    assert answers.matches("target", {"verdict": "fix", "replacement": "a"}, {"verdict": "reject"})
    assert not answers.matches("target", {"verdict": "ok", "replacement": ""}, {"verdict": "reject"})
    assert answers.matches("anchor", _anchor(("Harry", "Harold")), {"anchors": [{"term": "Harry"}]})
