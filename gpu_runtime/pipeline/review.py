"""What the target review shows, rendered where the tokenizer is: ``targets/review.json``.

API replicas have no tokenizer, torch or model files (they may serve through a vLLM upstream), so the
generate_targets stage decodes each flagged block for humans as it writes the targets, and the review
service (``service/review/materials.py``) only reads this file: per flagged block the original and
the translated text, the generic labels as text, and each generic token with the baseline's
confidence in it (null where the position has no label). Like the targets, it quotes the forget corpus:
it lives in the purged work area and is never logged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .targets import IGNORE, BlockTargets
from .translate import TranslatedBlock

REVIEW_FILE = "review.json"
FORMAT = "obliviate.target_review/1"


def target_review_items(
    tokenizer: Any,
    blocks: Sequence[TranslatedBlock],
    targets: Sequence[BlockTargets],
    stats: Sequence[dict[str, Any]],
    flagged: Sequence[int],
    threshold: float,
) -> list[dict[str, Any]]:
    """One item per flagged block, in the shape the review UI shows (``review/target.html``)."""
    by_index = {int(s["index"]): s for s in stats}
    items = []
    for index in flagged:
        if index >= len(blocks) or index >= len(targets):
            continue
        block, target = blocks[index], targets[index]
        ids = target.input_ids
        generic_ids = [ids[0]] if ids else []
        tokens: list[list[Any]] = []
        for p in range(len(ids) - 1):
            label = target.labels[p]
            token = label if label != IGNORE else ids[p + 1]
            conf = target.confidence[p]
            generic_ids.append(token)
            tokens.append(
                [
                    tokenizer.decode([token], skip_special_tokens=True),
                    None if math.isnan(conf) else round(conf, 4),
                ]
            )
        info = by_index.get(index, {})
        items.append(
            {
                "block": index,
                "doc": block.doc,
                "original": tokenizer.decode(block.original_ids, skip_special_tokens=True),
                "translated": tokenizer.decode(block.translated_ids, skip_special_tokens=True),
                "generic": tokenizer.decode(generic_ids, skip_special_tokens=True),
                "generic_tokens": tokens,
                "mean_confidence": info.get("mean_confidence"),
                "min_confidence": info.get("min_confidence"),
                "threshold": threshold,
                "total_blocks": len(targets),
            }
        )
    return items


def write_target_review(out_dir: Path, items: list[dict[str, Any]]) -> None:
    (Path(out_dir) / REVIEW_FILE).write_text(
        json.dumps({"format": FORMAT, "items": items}, ensure_ascii=False)
    )
