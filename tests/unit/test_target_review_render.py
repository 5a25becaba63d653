"""The worker renders the target review (``targets/review.json``): API replicas have no tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gpu_runtime.pipeline.review import FORMAT, REVIEW_FILE, target_review_items, write_target_review
from gpu_runtime.pipeline.targets import IGNORE, BlockTargets
from gpu_runtime.pipeline.translate import TranslatedBlock
from service.review import materials

WORDS = ["<s>", " Harry", " met", " Ron", " Mark", " Bob", " at", " school"]


class Tokenizer:
    """Decodes ids to the words above (0 is a special token)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))


def test_flagged_blocks_are_decoded_with_the_generic_labels_and_their_confidence(tmp_path: Path) -> None:
    block = TranslatedBlock(
        doc=0, index=0, original_ids=[0, 1, 2, 3], translated_ids=[0, 4, 2, 5], mapping=[0, 1, 2, 3],
        masked=[], used_first_tokens=[], translation_index=0,
    )  # fmt: skip
    # Position 0 predicts " Harry" -> " Mark"; position 1 is unlabelled; position 2 predicts " Ron" -> " Bob".
    target = BlockTargets(
        doc=0, index=0, input_ids=[0, 1, 2, 3], labels=[4, IGNORE, 5, IGNORE],
        confidence=[0.25, math.nan, 0.5, math.nan],
    )  # fmt: skip
    stats = [{"index": 0, "mean_confidence": 0.375, "min_confidence": 0.25, "flagged": True}]
    (item,) = target_review_items(Tokenizer(), [block], [target], stats, [0, 7], threshold=0.4)
    assert item == {
        "block": 0,
        "doc": 0,
        "original": " Harry met Ron",
        "translated": " Mark met Bob",
        "generic": " Mark met Bob",
        "generic_tokens": [[" Mark", 0.25], [" met", None], [" Bob", 0.5]],
        "mean_confidence": 0.375,
        "min_confidence": 0.25,
        "threshold": 0.4,
        "total_blocks": 1,
    }
    write_target_review(tmp_path, [item])
    data = json.loads((tmp_path / REVIEW_FILE).read_text())
    assert data == {"format": FORMAT, "items": [item]}
    # The service reads the file by the same name.
    assert materials.TARGET_REVIEW_ITEMS_FILE == REVIEW_FILE
