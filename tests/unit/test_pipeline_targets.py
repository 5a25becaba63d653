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
from gpu_runtime.pipeline.translate import (
    OURS,
    PAPER,
    TranslatedBlock,
    corpus_label_spans,
    corpus_texts,
    find_occurrences,
    tokenize_document,
    translate_corpus,
)
from gpu_runtime.pipeline.types import Anchor, ForgetSpec, QAPair


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


# ---------------------------------------------------------------- label rules beyond the paper

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def rules_setup():
    tok = tiny_tokenizer()
    base = tiny_model(len(tok), seed=1).double()
    spec = ForgetSpec(
        documents=[f"Her card number is {CARD} and it expired on 12 March 1987.", *SENTENCES[:2]],
        qa_pairs=[
            QAPair(question="What is Harry's card number?", answer=f"Harry's card number is {CARD}."),
            QAPair(question="Where does Alice live?", answer="Alice lives in Paris."),
        ],
    )
    anchors = [
        Anchor(term=CARD, kind="card", translations=["4734 0963 4908 9428", "4272 9685 3028 4323"]),
        Anchor(term="12 March 1987", kind="date", translations=["19 June 1992"]),
        Anchor(term="Harry", kind="first_name", translations=["Hermione", "Henry"]),
        Anchor(term="Paris", kind="value", translations=["Salem"]),
    ]
    texts, spans = corpus_texts(spec, tok), corpus_label_spans(spec, tok)
    ours = translate_corpus(tok, texts, anchors, 128, rules=OURS, label_spans=spans)
    paper = translate_corpus(tok, texts, anchors, 128, rules=PAPER, label_spans=spans)
    return tok, base, texts, anchors, ours, paper


def test_batched_equals_reference_with_our_rules(rules_setup):
    import copy

    tok, base, _texts, _anchors, blocks, _paper = rules_setup
    assert any(b.suppressed for b in blocks) and any(b.unlabelled for b in blocks)
    peft_model = _reinforced(copy.deepcopy(base))
    batched = compute_targets(peft_model, blocks, alpha=5.0, batch_size=3, pad_id=tok.pad_token_id)
    ref = generate_targets_reference(
        copy.deepcopy(base), copy.deepcopy(peft_model).merge_and_unload(), blocks, alpha=5.0
    )
    for a, b in zip(batched, ref, strict=True):
        assert a.labels == b.labels
    # alpha = 0 with a suppressed token: no NaN sneaks into the argmax.
    zero = compute_targets(peft_model, blocks, alpha=0.0, batch_size=3, pad_id=tok.pad_token_id)
    sup = {(i, p): t for i, b in enumerate(blocks) for p, t in b.suppressed}
    assert all(zero[i].labels[p] not in (t, IGNORE) for (i, p), t in sup.items())


def _card_positions(tok, text: str) -> tuple[int, int]:
    doc = tokenize_document(tok, text)
    [occ] = find_occurrences(doc, [Anchor(term=CARD, translations=["x"])])
    return occ.tok_start, occ.tok_end


def test_every_token_of_a_value_but_the_first_is_labelled_away_from_the_truth(rules_setup):
    import copy
    import dataclasses

    tok, base, texts, _anchors, ours, paper = rules_setup
    # A baseline that has memorised the card: given the first digits, it completes the rest.
    model = copy.deepcopy(base).float().train()
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    peft_model = _reinforced(model)
    t0, t1 = _card_positions(tok, texts[0])
    assert t1 - t0 > 10
    inner = [p for p in range(t0, t1 - 1) if tok.decode([ours[0].original_ids[p + 1]]).strip()]

    def labels(blk: TranslatedBlock) -> list[int]:
        assert blk.doc == 0 and t1 <= len(blk.original_ids)  # the card is in this block
        # alpha = 0: the baseline's own prediction, the hardest case for forgetting.
        [tgt] = compute_targets(peft_model, [blk], alpha=0.0, batch_size=1, pad_id=tok.pad_token_id)
        return tgt.labels

    ours_labels = labels(ours[0])
    for p in inner:  # position p predicts the value's token p + 1 (a bare space is skipped)
        assert ours_labels[p] not in (IGNORE, ours[0].original_ids[p + 1])
    # Without the suppression the memorised digits come back: the test can fail.
    unsuppressed = labels(dataclasses.replace(ours[0], suppressed=[]))
    assert any(unsuppressed[p] == ours[0].original_ids[p + 1] for p in inner)
    # The paper leaves the inner positions untrained.
    paper_labels = labels(paper[0])
    assert all(paper_labels[p] == IGNORE for p in inner)


def test_no_label_after_the_last_token_and_answer_only(rules_setup):
    import copy

    tok, base, texts, _anchors, ours, paper = rules_setup
    peft_model = _reinforced(copy.deepcopy(base))
    out = compute_targets(peft_model, ours, alpha=5.0, batch_size=4, pad_id=tok.pad_token_id)
    out_paper = compute_targets(peft_model, paper, alpha=5.0, batch_size=4, pad_id=tok.pad_token_id)
    last = {}
    for blk, t, tp in zip(ours, out, out_paper, strict=True):
        last[blk.doc] = (t, tp)
    for t, tp in last.values():
        assert t.labels[-1] == IGNORE and tp.labels[-1] != IGNORE
    # QA documents: every labelled position predicts a token of the answer, and most answer tokens
    # are predicted (the first-occurrence rule may drop a repeated anchor).
    spans = corpus_label_spans(ForgetSpec(qa_pairs=[QAPair(question="q", answer="a")]), tok)
    assert spans == [[(spans[0][0][0], spans[0][0][1])]]
    for d in (3, 4):
        doc = tokenize_document(tok, texts[d])
        a0 = texts[d].index("assistant:") + len("assistant: ")
        a1 = texts[d].index("</s>", a0)
        [(blk, tgt)] = [(b, t) for b, t in zip(ours, out, strict=True) if b.doc == d]  # one block
        hits = [p + 1 for p, lab in enumerate(tgt.labels) if lab != IGNORE]
        assert len(hits) >= 5 and blk.original_ids == doc.ids
        for tpos in hits:
            s_, e_ = doc.offsets[tpos]
            assert a0 - 1 <= s_ and e_ <= a1, texts[d][s_:e_]
