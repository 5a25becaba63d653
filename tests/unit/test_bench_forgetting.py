"""Pure parts of the end-to-end forgetting bench (bench/forgetting.py, bench/_people.py): the synthetic
people, the held-out questions' disjointness from the request and from the pipeline's own generated
questions, and the scoring with the project's leak and fluency definitions."""

from __future__ import annotations

import json
import re

import pytest
from stdnum import iban, luhn

from bench._people import (
    FACT_TYPES,
    KINDS,
    demo_world_words,
    generate,
    luhn_check_digit,
    luhn_valid,
    request_body,
)
from bench.forgetting import Filed, score_forget, score_retain, summarise


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate(6, seed=0)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = generate(6, seed=3), generate(6, seed=3)
    assert a.people == b.people
    assert a.questions == b.questions
    assert [a.documents(p.name) for p in a.people] == [b.documents(p.name) for p in b.people]
    assert a.fingerprint() == b.fingerprint()
    other = generate(6, seed=4)
    assert other.fingerprint() != a.fingerprint()
    assert {p.name for p in other.people} != {p.name for p in a.people}


def test_the_data_set_does_not_change_with_the_calendar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faker's ``date_of_birth`` counts ages from the clock: seed 0's data changed at midnight. The
    fingerprints are those every recorded measurement in docs/benchmarks.md ran on."""
    import datetime as dt

    import faker.providers.date_time as faker_dates

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return dt.datetime(2031, 7, 15, tzinfo=tz)

    recorded = {0: "ebb1f655039ff98b", 1: "128e2249d40e6bb9", 2: "cb712a25f519a4a8"}
    for clock in (None, Later):
        if clock is not None:
            monkeypatch.setattr(faker_dates, "datetime", clock)
        assert {s: generate(6, seed=s).fingerprint() for s in recorded} == recorded


def test_structured_values_are_valid_and_distinct(data) -> None:  # type: ignore[no-untyped-def]
    for p in data.people:
        assert luhn.is_valid(p.card.replace(" ", "")) and luhn_valid(p.card), p.card
        assert len(p.card.replace(" ", "")) == 16
        assert iban.is_valid(p.iban), p.iban
        assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", p.email)
        assert re.fullmatch(r"\+44 7\d{3} \d{6}", p.phone)
        assert re.fullmatch(r"[A-Z][a-z]+ \d{1,2}, \d{4}", p.date_of_birth)
        assert p.handle.startswith("@")
    for fact in ("name", "first_name", "last_name", *FACT_TYPES):
        values = [getattr(p, fact) for p in data.people]
        assert len(set(values)) == len(values), f"{fact} repeats"


def test_luhn_helpers_agree_with_python_stdnum() -> None:
    for body in ("7992739871", "453201511283036", "000000000000000"):
        number = body + luhn_check_digit(body)
        assert luhn.is_valid(number) and luhn_valid(number)
        wrong = body + str((int(luhn_check_digit(body)) + 1) % 10)
        assert not luhn_valid(wrong)


def test_names_point_to_one_person(data) -> None:  # type: ignore[no-untyped-def]
    world = demo_world_words()
    name_words = {w.casefold() for p in data.people for w in (p.first_name, p.last_name)}
    assert not name_words & world, "a bench name is also a demo-world name"
    for p in data.people:
        own = {p.first_name.casefold(), p.last_name.casefold()}
        for fact in ("address", "employer", "handle"):
            found = {w.casefold() for w in re.findall(r"[A-Za-z]+", p.value(fact))}
            assert not (found & name_words) - own, f"{fact} of {p.name} names someone"


def test_one_question_per_fact_and_kind(data) -> None:  # type: ignore[no-untyped-def]
    for p in data.people:
        qs = data.questions_about(p.name)
        assert sorted((q.fact, q.kind) for q in qs) == sorted((f, k) for f in FACT_TYPES for k in KINDS)
        for q in qs:
            if q.kind == "inverted":
                assert q.reference == p.name
                assert p.value(q.fact) in q.prompt and p.name not in q.prompt
            else:
                assert p.value(q.fact) in q.reference and p.name in q.prompt
                assert p.value(q.fact) not in q.prompt
        # The corpus states every fact.
        corpus = " ".join(data.documents(p.name))
        for fact in FACT_TYPES:
            assert p.value(fact) in corpus


def test_held_out_questions_are_never_in_the_request(data) -> None:  # type: ignore[no-untyped-def]
    subject = data.people[0].name
    retain = [p.name for p in data.people[1:]]
    body = request_body(data, subject, retain)
    sent = json.dumps(body)
    originals = {q.prompt for q in data.questions_about(subject, ["original"])}
    assert {qa["question"] for qa in body["qa_pairs"]} == originals
    for q in data.questions_about(subject, ["paraphrase", "inverted"]):
        assert q.prompt not in originals
        assert json.dumps(q.prompt)[1:-1] not in sent
    # Paraphrases differ from every original question, of anyone.
    all_originals = {q.prompt for q in data.questions if q.kind == "original"}
    assert not {q.prompt for q in data.questions if q.kind != "original"} & all_originals
    # Retain examples carry no fact of the subject; hints are name parts only.
    subject_values = [data.person(subject).value(f) for f in FACT_TYPES]
    for text in body["retain_examples"]:
        assert subject not in text and not any(v in text for v in subject_values)
    assert {h["kind"] for h in body["hints"]} == {"person", "first_name", "last_name"}
    assert body["options"] == {"deploy_policy": "auto"}
    assert "probes" not in body
    with_probes = request_body(data, subject, retain, probes=True)
    assert {pr["prompt"] for pr in with_probes["probes"]} == originals


def test_held_out_wordings_are_not_the_pipelines_own(data) -> None:  # type: ignore[no-untyped-def]
    """The pipeline generates paraphrases and inverted questions from the request (training and
    evaluation sets); the bench's held-out questions must be none of them."""
    from gpu_runtime.pipeline.probes import question_set
    from gpu_runtime.pipeline.types import Anchor, ForgetSpec

    for p in data.people:
        body = request_body(data, p.name, [o.name for o in data.people if o.name != p.name])
        spec = ForgetSpec.model_validate(
            {"documents": body["corpus"], "qa_pairs": body["qa_pairs"], "hints": body["hints"]}
        )
        # As if the pipeline had found every value (typed and attribute-value anchors).
        anchors = [
            Anchor(term=p.value(f), kind="other", translations=["x"], sources=["value"]) for f in FACT_TYPES
        ]
        generated = set()
        for split in ("train", "eval"):
            for with_anchors in ([], anchors):
                generated |= {q.prompt for q in question_set(spec, with_anchors, split=split, per_question=8)}
        assert generated, "the pipeline generated nothing: this check would be vacuous"
        held_out = {q.prompt for q in data.questions_about(p.name, ["paraphrase", "inverted"])}
        assert not held_out & generated


def test_scoring_uses_the_leak_and_fluency_definitions(data) -> None:  # type: ignore[no-untyped-def]
    p = data.people[0]
    qs = [q for q in data.questions_about(p.name) if q.fact == "card"]  # original, paraphrase, inverted
    before = [q.answer for q in qs]
    after = [f"The card number is {p.card.replace(' ', '-')}.", "I don't know.", "card card card card"]
    rows = score_forget(data, p.name, qs, before, after)
    assert [r["leak_before"] for r in rows] == [True, True, True]
    # Digits match whatever the separators; an abstention neither leaks nor is broken; repetition is broken.
    assert [r["leak_after"] for r in rows] == [True, False, False]
    assert [r["broken_after"] for r in rows] == [False, False, True]

    other = data.people[1]
    retain_qs = data.questions_about(other.name, ["original"])[:2]
    retain_rows = score_retain(
        data, retain_qs, [q.reference for q in retain_qs], [retain_qs[0].reference, "No idea."]
    )
    assert retain_rows[0]["rouge_before"] == pytest.approx(1.0)
    assert retain_rows[0]["rouge_after"] == pytest.approx(1.0)
    assert retain_rows[1]["rouge_after"] < 1.0
    assert not any(r["broken_before"] or r["broken_after"] for r in retain_rows)

    filed = [Filed(p.name, "fr_x", "deployed", True, "chat", 1.0, gate={"passed": True})]
    summary = summarise(rows, retain_rows, filed)
    assert summary["leak_rate_before"] == 1.0
    assert summary["leak_rate"] == pytest.approx(1 / 3)
    assert summary["per_kind"]["original"]["leak_rate_after"] == 1.0
    assert summary["per_fact"]["card"]["n"] == 3
    assert summary["broken_rate"] == pytest.approx(1 / 3)
    assert summary["retain_ratio"] == pytest.approx(
        summary["retain_rouge_after"] / summary["retain_rouge_before"]
    )
    assert summary["retain_broken_rate_after"] == 0.0
    assert summary["gate_passed_without_review"] is True
    assert summary["targets"]["leak_rate"] is False and summary["targets"]["broken_rate"] is False

    parked = [
        Filed(
            p.name, "fr_y", "awaiting_evaluation_review", False, "adapter:fr_y", 1.0, gate={"passed": False}
        )
    ]
    assert summarise(rows, retain_rows, parked)["gate_passed_without_review"] is False
