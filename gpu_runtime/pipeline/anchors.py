"""Stage 2, mine anchors: the anchor dictionary (``anchors.json``) with generic translations.

Candidates come from (a) the request's entity hints, (b) capitalised word spans whose
log-likelihood rose most from the baseline to the reinforced model, (c) optionally an LLM
behind any OpenAI-compatible endpoint, (d) typed detection of structured personal data (``pii``:
e-mails, phones, card/account/IBAN numbers, dates, URLs, handles, addresses; source "pattern"),
whose translations are format-preserving generic values, and (e) attribute values of QA pairs
(source "value"): the answer's words the question does not contain ("What pet does X have?" ->
"X has a dog named Zucchini." gives "dog" and "Zucchini"). (d) and (e) are ours, not the paper's:
``method="whp"`` leaves them out. In QA/chat input only answer tokens are mined.

Each anchor gets generic translations of the same kind and a similar shape ("Harry" -> "Harold"),
distinct anchors never share a translation, and full names are translated part by part so
"Harry Potter" and "Harry" stay consistent. Reviewers may edit the
JSON before targets are generated; a re-run of this stage with unchanged inputs keeps their edits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from . import namebank, pii
from .artifacts import Reporter, hash_json, write_json_atomic
from .errors import BadInput
from .translate import PAPER as PAPER_RULES
from .types import (
    Anchor,
    AnchorDictionary,
    AnchorKind,
    CancelFn,
    EntityHint,
    ForgetSpec,
    LLMOptions,
    ProgressFn,
    QAPair,
    StageResult,
)

log = logging.getLogger(__name__)

STAGE = "mine_anchors"
ANCHORS_FILE = "anchors.json"
_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"
_STOP = {
    "The", "A", "An", "And", "But", "Or", "If", "In", "On", "At", "To", "Of", "For", "With", "From", "By",
    "He", "She", "It", "They", "We", "You", "I", "His", "Her", "Their", "Our", "My", "Your", "This", "That",
    "These", "Those", "What", "Who", "Where", "When", "Why", "How", "Which", "Is", "Are", "Was", "Were",
    "Yes", "No", "Not", "As", "So", "Then", "There", "Here", "User", "Assistant", "Question", "Answer",
}  # fmt: skip


# ---------------------------------------------------------------- generic translations


def _stable(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def _bigrams(w: str) -> set[str]:
    w = f"^{w.lower()}$"
    return {w[i : i + 2] for i in range(len(w) - 1)}


def _similarity(a: str, b: str) -> float:
    """How alike two names look: same initial, shared prefix, similar length, shared bigrams."""
    prefix = 0
    for x, y in zip(a.lower(), b.lower(), strict=False):
        if x != y:
            break
        prefix += 1
    ba, bb = _bigrams(a), _bigrams(b)
    dice = 2 * len(ba & bb) / (len(ba) + len(bb))
    return 2.0 * (a[:1].lower() == b[:1].lower()) + min(prefix, 3) + 3.0 * dice - 0.5 * abs(len(a) - len(b))


def _guess_gender(name: str) -> str:
    if name in namebank.MALE_FIRST:
        return "m"
    if name in namebank.FEMALE_FIRST:
        return "f"
    return "f" if name.lower().endswith(namebank.FEMALE_ENDINGS) else "m"


def _pseudo_word(term: str, salt: int) -> str:
    """A made-up word of the same shape: same length, case pattern and vowel/consonant pattern."""
    out = []
    for j, ch in enumerate(term):
        low = ch.lower()
        pool = _VOWELS if low in _VOWELS else _CONSONANTS if low.isalpha() and low.isascii() else ""
        if not pool or (j == 0 and len(term) > 3 and salt % 3 == 0):
            out.append(ch)
            continue
        c = pool[_stable(salt, j, low) % len(pool)]
        out.append(c.upper() if ch.isupper() else c)
    return "".join(out)


def _bank(kind: AnchorKind, term: str, part: bool = False) -> Sequence[str]:
    if kind == "value":
        if term[:1].isupper() and not part:
            # A capitalised single word is a proper noun (a pet's name, a town): give it one.
            return (*namebank.FEMALE_FIRST, *namebank.MALE_FIRST, *namebank.PLACES)
        words = namebank.common_words()
        return [w.capitalize() for w in words] if term[:1].isupper() else words
    if kind == "first_name":
        return namebank.FEMALE_FIRST if _guess_gender(term) == "f" else namebank.MALE_FIRST
    if kind == "last_name":
        return namebank.SURNAMES
    if kind == "place":
        return namebank.PLACES
    if kind == "organization":
        return namebank.ORGANIZATIONS
    return ()


def infer_kind(term: str) -> AnchorKind:
    words = term.split()
    if len(words) > 1:
        return "person" if words[0] in namebank.MALE_FIRST or words[0] in namebank.FEMALE_FIRST else "other"
    if term in namebank.MALE_FIRST or term in namebank.FEMALE_FIRST:
        return "first_name"
    if term in namebank.SURNAMES:
        return "last_name"
    if term in namebank.PLACES:
        return "place"
    return "other"


def _kind_from_context(term: str, corpus: Sequence[str], first_names: set[str]) -> AnchorKind:
    """Guess a capitalised term's kind from its neighbours: "<Name> Term" makes it a last name,
    "Term <Name>" a first name, "<first name> <Word>" a person."""
    words = term.split()
    if not term[:1].isupper():
        return "other"
    if len(words) > 1:
        return "person" if words[0] in first_names or infer_kind(words[0]) == "first_name" else "other"
    esc = re.escape(term)
    before = sum(len(re.findall(r"\b[A-Z]\w+ " + esc + r"\b", t)) for t in corpus)
    after = sum(len(re.findall(r"\b" + esc + r" [A-Z]\w+", t)) for t in corpus)
    if before > after:
        return "last_name"
    if after > 0:
        return "first_name"
    return "other"


class Translator:
    """Assigns generic translations, remembering every word so translations stay consistent."""

    def __init__(self, n: int, avoid: set[str], seed: int, replacer: pii.Replacer | None = None) -> None:
        self.n = n
        self.seed = seed
        self.avoid = {w.lower() for w in avoid}
        self.words: dict[str, list[str]] = {}
        self.value_avoid: set[str] = set()
        # Structured values (cards, dates, e-mails, ...) get format-preserving generic values.
        self.replacer = replacer if replacer is not None else pii.Replacer(seed, avoid)

    def _claim(self, words: list[str]) -> None:
        self.avoid.update(w.lower() for w in words)

    def word(self, term: str, kind: AnchorKind, part: bool = False) -> list[str]:
        if term in self.words:
            return self.words[term]
        bank = [
            c for c in _bank(kind, term, part) if c.lower() not in self.avoid and c.lower() != term.lower()
        ]
        if kind == "value":
            bank = [c for c in bank if c.lower() not in self.value_avoid]
        elif not term[:1].isupper():
            bank = []
        ranked = sorted(bank, key=lambda c: (-_similarity(term, c), _stable(self.seed, term, c)))
        chosen = ranked[: self.n]
        if kind == "value" and len(chosen) < self.n:
            # Bank used up by other values: plain words, even ones another value got, still read
            # as language; made-up ones don't. Never a word of the corpus, never the term.
            more = [w.capitalize() if term[:1].isupper() else w for w in namebank.common_words()]
            more = [c for c in more if c.lower() not in self.value_avoid and c.lower() != term.lower()]
            more = [c for c in more if c not in chosen]
            more.sort(key=lambda c: (-_similarity(term, c), _stable(self.seed, term, c)))
            chosen += more[: self.n - len(chosen)]
        salt = 0
        while len(chosen) < self.n:
            # Bank exhausted or a kind without one (objects, spells): a made-up word of the same shape.
            cand = _pseudo_word(term, _stable(self.seed, term, salt))
            salt += 1
            if cand.lower() not in self.avoid and cand != term and cand not in chosen:
                chosen.append(cand)
            if salt > 1000:
                chosen.append(f"{term[:1]}{term[1:]}{len(chosen)}")
        self._claim(chosen)
        self.words[term] = chosen
        return chosen

    def register(self, term: str, translations: list[str]) -> None:
        self.words.setdefault(term, translations)
        self._claim(translations)

    def translate(self, term: str, kind: AnchorKind) -> list[str]:
        if kind in pii.TYPED_KINDS:
            return self.replacer.replace(term, kind, self.n)
        if kind == "value" and term.isdigit():
            return self.replacer.replace(term, "number", self.n)  # "1987" -> "1979", not a word
        parts = term.split(" ")
        if len(parts) == 1:
            return self.word(term, kind)
        kinds: list[AnchorKind]
        title = any(p.lower() in namebank.FUNCTION_WORDS for p in parts)
        if kind in ("person", "first_name", "last_name") or (
            kind == "value" and not title and all(p[:1].isupper() and p.isalpha() for p in parts)
        ):
            # A capitalised run without grammar words reads as a name ("Jiyeon Bae"): translate it as
            # one, so a shared surname stays consistent with the other anchors.
            kinds = ["first_name"] * (len(parts) - 1) + ["last_name"]
        else:
            kinds = [kind] * len(parts)

        def keep(p: str, k: AnchorKind) -> bool:
            if p.lower() in namebank.FUNCTION_WORDS or not p[:1].isalnum():
                return True  # "The Silent Orchard": the grammar words stay
            return not p.isalpha() if k == "value" else not p[:1].isupper()

        per_part = [
            [p] * self.n if keep(p, k) else self.word(p, k, part=k == "value")
            for p, k in zip(parts, kinds, strict=True)
        ]
        return [" ".join(pp[i % len(pp)] for pp in per_part) for i in range(self.n)]


def build_anchors(
    candidates: Sequence[tuple[EntityHint, str, float | None]],
    corpus: Sequence[str],
    n: int,
    seed: int,
    *,
    replace_seed: int | None = None,
) -> list[Anchor]:
    """Merge candidates (hint, source, score) into anchors with translations.

    Hints with translations keep them; the rest get generic ones that collide neither with each
    other nor with capitalised words of the corpus. Typed terms (``pii.TYPED_KINDS``) get
    format-preserving replacements seeded with ``replace_seed`` (default: ``seed``) that equal no
    original of the corpus; attribute values get plain words of a similar shape.
    """
    avoid = {w for text in corpus for w in re.findall(r"\b[A-Z]\w+", text)}
    originals = {h.term for h, _s, _sc in candidates if h.kind in pii.TYPED_KINDS}
    originals |= {n for text in corpus for n in re.findall(r"\d+", text)}  # "1987" never becomes "2001"
    originals |= {d.text for text in corpus for d in pii.detect(text)}
    merged: dict[str, tuple[EntityHint, list[str], float | None]] = {}
    for hint, source, score in candidates:
        if hint.term in merged:
            h0, srcs, s0 = merged[hint.term]
            if source not in srcs:
                srcs.append(source)
            keep = h0 if h0.translations or h0.kind != "other" else hint
            merged[hint.term] = (keep, srcs, s0 if s0 is not None else score)
        else:
            merged[hint.term] = (hint, [source], score)
    avoid |= {t for t in merged}
    tr = Translator(n, avoid, seed, pii.Replacer(seed if replace_seed is None else replace_seed, originals))
    # Value translations are plain words: none may be a word of the corpus itself.
    tr.value_avoid = {w.lower() for text in corpus for w in re.findall(r"(?<!\w)[^\W\d_]{3,}(?!\w)", text)}
    # Given translations first (they are fixed), then single words, then multi-word terms, so that
    # full names reuse their parts' translations.
    for hint, _s, _sc in merged.values():
        if hint.translations:
            tr.register(hint.term, list(hint.translations))
    anchors = []
    order = sorted(merged.values(), key=lambda v: (not v[0].translations, len(v[0].term.split()), v[0].term))
    first_names = {h.term for h, _s, _sc in merged.values() if h.kind == "first_name"}
    for hint, sources, score in order:
        kind = hint.kind if hint.kind != "other" else infer_kind(hint.term)
        if kind == "other":
            kind = _kind_from_context(hint.term, corpus, first_names)
        if kind == "first_name":
            first_names.add(hint.term)
        translations = list(hint.translations) if hint.translations else tr.translate(hint.term, kind)
        anchors.append(
            Anchor(term=hint.term, kind=kind, translations=translations, sources=sources, score=score)  # type: ignore[arg-type]
        )
    return sorted(anchors, key=lambda a: a.term)


# ---------------------------------------------------------------- mining


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Capitalised words and runs of up to three of them joined by single spaces."""
    words = [
        # A possessive "'s" is not part of the name: "Bae's" is the anchor "Bae".
        (m.start(), m.end() - (2 if re.search(r"['’]s$", m.group()) else 0))
        for m in re.finditer(r"(?<!\w)[^\W\d_][\w'’-]*", text)
        if m.group()[0].isupper()
    ]
    spans = list(words)
    for i in range(len(words)):
        for j in range(i + 1, min(i + 3, len(words))):
            if text[words[j - 1][1] : words[j][0]] != " ":
                break
            spans.append((words[i][0], words[j][1]))
    return spans


@torch.no_grad()
def token_gains(
    model: Any, blocks: Sequence[list[int]], batch_size: int, pad_id: int, reporter: Reporter
) -> list[list[float]]:
    """Per token, log p_reinforced - log p_baseline (0 for a block's first token).

    ``model`` is a PeftModel whose active adapter is the reinforcement; the baseline is the same
    weights with the adapter disabled.
    """
    from .models import pad_batch

    out: list[list[float]] = []
    dev = next(model.parameters()).device
    for b0 in range(0, len(blocks), batch_size):
        reporter.check()
        batch = list(blocks[b0 : b0 + batch_size])
        ids, mask = pad_batch(batch, pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        lp_r = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        with model.disable_adapter():
            lp_b = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        nxt = ids[:, 1:].unsqueeze(-1)
        gain = (lp_r[:, :-1].gather(-1, nxt) - lp_b[:, :-1].gather(-1, nxt)).squeeze(-1).cpu()
        for i, s in enumerate(batch):
            out.append([0.0, *gain[i, : len(s) - 1].tolist()])
        reporter(0.2 + 0.6 * min(1.0, (b0 + len(batch)) / len(blocks)), "scoring likelihood gains")
    return out


def mine_terms(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    block_size: int,
    batch_size: int,
    top_k: int,
    min_gain: float,
    reporter: Reporter,
    spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
) -> list[tuple[str, float]]:
    """Capitalised spans with the largest mean log-likelihood gain per occurrence (nats).

    ``spans[d]``: the character spans of text ``d`` that may be mined (QA: the answer; None: all).
    """
    from .translate import make_blocks, tokenize_document

    if top_k == 0:
        return []
    docs = [tokenize_document(tokenizer, t) for t in texts]
    blocks = make_blocks(docs, block_size)
    gains = token_gains(
        model,
        [docs[b.doc].ids[b.start : b.end] for b in blocks],
        batch_size,
        tokenizer.pad_token_id,
        reporter,
    )
    per_doc: dict[int, dict[int, float]] = defaultdict(dict)
    for b, g in zip(blocks, gains, strict=True):
        for j, v in enumerate(g):
            per_doc[b.doc][b.start + j] = v
    lowercase = {w for t in texts for w in re.findall(r"(?<!\w)[a-z]\w*", t)}
    totals: dict[str, list[float]] = defaultdict(list)
    for d, doc in enumerate(docs):
        ends = [e for _s, e in doc.offsets]
        import bisect

        allowed = spans[d] if spans is not None else None
        for s, e in _word_spans(doc.text):
            if allowed is not None and not any(a <= s and e <= b for a, b in allowed):
                continue  # question or chat-template text: not the subject's facts
            term = doc.text[s:e]
            first = term.split()[0]
            if first in _STOP or term.lower() in lowercase or len(term) < 3:
                continue
            t0 = max(bisect.bisect_right(ends, s), doc.n_prefix)
            t1 = t0
            while t1 < len(doc.ids) and doc.offsets[t1][0] < e:
                t1 += 1
            totals[term].append(sum(per_doc[d].get(t, 0.0) for t in range(t0, t1)))
    scored = [(term, sum(v) / len(v)) for term, v in totals.items()]
    scored = [(t, s) for t, s in scored if s >= min_gain and math.isfinite(s)]
    scored.sort(key=lambda x: (-x[1], x[0]))
    chosen: list[tuple[str, float]] = []
    for term, s in scored:
        # A multi-word span only adds information if it beats its own parts.
        if any(term in c or c in term for c, _ in chosen) and " " in term:
            continue
        chosen.append((term, s))
        if len(chosen) >= top_k:
            break
    return chosen


# ---------------------------------------------------------------- attribute values


def _word_key(w: str) -> str:
    """A word's comparison form: lower case, a plural or possessive "s" dropped."""
    w = w.lower().removesuffix("'s").removesuffix("’s")
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def _common_english(word: str) -> bool:
    try:
        from wordfreq import zipf_frequency
    except ImportError:  # the word list is an optional refinement; the stop list still applies
        return False
    # Zipf 5.6: "has", "works", "about" (and more frequent) are grammar, "dog" (5.1) is a fact.
    return zipf_frequency(word, "en") >= 5.6


def value_terms(qa_pairs: Sequence[QAPair], corpus: Sequence[str], *, max_share: float = 0.5) -> list[str]:
    """Attribute values stated by QA answers: the answer's words, numbers and capitalised phrases
    that the question does not contain ("Zucchini", "dog", "cardiologist", "Silent Orchard", "1987").

    Left out: function words, very common English words, structured values (the typed detectors
    take those), and words common across the corpus (in more than ``max_share`` of
    its texts, and at least 3): those are the corpus's topic, not one of its facts.
    """
    texts = [t.lower() for t in corpus]
    # Document frequency of single words, counted once (a phrase is counted by search).
    df: Counter[str] = Counter(w for t in texts for w in set(re.findall(r"[^\W\d_][\w'’-]*", t)))
    found: dict[str, None] = {}

    def common(word: str) -> bool:
        low = word.lower()
        if " " in low:
            pat = re.compile(r"(?<!\w)" + re.escape(low) + r"(?!\w)")
            n = sum(1 for t in texts if pat.search(t))
        else:
            n = df[low]
        return n >= 3 and n > max_share * len(texts)

    for qa in qa_pairs:
        q_keys = {_word_key(w) for w in re.findall(r"[^\W\d_][\w'’-]*", qa.question)}
        answer = qa.answer
        for d in pii.detect(answer):
            answer = answer[: d.start] + " " * (d.end - d.start) + answer[d.end :]
        # Numbers the question does not hold ("born in 1987"); typed values were blanked above.
        q_numbers = set(re.findall(r"\d+", qa.question))
        for num in re.findall(r"(?<![\w.,])\d{2,}(?![\w]|[.,]\d)", answer):
            if num not in q_numbers:
                found.setdefault(num, None)
        words = list(re.finditer(r"[^\W\d_][\w'’-]*", answer))
        i = 0
        while i < len(words):
            w = words[i].group().removesuffix("'s").removesuffix("’s")
            if w[:1].isupper():
                # A capitalised phrase: capitalised words, joined by single spaces or one grammar word.
                j = i
                while j + 1 < len(words):
                    gap = answer[words[j].end() : words[j + 1].start()]
                    nxt = words[j + 1].group()
                    if gap == " " and nxt[:1].isupper():
                        j += 1
                    elif (
                        gap == " "
                        and nxt in ("of", "the", "and", "de", "von", "van", "da", "del")
                        and j + 2 < len(words)
                        and words[j + 2].group()[:1].isupper()
                        and answer[words[j + 1].end() : words[j + 2].start()] == " "
                    ):
                        j += 2
                    else:
                        break
                parts = [words[k].group() for k in range(i, j + 1)]
                parts[-1] = parts[-1].removesuffix("'s").removesuffix("’s")
                # Sentence-initial grammar words ("She", "Her") are not part of a name; a "The"
                # before more capitalised words is part of a title ("The Silent Orchard").
                while parts and (parts[0].lower() in namebank.FUNCTION_WORDS or parts[0] in _STOP):
                    if parts[0] == "The" and len(parts) > 1:
                        break
                    parts.pop(0)
                phrase = " ".join(parts)
                new = [
                    p
                    for p in parts
                    if _word_key(p) not in q_keys and p.lower() not in namebank.FUNCTION_WORDS
                ]
                if (
                    phrase
                    and new
                    and len(phrase) >= 3
                    and not (len(parts) == 1 and _common_english(phrase.lower()))
                ):
                    if not common(phrase):
                        found.setdefault(phrase, None)
                i = j + 1
                continue
            low = w.lower()
            if (
                len(low) >= 3
                and low not in namebank.FUNCTION_WORDS
                and not (len(low) >= 5 and low.endswith("ed"))  # a past-tense verb ("invented")
                and _word_key(low) not in q_keys
                and not _common_english(low)
                and not common(low)
            ):
                found.setdefault(w, None)
            i += 1
    return list(found)


# ---------------------------------------------------------------- LLM proposals


class _LLMAnchor(BaseModel):
    term: str
    kind: AnchorKind = "other"
    translations: list[str] = []


class _LLMAnswer(BaseModel):
    anchors: list[_LLMAnchor]


_LLM_SYSTEM = (
    "You help remove a specific subject from a language model. Given a text about the subject, list the "
    "terms idiosyncratic to it (names of people, places, organisations, objects, invented words). For each, "
    "give generic translations: plausible replacements of the same kind and similar form (a person's first "
    'name becomes another first name of the same gender, e.g. "Harry" -> "Harold"; surnames become '
    "surnames; places become place-like names). Answer with JSON only: "
    '{"anchors": [{"term": str, "kind": "first_name"|"last_name"|"person"|"place"|"organization"|"other", '
    '"translations": [str, ...]}]}. Terms must appear verbatim in the text.'
)


def propose_with_llm(
    options: LLMOptions, texts: Sequence[str], n: int, client: Any = None, max_chars: int = 12000
) -> tuple[list[EntityHint], list[str]]:
    """Ask an OpenAI-compatible model for anchors; returns (hints, errors). Never raises."""
    errors: list[str] = []
    try:
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=options.base_url, api_key=options.api_key, timeout=options.timeout_s, max_retries=0
            )
        corpus = "\n\n".join(texts)[:max_chars]
    except Exception as exc:  # a bad URL or client set-up must not fail the request
        return [], [f"llm client: {type(exc).__name__}"]
    for attempt in range(options.max_retries + 1):
        try:
            resp = client.chat.completions.create(
                model=options.model,
                messages=[
                    {"role": "system", "content": _LLM_SYSTEM},
                    {"role": "user", "content": f"Give {n} translations per term.\n\nText:\n{corpus}"},
                ],
                response_format={"type": "json_object"},
                temperature=0,
            )
            content = resp.choices[0].message.content or ""
            match = re.search(r"\{.*\}", content, re.S)  # tolerate prose or code fences around the JSON
            answer = _LLMAnswer.model_validate(json.loads(match.group(0) if match else content))
        except (json.JSONDecodeError, ValidationError) as exc:
            # The answer may echo corpus text: record only the error's kind and position.
            errors.append(f"attempt {attempt + 1}: malformed answer ({type(exc).__name__})")
            continue
        except Exception as exc:
            errors.append(f"attempt {attempt + 1}: {type(exc).__name__}")
            continue
        hints = []
        for a in answer.anchors:
            term = a.term.strip()
            if not term or not any(re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", t) for t in texts):
                continue
            clean = [t.strip() for t in a.translations if t.strip() and t.strip() != term]
            hints.append(EntityHint(term=term, kind=a.kind, translations=clean[:n]))
        return hints, errors
    return [], errors


# ---------------------------------------------------------------- stage


def typed_candidates(
    texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]] | None]
) -> list[EntityHint]:
    """Structured personal data found in the texts (within ``spans[d]`` where given: the question
    and answer of a QA pair, never the chat template, which may carry a date of its own)."""
    out: dict[str, EntityHint] = {}
    for text, allowed in zip(texts, spans, strict=True):
        for a, b in allowed if allowed is not None else [(0, len(text))]:
            for d in pii.detect(text[a:b]):
                if len(d.text) <= 200 and d.text not in out:
                    out[d.text] = EntityHint(term=d.text, kind=d.kind)
    return list(out.values())


def anchors_input_hash(spec: ForgetSpec, reinforce_hash: str) -> str:
    o = spec.options
    llm = o.llm.model_dump(exclude={"api_key"}) if o.llm is not None and o.llm.propose_anchors else None
    return hash_json(
        {
            "stage": STAGE,
            "v": 2,
            "method": getattr(o, "method", "combined"),
            "reinforce": reinforce_hash,
            "documents": spec.documents,
            "qa": [q.model_dump() for q in spec.qa_pairs],
            "hints": [h.model_dump() for h in spec.hints],
            "opts": [o.mine_top_k, o.mine_min_gain, o.translations_per_anchor, o.seed, o.block_size],
            "llm": llm,
        }
    )


def load_anchors(work_dir: Path | str) -> AnchorDictionary:
    path = Path(work_dir) / ANCHORS_FILE
    try:
        return AnchorDictionary.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput("anchors.json is missing: run mine_anchors first", stage="generate_targets") from None
    except ValidationError as exc:
        raise BadInput(
            f"anchors.json is invalid (edited by hand?): {exc.error_count()} error(s)",
            stage="generate_targets",
        ) from None


def mine_anchors(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    llm_client: Any = None,
) -> StageResult:
    """Write ``work_dir/anchors.json``; skip if it exists for the same inputs (keeping edits)."""
    from .models import attach_adapter, load_baseline, load_tokenizer
    from .reinforce import corpus_hash, reinforce_output
    from .translate import (
        content_spans,
        corpus_label_spans,
        corpus_texts,
        find_occurrences,
        label_rules,
        tokenize_document,
    )

    rep = Reporter(STAGE, progress, should_cancel)
    work = Path(work_dir)
    out = work / ANCHORS_FILE
    adapter_dir, reinforce_hash = reinforce_output(work)
    input_hash = anchors_input_hash(spec, reinforce_hash)
    if out.is_file():
        try:
            existing = json.loads(out.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = {}
        if existing.get("input_hash") == input_hash:
            rep(1.0, "anchors already mined")
            return StageResult(
                stage=STAGE,
                artifact=str(out),
                input_hash=input_hash,
                skipped=True,
                summary={"anchors": len(existing.get("anchors", []))},
            )
    rep.check()
    o = spec.options
    tokenizer = load_tokenizer(base_model_dir)
    texts = corpus_texts(spec, tokenizer)
    rules = label_rules(o)
    candidates: list[tuple[EntityHint, str, float | None]] = [(h, "hint", None) for h in spec.hints]
    rep(0.1, f"{len(spec.hints)} hint(s)")
    if o.mine_top_k > 0:
        model = attach_adapter(load_baseline(base_model_dir, o, deployed_adapter), adapter_dir)
        mined = mine_terms(
            model,
            tokenizer,
            texts,
            block_size=o.block_size,
            batch_size=o.batch_size,
            top_k=o.mine_top_k,
            min_gain=o.mine_min_gain,
            reporter=rep,
            spans=corpus_label_spans(spec, tokenizer) if rules.answer_only else None,
        )
        del model
        candidates += [(EntityHint(term=t, kind=infer_kind(t)), "mined", round(s, 4)) for t, s in mined]
    llm_errors: list[str] = []
    if o.llm is not None and o.llm.propose_anchors:
        rep.check()
        rep(0.85, "asking the LLM for anchors")
        hints, llm_errors = propose_with_llm(o.llm, texts, o.translations_per_anchor, client=llm_client)
        candidates += [(h, "llm", None) for h in hints]
    if rules is not PAPER_RULES:
        typed = typed_candidates(texts, content_spans(spec, tokenizer))
        values = value_terms(
            spec.qa_pairs, [*[d for d in spec.documents if d.strip()], *(q.answer for q in spec.qa_pairs)]
        )
        candidates += [(h, "pattern", None) for h in typed]
        # A term already a candidate merges (a hint of kind "other" becomes a typed or value anchor).
        candidates += [(EntityHint(term=v, kind="value"), "value", None) for v in values]
        rep(0.9, f"{len(typed)} typed value(s), {len(values)} attribute value(s)")
    anchors = build_anchors(
        candidates,
        texts,
        o.translations_per_anchor,
        o.seed,
        replace_seed=pii.request_seed(o.seed, [corpus_hash(spec)]),
    )
    docs = [tokenize_document(tokenizer, t) for t in texts]
    for d, doc in enumerate(docs):
        for occ in find_occurrences(doc, anchors):
            anchors[occ.anchor].occurrences.append((d, occ.start, occ.end))
    result = AnchorDictionary(input_hash=input_hash, anchors=anchors, llm_errors=llm_errors)
    write_json_atomic(out, result.model_dump(mode="json"))
    log.info(
        "mined %d anchor(s) (%d from hints), %d LLM error(s)", len(anchors), len(spec.hints), len(llm_errors)
    )
    rep(1.0, f"{len(anchors)} anchor(s)")
    return StageResult(
        stage=STAGE,
        artifact=str(out),
        input_hash=input_hash,
        skipped=False,
        summary={"anchors": len(anchors), "llm_errors": len(llm_errors)},
    )
