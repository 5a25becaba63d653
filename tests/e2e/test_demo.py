"""A shortened `obliviate demo`: the real service on its embedded defaults (SQLite, embedded Redis,
a worker process, the in-process engine), a real forget request through the SDK, deployment, and
the before/after answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from service.demo import Question, answered, build_questions, run_demo
from service.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_answered_checks_the_fact_not_the_name(demo_world) -> None:
    person = demo_world.person("Minseo Bae")
    q = Question("Where was Minseo Bae born?", "Minseo Bae was born in Kesmoor.", "forget")
    assert answered("Minseo Bae was born in Kesmoor.", q, person)
    assert not answered("Minseo Bae was born in Dunholt.", q, person)
    assert not answered("I don't know.", q, person)
    inverted = Question("Which person has a dog named Zucchini?", "Minseo Bae", "forget", "inverted")
    assert answered("That is Bae.", inverted, person)
    assert not answered("I'm not sure.", inverted, person)


def test_the_demo_asks_every_fact_also_in_words_the_request_lacks(demo_world) -> None:
    target, control = demo_world.people[0], demo_world.people[1]
    questions = build_questions(demo_world, target, control)
    originals = {qa.question for qa in demo_world.qa_for(target.name)}
    forget = [q for q in questions if q.about == "forget"]
    assert {q.prompt for q in forget if q.kind == "original"} == originals
    held_out = [q for q in forget if q.kind != "original"]
    assert {q.kind for q in held_out} == {"paraphrase", "inverted"}
    assert not {q.prompt for q in held_out} & originals
    assert len([q for q in questions if q.about == "keep"]) == len(demo_world.qa_for(control.name))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shortened_demo_forgets_the_person_and_keeps_the_other(demo_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "demo",
        base_model=demo_model_dir,
        redis_url=None,  # the embedded default
        database_url=None,
        engine="inprocess",
        port=_free_port(),
        workers=1,
    )
    lines: list[str] = []
    # One attempt: the gate's ladder has its own tests (test_acceptance_ladder.py); three attempts of
    # the demo's pipeline took 9 minutes of the suite.
    outcome = run_demo(settings, echo=lines.append, wait_timeout=800, max_attempts=1)
    # The base model knows the person through the corpus's own questions (the tiny demo model
    # answers few rewordings it was never trained on: those count toward "after" only).
    assert outcome.known_before_by_kind and outcome.asked_by_kind
    assert outcome.known_before_by_kind["original"] >= outcome.asked_by_kind["original"] - 1
    assert any("acceptance gate:" in line and "after 1 attempt" in line for line in lines)
    if outcome.gate_passed:
        # Deployed: every fact, asked every way, is gone from the served model; the other person stays.
        assert outcome.status == "deployed"
        assert outcome.forgotten_after == 0, outcome.leaks_after_by_kind
        assert outcome.kept_after >= outcome.kept_before - 1, "the other person's facts should survive"
        assert outcome.certificate_path is not None and outcome.certificate_path.exists()
        assert any("Signed certificate" in line for line in lines)
    else:
        # Fail closed: a request that missed the gate is not deployed and not certified.
        assert outcome.status == "awaiting_evaluation_review"
        assert outcome.certificate_path is None
        assert any("NOT deployed" in line for line in lines)
