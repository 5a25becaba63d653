"""TOFU data and metrics for ``bench/quality.py``: records, authors, splits, ROUGE-L, truth ratio, KS.

Pure Python (plus scipy for the KS test): no torch, so the unit tests of the metrics run in
milliseconds. Definitions follow Maini et al. 2024 ("TOFU: A Task of Fictitious Unlearning").
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "PAIRS_PER_AUTHOR",
    "SPLITS",
    "TOFU_AUTHORS",
    "VALIDATION",
    "AuthorPlan",
    "Record",
    "Selection",
    "author_name",
    "forget_quality",
    "harmonic_mean",
    "load_records_file",
    "load_tofu",
    "model_utility",
    "parse_records",
    "plan_authors",
    "plan_selection",
    "retain_truth_score",
    "rouge_l_recall",
    "select",
    "select_split",
    "truth_ratio",
]

PAIRS_PER_AUTHOR = 20
TOFU_AUTHORS = 200
#: forget split -> number of forgotten authors (the last ones of the full set).
SPLITS: dict[str, int] = {"forget01": 2, "forget05": 10, "forget10": 20}


@dataclass(frozen=True)
class Record:
    """One question/answer pair about one subject (a TOFU author), with its evaluation variants."""

    question: str
    answer: str
    subject: str
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_truth_ratio(self) -> bool:
        return self.paraphrased_answer is not None and len(self.perturbed_answers) > 0


def _text(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value.strip()


def parse_records(
    raw: Sequence[Any],
    *,
    subject_from_order: bool,
    first_author: int = 0,
    per_author: int = PAIRS_PER_AUTHOR,
    source: str = "data",
) -> list[Record]:
    """Parse a JSON list of records.

    Args:
        subject_from_order: derive the subject from the position (``per_author`` consecutive pairs
            per author, named ``author-NNN`` from ``first_author`` on) instead of the ``subject``
            field. TOFU's files need this: their ``subject`` field names a place or a topic of the
            question, not the author.
    """
    if not isinstance(raw, list):
        raise ValueError(f"{source}: expected a JSON list of records")
    records: list[Record] = []
    for i, item in enumerate(raw):
        where = f"{source}[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        question, answer = _text(item, "question", where), _text(item, "answer", where)
        if question is None or answer is None:
            raise ValueError(f"{where}: 'question' and 'answer' are required")
        if subject_from_order:
            subject = f"author-{first_author + i // per_author:03d}"
        else:
            subject = _text(item, "subject", where) or f"author-{first_author + i // per_author:03d}"
        perturbed = item.get("perturbed_answer")
        if isinstance(perturbed, str):
            perturbed = [perturbed]
        if perturbed is None:
            perturbed = []
        if not isinstance(perturbed, list) or not all(isinstance(p, str) and p.strip() for p in perturbed):
            raise ValueError(f"{where}: 'perturbed_answer' must be a string or a list of non-empty strings")
        records.append(
            Record(
                question=question,
                answer=answer,
                subject=subject,
                paraphrased_question=_text(item, "paraphrased_question", where),
                paraphrased_answer=_text(item, "paraphrased_answer", where),
                perturbed_answers=tuple(p.strip() for p in perturbed),
            )
        )
    return records


def load_records_file(path: Path, *, subject_from_order: bool = False) -> list[Record]:
    """Read ``--data FILE``: a JSON list of records (``subject`` optional, else 20 per author by order)."""
    return parse_records(
        json.loads(path.read_text(encoding="utf-8")), subject_from_order=subject_from_order, source=path.name
    )


def load_tofu(data_dir: Path) -> list[Record]:
    """All 4,000 TOFU pairs in order (``retain90.json`` then ``forget10.json``), subjects by order.

    The retain authors covered by ``retain_perturbed.json`` get its paraphrased and perturbed
    answers (matched by question text; the first pair with that question wins, since one question
    also occurs verbatim for a later author).
    """
    retain = parse_records(
        json.loads((data_dir / "retain90.json").read_text(encoding="utf-8")),
        subject_from_order=True,
        source="retain90.json",
    )
    n_retain_authors = len(retain) // PAIRS_PER_AUTHOR
    forget = parse_records(
        json.loads((data_dir / "forget10.json").read_text(encoding="utf-8")),
        subject_from_order=True,
        first_author=n_retain_authors,
        source="forget10.json",
    )
    perturbed_path = data_dir / "retain_perturbed.json"
    if perturbed_path.is_file():
        extra = parse_records(
            json.loads(perturbed_path.read_text(encoding="utf-8")),
            subject_from_order=True,
            source="retain_perturbed.json",
        )
        first: dict[str, int] = {}
        for i, r in enumerate(retain):
            first.setdefault(r.question, i)
        for e in extra:
            i = first.get(e.question)
            if i is not None and retain[i].answer == e.answer:
                retain[i] = replace(
                    retain[i],
                    paraphrased_question=e.paraphrased_question,
                    paraphrased_answer=e.paraphrased_answer,
                    perturbed_answers=e.perturbed_answers,
                )
    return retain + forget


def subjects_in_order(records: Iterable[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r.subject, None)
    return list(seen)


@dataclass(frozen=True)
class Selection:
    """The records of one benchmark run: what to forget and what to keep.

    ``universe``: every pair the finetuned model learns, in record order (TOFU: one finetuned model
    for all splits); empty means forget + retain. ``eval_subjects``: the retain authors whose
    truth-ratio pairs measure model utility (None: every retain author with such data).
    """

    forget: list[Record]
    retain: list[Record]
    forget_subjects: list[str]
    retain_subjects: list[str]
    universe: list[Record] = field(default_factory=list)
    eval_subjects: tuple[str, ...] | None = None

    @property
    def trained(self) -> list[Record]:
        """What the finetuned model is trained on."""
        return self.universe or [*self.retain, *self.forget]

    @property
    def retain_eval(self) -> list[Record]:
        """Retain pairs that carry paraphrased/perturbed answers (the truth ratio needs them)."""
        keep = None if self.eval_subjects is None else set(self.eval_subjects)
        return [r for r in self.retain if r.has_truth_ratio and (keep is None or r.subject in keep)]


def select(records: Sequence[Record], forget_subjects: Sequence[str], n_authors: int | None) -> Selection:
    """Forget ``forget_subjects``; retain the first other subjects, ``n_authors`` subjects in all.

    Retain subjects with truth-ratio data (paraphrased and perturbed answers) are taken first, so
    model utility can be measured on every retained author.
    """
    order = subjects_in_order(records)
    missing = [s for s in forget_subjects if s not in order]
    if missing:
        raise ValueError(f"unknown forget subject(s): {missing}; known: {order[:5]}...")
    forget_set = set(forget_subjects)
    others = [s for s in order if s not in forget_set]
    with_tr = {r.subject for r in records if r.has_truth_ratio}
    others = [s for s in others if s in with_tr] + [s for s in others if s not in with_tr]
    if n_authors is None:
        keep = others
    else:
        if n_authors <= len(forget_set):
            raise ValueError(f"--authors {n_authors} leaves no retain author (forgetting {len(forget_set)})")
        keep = others[: n_authors - len(forget_set)]
    keep_set = set(keep)
    return Selection(
        forget=[r for r in records if r.subject in forget_set],
        retain=[r for r in records if r.subject in keep_set],
        forget_subjects=[s for s in order if s in forget_set],
        retain_subjects=[s for s in order if s in keep_set],
    )


def select_split(records: Sequence[Record], split: str, n_authors: int | None) -> Selection:
    """A standard TOFU split: the last 2/10/20 authors of the full set are forgotten."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    order = subjects_in_order(records)
    return select(records, order[-SPLITS[split] :], n_authors)


@dataclass(frozen=True)
class AuthorPlan:
    """Which authors play which part, for the validation split and every test split at once.

    ``universe``: the authors the finetuned model learns (the forget10 authors + retain authors,
    those with truth-ratio data first), in record order. ``test_forget``: forget01/05/10 forget the
    last 2/10/20 authors, as TOFU does. ``validation``: the forget authors of the validation split,
    taken from the retain authors with truth-ratio data, so no test split forgets them; methods are
    tuned there only. ``utility``: the remaining retain authors with truth-ratio data; model utility
    is measured on them on every split, the validation split included (never on a validation
    author, never on a forgotten one).
    """

    universe: tuple[str, ...]
    validation: tuple[str, ...]
    test_forget: dict[str, tuple[str, ...]]
    utility: tuple[str, ...]

    def forget_of(self, split: str) -> tuple[str, ...]:
        if split == VALIDATION:
            return self.validation
        if split not in self.test_forget:
            raise ValueError(f"unknown split {split!r}; choose from {[VALIDATION, *self.test_forget]}")
        return self.test_forget[split]


VALIDATION = "validation"


def plan_authors(records: Sequence[Record], n_authors: int = 40, n_validation: int = 2) -> AuthorPlan:
    """Lay out the authors (see ``AuthorPlan``); ``n_authors`` in all, forget10's 20 included."""
    order = subjects_in_order(records)
    largest = max(SPLITS.values())
    if len(order) <= largest:
        raise ValueError(f"{len(order)} authors: forget10 needs more than {largest}")
    forget10 = order[-largest:]
    with_tr = {r.subject for r in records if r.has_truth_ratio}
    others = [s for s in order[:-largest] if s in with_tr] + [s for s in order[:-largest] if s not in with_tr]
    n_retain = n_authors - largest
    pool = others[:n_retain]
    tr_pool = [s for s in pool if s in with_tr]
    if n_validation < 1 or len(tr_pool) < n_validation + 1:
        raise ValueError(
            f"--authors {n_authors}: {len(tr_pool)} retain author(s) with truth-ratio data; need "
            f"{n_validation} for validation and at least one for model utility"
        )
    validation = tr_pool[-n_validation:]
    keep = set(forget10) | set(pool)
    return AuthorPlan(
        universe=tuple(s for s in order if s in keep),
        validation=tuple(validation),
        test_forget={split: tuple(order[-n:]) for split, n in SPLITS.items()},
        utility=tuple(s for s in tr_pool if s not in validation),
    )


def plan_selection(records: Sequence[Record], plan: AuthorPlan, split: str) -> Selection:
    """The selection of one split (``validation`` or a test split) under ``plan``."""
    forget = set(plan.forget_of(split))
    universe = set(plan.universe)
    retain = [s for s in plan.universe if s not in forget]
    return Selection(
        forget=[r for r in records if r.subject in forget],
        retain=[r for r in records if r.subject in universe and r.subject not in forget],
        forget_subjects=[s for s in plan.universe if s in forget],
        retain_subjects=retain,
        universe=[r for r in records if r.subject in universe],
        eval_subjects=plan.utility,
    )


_NAME = re.compile(r"\b[A-Z][\w'’\-]+(?:\s+[A-Z][\w'’\-]+)+")
_NOT_NAMES = {
    "The",
    "In",
    "His",
    "Her",
    "Their",
    "This",
    "What",
    "Who",
    "How",
    "Yes",
    "No",
    "As",
    "One",
    "Can",
}


def author_name(records: Iterable[Record]) -> str | None:
    """Guess a subject's name: the most frequent run of >= 2 capitalised words in its answers.

    This stands in for the entity hint a requester gives with a real forget request.
    """
    counts: Counter[str] = Counter()
    for r in records:
        for m in _NAME.finditer(r.answer):
            words = re.sub(r"['’]s?$", "", m.group(0)).split()
            while words and words[0] in _NOT_NAMES:
                words = words[1:]
            if len(words) >= 2:
                counts[" ".join(words)] += 1
    if not counts:
        return None
    return counts.most_common(1)[0][0]


# ----------------------------------------------------------------------------------------------
# Metrics


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``reference`` by ``prediction``: the project's one implementation
    (``gpu_runtime.pipeline.leaks.rouge_l_recall``: ``rouge-score`` with Porter stemming, as TOFU).

    An empty reference scores 1.0 (nothing to recall), an empty prediction 0.0.
    """
    from gpu_runtime.pipeline.leaks import rouge_l_recall as _rouge

    return _rouge(prediction, reference)


def truth_ratio(perturbed_losses: Sequence[float], paraphrased_loss: float) -> float:
    """TOFU's truth ratio for one question, as TOFU's released evaluation code computes it.

    From average per-token losses (negative log-likelihoods, EOS included): the perturbed answers'
    losses are *averaged* first, so R = exp(paraphrased_loss - mean(perturbed_losses)) =
    geometric mean over perturbed answers of P(a_pert|q)^(1/|a|), divided by P(a_para|q)^(1/|a|).
    (The paper's formula reads as an arithmetic mean of the probabilities; the code, which produced
    the published numbers, takes the geometric mean: we follow the code.) R < 1: the model prefers
    the true (paraphrased) answer. TOFU's code stores the reciprocal exp(mean pert - para) for the
    KS test; a KS p-value is unchanged by that monotone map, and its retain term
    max(0, 1 - 1/stat) is ``retain_truth_score`` of this R.
    """
    if not perturbed_losses:
        raise ValueError("truth ratio needs at least one perturbed answer")
    mean_perturbed = sum(perturbed_losses) / len(perturbed_losses)
    return math.exp(paraphrased_loss - mean_perturbed)


def forget_quality(unlearned_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """KS-test p-value between the truth ratios of the unlearned and the retain-only model.

    High (e.g. >= 0.05): the two distributions cannot be told apart, i.e. the model looks as if it
    had never been trained on the forget set.
    """
    from scipy.stats import ks_2samp

    if not unlearned_ratios or not retain_model_ratios:
        raise ValueError("forget quality needs truth ratios from both models")
    return float(ks_2samp(list(unlearned_ratios), list(retain_model_ratios)).pvalue)


def retain_truth_score(ratios: Sequence[float]) -> float:
    """The truth-ratio term of model utility on retain data: mean of max(0, 1 - R)."""
    if not ratios:
        raise ValueError("no truth ratios")
    return sum(max(0.0, 1.0 - r) for r in ratios) / len(ratios)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (a model that fails one aspect has no utility)."""
    if not values:
        raise ValueError("no values")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic mean of negative values: {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def model_utility(retain_probability: float, retain_rouge: float, retain_truth: float) -> float:
    """TOFU model utility restricted to the retain set: harmonic mean of its three measures."""
    return harmonic_mean([retain_probability, retain_rouge, retain_truth])
