"""Answers per task kind: validation, majority (with agreement) and control-task scoring.

Pure functions, no database. Kinds and the answer each expects::

    anchor      {"anchors": [{"term", "kind", "translations": [..]}, ...]}   the corrected dictionary
    target      {"verdict": "ok" | "reject" | "fix", "replacement": str}      a low-confidence block
    evaluation  {"label": "leaks" | "generic" | "unsure", "note": str}        one probe's completion
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from service.core.errors import Unprocessable

ANCHOR: Final = "anchor"
TARGET: Final = "target"
EVALUATION: Final = "evaluation"
KINDS: Final[tuple[str, ...]] = (ANCHOR, TARGET, EVALUATION)

#: The gate each kind of task belongs to.
GATE_KIND: Final[dict[str, str]] = {
    "anchor_review": ANCHOR,
    "target_review": TARGET,
    "evaluation_review": EVALUATION,
}

ANCHOR_KINDS: Final = (
    "first_name", "last_name", "person", "place", "organization", "other",
    # structured personal data and attribute values (the pipeline's typed and value anchors)
    "email", "phone", "card", "account", "iban", "date", "url", "handle", "address", "value",
)  # fmt: skip
VERDICTS: Final = ("ok", "reject", "fix")
LABELS: Final = ("leaks", "generic", "unsure")
MAX_TERM = 200
MAX_TRANSLATIONS = 10
MAX_ANCHORS = 500
MAX_TEXT = 20_000

#: What an answer holds, per kind: the "expected output fields" of an export.
OUTPUT_FIELDS: Final[dict[str, dict[str, str]]] = {
    ANCHOR: {
        "anchors": "list of {term, kind, translations}: the corrected anchor dictionary; every term must"
        " occur verbatim in a passage, kind one of " + ", ".join(ANCHOR_KINDS),
    },
    TARGET: {
        "verdict": "ok (the generic version reads as correct language), reject (drop the block) or fix",
        "replacement": "with verdict fix: the corrected generic version of the passage",
    },
    EVALUATION: {
        "label": "leaks (the completion states facts about the subject), generic, or unsure",
        "note": "optional free text",
    },
}


def term_occurs(term: str, text: str) -> bool:
    """Whole-word match, as the pipeline finds anchors ("Ron" does not match inside "Ronald")."""
    return re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", text) is not None


def _text(value: Any, name: str, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Unprocessable(f"{name} must be text", param=name)
    if len(value) > limit:
        raise Unprocessable(f"{name} is longer than {limit} characters", param=name)
    return value.strip()


def _translations(value: Any, term: str) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise Unprocessable(f"translations of {term!r} must be a list of text", param="translations")
    out: list[str] = []
    for item in value:
        word = _text(item, "translations", MAX_TERM)
        if word and word != term and word not in out:
            out.append(word)
    if not out:
        raise Unprocessable(
            f"Give at least one generic translation for {term!r} (a plausible replacement, e.g. Harold for Harry)",
            param="translations",
        )
    return out[:MAX_TRANSLATIONS]


def validate_anchor(raw: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    items = raw.get("anchors")
    if not isinstance(items, list):
        raise Unprocessable("anchors must be a list of {term, kind, translations}", param="anchors")
    if len(items) > MAX_ANCHORS:
        raise Unprocessable(f"At most {MAX_ANCHORS} anchors", param="anchors")
    proposed = {str(a.get("term")) for a in payload.get("anchors", [])}
    passages = [str(p.get("text", "")) for p in payload.get("passages", [])]
    anchors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise Unprocessable("each anchor must be an object {term, kind, translations}", param="anchors")
        term = _text(item.get("term"), "term", MAX_TERM)
        if not term:
            raise Unprocessable("An anchor has an empty term", param="term")
        if term in seen:
            raise Unprocessable(f"The term {term!r} is listed twice", param="term")
        if term not in proposed and not any(term_occurs(term, p) for p in passages):
            raise Unprocessable(
                f"The term {term!r} does not occur as a whole word in any passage; select it in the text",
                param="term",
            )
        kind = item.get("kind") or "other"
        if kind not in ANCHOR_KINDS:
            raise Unprocessable(f"kind must be one of {', '.join(ANCHOR_KINDS)}", param="kind")
        seen.add(term)
        anchors.append(
            {"term": term, "kind": kind, "translations": _translations(item.get("translations"), term)}
        )
    return {"anchors": anchors}


def validate_target(raw: dict[str, Any]) -> dict[str, Any]:
    verdict = raw.get("verdict")
    if verdict not in VERDICTS:
        raise Unprocessable("verdict must be ok, reject or fix", param="verdict")
    replacement = _text(raw.get("replacement"), "replacement")
    if verdict == "fix" and not replacement:
        raise Unprocessable("A fix needs the corrected replacement text", param="replacement")
    return {"verdict": verdict, "replacement": replacement if verdict == "fix" else ""}


def validate_evaluation(raw: dict[str, Any]) -> dict[str, Any]:
    label = raw.get("label")
    if label not in LABELS:
        raise Unprocessable("label must be leaks, generic or unsure", param="label")
    return {"label": label, "note": _text(raw.get("note"), "note", 2000)}


def validate(kind: str, raw: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """The normalised answer, or Unprocessable naming what to change."""
    if not isinstance(raw, dict):
        raise Unprocessable("answer must be a JSON object", param="answer")
    if kind == ANCHOR:
        return validate_anchor(raw, payload)
    if kind == TARGET:
        return validate_target(raw)
    if kind == EVALUATION:
        return validate_evaluation(raw)
    raise ValueError(f"unknown task kind {kind!r}")


@dataclass(frozen=True)
class Consensus:
    """A majority: ``decided`` False on a tie (the task then asks for one more answer)."""

    decided: bool
    resolution: dict[str, Any]
    agreement: float


def _majority(values: list[str]) -> tuple[str | None, float]:
    counts = Counter(values).most_common()
    if not counts:
        return None, 0.0
    top, n = counts[0]
    share = n / len(values)
    if len(counts) > 1 and counts[1][1] == n:
        return None, share
    return top, share


def consensus_anchor(answers: list[dict[str, Any]], payload: dict[str, Any]) -> Consensus:
    """Per term: kept when a majority keeps it (a tie keeps a proposed term, drops a new one);
    kind and translations are the most common among those keeping it."""
    n = len(answers)
    proposed = {str(a["term"]): a for a in payload.get("anchors", [])}
    votes: dict[str, list[dict[str, Any]]] = {}
    order: list[str] = []
    for answer in answers:
        for item in answer["anchors"]:
            if item["term"] not in votes:
                votes[item["term"]] = []
                order.append(item["term"])
            votes[item["term"]].append(item)
    for term in proposed:
        if term not in votes:
            votes[term] = []
            order.append(term)
    kept: list[dict[str, Any]] = []
    agreements: list[float] = []
    for term in order:
        keepers = votes[term]
        k = len(keepers)
        agreements.append(max(k, n - k) / n if n else 1.0)
        if 2 * k < n or (2 * k == n and term not in proposed) or k == 0:
            continue
        kinds = Counter(item["kind"] for item in keepers).most_common(1)[0][0]
        translations = Counter(tuple(item["translations"]) for item in keepers).most_common(1)[0][0]
        kept.append({"term": term, "kind": kinds, "translations": list(translations)})
    kept_terms = {a["term"] for a in kept}
    removed = sorted(t for t in proposed if t not in kept_terms)
    added = sorted(t for t in kept_terms if t not in proposed)
    edited = sorted(
        a["term"]
        for a in kept
        if a["term"] in proposed
        and (
            list(proposed[a["term"]].get("translations", [])) != a["translations"]
            or proposed[a["term"]].get("kind") != a["kind"]
        )
    )
    agreement = sum(agreements) / len(agreements) if agreements else 1.0
    resolution = {"anchors": kept, "removed": removed, "added": added, "edited": edited}
    return Consensus(True, resolution, round(agreement, 4))


def consensus_target(answers: list[dict[str, Any]]) -> Consensus:
    """Keep the block if a majority says it reads correctly; otherwise drop it, or fix it when the
    fixes outnumber the rejections (with the most common replacement)."""
    n = len(answers)
    ok = sum(a["verdict"] == "ok" for a in answers)
    if 2 * ok > n:
        return Consensus(True, {"verdict": "ok", "replacement": ""}, round(ok / n, 4))
    if 2 * ok == n:
        return Consensus(False, {}, 0.5)
    fixes = [a["replacement"] for a in answers if a["verdict"] == "fix"]
    rejects = n - ok - len(fixes)
    agreement = round((n - ok) / n, 4)
    if len(fixes) > rejects:
        replacement = Counter(fixes).most_common(1)[0][0]
        return Consensus(True, {"verdict": "fix", "replacement": replacement}, agreement)
    return Consensus(True, {"verdict": "reject", "replacement": ""}, agreement)


def consensus_evaluation(answers: list[dict[str, Any]]) -> Consensus:
    label, share = _majority([a["label"] for a in answers])
    if label is None:
        return Consensus(False, {}, round(share, 4))
    notes = [a["note"] for a in answers if a.get("note")]
    return Consensus(True, {"label": label, "notes": notes}, round(share, 4))


def consensus(kind: str, answers: list[dict[str, Any]], payload: dict[str, Any]) -> Consensus:
    if kind == ANCHOR:
        return consensus_anchor(answers, payload)
    if kind == TARGET:
        return consensus_target(answers)
    return consensus_evaluation(answers)


def fallback(kind: str, answers: list[dict[str, Any]], payload: dict[str, Any]) -> Consensus:
    """When ties persist after the extra answers: the cautious choice (drop the block; unsure)."""
    if kind == TARGET:
        return Consensus(True, {"verdict": "reject", "replacement": "", "tie": True}, 0.5)
    if kind == EVALUATION:
        return Consensus(True, {"label": "unsure", "notes": [], "tie": True}, 0.5)
    return consensus_anchor(answers, payload)


def matches(kind: str, answer: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether an answer to a control task agrees with its known answer."""
    if kind == ANCHOR:
        want = {str(a.get("term")) for a in expected.get("anchors", [])}
        return {a["term"] for a in answer["anchors"]} == want
    if kind == TARGET:
        # ok against not-ok is what matters; the wording of a fix is free.
        said_ok: bool = answer["verdict"] == "ok"
        return said_ok == (expected.get("verdict") == "ok")
    label: str = answer["label"]
    return label == str(expected.get("label"))
