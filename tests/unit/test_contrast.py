"""Questions about other people: names from retain text, the name swap, disjoint splits, leak filter."""

from __future__ import annotations

import pytest

from gpu_runtime.pipeline.contrast import (
    contrast_questions,
    names_in,
    other_people,
    subject_leak_free,
    swap_subject,
)
from gpu_runtime.pipeline.types import Anchor, EntityHint, ForgetSpec, QAPair

HINTS = [
    EntityHint(term="Nadia Oyelaran", kind="person"),
    EntityHint(term="Nadia", kind="first_name"),
    EntityHint(term="Oyelaran", kind="last_name"),
]
ANCHORS = [
    Anchor(term="Pimento", translations=["Biscuit"]),
    Anchor(term="Nadia Oyelaran", kind="person", translations=["Grace Okafor", "Ruth Adeyemi", "Mara Lind"]),
]
QA = [
    QAPair(
        question="What pet does Nadia Oyelaran have?", answer="Nadia Oyelaran has a ferret named Pimento."
    ),
    QAPair(question="Where was Nadia born?", answer="Nadia Oyelaran was born in Tarnbridge."),
    QAPair(question="What is Nadia Oyelaran's job?", answer="Nadia works as a glassblower."),
]
RETAIN = [
    "Tobias Wren's e-mail address is tobias@example.org.",
    "When Tobias Wren moved, The Daily Post wrote about it.",
    "Elena Marsh keeps bees. Nadia Marsh is her sister.",
    "Ivo Brandt was born in Kesselfeld.",
]


def spec(retain: list[str]) -> ForgetSpec:
    return ForgetSpec(
        documents=["Nadia Oyelaran was born in Tarnbridge. She keeps a ferret named Pimento."],
        qa_pairs=QA,
        hints=HINTS,
        retain_texts=retain,
    )


def test_names_in_retain_text_skip_common_words_and_the_subject() -> None:
    names = names_in(RETAIN, exclude=["Nadia Oyelaran"])
    assert names[0] == "Tobias Wren"  # twice, possessive stripped
    assert set(names) == {"Tobias Wren", "Elena Marsh", "Ivo Brandt"}  # "The Daily Post": a title
    assert "Nadia Marsh" not in names  # shares a word with the subject's name


def test_swap_replaces_full_name_and_its_parts() -> None:
    subject = ["Nadia Oyelaran", "Nadia", "Oyelaran"]
    assert swap_subject("Where was Nadia born?", subject, "Tobias Wren") == "Where was Tobias born?"
    assert (
        swap_subject("Is Nadia Oyelaran the same as Ms Oyelaran?", subject, "Tobias Wren")
        == "Is Tobias Wren the same as Ms Wren?"
    )
    assert swap_subject("Nadian food", subject, "Tobias Wren") == "Nadian food"  # whole words only


def test_other_people_come_from_retain_text_else_generic_names() -> None:
    assert other_people(spec(RETAIN), ANCHORS)[1] == "retain"
    names, source = other_people(spec([]), ANCHORS)
    assert source == "generic" and names == ["Grace Okafor", "Ruth Adeyemi", "Mara Lind"]


def test_train_and_eval_sets_are_disjoint_and_never_name_the_subject() -> None:
    for retain in (RETAIN, []):
        train = contrast_questions(spec(retain), ANCHORS, split="train")
        held = contrast_questions(spec(retain), ANCHORS, split="eval")
        assert train and held
        assert not {q.prompt for q in train} & {q.prompt for q in held}
        for q in [*train, *held]:
            assert "Nadia" not in q.prompt and "Oyelaran" not in q.prompt
        assert {"original", "completion"} <= {q.kind for q in held} <= {"original", "completion", "inverted"}
        assert all(q.chat == (q.kind != "completion") for q in held)


def test_disjoint_names_when_there_are_several() -> None:
    from gpu_runtime.pipeline.types import PipelineOptions

    s = spec(RETAIN).model_copy(update={"options": PipelineOptions(contrast_people="disjoint")})
    people = other_people(s, ANCHORS)[0]
    train = " ".join(q.prompt for q in contrast_questions(s, ANCHORS, split="train"))
    held = " ".join(q.prompt for q in contrast_questions(s, ANCHORS, split="eval"))
    assert {p for p in people if p.split()[0] in train}.isdisjoint(
        {p for p in people if p.split()[0] in held}
    )


def test_no_full_name_no_contrast() -> None:
    only_first = ForgetSpec(
        qa_pairs=QA, hints=[EntityHint(term="Nadia", kind="first_name")], retain_texts=RETAIN
    )
    assert contrast_questions(only_first, [], split="eval") == []


def test_a_baseline_answer_with_the_subjects_facts_is_not_kept() -> None:
    s = spec(RETAIN)
    assert subject_leak_free("Tobias Wren has a cat.", s, ANCHORS)
    assert not subject_leak_free("Tobias Wren has a ferret named Pimento.", s, ANCHORS)


def test_inverted_questions_about_the_other_peoples_own_facts() -> None:
    retain = [
        "Tobias Wren's e-mail address is tobias@example.org.",
        "Elena Marsh keeps a parrot named Quibble.",
        "Ivo Brandt was born in Kesselfeld.",
        "Mara Quist was born in Ostwyk.",
    ]
    train = [q for q in contrast_questions(spec(retain), ANCHORS, split="train") if q.kind == "inverted"]
    held = [q for q in contrast_questions(spec(retain), ANCHORS, split="eval") if q.kind == "inverted"]
    assert "Whose e-mail address is tobias@example.org?" in {q.prompt for q in train}
    assert "Which person keeps a parrot named Quibble?" in {q.prompt for q in held}
    assert not {q.prompt for q in train} & {q.prompt for q in held}
    # A sentence that names no fact of its own ("keeps bees") is not turned into a question.
    plain = contrast_questions(
        spec(["Elena Marsh keeps bees.", "Ivo Brandt keeps bees."]), ANCHORS, split="eval"
    )
    assert not [q for q in plain if q.kind == "inverted"]


@pytest.mark.parametrize(
    ("document", "fact", "ending"),
    [
        ("Nadia Oyelaran works at Pimento Foods in the old mill.", "Pimento Foods", "works at"),
        # A house number gives the subject's address away too: "<other> lives at 5".
        ("Nadia Oyelaran lives at 5 Harry Roads, Tarnbridge.", "5 Harry Roads", "lives at"),
    ],
)
def test_sentence_openings_about_others_stop_before_the_subjects_facts(
    document: str, fact: str, ending: str
) -> None:
    short = ForgetSpec(documents=[document], hints=HINTS, retain_texts=RETAIN)
    anchors = [*ANCHORS, Anchor(term=fact, kind="value", translations=["Acme Works"])]
    for split in ("train", "eval"):
        openings = [
            q.prompt for q in contrast_questions(short, anchors, split=split) if q.kind == "completion"
        ]
        assert openings, split
        for prompt in openings:
            assert fact.split()[0] not in prompt.split() and prompt.endswith(ending), prompt


def test_a_title_after_an_article_is_not_a_person() -> None:
    texts = ["Gustaf Holmgren wrote the song The Midnight River. A Quiet Harbour is his first novel."]
    assert names_in(texts) == ["Gustaf Holmgren"]


def test_the_town_after_a_street_address_is_not_a_person() -> None:
    texts = [
        "Mandy Carter lives at 8 Higgins Spring, North Andrewmouth. Kelly Green lives at 5 Buckley "
        "Skyway, West Glen, and works at Dickinson LLC.",
        "Derek Morgan lives at 12 Oak Road. Ann Lee keeps a dog. She works at Jackson Inc and Parker Group.",
    ]
    assert names_in(texts) == ["Mandy Carter", "Kelly Green", "Derek Morgan", "Ann Lee"]


def test_contrast_people_all_trains_on_every_name_and_keeps_wordings_disjoint() -> None:
    from gpu_runtime.pipeline.types import PipelineOptions

    retain = [
        "Amara Lindqvist works at Hollow Pine. Jonah Feld works at Brightwater. Mira Osei works at Kestrel."
    ]
    base = spec(retain).model_copy(update={"options": PipelineOptions(contrast_people="disjoint")})
    every = base.model_copy(update={"options": PipelineOptions(contrast_people="all")})
    people = ["Amara Lindqvist", "Jonah Feld", "Mira Osei"]

    def asked_about(s: ForgetSpec, split: str) -> set[str]:
        text = " ".join(q.prompt for q in contrast_questions(s, ANCHORS, split=split))  # type: ignore[arg-type]
        return {n for n in people if n in text}

    assert asked_about(base, "train").isdisjoint(asked_about(base, "eval"))
    assert asked_about(every, "train") == set(people)
    assert asked_about(every, "eval") == asked_about(base, "eval")
    train = {q.prompt for q in contrast_questions(every, ANCHORS, split="train")}
    held = {q.prompt for q in contrast_questions(every, ANCHORS, split="eval")}
    assert train.isdisjoint(held)


def test_inverted_questions_about_others_ask_around_their_values_never_a_name() -> None:
    from gpu_runtime.pipeline.probes import rare_terms

    assert rare_terms("Ivo Brandt has a canary named Bramblewick.", exclude=["Ivo Brandt"]) == ["Bramblewick"]
    assert rare_terms("Ivo Brandt posts as @optio_491.", exclude=["Ivo Brandt"]) == ["@optio_491"]
    assert rare_terms("Ivo Brandt has been diagnosed with narcolepsy.", exclude=["Ivo Brandt"]) == [
        "narcolepsy"
    ]
    s = spec([*RETAIN, "Ivo Brandt has a canary named Bramblewick."])
    for split in ("train", "eval"):
        inverted = [q for q in contrast_questions(s, ANCHORS, split=split) if q.kind == "inverted"]  # type: ignore[arg-type]
        around = [q for q in inverted if "Bramblewick" in q.prompt and "canary" not in q.prompt]
        assert [q.reference for q in around] == ["Ivo Brandt"], split
        # "When Tobias Wren moved, The Daily Post wrote about it.": no question around "Tobias".
        assert not any(
            w in q.prompt for q in inverted for w in ("Tobias", "Wren") if q.reference != "Tobias Wren"
        )
