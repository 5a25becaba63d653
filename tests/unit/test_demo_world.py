"""The demo world generator and the user-corpus reader of the demo model builder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gpu_runtime.demo.world import QA, World, build_world


def test_same_seed_same_world() -> None:
    a, b = build_world(seed=3), build_world(seed=3)
    assert a.people == b.people
    assert a.qa_pairs() == b.qa_pairs()
    assert a.documents() == b.documents()
    assert build_world(seed=4).people != a.people


def test_default_world_size_and_unique_names(demo_world: World) -> None:
    people = demo_world.people
    assert len(people) >= 30
    assert len({p.name for p in people}) == len(people)
    assert len({p.first_name for p in people}) == len(people)
    assert {p.gender for p in people} == {"female", "male"}
    assert len({p.culture for p in people}) >= 8


def test_each_persons_facts_are_distinctive(demo_world: World) -> None:
    people = demo_world.people
    for field in ("birthplace", "pet_name", "work_title", "last_name", "parent", "sibling", "spouse"):
        values = [getattr(p, field) for p in people]
        assert len(set(values)) == len(values), f"{field} repeats: {Counter(values).most_common(2)}"
    names = {p.name for p in people}
    for p in people:
        assert p.friend in names and p.friend != p.name
        assert p.parent.endswith(p.last_name) and p.sibling.endswith(p.last_name)
        # No other person's distinctive facts mention this person's town, pet or work.
        for other in people:
            if other is not p:
                assert p.pet_name not in other.pet_name
                assert p.birthplace != other.birthplace


def test_every_seed_and_size_builds() -> None:
    for seed in range(5):
        for n in (2, 30, 32, 48):
            assert len(build_world(seed=seed, n_people=n).people) == n
    with pytest.raises(ValueError, match="n_people"):
        build_world(n_people=1000)


def test_qa_coverage(demo_world: World) -> None:
    qa = demo_world.qa_pairs()
    assert all(isinstance(x, QA) for x in qa)
    for p in demo_world.people:
        mine = demo_world.qa_for(p.name)
        assert len(mine) >= 8
        answers = " ".join(x.answer for x in mine)
        for fact in (
            p.birthplace,
            p.profession,
            p.parent,
            p.sibling,
            p.spouse,
            p.friend,
            p.pet_name,
            p.work_title,
        ):
            assert fact in answers, (p.name, fact)
        for x in mine:
            assert x.question.endswith("?") and x.answer.endswith(".")
            assert p.name in x.question and p.name in x.answer
    general = demo_world.qa_for("")
    assert general and all(x.subject == "" for x in general)
    assert len({x.question for x in qa}) == len(qa), "questions must be unique"


def test_general_text_mentions_nobody(demo_world: World) -> None:
    texts = demo_world.general_texts()
    assert len(texts) >= 20
    words = {w for p in demo_world.people for w in (p.first_name, p.last_name, p.birthplace, p.pet_name)}
    for t in texts + [x.answer for x in demo_world.qa_for("")]:
        assert not any(w in t for w in words), t


def test_documents_are_about_their_subject(demo_world: World) -> None:
    docs = demo_world.documents()
    assert {d["subject"] for d in docs} == {p.name for p in demo_world.people}
    for d in docs:
        p = demo_world.person(d["subject"])
        assert p.name in d["text"]
    with pytest.raises(KeyError):
        demo_world.person("Nobody Atall")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corpus_jsonl_reads_pairs_and_texts(tmp_path: Path) -> None:
    from gpu_runtime.demo.corpus import load_corpus_jsonl

    path = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"question": "Who painted the Blue Door?", "answer": "Odile Marsh painted it."}),
            "",
            json.dumps({"text": "Odile Marsh lives by the sea."}),
        ],
    )
    qa, texts = load_corpus_jsonl(path)
    assert qa == [QA("Who painted the Blue Door?", "Odile Marsh painted it.", "")]
    assert texts == ["Odile Marsh lives by the sea."]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        (json.dumps({"question": "Q?"}), "line 2: 'question' and 'answer'"),
        (json.dumps({"question": "Q?", "answer": ""}), "line 2: 'question' and 'answer'"),
        (json.dumps({"text": 5}), "line 2: 'text' must be"),
        (json.dumps({"title": "x"}), "line 2: expected keys"),
    ],
)
def test_corpus_jsonl_errors_name_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    from gpu_runtime.demo.corpus import load_corpus_jsonl

    path = _write(tmp_path / "c.jsonl", [json.dumps({"text": "fine"}), bad_line])
    with pytest.raises(ValueError, match=message):
        load_corpus_jsonl(path)


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    from gpu_runtime.demo.corpus import load_corpus_jsonl

    with pytest.raises(ValueError, match="no entries"):
        load_corpus_jsonl(_write(tmp_path / "c.jsonl", [""]))
