"""Broken-text detection for answers about a forgotten subject.

An answer is *broken* when any of these holds:

- **repetition**: a word repeated three times in a row, a character run of five or more
  ("yyyyy"), or more than a third of its word 3-grams repeated ("born in the born in the ...");
- **non-words**: more than a quarter of its lower-case words are neither English words
  (``wordfreq``) nor words of the request, the prompt or the model's normal answers;
- **empty**: nothing but punctuation;
- **perplexity**: the unmodified model finds it far less likely than its own normal answers to the
  same prompts (per-token perplexity ratio above ``ppl_ratio``; measured in ``evaluate``).

A plain abstention ("I don't know.") is fluent by definition (forgetting.md, the promise, item 2),
whatever the perplexity of the unmodified model, which may never have said one.
Pure Python; the perplexity numbers come from the evaluation stage.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from .leaks import normalise, words

#: Abstentions the unlearning objective teaches (``answer_target="idk"``) and the checker accepts.
ABSTENTIONS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I don't have any information about that.",
)
MAX_NONWORD_RATE = 0.25
MAX_REPEATED_TRIGRAMS = 1 / 3
DEFAULT_PPL_RATIO = 8.0


@lru_cache(maxsize=65536)
def _english(word: str) -> bool:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en") > 0


def is_abstention(answer: str) -> bool:
    text = normalise(answer).rstrip(".! ")
    return any(text == normalise(a).rstrip(".! ") for a in ABSTENTIONS)


@dataclass(frozen=True)
class Fluency:
    broken: bool
    repetition: bool
    nonword_rate: float
    empty: bool
    ppl_ratio: float | None = None
    abstention: bool = False


def repetitive(answer: str) -> bool:
    if re.search(r"(\w)\1{4,}", answer):
        return True
    ws = words(answer)
    if any(ws[i] == ws[i + 1] == ws[i + 2] for i in range(len(ws) - 2)):
        return True
    grams = [tuple(ws[i : i + 3]) for i in range(len(ws) - 2)]
    if len(grams) < 3:
        return False
    repeated = sum(c for c in Counter(grams).values() if c > 1)
    return repeated / len(grams) > MAX_REPEATED_TRIGRAMS


def nonword_rate(answer: str, vocabulary: Iterable[str] = ()) -> float:
    """Share of lower-case alphabetic words that are neither English nor in ``vocabulary``. Typed
    values (``pii.detect``: e-mail addresses, handles, URLs ...) are values, not words: left out."""
    from .pii import detect

    known = set(vocabulary)
    for d in reversed(detect(answer)):
        answer = answer[: d.start] + " " + answer[d.end :]
    raw = re.findall(r"[^\W\d_]+", answer)
    lower = [w for w in raw if w[:1].islower()]  # capitalised words are names: not judged here
    if not lower:
        return 0.0
    bad = sum(1 for w in lower if w.casefold() not in known and not _english(w.casefold()))
    return bad / len(lower)


def assess(
    answer: str,
    vocabulary: Iterable[str] = (),
    ppl_ratio: float | None = None,
    max_ppl_ratio: float = DEFAULT_PPL_RATIO,
) -> Fluency:
    """Judge one answer; ``vocabulary``: lower-cased words known to be fine (corpus, prompt)."""
    if is_abstention(answer):
        return Fluency(False, False, 0.0, False, ppl_ratio, abstention=True)
    empty = not words(answer)
    rep = repetitive(answer)
    rate = nonword_rate(answer, vocabulary)
    high_ppl = ppl_ratio is not None and ppl_ratio > max_ppl_ratio
    return Fluency(empty or rep or rate > MAX_NONWORD_RATE or high_ppl, rep, rate, empty, ppl_ratio)


def vocabulary_of(texts: Iterable[str]) -> set[str]:
    return {w for t in texts for w in words(t)}
