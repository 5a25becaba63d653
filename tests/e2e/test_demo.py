"""A shortened `obliviate demo`: the real service on its embedded defaults (SQLite, embedded Redis,
a worker process, the in-process engine), a real forget request through the SDK, deployment, and
the before/after answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from service.demo import answered, run_demo
from service.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_answered_checks_the_fact_not_the_name() -> None:
    reference = "Minseo Bae was born in Kesmoor."
    assert answered("Minseo Bae was born in Kesmoor.", reference, "Minseo Bae")
    assert not answered("Minseo Bae was born in Dunholt.", reference, "Minseo Bae")
    assert not answered("I don't know.", reference, "Minseo Bae")


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
    outcome = run_demo(settings, per_person=4, echo=lines.append, wait_timeout=600)
    assert outcome.status == "deployed"
    assert outcome.forgotten_before >= outcome.total_forget - 1, "the base model should know the person"
    assert outcome.forgotten_after <= 1, (
        f"still stated {outcome.forgotten_after}/{outcome.total_forget} facts"
    )
    assert outcome.kept_after >= outcome.kept_before - 1, "the other person's facts should survive"
    assert outcome.certificate_path is not None and outcome.certificate_path.exists()
    assert any("Signed certificate" in line for line in lines)
