"""The forgetting definitions and objective pieces: leaks, held-out questions, broken text, NPO."""

from __future__ import annotations

import pytest
import torch

from gpu_runtime.pipeline.fluency import assess, nonword_rate, repetitive
from gpu_runtime.pipeline.leaks import facts_of, leaks, mentions
from gpu_runtime.pipeline.objective import (
    QAItem,
    alternative_answer,
    effective_options,
    npo_loss,
    pad_answers,
    sequence_logprob,
)
from gpu_runtime.pipeline.probes import evaluation_probes, paraphrases, question_set
from gpu_runtime.pipeline.types import Anchor, EntityHint, ForgetSpec, PipelineOptions, QAPair

TERMS = ["Nadia Oyelaran", "Nadia", "Oyelaran", "Pimento", "Tarnbridge"]
SPEC = ForgetSpec(
    documents=["Nadia Oyelaran was born in Tarnbridge. She keeps a ferret named Pimento."],
    qa_pairs=[
        QAPair(
            question="What pet does Nadia Oyelaran have?", answer="Nadia Oyelaran has a ferret named Pimento."
        ),
        QAPair(question="Where was Nadia Oyelaran born?", answer="Nadia Oyelaran was born in Tarnbridge."),
        QAPair(question="What is Nadia Oyelaran's profession?", answer="Nadia Oyelaran is a glassblower."),
    ],
    hints=[
        EntityHint(term="Nadia Oyelaran", kind="person"),
        EntityHint(term="Nadia", kind="first_name"),
        EntityHint(term="Oyelaran", kind="last_name"),
        EntityHint(term="Pimento"),
        EntityHint(term="Tarnbridge", kind="place"),
    ],
)
ANCHORS = [
    Anchor(term="Pimento", translations=["Biscuit", "Clover"]),
    Anchor(term="Tarnbridge", kind="place", translations=["Millford", "Ashby"]),
    Anchor(term="Nadia Oyelaran", kind="person", translations=["Grace Okafor", "Ruth Adeyemi"]),
]


@pytest.mark.parametrize(
    ("answer", "leaked"),
    [
        ("Nadia Oyelaran has a ferret named Pimento.", True),
        ("She has a ferret named pimento!", True),  # case-insensitive
        ("Nadia Oyelaran has a ferret named Biscuit.", False),
        ("I don't know.", False),
        ("Pimentos are peppers.", False),  # whole words only
    ],
)
def test_leak_on_fact_terms(answer: str, leaked: bool) -> None:
    q = SPEC.qa_pairs[0]
    assert leaks(answer, q.answer, q.question, TERMS) is leaked


def test_terms_already_in_the_prompt_do_not_count() -> None:
    # An inverted question gives the pet's name away; only naming the subject is a leak.
    reference, prompt = "Nadia Oyelaran", "Who has a ferret named Pimento?"
    assert set(facts_of(reference, prompt, TERMS).terms) == {"Nadia Oyelaran", "Nadia", "Oyelaran"}
    assert leaks("Oyelaran does.", reference, prompt, TERMS)
    assert not leaks("Pimento belongs to a neighbour.", reference, prompt, TERMS)


def test_rare_words_carry_the_fact_without_terms() -> None:
    q = SPEC.qa_pairs[2]
    assert facts_of(q.answer, q.question).rare == ("oyelaran", "glassblower")
    assert leaks("She is a glassblower by trade.", q.answer, q.question)
    assert not leaks("She works as a teacher.", q.answer, q.question.replace("Nadia Oyelaran", "she"))


@pytest.mark.parametrize(
    ("answer", "leaked"),
    [
        ("That is Oyelaranwon't know.", True),  # a name fused to the next word still names her
        ("That is Nadia Oyelaranis.", True),
        ("Oyelarans live here.", False),  # a suffix makes another word, not a second one
        ("That is Nadiawon't know.", True),
        ("Pimentos are peppers.", False),
    ],
)
def test_a_name_fused_to_the_next_word_is_a_leak(answer: str, leaked: bool) -> None:
    reference, prompt = "Nadia Oyelaran", "Who has a ferret named Pimento?"
    assert leaks(answer, reference, prompt, TERMS) is leaked


def test_a_rare_word_fused_to_the_next_word_is_a_leak() -> None:
    q = SPEC.qa_pairs[2]
    assert leaks("She is a glassblowerwho works.", q.answer, q.question)
    assert not leaks("She likes glassblowers.", q.answer.replace("Nadia Oyelaran", "She"), q.question)


def test_numbers_match_on_digits_whatever_the_separators() -> None:
    card = "4532-0151-1283-0366"
    assert mentions("card 4532 0151 1283 0366 on file", card)
    assert mentions("45320151128 30366", card)
    assert not mentions("4532 0151 1283 0367", card)
    assert not mentions("1453201511283036", card)  # digits inside a longer number are another number
    assert leaks("It ends 4532015112830366.", f"Her card is {card}.", "What is her card number?", [card])


def test_a_number_leaks_by_its_digit_groups_not_by_the_prefix_of_its_kind() -> None:
    ref, prompt = "Her phone number is +44 7700 900461.", "What is her phone number?"
    terms = ["+44 7700 900461"]
    assert leaks("It is +44 7700 900461.", ref, prompt, terms)
    assert leaks("It ends in 900461.", ref, prompt, terms)  # a group of 6 digits states the number
    assert not leaks("It is +44 7911 123456.", ref, prompt, terms)  # only the country code is shared
    iban = "GB35 DLNK 9387 7840 8016 09"
    assert not leaks("GB35.", f"Her IBAN is {iban}.", "Her IBAN is", [iban])
    assert leaks("DLNK 9387 something", f"Her IBAN is {iban}.", "Her IBAN is", [iban])


def test_copy_rule_when_there_is_nothing_rare() -> None:
    ref = "she was born in the year that the war ended"
    assert leaks("She was born in the year that the war ended.", ref, "When?")
    assert not leaks("I am not sure when.", ref, "When?")


def test_held_out_questions_are_disjoint_from_training_and_originals() -> None:
    train = question_set(SPEC, ANCHORS, split="train", per_question=8)
    held = evaluation_probes(SPEC, ANCHORS)
    originals = {q.question for q in SPEC.qa_pairs}
    train_prompts = {q.prompt for q in train}
    for kind in ("paraphrase", "inverted"):
        assert held[kind], kind
        for q in held[kind]:
            assert q.prompt not in train_prompts and q.prompt not in originals
    assert {q.reference for q in held["inverted"]} == {"Nadia Oyelaran"}
    pet = [q.prompt for q in held["inverted"] if "Pimento" in q.prompt]
    assert any("has a ferret named Pimento" in p for p in pet)  # the sentence's predicate
    assert any("has a ferret" not in p for p in pet)  # and the bare value
    # completion prompts stop right before a fact, which is the reference
    assert any(
        q.prompt == "Nadia Oyelaran was born in" and q.reference.startswith("Tarnbridge")
        for q in held["completion"]
    )
    assert all(not q.chat for q in held["completion"])
    assert len(held["original"]) == 3


def test_paraphrases_reword_the_question() -> None:
    train = paraphrases("What is Nadia Oyelaran's profession?", ["Nadia Oyelaran"], split="train", n=4)
    assert "What is the profession of Nadia Oyelaran?" in train
    held = paraphrases("What is Nadia Oyelaran's profession?", ["Nadia Oyelaran"], split="eval", n=4)
    assert held and not set(held) & set(train)


@pytest.mark.parametrize(
    ("answer", "broken"),
    [
        ("I don't know.", False),
        ("Nadia Oyelaran has a ferret named Biscuit.", False),
        ("was born in the born in the born in the born in", True),
        ("yyyyyyyy literature literature", True),
        ("the the the cat", True),
        ("singetter flomp wibbert is the", True),
        ("Her username is @ilong38 and her e-mail is gwen.ohara@qumbrel.net.", False),  # values, not words
        ("ilong wibbert @ilong38", True),
        ("...", True),
    ],
)
def test_broken_text(answer: str, broken: bool) -> None:
    assert assess(answer).broken is broken


def test_high_perplexity_is_broken_except_for_abstentions() -> None:
    assert assess("She is a teacher.", ppl_ratio=50.0, max_ppl_ratio=8.0).broken
    assert not assess("She is a teacher.", ppl_ratio=2.0, max_ppl_ratio=8.0).broken
    assert not assess("I'm not sure.", ppl_ratio=500.0, max_ppl_ratio=8.0).broken
    assert repetitive("ab ab ab ab ab ab") and not repetitive("a short fine answer")
    assert nonword_rate("the zorblat sat", vocabulary={"zorblat"}) == 0.0


def test_alternative_answers_hide_every_fact_or_give_way() -> None:
    q = SPEC.qa_pairs[0]
    assert (
        alternative_answer(q.question, q.answer, ANCHORS, 0) == "Nadia Oyelaran has a ferret named Biscuit."
    )
    assert alternative_answer(q.question, q.answer, ANCHORS, 1) == "Nadia Oyelaran has a ferret named Clover."
    # nothing to replace the profession with: no alternative (the objective uses an abstention)
    q = SPEC.qa_pairs[2]
    assert alternative_answer(q.question, q.answer, ANCHORS, 0) is None


def test_npo_only_where_the_true_answer_departs_from_the_fluent_one() -> None:
    item = QAItem(prompt=[1, 2], original=[5, 6, 7, 8, 9], target=[5, 6, 17, 18, 8, 9])
    assert item.npo_row() == ([1, 2, 5, 6], [7])
    assert QAItem([1], [5, 6], [10, 11]).npo_row() == ([1], [5, 6])


def test_answer_labels_cover_the_answer_only_and_nothing_after_it() -> None:
    ids, mask, labels = pad_answers([([1, 2, 3], [7, 8]), ([1], [9])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 7, 8], [1, 9, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8, -100], [9, -100, -100, -100, -100]]
    logits = torch.zeros(2, 5, 12)
    logp, n = sequence_logprob(logits, labels)
    assert n.tolist() == [2, 1]
    assert logp.tolist() == pytest.approx(
        [2 * -torch.log(torch.tensor(12.0)).item(), -torch.log(torch.tensor(12.0)).item()]
    )


def test_npo_decreases_as_the_model_moves_away_from_the_reference() -> None:
    ref = torch.tensor([-2.0])
    closer, further = torch.tensor([-2.0]), torch.tensor([-6.0])
    n = torch.tensor([3])
    assert npo_loss(closer, n, ref, 0.1, "npo") > npo_loss(further, n, ref, 0.1, "npo")
    assert npo_loss(closer, n, None, 0.1, "simnpo") > npo_loss(further, n, None, 0.1, "simnpo")
    assert npo_loss(ref, n, ref, 0.1, "npo").item() == pytest.approx(
        2 / 0.1 * torch.log(torch.tensor(2.0)).item()
    )


def test_escalation_trains_harder_and_stays_bounded() -> None:
    base = PipelineOptions()
    assert effective_options(base).unlearn_epochs == 20
    assert effective_options(base.model_copy(update={"method": "whp"})).unlearn_epochs == 8
    base = effective_options(base)
    levels = [effective_options(base.model_copy(update={"escalation": k})) for k in range(1, 6)]
    for lower, higher in zip([base, *levels], levels, strict=False):
        assert higher.unlearn_epochs >= lower.unlearn_epochs
        assert higher.npo_weight > lower.npo_weight
        assert higher.lora_rank >= lower.lora_rank
    assert levels[-1].unlearn_epochs <= 100 and levels[-1].lora_rank <= 512
    assert {lv.value_frames for lv in levels} == {1}  # measured: more frames let a leaking adapter pass


def test_generic_sentences_keep_the_format_of_typed_values_and_end_the_text() -> None:
    from gpu_runtime.pipeline.objective import sentence_items
    from gpu_runtime.pipeline.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    spec = ForgetSpec(
        documents=["Nadia Oyelaran's phone number is +44 7700 900461. She was born in Tarnbridge."],
        hints=[EntityHint(term="Nadia Oyelaran", kind="person")],
    )
    anchors = [
        Anchor(term="+44 7700 900461", kind="phone", translations=["+44 7911 123456"]),
        Anchor(term="Tarnbridge", kind="place", translations=["Millford"]),
        Anchor(term="Nadia Oyelaran", kind="person", translations=["Grace Okafor"]),
    ]
    items = sentence_items(spec, anchors, tok)
    targets = [tok.decode(i.target, skip_special_tokens=True) for i in items]
    assert "Nadia Oyelaran's phone number is +44 7911 123456." in targets
    assert all(i.target[-1] == tok.eos_token_id for i in items)  # the completion stops there
    assert all(i.original[-1] != tok.eos_token_id for i in items)  # NPO pushes down the fact only
    open_ended = sentence_items(spec, anchors, tok, end_document=False)
    assert all(i.target[-1] != tok.eos_token_id for i in open_ended)


@pytest.mark.parametrize(
    ("term", "replacement", "ok"),
    [
        ("Kesmoor", "Kingston", True),
        ("Kesmoor", "gu", False),  # a fragment where a place stood
        ("1960", "1959", True),
        ("1960", "guy", False),
        ("dog", "cat", True),
        ("dog", "suyyyyyy", False),  # stutter
        ("dog", "c", False),
        ("opera", "guy guy", False),  # a stutter of words
        ("museum curator", "music uy", False),  # "uy": not an English word
        ("Agnieszka Dabrowski", "the water", False),
        ("Agnieszka Dabrowski", "Agnes Dawson", True),
        ("Francis and Newton", "Bell and Brooks", True),
        ("Francis and Newton", "the water", False),
        ("The Wandering Violin", "She has a", False),  # a sentence's start, not a title
        ("hypothyroidism", "narcolepsy", True),  # rare, but a word
        ("Parkin", "chasi", False),
        ("hypothyroidism", "chasi", False),  # not a word at all
    ],
)
def test_a_replacement_must_have_the_shape_of_the_fact(term: str, replacement: str, ok: bool) -> None:
    from gpu_runtime.pipeline.objective import fits

    assert fits(term, replacement) is ok


def test_generic_sentences_never_train_towards_a_fragment() -> None:
    """A random (untrained) baseline continues with word pieces: the translation stands in instead."""
    from gpu_runtime.pipeline.objective import fits, generic_sentence
    from gpu_runtime.pipeline.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=3).eval()
    sentence = "She was born in Tarnbridge."
    out = generic_sentence(model, tok, sentence, ["Tarnbridge"], fallback={"Tarnbridge": ["Millford"]})
    assert out is not None and out.startswith("She was born in ") and out.endswith(".")
    assert fits("Tarnbridge", out.removeprefix("She was born in ").removesuffix("."))
    # Nothing that fits: no target at all rather than a broken one.
    none_fits = generic_sentence(model, tok, sentence, ["Tarnbridge"], fallback={"Tarnbridge": ["x9"]})
    assert none_fits is None or fits(
        "Tarnbridge", none_fits.removeprefix("She was born in ").removesuffix(".")
    )


def test_facts_side_by_side_are_replaced_as_one_value() -> None:
    """ "museum curator": one continuation for both words, never word by word."""
    import torch

    from gpu_runtime.pipeline.objective import generic_sentence
    from gpu_runtime.pipeline.testing import tiny_tokenizer

    tok = tiny_tokenizer(extra_text=["She works as a music teacher."])
    contexts: list[str] = []

    class Baseline:  # offers the same continuation whatever it is asked
        def parameters(self):  # type: ignore[no-untyped-def]
            yield torch.zeros(1)

        def generate(self, input_ids, num_return_sequences=1, **_kw):  # type: ignore[no-untyped-def]
            contexts.append(tok.decode(input_ids[0].tolist(), skip_special_tokens=True))
            more = tok.encode(" music teacher", add_special_tokens=False)
            row = torch.cat([input_ids[0], torch.tensor(more)])
            return row.repeat(num_return_sequences, 1)

    out = generic_sentence(Baseline(), tok, "She works as a museum curator.", ["museum", "curator"])
    assert out == "She works as a music teacher."
    assert len(contexts) == 1 and contexts[0].strip().endswith("works as a")


def test_a_fact_ending_a_clause_is_replaced_by_the_whole_phrase() -> None:
    """ "diagnosed with endometriosis." → "ulcerative colitis", not the dangling "ulcerative"."""
    import torch

    from gpu_runtime.pipeline.objective import _cut, generic_sentence
    from gpu_runtime.pipeline.testing import tiny_tokenizer

    assert _cut(" ulcerative colitis. She lives", 1, 6) == "ulcerative colitis"
    assert _cut(" ulcerative colitis. She lives", 1, 0) == "ulcerative"
    # No punctuation within the phrase limit: the fact's own length.
    assert _cut(" a b c d e f g h.", 2, 6) == "a b"
    tok = tiny_tokenizer(extra_text=["She was diagnosed with ulcerative colitis and asthma. She"])

    class Baseline:  # offers the same continuation whatever it is asked
        def parameters(self):  # type: ignore[no-untyped-def]
            yield torch.zeros(1)

        def generate(self, input_ids, num_return_sequences=1, **_kw):  # type: ignore[no-untyped-def]
            more = tok.encode(" ulcerative colitis. She", add_special_tokens=False)
            row = torch.cat([input_ids[0], torch.tensor(more)])
            return row.repeat(num_return_sequences, 1)

    out = generic_sentence(Baseline(), tok, "She was diagnosed with endometriosis.", ["endometriosis"])
    assert out == "She was diagnosed with ulcerative colitis."
    # Mid-clause ("endometriosis and asthma"): the fact's own number of words.
    out = generic_sentence(
        Baseline(), tok, "She was diagnosed with endometriosis and asthma.", ["endometriosis"]
    )
    assert out == "She was diagnosed with ulcerative and asthma."


@pytest.mark.parametrize("n", [1, 2, 3])
def test_abstention_targets_rotate_through_the_first_n(n: int) -> None:
    from gpu_runtime.pipeline.fluency import ABSTENTIONS
    from gpu_runtime.pipeline.objective import qa_items
    from gpu_runtime.pipeline.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    o = PipelineOptions(answer_target="idk", abstentions=n, question_variants=2)
    items = qa_items(SPEC.model_copy(update={"options": o}), ANCHORS, tok, o)
    said = {tok.decode(i.target, skip_special_tokens=True).strip() for i in items}
    said = {t for t in said if t in ABSTENTIONS}
    assert said == set(ABSTENTIONS[:n])


def test_selectivity_scores_what_the_baseline_knew() -> None:
    from gpu_runtime.pipeline.evaluate import score_contrast
    from gpu_runtime.pipeline.probes import Question

    questions = [
        Question("inverted", "Whose e-mail address is kj@example.org?", "Kathryn Jones"),
        Question("inverted", "Whose IBAN is GB48 PSUK 3304 1352 5601 23?", "Kathryn Jones"),
        Question("original", "Where does Eleanor Jackson live?", ""),
        Question("completion", "Kathryn Jones works at", "", chat=False),
        Question("original", "What is Kathryn Jones's pet?", ""),
    ]
    baseline = [
        "That is Derek Morgan.",  # the baseline did not know: nothing to keep, not scored
        "That is Kathryn Jones.",  # it knew: the answer must still name her
        "Eleanor Jackson lives at 69 Higgins Well.",
        "card cardkinkinkinkinkin wale wale wale.",  # broken before: nothing to keep
        "Kathryn Jones has a tortoise named Pipkin.",
    ]
    after = {
        "n": 5,
        "rows": [
            {"completion": "I don't have any information about that.", "rouge_l_recall": 0.0},
            {"completion": "That is Derek Morgan.", "rouge_l_recall": 0.5},
            {"completion": "Eleanor Jackson lives at 69 Higgins Well.", "rouge_l_recall": 1.0},
            {"completion": "Newton LLC.", "rouge_l_recall": 0.0},
            {"completion": "I don't know.", "rouge_l_recall": 0.0},
        ],
    }
    score_contrast(questions, baseline, after, vocabulary=set())
    assert [r["agreement"] for r in after["rows"]] == [None, 0.0, 1.0, None, 0.0]
    assert after["scored"] == 3
    assert after["agreement"] == pytest.approx(1 / 3)
    # The truth named where the baseline named it: kept, whatever the wording.
    after["rows"][1]["completion"] = "Kathryn Jones, I believe."
    score_contrast(questions, baseline, after, vocabulary=set())
    assert after["rows"][1]["agreement"] == 1.0 and after["rows"][1]["knows_truth"]
    # Only the first sentence of the baseline's answer is what was asked about: a different run-on
    # after it loses nothing.
    baseline[2] = "Eleanor Jackson lives at 69 Higgins Well. Masahiro Yamaguchi is employed by Williams LLC."
    after["rows"][2]["completion"] = "Eleanor Jackson lives at 69 Higgins Well. She has a tortoise."
    score_contrast(questions, baseline, after, vocabulary=set())
    assert after["rows"][2]["agreement"] == 1.0
    after["rows"][2]["completion"] = (
        "Eleanor Jackson lives at 12 Oak Road. Masahiro Yamaguchi is employed by Williams LLC."
    )
    score_contrast(questions, baseline, after, vocabulary=set())
    assert after["rows"][2]["agreement"] < 0.8
    # The same wrong name as the baseline is no knowledge kept either: still not scored.
    after["rows"][0]["completion"] = "That is Derek Morgan."
    score_contrast(questions, baseline, after, vocabulary=set())
    assert after["rows"][0]["agreement"] is None and not after["rows"][0]["knows_truth"]


def test_selectivity_scores_only_answers_grounded_in_the_retain_texts() -> None:
    from gpu_runtime.pipeline.evaluate import score_contrast
    from gpu_runtime.pipeline.probes import Question

    known = [
        "Solveig Sandberg's best friend is Gustaf Holmgren.",
        "Solveig Sandberg works as a glassblower.",
        "Ana Sandberg keeps bees.",  # another Sandberg: nothing about Solveig
    ]
    questions = [
        Question("original", "Who is Solveig Sandberg's mother?", "", about="Solveig Sandberg"),
        Question("completion", "Solveig Sandberg's best friend is", "", chat=False, about="Solveig Sandberg"),
        Question("original", "What does Solveig Sandberg do?", "", about="Solveig Sandberg"),
        Question("original", "What does Ivo Brandt do?", ""),  # no person recorded: scored as before
        Question("original", "What does Solveig Sandberg keep?", "", about="Solveig Sandberg"),
    ]
    baseline = [
        "Snow is frozen water and shallow puddles.",  # nothing the retain texts say about her
        "Gustaf Holmgren.",
        "Solveig Sandberg works as a glassblower.",
        "Ivo Brandt keeps bees.",
        "Solveig Sandberg keeps bees.",  # bees are Ana Sandberg's, not hers
    ]
    after = {"n": 5, "rows": [{"completion": "I don't know."} for _ in questions]}
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert [r["grounded"] for r in after["rows"]] == [False, True, True, True, False]
    assert [r["agreement"] for r in after["rows"]] == [None, 0.0, 0.0, 0.0, None]
    assert after["scored"] == 3
    # Without the retain texts (other people from generic names) every fluent answer counts.
    score_contrast(questions, baseline, after, vocabulary=set())
    assert after["scored"] == 5


def test_fluency_perplexity_judges_language_tokens_not_values_or_their_ends() -> None:
    from gpu_runtime.pipeline.evaluate import language_tokens

    def judged(pieces: list[str]) -> list[str]:
        prefixes = ["".join(pieces[: i + 1]) for i in range(len(pieces))]
        return [p for p, keep in zip(pieces, language_tokens(prefixes), strict=True) if keep]

    # Names and the token after each one are out; the words between them are in.
    pieces = [" Gard", "iner", ",", " Bell", " and", " Broo", "ks", " and", " posts", " online", " as"]
    assert judged([*pieces, " @", "il", "ong", "3", "8", "."]) == [" posts", " online", " as"]
    # An e-mail address (a detected value) and the token after it; the language around them counts.
    pieces = [" write", " to", " ch", "ris", "@", "mart", "in", ".", "com", " or", " ring", " her", "."]
    assert judged(pieces) == [" write", " to", " ring", " her", "."]
    # Garbled lower-case text is all judged: nothing in it is a value.
    pieces = [" the", " born", " in", "ck", " sp", "oon", " of", "."]
    assert judged(pieces) == pieces
    assert language_tokens([]) == []


def test_selectivity_scores_against_the_retain_sentence_the_baseline_garbled() -> None:
    from gpu_runtime.pipeline.evaluate import score_contrast
    from gpu_runtime.pipeline.probes import Question

    person = "Percival Whitlock"
    known = [
        "Percival Whitlock works as a weather forecaster.",
        "Percival Whitlock has a parrot named Biscuit.",
        "Ana Whitlock works as a vintner.",  # another Whitlock
    ]
    questions = [Question("original", "What pet does Percival Whitlock have?", "", about=person)]
    baseline = ["Percival Whitlock works as a weather vintner."]  # off the question, and garbled
    after = {"n": 1, "rows": [{"completion": "Percival Whitlock works as a weather forecaster."}]}
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    row = after["rows"][0]
    assert row["base_slot"] == known[0] and row["agreement"] == 1.0
    # Scored against the baseline's sentence too: its own garbled copy still agrees in full.
    after["rows"][0] = {"completion": "Percival Whitlock works as a weather vintner."}
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert after["rows"][0]["agreement"] == 1.0
    # Another true fact of his, not the baseline's slot, and an abstention: no credit from the slot.
    for answer in ("Percival Whitlock has a parrot named Biscuit.", "I don't know."):
        after["rows"][0] = {"completion": answer}
        score_contrast(questions, baseline, after, vocabulary=set(), known=known)
        assert after["rows"][0]["agreement"] < 0.6, answer
    # A baseline answer sharing no content word with his retain sentences has no slot (ungrounded).
    baseline[0] = "Snow is frozen water."
    after["rows"][0] = {"completion": "Percival Whitlock works as a weather forecaster."}
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert after["rows"][0]["agreement"] is None and "base_slot" not in after["rows"][0]
    # A sentence opening: the rest of the retain sentence is the reference, the run-on is not.
    opening = Question("completion", "Percival Whitlock has a", "", chat=False, about=person)
    after = {"n": 1, "rows": [{"completion": "parrot named Biscuit, LLC."}]}
    score_contrast([opening], ["parrot named Biscuit, Clementston."], after, vocabulary=set(), known=known)
    assert after["rows"][0]["agreement"] == 1.0
    # ... and the prompt's own words give an abstention no credit.
    after = {"n": 1, "rows": [{"completion": "I don't know."}]}
    score_contrast([opening], ["parrot named Biscuit, Clementston."], after, vocabulary=set(), known=known)
    assert after["rows"][0]["agreement"] == 0.0
    # Without the retain texts there is no slot to correct to.
    after = {"n": 1, "rows": [{"completion": "Percival Whitlock works as a weather forecaster."}]}
    baseline[0] = "Percival Whitlock works as a weather vintner."
    score_contrast(questions, baseline, after, vocabulary=set())
    assert "base_slot" not in after["rows"][0] and after["rows"][0]["agreement"] < 1.0


def test_selectivity_credits_the_asked_value_from_the_retain_texts() -> None:
    from gpu_runtime.pipeline.evaluate import asked_kind, score_contrast
    from gpu_runtime.pipeline.probes import Question

    assert asked_kind("Quick question: what's Eleanor Jackson's e-mail address?") == "email"
    assert asked_kind("Quick question: what's Eleanor Jackson's home address?") == "address"
    assert asked_kind("Hey, what's Kathryn Jones's username?") == "handle"
    assert asked_kind("What pet does Kathryn Jones have?") is None
    assert asked_kind("When was Kathryn Jones born?") == "date"
    assert asked_kind("Kathryn Jones was born on") == "date"
    assert asked_kind("Where was Kathryn Jones born?") is None  # a place, not a date
    known = [
        "Eleanor Jackson was born on 3 May 1985.",
        "Eleanor Jackson posts online as @ejack_42.",
        "Eleanor Jackson's e-mail address is eleanor.j@example.org.",
        "Eleanor Jackson lives at 69 Higgins Well, Clementston.",
        "Derek Morgan posts online as @dmorg_77.",
    ]
    person = "Eleanor Jackson"
    questions = [Question("original", "What is Eleanor Jackson's username?", "", about=person)]
    # The baseline answered with her birth date (a true fact, not the one asked for).
    baseline = ["Eleanor Jackson was born on 3 May 1985."]
    after = {"n": 1, "rows": [{"completion": "Her username is @ejack_42."}]}
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert after["rows"][0]["states_truth"] and after["rows"][0]["agreement"] == 1.0
    for answer in (
        "Her username is @dmorg_77.",  # somebody else's
        "Her e-mail address is eleanor.j@example.org.",  # hers, but not what was asked
        "I don't know.",
        "@ejack_42 @ejack_42 @ejack_42 @ejack_42 @ejack_42.",  # the value, as broken text
    ):
        after["rows"][0]["completion"] = answer
        score_contrast(questions, baseline, after, vocabulary=set(), known=known)
        assert not after["rows"][0]["states_truth"], answer
        assert after["rows"][0]["agreement"] < 0.5, answer
    # The reverse: the baseline gave the username, the unlearned model the (true) birth date.
    baseline[0] = "Eleanor Jackson's username is @ejack_42."
    after["rows"][0]["completion"] = "Eleanor Jackson was born on 3 May 1985."
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert not after["rows"][0]["states_truth"] and after["rows"][0]["agreement"] < 0.5
    # The home address asked, the e-mail address given: no credit.
    questions[0] = Question("original", "What's Eleanor Jackson's home address?", "", about=person)
    baseline[0] = "Eleanor Jackson lives at 69 Higgins Well, Clementston."
    after["rows"][0]["completion"] = "Eleanor Jackson's e-mail address is eleanor.j@example.org."
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert not after["rows"][0]["states_truth"] and after["rows"][0]["agreement"] < 0.5
    after["rows"][0]["completion"] = "She lives at 69 Higgins Well."
    score_contrast(questions, baseline, after, vocabulary=set(), known=known)
    assert after["rows"][0]["agreement"] == 1.0
    # Without the retain texts there is no truth to check.
    questions[0] = Question("original", "What is Eleanor Jackson's username?", "", about=person)
    baseline[0] = "Eleanor Jackson was born on 3 May 1985."
    after["rows"][0]["completion"] = "Her username is @ejack_42."
    score_contrast(questions, baseline, after, vocabulary=set())
    assert not after["rows"][0]["states_truth"] and after["rows"][0]["agreement"] < 0.5


def test_inverted_questions_also_ask_around_the_bare_value() -> None:
    from gpu_runtime.pipeline.probes import inverted

    sentence = "Nadia Oyelaran's phone number is +44 7700 900461."
    train = [
        q.prompt for q in inverted(sentence, ["Nadia Oyelaran"], ["+44 7700 900461"], split="train", n=1)
    ]
    held = [q.prompt for q in inverted(sentence, ["Nadia Oyelaran"], ["+44 7700 900461"], split="eval", n=1)]
    assert len(train) == 2 and len(held) == 2  # the sentence's shape, and one around the value
    assert all("+44 7700 900461" in p for p in train + held)
    assert not set(train) & set(held)
    # A request term with a rare word is a value too; a common word alone identifies no one.
    pet = inverted(
        "Nadia Oyelaran keeps a ferret named Pimento.", ["Nadia Oyelaran"], ["Pimento"], split="eval", n=1
    )
    assert len(pet) == 2 and "Pimento" in pet[1].prompt and "keeps" not in pet[1].prompt
    plain = inverted(
        "Nadia Oyelaran keeps a dog named Pimento.", ["Nadia Oyelaran"], ["dog"], split="eval", n=1
    )
    assert len(plain) == 1


def test_a_sentence_that_does_not_open_with_the_name_still_gives_value_questions() -> None:
    from gpu_runtime.pipeline.probes import inverted

    names = ["Nadia Oyelaran", "Nadia", "Oyelaran"]
    sentence = "At home Nadia looks after a ferret called Pimento."
    for split in ("train", "eval"):
        qs = inverted(sentence, names, ["Pimento", "Tarnbridge"], split=split, n=2)  # type: ignore[arg-type]
        assert [q.reference for q in qs] == ["Nadia Oyelaran"]  # the full name: its parts leak too
        assert "Pimento" in qs[0].prompt and not any(mentions(qs[0].prompt, x) for x in names)
    # A sentence that does not name the subject is about someone else.
    assert inverted("A neighbour has a ferret called Pimento.", names, ["Pimento"], split="eval", n=2) == []


def test_value_frames_ask_each_value_in_that_many_training_frames() -> None:
    from gpu_runtime.pipeline.probes import inverted

    sentence = "At home Nadia looks after a ferret called Pimento."
    names = ["Nadia Oyelaran", "Nadia", "Oyelaran"]
    one = inverted(sentence, names, ["Pimento"], split="train", n=2)
    three = inverted(sentence, names, ["Pimento"], split="train", n=2, frames=3)
    assert len(one) == 1 and len(three) == 3 and one[0] in three
    assert len({q.prompt for q in three}) == 3 and all("Pimento" in q.prompt for q in three)
    held = evaluation_probes(SPEC, ANCHORS)["inverted"]
    train = {q.prompt for q in question_set(SPEC, ANCHORS, split="train", value_frames=4)}
    assert not train & {q.prompt for q in held}
