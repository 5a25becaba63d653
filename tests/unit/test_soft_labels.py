"""Soft generic labels (whp_labels "soft"): top-k of softmax(v_generic), stored and trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from gpu_runtime.pipeline import run as pipeline_run
from gpu_runtime.pipeline.artifacts import read_marker
from gpu_runtime.pipeline.run import run_pipeline, run_stage
from gpu_runtime.pipeline.target_fixes import REVIEW_FILE
from gpu_runtime.pipeline.targets import (
    IGNORE,
    compute_targets,
    generic_labels,
    generic_logits,
    load_targets,
    save_targets,
    soft_cross_entropy,
    soft_labels,
    targets_input_hash,
)
from gpu_runtime.pipeline.testing import SENTENCES, save_tiny_model_dir, tiny_model, tiny_tokenizer
from gpu_runtime.pipeline.translate import OURS, corpus_label_spans, corpus_texts, translate_corpus
from gpu_runtime.pipeline.types import (
    Anchor,
    AnchorDictionary,
    EntityHint,
    ForgetSpec,
    PipelineOptions,
    QAPair,
    StageResult,
)
from gpu_runtime.pipeline.unlearn import unlearn_input_hash

CARD = "4111 1111 1111 1111"
FAST = PipelineOptions(
    reinforce_epochs=1, unlearn_epochs=1, block_size=16, max_new_tokens=4, general_samples=2, lora_rank=2
)
SOFT = FAST.model_copy(update={"whp_labels": "soft", "whp_soft_top_k": 8})


def test_soft_labels_on_hand_computed_logits() -> None:
    g = torch.tensor([[2.0, 1.0, 0.0, 1.5], [0.0, 3.0, 1.0, 1.0]])
    r = torch.tensor([[4.0, 1.0, -1.0, 1.6], [0.0, 3.0, 1.0, 1.0]])
    labels, _ = generic_labels(g, r, alpha=5.0)
    _, v = generic_logits(g, r, alpha=5.0)
    ids, probs = soft_labels(v, labels, 2)
    # row 0: v = [-8, 1, 0, 1.0]: tokens 1 and 3 tie at the top; the hard label (1) comes first
    assert ids[0].tolist() == [1, 3] and ids[1, 0].item() == 1 and ids[1, 1].item() in (2, 3)
    assert probs[0].tolist() == pytest.approx([0.5, 0.5])
    assert probs[1, 0].item() == pytest.approx(torch.softmax(torch.tensor([3.0, 1.0]), 0)[0].item())
    # k larger than the vocabulary: the whole row, in order
    ids4, probs4 = soft_labels(v, labels, 99)
    assert ids4.shape == (2, 4) and probs4.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert probs4[1].tolist() == pytest.approx(torch.softmax(v[1], 0)[ids4[1]].tolist())


def test_ties_put_the_hard_label_first() -> None:
    v = torch.tensor([[1.0, 5.0, 5.0, 5.0, 0.0]])
    for label in (1, 2, 3):
        ids, probs = soft_labels(v, torch.tensor([label]), 2)
        assert ids[0, 0].item() == label and ids[0, 1].item() in {1, 2, 3} - {label}
        assert probs[0].tolist() == pytest.approx([0.5, 0.5])
    ids, _ = soft_labels(v, torch.tensor([3]), 1)  # the label may not even be in topk's pick
    assert ids.tolist() == [[3]]


def test_soft_cross_entropy_is_the_hard_one_at_k_1() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = labels[1, 4] = labels[1, 0] = IGNORE
    keep = labels != IGNORE
    hard = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    ids = labels[keep].unsqueeze(-1)
    soft = soft_cross_entropy(logits, labels, ids, torch.ones_like(ids, dtype=torch.float32))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    # k = 3: -sum p log pi by hand, averaged over the labelled positions
    ids3 = torch.randint(0, 11, (int(keep.sum()), 3))
    p3 = torch.softmax(torch.randn(int(keep.sum()), 3), -1)
    logp = torch.log_softmax(logits[keep], -1).gather(-1, ids3)
    assert soft_cross_entropy(logits, labels, ids3, p3).item() == pytest.approx(
        float(-(p3 * logp).sum(-1).mean()), rel=1e-6
    )
    with pytest.raises(ValueError):
        soft_cross_entropy(logits, labels, ids3[1:], p3[1:])


@pytest.fixture(scope="module")
def card_setup() -> tuple[Any, Any, list[Any]]:
    tok = tiny_tokenizer()
    base = tiny_model(len(tok), seed=1).double()
    spec = ForgetSpec(
        documents=[f"Her card number is {CARD} and it expired on 12 March 1987.", *SENTENCES[:3]],
        qa_pairs=[QAPair(question="What is Harry's card number?", answer=f"Harry's card number is {CARD}.")],
    )
    anchors = [
        Anchor(term=CARD, kind="card", translations=["4734 0963 4908 9428", "4272 9685 3028 4323"]),
        Anchor(term="Harry", kind="first_name", translations=["Henry", "Harold"]),
        Anchor(term="Hogwarts", translations=["Hampton", "Halton"]),
    ]
    texts, spans = corpus_texts(spec, tok), corpus_label_spans(spec, tok)
    blocks = translate_corpus(tok, texts, anchors, 24, rules=OURS, label_spans=spans)
    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return tok, get_peft_model(base, cfg), blocks


@pytest.mark.parametrize("alpha", [5.0, 0.0])
def test_soft_rows_sum_to_one_start_with_the_hard_label_and_never_hold_the_suppressed_token(
    card_setup: tuple[Any, Any, list[Any]], alpha: float, tmp_path: Path
) -> None:
    tok, model, blocks = card_setup
    assert any(b.suppressed for b in blocks)
    hard = compute_targets(model, blocks, alpha=alpha, batch_size=3, pad_id=tok.pad_token_id)
    soft = compute_targets(model, blocks, alpha=alpha, batch_size=3, pad_id=tok.pad_token_id, soft_top_k=16)
    n_suppressed = 0
    for blk, h, s in zip(blocks, hard, soft, strict=True):
        assert h.soft_ids is None and s.labels == h.labels  # the hard labels are unchanged
        assert torch.equal(
            torch.tensor(s.confidence).nan_to_num(-1), torch.tensor(h.confidence).nan_to_num(-1)
        )
        assert s.soft_ids is not None and s.soft_probs is not None
        labelled = [p for p, lab in enumerate(s.labels) if lab != IGNORE]
        assert len(s.soft_ids) == len(s.soft_probs) == len(labelled)
        rows = dict(zip(labelled, zip(s.soft_ids, s.soft_probs, strict=True), strict=True))
        for p, (ids, probs) in rows.items():
            assert len(ids) == 16 and len(set(ids)) == 16
            assert sum(probs) == pytest.approx(1.0, abs=1e-5) and all(x >= 0 for x in probs)
            assert ids[0] == s.labels[p] and probs[0] == pytest.approx(max(probs))
        for p, tok_id in blk.suppressed:
            if p in rows:
                n_suppressed += 1
                assert tok_id not in rows[p][0]  # the true continuation inside a whole value
    assert n_suppressed >= 5
    # Stored in safetensors and read back unchanged (rows in position order, block by block).
    save_targets(tmp_path / "t.safetensors", soft)
    back = load_targets(tmp_path / "t.safetensors")
    for s, b in zip(soft, back, strict=True):
        assert b.labels == s.labels and b.soft_ids == s.soft_ids
        assert torch.allclose(torch.tensor(b.soft_probs), torch.tensor(s.soft_probs))
    from safetensors.torch import load_file

    d = load_file(str(tmp_path / "t.safetensors"))
    assert d["soft_ids"].dtype == torch.int32 and d["soft_probs"].dtype == torch.float32
    assert d["soft_ids"].shape == (int((d["labels"] != IGNORE).sum()), 16)
    save_targets(tmp_path / "h.safetensors", hard)
    assert "soft_ids" not in load_file(str(tmp_path / "h.safetensors"))


def test_hashes_cover_the_option_and_keep_the_hard_ones() -> None:
    spec = ForgetSpec(documents=["Harry went to Hogwarts."], options=FAST)
    anchors = AnchorDictionary(input_hash="x", anchors=[Anchor(term="Harry", translations=["Henry"])])

    def hashes(o: PipelineOptions) -> tuple[str, str]:
        s = spec.model_copy(update={"options": o})
        return targets_input_hash(s, "r", anchors), unlearn_input_hash(s, "t", [], "/nonexistent", None)

    hard = hashes(FAST)
    assert hashes(FAST.model_copy(update={"whp_soft_top_k": 4})) == hard  # k unused with hard labels
    soft8 = hashes(SOFT)
    assert soft8[0] != hard[0] and soft8[1] != hard[1]
    soft4 = hashes(SOFT.model_copy(update={"whp_soft_top_k": 4}))
    assert soft4[0] != soft8[0] and soft4[1] != soft8[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("method", ["whp", "combined"])
def test_a_pipeline_run_with_soft_labels(model_dir: Path, tmp_path: Path, method: str) -> None:
    o = SOFT.model_copy(update={"method": method})
    spec = ForgetSpec(
        documents=SENTENCES[:3],
        qa_pairs=[QAPair(question="Who is Harry?", answer="Harry is a wizard at Hogwarts.")],
        hints=[EntityHint(term="Harry", kind="first_name"), EntityHint(term="Hogwarts", kind="place")],
        options=o,
    )
    result = run_pipeline(model_dir, spec, tmp_path)
    assert all(not r.skipped for r in result.stages.values())
    targets = load_targets(tmp_path / "targets" / "targets.safetensors")
    assert all(t.soft_ids is not None and all(len(r) == 8 for r in t.soft_ids) for t in targets)
    assert read_marker(tmp_path / "targets")["summary"]["soft_top_k"] == 8
    manifest = json.loads((tmp_path / "unlearn" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["whp_labels"] == "soft"
    whp = manifest["metrics"]["terms_last_epoch"]["whp"]
    assert whp == whp and whp > 0  # finite, trained
    assert all(r.skipped for r in run_pipeline(model_dir, spec, tmp_path).stages.values())
    # Switching to hard labels regenerates the targets (no stale soft rows) and retrains.
    hard = spec.model_copy(update={"options": o.model_copy(update={"whp_labels": "hard"})})
    again = run_pipeline(model_dir, hard, tmp_path)
    assert [again.stages[s].skipped for s in ("reinforce", "generate_targets", "unlearn")] == [
        True,
        False,
        False,
    ]
    assert all(t.soft_ids is None for t in load_targets(tmp_path / "targets" / "targets.safetensors"))


def test_a_reviewer_fix_regenerates_its_soft_rows(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ForgetSpec(
        documents=SENTENCES[:3],
        hints=[EntityHint(term="Harry", kind="first_name"), EntityHint(term="Hogwarts", kind="place")],
        options=SOFT,
    )
    for stage in ("reinforce", "mine_anchors", "generate_targets"):
        run_stage(stage, model_dir, spec, tmp_path)
    first = read_marker(tmp_path / "targets")
    assert first is not None
    before = load_targets(tmp_path / "targets" / "targets.safetensors")
    review = {
        "excluded_blocks": [0],
        "replacements": {"0": "Henry Carter went to Greyford with Tom Wesley and Helen Grant."},
        "targets_hash": first["input_hash"],
    }
    (tmp_path / REVIEW_FILE).write_text(json.dumps(review))

    def unlearn_stub(base: Any, spec: Any, work: Any, **_kw: Any) -> StageResult:
        return StageResult(stage="unlearn", artifact=str(work), input_hash="x", skipped=False)

    monkeypatch.setattr(pipeline_run, "unlearn", unlearn_stub)
    run_stage("unlearn", model_dir, spec, tmp_path)
    after = load_targets(tmp_path / "targets" / "targets.safetensors")
    assert read_marker(tmp_path / "targets")["summary"]["fixed_blocks"] == [0]
    assert after[0].labels != before[0].labels
    for t in after:
        assert t.soft_ids is not None and len(t.soft_ids) == sum(lab != IGNORE for lab in t.labels)
        assert all(
            row[0] == lab for row, lab in zip(t.soft_ids, [x for x in t.labels if x != IGNORE], strict=True)
        )
    for old, new in zip(before[1:], after[1:], strict=True):
        assert (old.labels, old.soft_ids) == (new.labels, new.soft_ids)  # other blocks untouched
