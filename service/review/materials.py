"""From a request's artifacts to review tasks, and reviewed results back into the artifacts.

Runs in a worker thread (file reads only: what needs the tokenizer the worker rendered). What each gate reads:

    anchor_review      work/anchors.json + input/spec.json  → one task per part of the proposed dictionary
                                                           (with the passages where its anchors occur)
    target_review      work/targets/review.json             → one task per low-confidence block
    evaluation_review  work/evaluate/report.json            → one task per forget probe

and writes back: the corrected ``work/anchors.json`` (which generate_targets reads) and
``work/target_review.json`` (blocks the unlearn stage leaves out, and reviewers' fixes).
Nothing here logs artifact contents: they quote the forget corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.artifacts.store import INPUT, SPEC_FILE, WORK, ArtifactStore
from service.review.answers import term_occurs
from service.settings import Settings

ANCHORS_FILE = "anchors.json"
TARGET_REVIEW_FILE = "target_review.json"
#: Written by the generate_targets stage next to the targets (``gpu_runtime.pipeline.review.REVIEW_FILE``).
TARGET_REVIEW_ITEMS_FILE = "review.json"
MAX_PASSAGE_CHARS = 6000


class MaterialsMissing(Exception):
    """The stage's artifact is not there (yet): the gate cannot be opened from it."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaterialsMissing(path.name) from None


def spans(text: str, terms: list[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping whole-word occurrences, longest terms first (as the pipeline matches them)."""
    import re

    taken: list[tuple[int, int, str]] = []
    for term in sorted(terms, key=lambda t: (-len(t), t)):
        for match in re.finditer(r"(?<!\w)" + re.escape(term) + r"(?!\w)", text):
            start, end = match.span()
            if not any(start < e and s < end for s, e, _ in taken):
                taken.append((start, end, term))
    return sorted(taken)


def _passages(spec: dict[str, Any]) -> list[dict[str, Any]]:
    sources = list(spec.get("sources") or [])
    out: list[dict[str, Any]] = []
    for i, text in enumerate(spec.get("documents", [])):
        if text.strip():
            source = sources[i] if i < len(sources) and sources[i] else None
            out.append({"label": f"Document {i + 1}" + (f" ({source})" if source else ""), "text": text})
    for k, qa in enumerate(spec.get("qa_pairs", [])):
        out.append({"label": f"Question {k + 1}", "text": f"Q: {qa['question']}\nA: {qa['answer']}"})
    return out


def anchor_items(store: ArtifactStore, request_id: str, settings: Settings) -> list[dict[str, Any]]:
    """The anchor review's tasks: the proposed dictionary in parts of at most
    ``review_anchor_task_size`` anchors (one task for most requests; several for a long corpus,
    which reviewers answer in parallel), each with the passages where its own anchors occur most.
    The gate resolves when every part is decided (``services._anchor_verdict`` merges them)."""
    work = store.local_dir(request_id, WORK)
    dictionary = _read_json(work / ANCHORS_FILE)
    spec = store.get_json(request_id, INPUT, SPEC_FILE)
    anchors = [
        {
            "term": a["term"],
            "kind": a.get("kind", "other"),
            "translations": list(a.get("translations", [])),
            "sources": list(a.get("sources", [])),
            "score": a.get("score"),
        }
        for a in dictionary.get("anchors", [])
    ]
    passages = _passages(spec)
    size = settings.review_anchor_task_size
    parts = [anchors[i : i + size] for i in range(0, len(anchors), size)] or [[]]
    items = []
    for number, part in enumerate(parts, start=1):
        terms = [a["term"] for a in part]
        # The passages with the most of this part's anchors first, shown in corpus order.
        ranked = sorted(range(len(passages)), key=lambda i: -len(spans(passages[i]["text"], terms)))
        chosen = sorted(ranked[: settings.review_anchor_max_passages])
        shown = []
        for i in chosen:
            text = passages[i]["text"]
            truncated = len(text) > MAX_PASSAGE_CHARS
            shown.append(
                {"label": passages[i]["label"], "text": text[:MAX_PASSAGE_CHARS], "truncated": truncated}
            )
        items.append(
            {
                "anchors": part,
                "passages": shown,
                "total_passages": len(passages),
                "llm_errors": len(dictionary.get("llm_errors", [])),
                "part": number,
                "parts": len(parts),
                "total_anchors": len(anchors),
            }
        )
    return items


def target_items(
    store: ArtifactStore,
    request_id: str,
    options: dict[str, Any],
    probes: list[dict[str, Any]],
    settings: Settings,
) -> list[dict[str, Any]]:
    """Flagged blocks decoded for humans: original, translated, and the generic labels as text.

    The worker decodes them when it writes the targets (``targets/review.json``, see
    ``gpu_runtime/pipeline/review.py``): this process needs no tokenizer, torch or model files.
    ``options`` and ``probes`` are not needed any more; kept for the gate's common signature.
    """
    work = store.local_dir(request_id, WORK)
    blocks_info = _read_json(work / "targets" / "blocks.json")
    if not blocks_info.get("flagged"):
        return []
    rendered = _read_json(work / "targets" / TARGET_REVIEW_ITEMS_FILE)
    return list(rendered.get("items", []))[: settings.review_max_tasks]


def _evaluation_items_by_kind(
    report: dict[str, Any], probes: list[dict[str, Any]], settings: Settings
) -> list[dict[str, Any]]:
    """The per-kind report (probe, original, paraphrase, inverted, completion): one task per answer,
    those the automatic check flagged as leaks or broken text first (the residual leaks a reviewer
    must see fit in ``review_max_tasks``)."""
    scores = (report.get("judge") or {}).get("scores", [])
    items: list[dict[str, Any]] = []
    position = 0  # the judge grades the after-rows of every kind, in report order
    for kind, section in (report.get("kinds") or {}).items():
        after = ((section or {}).get("after") or {}).get("rows", [])
        before = ((section or {}).get("before") or {}).get("rows", [])
        for i, row in enumerate(after):
            own = kind == "probe" and len(after) == len(probes)
            items.append(
                {
                    "probe": i,
                    "kind": kind,
                    "prompt": row.get("prompt", ""),
                    "completion": row.get("completion", ""),
                    "base_completion": before[i].get("completion", "") if i < len(before) else "",
                    "reference": str(probes[i].get("reference", "")) if own else "",
                    "judge_score": scores[position] if position < len(scores) else None,
                    "leaked_terms": list(row.get("leaked_terms", [])),
                    "leaked": bool(row.get("leaked")),
                    "broken": bool(row.get("broken")),
                }
            )
            position += 1
    items.sort(key=lambda item: (not item["leaked"], not item["broken"]))
    return items[: settings.review_max_tasks]


def evaluation_items(
    store: ArtifactStore, request_id: str, probes: list[dict[str, Any]], settings: Settings
) -> list[dict[str, Any]]:
    """One task per forget probe: prompt, the unlearned and the base completion, the judge's grade."""
    work = store.local_dir(request_id, WORK)
    report = _read_json(work / "evaluate" / "report.json")
    if isinstance(report.get("kinds"), dict):
        return _evaluation_items_by_kind(report, probes, settings)
    forget = report.get("forget") or {}
    after = (forget.get("after") or {}).get("rows", [])
    before = (forget.get("before") or {}).get("rows", [])
    scores = (report.get("judge") or {}).get("scores", [])
    derived = bool(report.get("probes_derived"))
    items = []
    for i, row in enumerate(after[: settings.review_max_tasks]):
        reference = "" if derived or i >= len(probes) else str(probes[i].get("reference", ""))
        items.append(
            {
                "probe": i,
                "prompt": row.get("prompt", ""),
                "completion": row.get("completion", ""),
                "base_completion": before[i].get("completion", "") if i < len(before) else "",
                "reference": reference,
                "judge_score": scores[i] if i < len(scores) else None,
                "leaked_terms": list(row.get("leaked_terms", [])),
            }
        )
    return items


def build_items(
    gate: str,
    store: ArtifactStore,
    request_id: str,
    options: dict[str, Any],
    probes: list[dict[str, Any]],
    settings: Settings,
) -> list[dict[str, Any]]:
    """Task inputs of ``gate`` for the request (MaterialsMissing when the artifact is absent)."""
    if gate == "anchor_review":
        return anchor_items(store, request_id, settings)
    if gate == "target_review":
        return target_items(store, request_id, options, probes, settings)
    if gate == "evaluation_review":
        return evaluation_items(store, request_id, probes, settings)
    raise ValueError(f"unknown gate {gate!r}")


def write_anchors(store: ArtifactStore, request_id: str, resolution: dict[str, Any]) -> int:
    """Write the reviewed dictionary as ``anchors.json`` (input hash kept, so a re-run of mining keeps
    it; the targets stage hashes the terms and translations, so it regenerates). Returns its size.

    ``resolution`` was validated as a review answer (``answers.validate_anchor``: distinct non-empty
    terms, known kinds, at least one translation each); the worker validates the file again when it
    loads it (``AnchorDictionary``), so this process imports nothing of the pipeline."""
    work = store.local_dir(request_id, WORK)
    existing = _read_json(work / ANCHORS_FILE)
    before = {a["term"]: a for a in existing.get("anchors", [])}
    spec = store.get_json(request_id, INPUT, SPEC_FILE)
    documents = [d for d in spec.get("documents", []) if d.strip()]
    changed = set(resolution.get("added", [])) | set(resolution.get("edited", []))
    terms = [a["term"] for a in resolution["anchors"]]
    occurrences: dict[str, list[tuple[int, int, int]]] = {t: [] for t in terms}
    for d, text in enumerate(documents):
        for start, end, term in spans(text, terms):
            occurrences[term].append((d, start, end))
    anchors = []
    for item in resolution["anchors"]:
        old = before.get(item["term"], {})
        sources = list(old.get("sources", []))
        if item["term"] in changed and "reviewer" not in sources:
            sources.append("reviewer")
        anchors.append(
            {
                "term": item["term"],
                "kind": item["kind"],
                "translations": item["translations"],
                "sources": sources,
                "score": old.get("score"),
                "occurrences": occurrences[item["term"]],
            }
        )
    if len({a["term"] for a in anchors}) != len(anchors):
        raise ValueError("anchor terms must be distinct")
    dictionary = {
        "input_hash": existing["input_hash"],
        "anchors": sorted(anchors, key=lambda a: a["term"]),
        "llm_errors": existing.get("llm_errors", []),
        "reviewed": True,
    }
    return store.put_json(request_id, WORK, ANCHORS_FILE, dictionary)


def write_target_review(
    store: ArtifactStore,
    request_id: str,
    reviewed: list[int],
    excluded: list[int],
    replacements: dict[int, str],
) -> None:
    """``target_review.json``: the unlearn stage leaves ``excluded_blocks`` out of training.

    A fixed block is excluded too until the worker has regenerated its targets from the
    ``replacements`` (``gpu_runtime/pipeline/target_fixes.py``, before unlearning), which it does only
    for the targets this review was made on (``targets_hash``, from the targets' stage marker)."""
    work = store.local_dir(request_id, WORK)
    try:
        marker = json.loads((work / "targets" / "stage.json").read_text(encoding="utf-8"))
        targets_hash = marker.get("input_hash") if isinstance(marker, dict) else None
    except (FileNotFoundError, ValueError):
        targets_hash = None
    fixed = set(replacements)
    store.put_json(
        request_id,
        WORK,
        TARGET_REVIEW_FILE,
        {
            "reviewed_blocks": sorted(reviewed),
            "excluded_blocks": sorted(excluded),
            "rejected_blocks": sorted(b for b in excluded if b not in fixed),
            "replacements": {str(k): v for k, v in sorted(replacements.items())},
            "targets_hash": targets_hash,
        },
    )


__all__ = [
    "MaterialsMissing",
    "build_items",
    "spans",
    "term_occurs",
    "write_anchors",
    "write_target_review",
]
