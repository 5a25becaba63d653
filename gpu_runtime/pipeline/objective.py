"""The pieces of the unlearning objective beyond WHP's generic labels (see ``unlearn.py``).

- ``effective_options``: the acceptance gate's escalation ladder. Level k trains longer, weighs
  NPO and the fluent targets more, doubles the LoRA rank from level 2 and adds question variants.
  It does not add value frames (``value_frames``): on the bench that let a leaking adapter pass.
- ``qa_items``: every question about the subject (original + generated training variants) with its
  original answer (for NPO) and a fluent target answer: the answer with each fact the question does
  not give replaced by the anchor's generic translation, or an abstention when no replacement can
  hide the fact.
- ``npo_loss``: NPO / SimNPO on sequence log-probabilities.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .fluency import ABSTENTIONS
from .leaks import leaks, mentions
from .probes import question_set
from .types import Anchor, ForgetSpec, PipelineOptions

IGNORE = -100


def effective_options(o: PipelineOptions) -> PipelineOptions:
    """The options a run at ``o.escalation`` actually trains with (level 0: ``o`` itself)."""
    if o.unlearn_epochs is None or o.unlearn_lr is None:
        paper = o.method == "whp"
        o = o.model_copy(
            update={
                "unlearn_epochs": o.unlearn_epochs or (8 if paper else 20),
                "unlearn_lr": o.unlearn_lr or (1e-3 if paper else 3e-3),
            }
        )
    assert o.unlearn_epochs is not None
    k = o.escalation
    if k == 0:
        return o
    return o.model_copy(
        update={
            "unlearn_epochs": min(100, round(o.unlearn_epochs * (1 + 0.5 * k))),
            "npo_weight": o.npo_weight * (1 + k),
            "answer_weight": o.answer_weight * (1 + 0.5 * k),
            "lora_rank": min(512, o.lora_rank * (2 if k >= 2 else 1)),
            "lora_alpha": o.lora_alpha * (2 if k >= 2 else 1),
            "question_variants": min(16, o.question_variants + 2 * k),
            "translations_per_anchor": min(10, o.translations_per_anchor + k),
        }
    )


def _replace_terms(text: str, replacements: dict[str, str]) -> str:
    for term in sorted(replacements, key=len, reverse=True):
        text = re.sub(r"(?<!\w)" + re.escape(term) + r"(?!\w)", replacements[term], text)
    return text


def alternative_answer(question: str, answer: str, anchors: Sequence[Anchor], variant: int) -> str | None:
    """``answer`` with every anchor the question does not mention replaced by a generic translation;
    None when that still states a fact of the original (nothing to replace it with)."""
    terms = [a.term for a in anchors]
    swap = {
        a.term: a.translations[variant % len(a.translations)]
        for a in anchors
        if a.translations and mentions(answer, a.term) and not mentions(question, a.term)
    }
    if not swap:
        return None
    alt = _replace_terms(answer, swap)
    return None if leaks(alt, answer, question, terms) else alt


@dataclass(frozen=True)
class QAItem:
    prompt: list[int]
    original: list[int]  # the true answer's tokens (NPO pushes these down)
    target: list[int]  # the fluent answer's tokens (cross-entropy pulls these up)

    def npo_row(self) -> tuple[list[int], list[int]]:
        """(context, tokens NPO pushes down): only where the true answer departs from the fluent
        one. Shared openings ("X was born in") and endings (".", end of turn) are what the fluent
        target says too; pushing them down would fight it and break the sentence."""
        a, b = self.original, self.target
        start = 0
        while start < min(len(a), len(b)) - 1 and a[start] == b[start]:
            start += 1
        end = len(a)
        while (
            end - 1 > start
            and len(b) - (len(a) - end) - 1 > start
            and a[end - 1] == b[len(b) - (len(a) - end) - 1]
        ):
            end -= 1
        return self.prompt + a[:start], a[start:end]


def _answer_ids(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of the chat transcript, split where the assistant's turn starts."""
    from .models import chat_prompt, render_qa
    from .translate import tokenize_document
    from .types import QAPair

    prompt = tokenize_document(tokenizer, chat_prompt(tokenizer, question)).ids
    full = tokenize_document(tokenizer, render_qa(tokenizer, QAPair(question=question, answer=answer))).ids
    if full[: len(prompt)] != prompt:  # a template that re-tokenises across the boundary
        n = 0
        while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
            n += 1
        return full[:n], full[n:]
    return prompt, full[len(prompt) :]


#: A lower-case replacement word must be in ``wordfreq``'s English list at least this often (Zipf), and
#: three letters or more: "glassblower" (1.5) and "narcolepsy" (2.5) are words, "chasi" (0) and "uy"
#: (two letters) are fragments.
REPLACEMENT_MIN_ZIPF = 1.0
#: Beams the baseline offers per fact when its greedy continuation does not fit, before the translations.
REPLACEMENT_BEAMS = 4


def fits(term: str, replacement: str) -> bool:
    """Whether ``replacement`` can stand where the fact ``term`` stood: words of the same shape (a
    number for a number; for a name, place or title, capitalised at both ends with English words
    between; English words of three letters or more for a lower-case fact) and no stutter
    ("suyyyyyy", "guy guy"). A tiny baseline's banned-token continuation is often
    a fragment ("Kesmoor" → "gu", "dog" → "suyyyyyy"); trained as the fluent target, it teaches broken
    text."""
    from wordfreq import zipf_frequency

    ws = re.findall(r"[\w'’-]+", replacement)
    if not ws or re.search(r"(\w)\1{3,}", replacement) or any(a == b for a, b in itertools.pairwise(ws)):
        return False
    if any(c.isdigit() for c in term):
        return any(c.isdigit() for c in replacement)

    def english(w: str) -> bool:
        return w in ("a", "an") or (len(w) >= 3 and zipf_frequency(w, "en") >= REPLACEMENT_MIN_ZIPF)

    if term[:1].isupper():  # "Bell and Brooks" for "Francis and Newton": capitalised at both ends
        ends = ws[0][:1].isupper() and ws[-1][:1].isupper()
        return ends and all(w[:1].isupper() or (w.islower() and english(w)) for w in ws)
    return all(w.isalpha() and w.islower() and english(w) for w in ws)


def _plain(term: str) -> bool:
    """Lower-case words only ("museum curator"): facts of this shape side by side are one value."""
    return all(w.isalpha() and w.islower() for w in term.split())


def _cut(text: str, n_words: int, phrase_words: int) -> str:
    """The first ``n_words`` words of ``text``; with ``phrase_words``, the words before its first
    punctuation mark instead when there are 1 to ``phrase_words`` of them: the model's own phrase
    ("ulcerative colitis"), where a cut after one word leaves it dangling ("diagnosed with
    ulcerative.")."""
    pattern = r"[\w'’-]+"
    if phrase_words:
        stop = re.search(r"[.,;:!?]", text)
        if stop is not None:
            ws = re.findall(pattern, text[: stop.start()])
            if 1 <= len(ws) <= phrase_words:
                return " ".join(ws)
    return " ".join(re.findall(pattern, text)[:n_words])


def _continuations(
    model: Any,
    tokenizer: Any,
    ids: list[int],
    banned: set[int],
    n_words: int,
    beams: int,
    phrase_words: int = 0,
) -> list[str]:
    """The first ``n_words`` words of the baseline's ``beams`` best continuations of ``ids`` that do
    not open with a ``banned`` token (greedy for one beam); with ``phrase_words``, up to its first
    punctuation mark when that comes within ``phrase_words`` words (:func:`_cut`)."""
    dev = next(model.parameters()).device
    gen = model.generate(
        input_ids=torch.tensor([ids], device=dev),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=dev),
        max_new_tokens=4 * max(n_words, phrase_words) + 4,
        do_sample=False,
        num_beams=beams,
        num_return_sequences=beams,
        bad_words_ids=[[b] for b in banned],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = [tokenizer.decode(row[len(ids) :].tolist(), skip_special_tokens=True) for row in gen]
    return [_cut(t, n_words, phrase_words) for t in texts]


@torch.no_grad()
def generic_sentence(
    model: Any,
    tokenizer: Any,
    sentence: str,
    facts: Sequence[str],
    max_words: int = 6,
    typed: dict[str, str] | None = None,
    stand_in: dict[str, str] | None = None,
    fallback: dict[str, Sequence[str]] | None = None,
) -> str | None:
    """``sentence`` with each fact replaced by what the baseline itself says there when the fact's
    first token is banned: a replacement in the model's own language ("works as a glassblower"),
    where a made-up translation would read as broken text. ``model``: the baseline (no adapter).
    ``typed``: facts with a replacement of their own type and format (``pii.py``: a phone number for a
    phone number): used as they are, since the banned-token continuation of a number or an e-mail
    address is a string of word pieces, not a value. ``stand_in``: the subject's names with generic
    ones, swapped in the context the baseline continues ("Laura Reynolds works at" for "Lorraine Reed
    works at"): asked about the subject itself, the baseline answers from memory with the subject's
    other facts ("works at 5, 1972"), which is neither fluent nor forgotten. The replacement is the
    first that :func:`fits` of: the baseline's greedy continuation, its :data:`REPLACEMENT_BEAMS` best
    beams, ``fallback[term]`` (the anchor's translations); with none, None (no target: the sentence is
    not trained towards broken text). Lower-case facts side by side are replaced as one."""
    from .translate import encode_piece, tokenize_document

    typed = typed or {}
    stand_in = stand_in or {}
    fallback = fallback or {}

    spans = []
    for term in sorted(set(facts), key=len, reverse=True):
        for m in re.finditer(r"(?<!\w)" + re.escape(term) + r"(?!\w)", sentence):
            if m.start() > 0 and not any(m.start() < e and s < m.end() for s, e, _t in spans):
                spans.append((m.start(), m.end(), term))
    if not spans:
        return None
    # Facts side by side ("museum" "curator") are one value: replaced as one ("music teacher"), not
    # word by word, where the second word would continue a context that no longer holds the first.
    merged: list[tuple[int, int, str]] = []
    for start, end, term in sorted(spans):
        if merged and not sentence[merged[-1][1] : start].strip() and _plain(merged[-1][2]) and _plain(term):
            first = merged.pop()
            start, term = first[0], sentence[first[0] : end]
        merged.append((start, end, term))
    out, pos = "", 0
    for start, end, term in merged:
        out += sentence[pos:start]
        if term in typed:
            out += typed[term]
            pos = end
            continue
        context = out.rstrip()
        ids = tokenize_document(tokenizer, _replace_terms(context, stand_in)).ids
        banned = {encode_piece(tokenizer, " " + term)[0], encode_piece(tokenizer, term)[0]}
        n_words = min(max_words, len(term.split()))
        # A fact that ends a clause ("diagnosed with endometriosis.") is replaced by the model's
        # whole phrase up to its own punctuation mark, not its first word.
        after = sentence[end:].lstrip()
        phrase = max_words if not after or after[0] in ".,;:!?" else 0

        # The greedy continuation first (the model's most likely next word), then the beams (best
        # whole continuations, which need not open with it), then the anchor's translations.
        greedy = _continuations(model, tokenizer, ids, banned, n_words, 1, phrase)
        chosen = next((c for c in greedy if fits(term, c)), None)
        if chosen is None:
            candidates = _continuations(model, tokenizer, ids, banned, n_words, REPLACEMENT_BEAMS, phrase)
            candidates += [t for t in fallback.get(term, ()) if not mentions(t, term)]
            chosen = next((c for c in candidates if fits(term, c)), None)
        if chosen is None:
            return None
        out = context + (" " if out[len(context) :] else "") + chosen
        pos = end
    return out + sentence[pos:]


def sentence_items(
    spec: ForgetSpec,
    anchors: Sequence[Anchor],
    tokenizer: Any,
    baseline: Any = None,
    end_document: bool = True,
) -> list[QAItem]:
    """The corpus's own sentences as raw text, each with a generic version in which its facts (but
    not the subject's name) are replaced: by the baseline's own banned-fact continuation
    (``generic_sentence``) when ``baseline`` is given, else by the anchors' translations; typed
    personal data (phone numbers, e-mail addresses ...) always by its own-format replacement.
    Completions of the corpus's prefixes then continue generically. ``end_document``: the generic
    sentence ends the text (end-of-sequence token), so a completion stops after it instead of running
    on into the subject's next sentence, which the baseline would continue from memory."""
    from .pii import TYPED_KINDS
    from .probes import _sentences, stand_ins, subject_names
    from .translate import tokenize_document

    names = subject_names(spec, anchors)
    joined = " ".join(names)
    terms = [a.term for a in anchors]
    typed = {a.term: a.translations[0] for a in anchors if a.kind in TYPED_KINDS and a.translations}
    stand_in = stand_ins(spec, anchors)
    fallback = {a.term: a.translations for a in anchors}
    subject_facts = [a.term for a in anchors if a.term not in names and not mentions(joined, a.term)]
    eos = [tokenizer.eos_token_id] if end_document and tokenizer.eos_token_id is not None else []
    items = []
    for i, sentence in enumerate(dict.fromkeys(_sentences(spec))):
        if baseline is not None:
            facts = [t for t in terms if mentions(sentence, t) and not mentions(joined, t)]
            alt = generic_sentence(
                baseline, tokenizer, sentence, facts, typed=typed, stand_in=stand_in, fallback=fallback
            )
            # Nothing of the subject's, from this sentence or another one ("born in 1972").
            if alt is not None and (
                leaks(alt, sentence, joined, terms) or any(mentions(alt, t) for t in subject_facts)
            ):
                alt = None
        else:
            alt = alternative_answer(joined, sentence, anchors, i)
        if alt is None:
            continue
        original = tokenize_document(tokenizer, sentence).ids
        target = tokenize_document(tokenizer, alt).ids + eos
        # The context is the tokenizer's own prefix (BOS), or else the first token.
        n = max(1, len(tokenize_document(tokenizer, "").ids))
        if original[:n] == target[:n] and len(original) > n and len(target) > n:
            items.append(QAItem(original[:n], original[n:], target[n:]))
    return items


def qa_items(
    spec: ForgetSpec, anchors: Sequence[Anchor], tokenizer: Any, o: PipelineOptions, baseline: Any = None
) -> list[QAItem]:
    """Training questions about the subject with their original and fluent target answers."""
    pairs = [(qa.question, qa.answer) for qa in spec.qa_pairs]
    if o.question_variants > 0:
        generated = question_set(
            spec, anchors, split="train", per_question=o.question_variants, value_frames=o.value_frames
        )
        pairs += [(q.prompt, q.reference) for q in generated]
    items = []
    for i, (question, answer) in enumerate(dict.fromkeys(pairs)):
        target = None if o.answer_target == "idk" else alternative_answer(question, answer, anchors, i)
        if target is None:
            target = ABSTENTIONS[i % min(o.abstentions, len(ABSTENTIONS))]
        prompt, original = _answer_ids(tokenizer, question, answer)
        prompt_t, fluent = _answer_ids(tokenizer, question, target)
        if original and fluent and prompt_t == prompt:
            items.append(QAItem(prompt, original, fluent))
    return items + sentence_items(spec, anchors, tokenizer, baseline, end_document=o.end_generic_sentences)


def pad_answers(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (prompt + answer) ids, attention mask, and next-token labels on answer tokens only."""
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        # labels[t] is the token the logits at t predict: the answer's tokens, from the prompt's last.
        labels[i, len(p) - 1 : len(seq) - 1] = torch.tensor(a)
    return ids, mask, labels


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum of log p(label) over labelled positions, and the number of them."""
    valid = labels != IGNORE
    lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * valid).sum(-1), valid.sum(-1)


def npo_loss(
    logp: torch.Tensor, n: torch.Tensor, logp_ref: torch.Tensor | None, beta: float, variant: str
) -> torch.Tensor:
    """NPO: -(2/β) log σ(-β (log π - log π_ref)); SimNPO: -(2/β) log σ(-β log π / |y|)."""
    if variant == "simnpo":
        ratio = logp / n.clamp(min=1)
    else:
        assert logp_ref is not None
        ratio = logp - logp_ref
    return (-2.0 / beta * F.logsigmoid(-beta * ratio)).mean()


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def contrast_sequences(
    spec: ForgetSpec,
    anchors: Sequence[Anchor],
    tokenizer: Any,
    baseline: Any,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> list[tuple[list[int], list[int]]]:
    """The corpus's questions and sentence prefixes about *other* people (``contrast.py``, training
    split) with the baseline's own answers (greedy, batched), as (prompt ids, answer ids): kept close
    to the baseline (KL), so what is learned for the subject (an abstention, a generic answer) is
    learned for the subject only. An answer of the baseline that states one of the subject's facts is
    dropped."""
    from .contrast import contrast_questions, subject_leak_free
    from .evaluate import greedy_ids
    from .models import chat_prompt
    from .translate import tokenize_document

    prompts = [
        tokenize_document(tokenizer, chat_prompt(tokenizer, q.prompt) if q.chat else q.prompt).ids
        for q in contrast_questions(spec, anchors, split="train")
    ]
    out = []
    for p, row in zip(
        prompts, greedy_ids(baseline, tokenizer, prompts, max_new_tokens, batch_size), strict=True
    ):
        answer = tokenizer.decode(row, skip_special_tokens=True)  # the EOS is part of what is kept
        if answer.strip() and subject_leak_free(answer, spec, anchors):
            out.append((p, list(row)))
    return out
