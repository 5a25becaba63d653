"""A target reviewer's fixed text regenerates that block's targets (tiny model, real stages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_runtime.pipeline import run as pipeline_run
from gpu_runtime.pipeline.artifacts import read_marker
from gpu_runtime.pipeline.run import run_stage
from gpu_runtime.pipeline.target_fixes import REVIEW_FILE, fixed_block
from gpu_runtime.pipeline.targets import IGNORE, load_targets
from gpu_runtime.pipeline.testing import SENTENCES, save_tiny_model_dir, tiny_tokenizer
from gpu_runtime.pipeline.translate import TranslatedBlock
from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, PipelineOptions, StageResult

FAST = PipelineOptions(
    reinforce_epochs=1, unlearn_epochs=1, block_size=16, max_new_tokens=4, general_samples=2, lora_rank=2
)
FIX = "Henry Carter went to Greyford with Tom Wesley and Helen Grant."


def test_a_fixed_text_is_aligned_like_an_anchor_translation() -> None:
    tok = tiny_tokenizer()
    original = tok.encode("Harry Potter went to Hogwarts with Ron.", add_special_tokens=False)
    block = TranslatedBlock(
        doc=0, index=3, original_ids=original, translated_ids=list(original), mapping=list(range(len(original))),
        masked=[], used_first_tokens=[], translation_index=3, unlabelled=[len(original) - 1],
    )  # fmt: skip
    fixed = fixed_block(tok, block, "Harold Porter went to Greyford with Ron.")
    assert fixed.original_ids == original and fixed.index == 3 and fixed.unlabelled == block.unlabelled
    assert tok.decode(fixed.translated_ids).strip() == "Harold Porter went to Greyford with Ron."
    pieces = [tok.decode([t]) for t in original]
    to, hogwarts = pieces.index(" to"), pieces.index(" Hogwarts")
    # Unchanged tokens map one to one onto the fix, and predict what follows them there: " to" is
    # followed by the fix's "Greyford", not by " Hogwarts".
    assert fixed.translated_ids[fixed.mapping[to]] == original[to]
    assert tok.decode([fixed.translated_ids[fixed.mapping[to] + 1]]) != " Hogwarts"
    # The last position of an edited region predicts from the fix's last token there, so it still
    # predicts the next real word (" w" of " with"), as an anchor's last token does.
    assert fixed.translated_ids[fixed.mapping[hogwarts] + 1] == original[hogwarts + 1]
    assert fixed.translated_ids[fixed.mapping[0] + 1] == original[1]  # "Harry" → "Harold", then " P"
    # Inside an edited region of several tokens nothing is predicted, as inside an anchor.
    longer = fixed_block(tok, block, "Harry Potter went to Hogwarts beside Ron.")
    assert -1 in longer.mapping and len(longer.mapping) == len(original)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _spec() -> ForgetSpec:
    return ForgetSpec(
        documents=SENTENCES[:3],
        hints=[EntityHint(term="Harry", kind="first_name"), EntityHint(term="Hogwarts", kind="place")],
        options=FAST,
    )


def test_a_fix_regenerates_only_its_block_before_unlearning(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    for stage in ("reinforce", "mine_anchors", "generate_targets"):
        run_stage(stage, model_dir, spec, tmp_path)
    targets_dir = tmp_path / "targets"
    first = read_marker(targets_dir)
    assert first is not None
    before = load_targets(targets_dir / "targets.safetensors")
    assert len(before) >= 2
    # What the review service writes after a "fix" verdict on block 0 (fixed blocks excluded until
    # regenerated, the targets it reviewed named by their hash).
    review = {
        "reviewed_blocks": [0, 1],
        "excluded_blocks": [0, 1],
        "rejected_blocks": [1],
        "replacements": {"0": FIX},
        "targets_hash": first["input_hash"],
    }
    (tmp_path / REVIEW_FILE).write_text(json.dumps(review))

    seen: dict[str, Any] = {}

    def unlearn_stub(base: Any, spec: Any, work: Any, **_kw: Any) -> StageResult:
        seen["marker"] = read_marker(Path(work) / "targets")
        seen["review"] = json.loads((Path(work) / REVIEW_FILE).read_text())
        return StageResult(stage="unlearn", artifact=str(work), input_hash="x", skipped=False)

    monkeypatch.setattr(pipeline_run, "unlearn", unlearn_stub)
    run_stage("unlearn", model_dir, spec, tmp_path)

    after = load_targets(targets_dir / "targets.safetensors")
    assert seen["marker"]["input_hash"] != first["input_hash"]  # the unlearn stage sees new targets
    assert seen["marker"]["summary"]["fixed_blocks"] == [0]
    assert after[0].input_ids == before[0].input_ids  # trained on the original text ...
    assert after[0].labels != before[0].labels  # ... towards the reviewer's text
    assert any(label != IGNORE for label in after[0].labels)
    for old, new in zip(before[1:], after[1:], strict=True):
        assert (old.input_ids, old.labels) == (new.input_ids, new.labels)  # other blocks untouched
    # Block 0 trains again; the rejected block stays out.
    assert seen["review"]["excluded_blocks"] == [1] and seen["review"]["fixes_applied"] == [0]
    blocks = json.loads((targets_dir / "blocks.json").read_text())
    assert blocks["blocks"][0]["fixed"] is True and 0 not in blocks["flagged"]
    # Running again changes nothing (idempotent); a review of other targets is not applied.
    assert run_stage("generate_targets", model_dir, spec, tmp_path).skipped
    (tmp_path / REVIEW_FILE).write_text(json.dumps({**review, "targets_hash": "other"}))
    redone = run_stage("generate_targets", model_dir, spec, tmp_path)
    assert not redone.skipped and redone.input_hash == first["input_hash"]
    assert load_targets(targets_dir / "targets.safetensors")[0].labels == before[0].labels
