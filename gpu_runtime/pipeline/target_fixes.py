"""A target reviewer's fixed text regenerates that block's targets (instead of dropping the block).

At the target review a reviewer may "fix" a low-confidence block: they write the generic version of
the passage as it should read. The review service records it in ``work/target_review.json``
(``replacements`` by block, and ``targets_hash``: the targets the review was made on) and, to fail
safe, lists the block in ``excluded_blocks`` until its targets exist. ``generate_targets`` then uses
the fixed text as that block's *translated* text: the mapping from each original position to the
fixed text's position comes from a token alignment (``difflib``; an edited region is handled like an
anchor occurrence: its inner positions are ignored and its last one predicts from the fix's last
token), and equation (1) gives the labels as for every block. Only the fixed blocks are recomputed;
the block leaves ``excluded_blocks`` once regenerated (``fixes_applied``). Like the targets, fixes
quote the corpus: they stay in the purged work area and are never logged.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .artifacts import write_json_atomic
from .translate import TranslatedBlock, encode_piece

REVIEW_FILE = "target_review.json"


def read_review(work_dir: Path | str) -> dict[str, Any]:
    path = Path(work_dir) / REVIEW_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def reviewer_fixes(work_dir: Path | str, targets_hash: str) -> dict[int, str]:
    """The fixed texts by block, when the review was made on the targets with ``targets_hash``
    (a review of other targets, e.g. after the anchors changed, no longer fits their blocks)."""
    review = read_review(work_dir)
    if review.get("targets_hash") != targets_hash:
        return {}
    fixes = review.get("replacements") or {}
    return {int(k): str(v) for k, v in fixes.items() if str(v).strip()}


def fixed_block(tokenizer: Any, block: TranslatedBlock, text: str) -> TranslatedBlock:
    """``block`` with ``text`` (the reviewer's generic version) as its translated side."""
    original = list(block.original_ids)
    prefix: list[int] = []
    special = getattr(tokenizer, "bos_token_id", None)
    if original and special is not None and original[0] == special:
        prefix = [special]  # the block starts its document: the fix starts it too
    fixed = prefix + encode_piece(tokenizer, text.strip())
    mapping = [-1] * len(original)
    matcher = difflib.SequenceMatcher(None, original, fixed, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for k in range(i2 - i1):
                mapping[i1 + k] = j1 + k
        elif i2 > i1:
            # Like an anchor occurrence: inner positions predict nothing; the last original position
            # of the region predicts what follows it from the fix's last token of the region (or the
            # token before it, when the fix deletes the region).
            last = j2 - 1 if j2 > j1 else j1 - 1
            mapping[i2 - 1] = last if last >= 0 else -1
    return replace(block, translated_ids=fixed, mapping=mapping)


def record_applied(work_dir: Path | str, applied: list[int]) -> None:
    """The regenerated blocks leave ``excluded_blocks`` (the unlearn stage trains on them again)."""
    review = read_review(work_dir)
    if not review:
        return
    done = sorted(set(applied))
    review["excluded_blocks"] = sorted(
        int(b) for b in review.get("excluded_blocks", []) if int(b) not in set(done)
    )
    review["fixes_applied"] = done
    write_json_atomic(Path(work_dir) / REVIEW_FILE, review)
