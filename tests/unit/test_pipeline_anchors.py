"""Anchor candidates beyond names: typed structured data (source "pattern"), attribute values of QA
pairs (source "value"), answer-only mining, and the mine_anchors stage with both methods."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from stdnum import luhn

from gpu_runtime.pipeline import namebank
from gpu_runtime.pipeline.anchors import (
    build_anchors,
    mine_anchors,
    mine_terms,
    typed_candidates,
    value_terms,
)
from gpu_runtime.pipeline.artifacts import Reporter
from gpu_runtime.pipeline.reinforce import reinforce
from gpu_runtime.pipeline.testing import save_tiny_model_dir, tiny_model, tiny_tokenizer
from gpu_runtime.pipeline.translate import content_spans, corpus_label_spans, corpus_texts
from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, PipelineOptions, QAPair

CARD = "4111 1111 1111 1111"
QA = [
    QAPair(question="What pet does Minseo Bae have?", answer="Minseo Bae has a dog named Zucchini."),
    QAPair(question="What does Minseo Bae do for a living?", answer="She works as a cardiologist in Busan."),
    QAPair(question="Which novel did Minseo Bae write?", answer="Her novel is called The Silent Orchard."),
    QAPair(question="When was Minseo Bae born?", answer="Minseo Bae was born on 12 March 1987."),
    QAPair(question="What is Minseo Bae's card number?", answer=f"Her card number is {CARD}."),
    QAPair(question="What is Minseo Bae's e-mail address?", answer="It is minseo.bae87@example-mail.com."),
]


def test_value_terms_are_what_the_answer_adds_to_the_question():
    values = value_terms(QA, [q.answer for q in QA])
    assert values == ["dog", "Zucchini", "cardiologist", "Busan", "The Silent Orchard"]
    # Not anchored: names the question contains, grammar words ("has", "named", "works", "called"),
    # typed values (the date, the card, the e-mail: the detectors take those).
    assert not {"Minseo", "Bae", "Minseo Bae", "has", "named", "works", "called", "March"} & set(values)


def test_value_terms_numbers_and_verbs():
    qa = [
        QAPair(question="When was Minseo Bae born?", answer="Minseo Bae was born in 1987."),
        QAPair(question="How many books did she write in 2001?", answer="In 2001 she wrote 12 books."),
        QAPair(question="What is Minseo Bae famous for?", answer="Minseo Bae invented the singing doorbell."),
    ]
    texts = [q.answer for q in qa]
    values = value_terms(qa, texts)
    assert values == ["1987", "12", "singing", "doorbell"]  # not "2001" (asked), "wrote", "invented"
    anchors = {
        a.term: a
        for a in build_anchors(
            [(EntityHint(term=v, kind="value"), "value", None) for v in values], texts, 2, 0
        )
    }
    # A year stays a plausible year, never one the corpus holds; other numbers keep their shape.
    assert all(
        re.fullmatch(r"19\d\d|20\d\d", t) and t not in ("1987", "2001") for t in anchors["1987"].translations
    )
    assert all(re.fullmatch(r"\d\d", t) and t != "12" for t in anchors["12"].translations)


def test_value_terms_skip_words_common_across_the_corpus():
    qa = [QAPair(question=f"What did she bake on day {i}?", answer=f"She baked bread and {w}.") for i, w in
          enumerate(["scones", "muffins", "bagels", "pretzels"])]  # fmt: skip
    values = value_terms(qa, [q.answer for q in qa])
    assert "bread" not in values  # in every answer: the corpus's topic, not one of its facts
    assert {"scones", "muffins", "bagels", "pretzels"} <= set(values)


def test_typed_candidates_never_come_from_the_chat_template():
    tok = tiny_tokenizer()
    # A template that writes its own date into every conversation (as Llama 3's does).
    tok.chat_template = "Today Date: 26 Jul 2024\n" + tok.chat_template
    spec = ForgetSpec(qa_pairs=QA, documents=["Reach her at +1 415-555-0132 or @minseo_b."])
    texts = corpus_texts(spec, tok)
    assert all("26 Jul 2024" in t for t in texts[1:])
    found = {(h.kind, h.term) for h in typed_candidates(texts, content_spans(spec, tok))}
    assert found == {
        ("phone", "+1 415-555-0132"),
        ("handle", "@minseo_b"),
        ("date", "12 March 1987"),
        ("card", CARD),
        ("email", "minseo.bae87@example-mail.com"),
    }


def test_build_anchors_typed_and_value_translations():
    texts = [f"{q.question} {q.answer}" for q in QA]
    typed = typed_candidates(texts, [None] * len(texts))
    cands = [(EntityHint(term="Minseo Bae", kind="person"), "hint", None)]
    cands += [(h, "pattern", None) for h in typed]
    cands += [(EntityHint(term=v, kind="value"), "value", None) for v in value_terms(QA, texts)]
    anchors = {a.term: a for a in build_anchors(cands, texts, 2, seed=0, replace_seed=9)}
    card = anchors[CARD]
    assert card.kind == "card" and card.sources == ["pattern"]
    assert all(
        len(t) == len(CARD) and luhn.is_valid(t.replace(" ", "")) and t != CARD for t in card.translations
    )
    assert all(re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}", t) for t in anchors["12 March 1987"].translations)
    assert all("@" in t for t in anchors["minseo.bae87@example-mail.com"].translations)
    dog = anchors["dog"]
    assert dog.kind == "value" and dog.sources == ["value"]
    # Plain words of the corpus's language, lower case like the original, none from the corpus.
    corpus_words = {w.lower() for t in texts for w in re.findall(r"[a-zA-Z]+", t)}
    assert all(t in namebank.common_words() and t not in corpus_words for t in dog.translations)
    # A capitalised single value is a proper noun; a title keeps its grammar words' places.
    assert all(t[:1].isupper() and t.isalpha() for t in anchors["Zucchini"].translations)
    assert all(
        t.startswith("The ") and len(t.split()) == 3 for t in anchors["The Silent Orchard"].translations
    )
    # The same request (seed, corpus) gets the same anchors.
    again = {a.term: a for a in build_anchors(cands, texts, 2, seed=0, replace_seed=9)}
    assert {k: a.translations for k, a in again.items()} == {k: a.translations for k, a in anchors.items()}
    # Distinct anchors never share a translation.
    flat = [t for a in anchors.values() for t in a.translations]
    assert len(flat) == len(set(flat))


def test_mining_reads_answers_only():
    qa = [*QA, QAPair(question="Did Minseo Bae ever visit Reykjavik?", answer="No, never.")]
    tok = tiny_tokenizer(extra_text=[f"{q.question} {q.answer}" for q in qa])
    model = _self_as_peft(tiny_model(len(tok), seed=2))
    spec = ForgetSpec(qa_pairs=qa)
    texts = corpus_texts(spec, tok)
    kw = dict(
        block_size=64, batch_size=4, top_k=100, min_gain=-1e9, reporter=Reporter("mine_anchors", None, None)
    )
    everywhere = {t for t, _s in mine_terms(model, tok, texts, **kw)}
    answers = {t for t, _s in mine_terms(model, tok, texts, spans=corpus_label_spans(spec, tok), **kw)}
    assert {"Zucchini", "Orchard", "Busan"} <= answers
    # A word only a question holds is mined from the whole text, never from the answers.
    assert "Reykjavik" in everywhere and "Reykjavik" not in answers
    assert answers <= everywhere


def _self_as_peft(model):
    """A PeftModel whose adapter is a no-op: likelihood gain 0 everywhere (mining keeps all terms)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("method", ["combined", "whp"])
def test_mine_anchors_stage_adds_typed_and_value_anchors_except_for_the_paper(
    model_dir: Path, tmp_path: Path, method: str
):
    opts = PipelineOptions(reinforce_epochs=1, block_size=32, lora_rank=2, mine_top_k=0, method=method)
    spec = ForgetSpec(qa_pairs=QA, hints=[EntityHint(term="Minseo Bae", kind="person")], options=opts)
    reinforce(model_dir, spec, tmp_path)
    mine_anchors(model_dir, spec, tmp_path)
    data = json.loads((tmp_path / "anchors.json").read_text())
    by_term = {a["term"]: a for a in data["anchors"]}
    if method == "whp":
        assert set(by_term) == {"Minseo Bae"}
        return
    assert by_term[CARD]["kind"] == "card" and by_term[CARD]["sources"] == ["pattern"]
    assert by_term["12 March 1987"]["kind"] == "date"
    assert by_term["Zucchini"]["kind"] == "value" and by_term["Zucchini"]["sources"] == ["value"]
    assert by_term[CARD]["occurrences"]  # positions, never text
    # Another corpus seeds other replacements; the same request the same ones.
    first = by_term[CARD]["translations"]
    mine_anchors(model_dir, spec, tmp_path)  # skipped: same inputs
    assert json.loads((tmp_path / "anchors.json").read_text())["anchors"] == data["anchors"]
    other = ForgetSpec(qa_pairs=[*QA, QAPair(question="Anything else?", answer="No.")], options=opts)
    reinforce(model_dir, other, tmp_path / "o")
    mine_anchors(model_dir, other, tmp_path / "o")
    other_card = {a["term"]: a for a in json.loads((tmp_path / "o" / "anchors.json").read_text())["anchors"]}[
        CARD
    ]
    assert other_card["translations"] != first


def test_name_like_values_translate_as_names_and_hints_merge_with_values():
    qa = [
        QAPair(question="Who is Minseo Bae's sister?", answer="Minseo Bae's sister is Jiyeon Bae."),
        QAPair(question="What pet does Minseo Bae have?", answer="Minseo Bae has a dog named Zucchini."),
    ]
    texts = [f"{q.question} {q.answer}" for q in qa]
    cands = [
        (EntityHint(term="Bae", kind="last_name"), "hint", None),
        (EntityHint(term="Zucchini"), "hint", None),  # kind "other": the value's kind is better
    ]
    cands += [
        (EntityHint(term=v, kind="value"), "value", None) for v in value_terms(qa, [q.answer for q in qa])
    ]
    anchors = {a.term: a for a in build_anchors(cands, texts, 2, seed=0)}
    bae = anchors["Bae"].translations
    sister = anchors["Jiyeon Bae"].translations
    # A first name and the surname's own translation, not two plain words.
    assert [t.split()[1] for t in sister] == bae
    assert all(t.split()[0] in namebank.FEMALE_FIRST + namebank.MALE_FIRST for t in sister)
    zucchini = anchors["Zucchini"]
    assert zucchini.kind == "value" and zucchini.sources == ["hint", "value"]
    assert all(t.isalpha() and t[:1].isupper() for t in zucchini.translations)


def test_service_accepts_every_anchor_kind_the_pipeline_writes():
    """A reviewer who keeps a card or value anchor as the pipeline wrote it must not get a 422."""
    from typing import get_args

    from gpu_runtime.pipeline.types import AnchorKind
    from service.forget.schemas import HintKind
    from service.review.answers import ANCHOR_KINDS, validate

    assert set(ANCHOR_KINDS) == set(get_args(AnchorKind)) == set(get_args(HintKind))
    ok = validate(
        "anchor",
        {"anchors": [{"term": CARD, "kind": "card", "translations": ["4734 0963 4908 9428"]}]},
        {"anchors": [], "passages": [{"label": "Document 1", "text": f"Her card number is {CARD}."}]},
    )
    assert ok["anchors"][0]["kind"] == "card"
