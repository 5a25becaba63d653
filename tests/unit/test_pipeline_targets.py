"""Equation (1), first-occurrence masking, lowering, and batched vs reference targets."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from gpu_runtime.pipeline.artifacts import Reporter
from gpu_runtime.pipeline.errors import Cancelled
from gpu_runtime.pipeline.targets import (
    IGNORE,
    compute_targets,
    generate_targets_reference,
    generic_labels,
    ignore_mask,
    lowering_mask,
)
from gpu_runtime.pipeline.testing import SENTENCES, tiny_model, tiny_tokenizer
from gpu_runtime.pipeline.translate import TranslatedBlock, translate_corpus
from gpu_runtime.pipeline.types import Anchor


def test_equation_1_on_hand_computed_logits():
    g = torch.tensor([[2.0, 1.0, 0.0, 1.5]])
    r = torch.tensor([[4.0, 1.0, -1.0, 1.6]])
    # alpha=5: v = g - 5*relu(r-g) = [2-10, 1, 0, 1.5-0.5] = [-8, 1, 0, 1.0] -> argmax 1 (first max)
    labels, conf = generic_labels(g, r, alpha=5.0)
    assert labels.tolist() == [1]
    assert conf.item() == pytest.approx(torch.softmax(g[0], 0)[1].item())
    # alpha=0: the baseline's own argmax
    assert generic_labels(g, r, alpha=0.0)[0].tolist() == [0]
    # alpha=0.1: v = [1.8, 1, 0, 1.49] -> 0
    assert generic_labels(g, r, alpha=0.1)[0].tolist() == [0]


def test_lowering_sets_row_mean_not_minus_inf():
    g = torch.tensor([[3.0, 2.0, 1.0, -2.0]])  # mean 1.0
    r = g.clone()
    lower = torch.tensor([[True, False, False, False]])
    labels, conf = generic_labels(g, r, alpha=5.0, lower=lower)
    assert labels.tolist() == [1]
    lowered = torch.tensor([1.0, 2.0, 1.0, -2.0])
    assert conf.item() == pytest.approx(torch.softmax(lowered, 0)[1].item())
    # token 0 is lowered to the mean (1.0), still above token 3: it keeps probability mass
    g2 = torch.tensor([[3.0, -5.0, -5.0, -5.0]])  # mean -3
    r2 = torch.tensor([[-3.0, -5.0, -5.0, -5.0]])
    labels2, _ = generic_labels(g2, r2, alpha=5.0, lower=torch.tensor([[True, False, False, False]]))
    assert labels2.tolist() == [0]  # lowered to -3, still the largest: not -inf
    # the ReLU term compares r with the lowered g, as the reference does (it edits g in place)
    labels3, _ = generic_labels(g2, g2.clone(), alpha=5.0, lower=torch.tensor([[True, False, False, False]]))
    assert labels3.tolist() == [1]


def test_ignore_and_masks_from_block():
    blk = TranslatedBlock(
        doc=0, index=0, original_ids=[5, 6, 7, 8], translated_ids=[5, 9, 9, 7, 8],
        mapping=[0, 2, 3, 4], masked=[2], used_first_tokens=[(1, 9)], translation_index=0,
    )  # fmt: skip
    lower = lowering_mask(blk, 12)
    assert lower[:, 9].tolist() == [False, True, True, True]
    assert int(lower.sum()) == 3
    assert ignore_mask(blk).tolist() == [False, False, True, False]
    blk.mapping[0] = -1
    assert ignore_mask(blk).tolist() == [True, False, True, False]
    g = torch.randn(4, 12)
    labels, conf = generic_labels(g, g, 5.0, lower, ignore_mask(blk))
    assert labels[0] == IGNORE and labels[2] == IGNORE and math.isnan(conf[2])


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    base = tiny_model(len(tok), seed=1).double()
    anchors = [
        Anchor(term="Harry", translations=["Harold", "Henry"]),
        Anchor(term="Ron", translations=["Bob", "Bill"]),
        Anchor(term="Hogwarts", translations=["Hampton", "Halton"]),
    ]
    blocks = translate_corpus(tok, SENTENCES, anchors, 12)
    return tok, base, blocks


def _reinforced(base):
    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, cfg)


def test_batched_equals_reference(setup):
    import copy

    tok, base, blocks = setup
    baseline_copy = copy.deepcopy(base)
    peft_model = _reinforced(copy.deepcopy(base))
    batched = compute_targets(peft_model, blocks, alpha=5.0, batch_size=5, pad_id=tok.pad_token_id)
    reinforced_copy = copy.deepcopy(peft_model).merge_and_unload()
    ref = generate_targets_reference(baseline_copy, reinforced_copy, blocks, alpha=5.0)
    assert len(batched) == len(ref) == len(blocks)
    n_labels = 0
    for a, b in zip(batched, ref, strict=True):
        assert a.labels == b.labels
        n_labels += sum(x != IGNORE for x in a.labels)
        for x, y in zip(a.confidence, b.confidence, strict=True):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-6)
    assert n_labels > 50
    assert any(blk.masked for blk in blocks) and any(blk.used_first_tokens for blk in blocks)


def test_cancellation_between_batches(setup):
    import copy

    tok, base, blocks = setup
    peft_model = _reinforced(copy.deepcopy(base))
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        compute_targets(peft_model, blocks, alpha=5.0, batch_size=2, pad_id=tok.pad_token_id,
                        reporter=Reporter("generate_targets", None, should_cancel))  # fmt: skip
    assert len(calls) == 2
