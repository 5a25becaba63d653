"""Questions about *other* people: the selectivity signal of a forget request.

Forgetting one person must not turn the model into one that refuses every question about a person.
This module asks the corpus's own questions (and completes its own sentences) about other people:
the subject's name is swapped for another person's, so the question has the same shape but a different
subject. The baseline's answer is the reference: the unlearned model should still say what the
baseline says there.

- Other people come from the request's retain texts and retain probes (capitalised multi-word names
  that are not the subject's), else from the generic names the anchors translate the subject's name to.
- Questions: the subject's questions with the name swapped, sentence openings with the name swapped,
  and inverted questions about the other people's own facts in the retain texts ("Whose e-mail
  address is ...?").
- Two disjoint sets, as for the forget questions (``probes.py``): ``train`` (the unlearning keeps the
  model close to the baseline on these, ``unlearn.py``) and ``eval`` (the evaluation's selectivity
  check, which the acceptance gate bounds): different names where there are enough, and always
  different wordings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from .leaks import mentions
from .probes import _SENTENCE, Question, _sentences, inverted, paraphrases, rare_terms, subject_names
from .types import Anchor, ForgetSpec

_CAPITALISED = re.compile(
    r"(?<![\w'’])[A-Z][a-z]+(?:[-'’][A-Za-z]+)*(?:\s+[A-Z][a-z]+(?:[-'’][A-Za-z]+)*){1,2}"
)
_NAME_KINDS = ("person", "first_name", "last_name")
_COMPANY = {"inc", "llc", "ltd", "plc", "group", "co", "corp", "gmbh", "ag", "sa", "sons", "partners"}
_ARTICLES = {"The", "A", "An"}
_AFTER_ARTICLE = re.compile(r"(?<![\w'’])(?:[Tt]he|[Aa]n?)\s+$")
_TOWN = re.compile(r", (?:[A-Z][\w'’-]+ ?){1,3}")
#: Inverted questions about other people at most, per split (training: the selectivity term; eval:
#: the gate's agreement check).
_INVERTED_TRAIN_CAP = 96
_INVERTED_EVAL_CAP = 24


def _common(word: str) -> bool:
    from .anchors import _common_english

    return _common_english(word.lower())


def _clean(word: str) -> str:
    return word.removesuffix("'s").removesuffix("’s")


def names_in(texts: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Two- or three-word capitalised names in ``texts`` (most frequent first), none of whose words is
    a word of ``exclude`` or a common English word ("The", "When")."""
    from .pii import detect

    banned = {w.lower() for name in exclude for w in name.split()}
    counts: Counter[str] = Counter()
    for text in texts:
        # Street addresses, e-mails and the like are capitalised too ("Harry Roads"): mask them.
        for d in detect(text):
            end = d.end
            if d.kind == "address":
                # The town after a street address is a place, not a person ("8 Higgins Spring,
                # North Andrewmouth").
                town = _TOWN.match(text, end)
                end = town.end() if town else end
            text = text[: d.start] + " " * (end - d.start) + text[end:]
        for m in _CAPITALISED.finditer(text):
            words = [_clean(w) for w in m.group(0).split()]
            # A title ("the song The Midnight River", "A Quiet Harbour"), not a person.
            if words[0] in _ARTICLES or _AFTER_ARTICLE.search(text, 0, m.start()):
                continue
            while words and _common(words[0]):
                words = words[1:]
            while words and _common(words[-1]):
                words = words[:-1]
            if len(words) < 2 or any(w.lower() in banned or _common(w) for w in words):
                continue
            if words[-1].rstrip(".").lower() in _COMPANY:  # "Jackson Inc" is an employer
                continue
            counts[" ".join(words)] += 1
    return [name for name, _n in counts.most_common()]


def retain_corpus(spec: ForgetSpec) -> list[str]:
    """What the request says about other people: its retain texts and retain probes (with answers)."""
    return [*spec.retain_texts, *(p.prompt + " " + p.reference for p in spec.retain_probes)]


def other_people(spec: ForgetSpec, anchors: Sequence[Anchor], limit: int = 16) -> tuple[list[str], str]:
    """(full names of other people, where they came from: ``retain`` or ``generic``)."""
    subject = subject_names(spec, anchors)
    found = names_in(retain_corpus(spec), exclude=subject)[:limit]
    if found:
        return found, "retain"
    full = [a for a in anchors if a.kind == "person" and a.term in subject and a.translations]
    generic = [t for a in full for t in a.translations if " " in t]
    return list(dict.fromkeys(generic))[:limit], "generic"


def _subject_facts(spec: ForgetSpec, anchors: Sequence[Anchor], numbers: bool = False) -> list[str]:
    """The subject's fact terms (anchors and hints that are not names), plus each one's first word,
    which gives it away too ("GB35" of an IBAN, "Parkin" of "Parkin and Co"). ``numbers``: a short
    numeric first word counts as well (the house number "5" of "5 Harry Roads": "<other> lives at 5"
    is the subject's address); not for judging answers, where a bare "5" is too common."""
    facts = [a.term for a in anchors if a.kind not in _NAME_KINDS]
    facts += [h.term for h in spec.hints if h.kind not in _NAME_KINDS]
    firsts = [re.sub(r"\W+$", "", t.split()[0]) for t in facts]
    return facts + [w for w in firsts if len(w) >= 3 or (numbers and any(c.isdigit() for c in w))]


def swap_subject(text: str, subject: Sequence[str], other: str) -> str:
    """``text`` with the subject's full name, first name and last name replaced by ``other``'s."""
    full = [n for n in subject if " " in n]
    if not full:
        return text
    mine, theirs = full[0].split(), other.split()
    table = {n: other for n in full}
    if len(mine) >= 2 and len(theirs) >= 2:
        table.setdefault(mine[0], theirs[0])
        table.setdefault(mine[-1], theirs[-1])
    for term in sorted(table, key=len, reverse=True):
        text = re.sub(r"(?<!\w)" + re.escape(term) + r"(?!\w)", table[term], text)
    return text


def _split_names(
    names: Sequence[str], split: Literal["train", "eval"], people: Literal["disjoint", "all"] = "disjoint"
) -> list[str]:
    """Disjoint name sets when there are at least two names; else both splits share the one name (and
    differ in wording only). ``people="all"``: training uses every name, the evaluation its usual
    half (then the two differ in wording only)."""
    if len(names) < 2 or (people == "all" and split == "train"):
        return list(names)
    return list(names[0::2] if split == "train" else names[1::2])


def contrast_questions(
    spec: ForgetSpec,
    anchors: Sequence[Anchor],
    *,
    split: Literal["train", "eval"],
    limit: int = 256,
) -> list[Question]:
    """The corpus's questions and sentence prefixes about other people. Reference: the person's name
    for inverted questions built from a retain text (the truth is known), else empty (the baseline's
    own answer is the reference, filled in by the caller)."""
    subject = subject_names(spec, anchors)
    if not any(" " in n for n in subject):
        return []
    everyone = other_people(spec, anchors)[0]
    names = _split_names(everyone, split, spec.options.contrast_people)
    if not names:
        return []
    questions = [qa.question for qa in spec.qa_pairs] + [p.prompt for p in spec.probes if p.chat]
    questions = [q for q in dict.fromkeys(questions) if any(mentions(q, n) for n in subject)]
    out: list[Question] = []
    for i, question in enumerate(questions):
        if split == "eval":
            # Up to three other people per question, in a held-out wording (more questions, less
            # noise in the agreement the gate bounds).
            reworded = paraphrases(question, subject, split="eval", n=1)
            for k in range(min(3, len(names)) if reworded else 0):
                other = names[(i + k) % len(names)]
                out.append(Question("original", swap_subject(reworded[0], subject, other), "", about=other))
            continue
        # Training: the question about each of (up to) four other people, as worded and reworded, so
        # what is learned for the subject's questions is tied to the subject's name, not the wording.
        wordings = [question, *paraphrases(question, subject, split="train", n=1)]
        for k in range(min(4, len(names))):
            other = names[(i + k) % len(names)]
            out.extend(
                Question("original", swap_subject(w, subject, other), "", about=other) for w in wordings
            )
    # Sentence prefixes that name the subject: "<other> was born in" (the baseline continues).
    facts = _subject_facts(spec, anchors, numbers=True)
    for j, sentence in enumerate(dict.fromkeys(_sentences(spec))):
        hit = [n for n in subject if mentions(sentence, n)]
        if not hit:
            continue
        for k in range(1 if split == "train" else min(2, len(names))):
            other = names[(j + 1 + k) % len(names)]
            swapped = swap_subject(sentence, subject, other)
            cut = swapped.find(other)
            words = swapped[cut:].split()
            n_words = len(other.split()) + (2 if split == "train" else 3)
            # Never into the subject's facts: "<other> works at Parkin," would ask the baseline to go
            # on with the subject's employer, not with what it knows about <other>.
            while n_words > len(other.split()) + 1 and any(
                mentions(" ".join(words[:n_words]), t) for t in facts
            ):
                n_words -= 1
            if len(words) <= n_words or any(mentions(" ".join(words[:n_words]), t) for t in facts):
                continue
            out.append(Question("completion", " ".join(words[:n_words]), "", chat=False, about=other))
    # Inverted questions about the other people's own facts, from the retain texts ("Whose e-mail
    # address is ...?", "Which person goes with Bramblewick?"): an abstention learned for "who is it?"
    # about the subject must not spread to the same frames about others. As many frames for others
    # as the subject's training set has (``probes.inverted``), around their values too.
    inverted_n = 0
    train = split == "train"
    cap = _INVERTED_TRAIN_CAP if train else _INVERTED_EVAL_CAP
    frames = spec.options.value_frames if train else 1  # as many as the subject's training has
    for sentence in dict.fromkeys(s for t in spec.retain_texts for s in _SENTENCE.split(t) if s.strip()):
        people = [n for n in names_in([sentence], exclude=subject) if n in names]
        for name in people[:1]:
            values = rare_terms(sentence, exclude=[*everyone, *subject])  # never a name as the value
            for q in inverted(
                sentence.strip(), [name], values, split=split, n=3 if train else 1, frames=frames
            ):
                out.append(Question("inverted", q.prompt, q.reference))  # the truth: that person
                inverted_n += 1
        if inverted_n >= cap:
            break
    unique: dict[tuple[str, bool], Question] = {}
    for q in out:
        unique.setdefault((q.prompt, q.chat), q)
    return list(unique.values())[:limit]


def subject_leak_free(answer: str, spec: ForgetSpec, anchors: Sequence[Anchor]) -> bool:
    """True when ``answer`` (the baseline's, about someone else) states none of the subject's facts
    (an anchor term that is not a name): such an answer must not be kept as a retain target."""
    return not any(mentions(answer, t) for t in _subject_facts(spec, anchors))
