"""Blocking, anchor translation and the original -> translated position mapping (whp-method.md)."""

from __future__ import annotations

import pytest

from gpu_runtime.pipeline.testing import tiny_tokenizer
from gpu_runtime.pipeline.translate import (
    OURS,
    PAPER,
    corpus_label_spans,
    corpus_texts,
    encode_piece,
    find_occurrences,
    label_rules,
    make_blocks,
    plain_blocks,
    tokenize_document,
    translate_corpus,
)
from gpu_runtime.pipeline.types import Anchor, ForgetSpec, PipelineOptions, QAPair


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def toks(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def check_mapping(tok, blk, anchors_terms):
    """Every mapped non-anchor position carries the same token in both sequences."""
    for _p, q in enumerate(blk.mapping):
        if q >= 0:
            assert 0 <= q < len(blk.translated_ids)
    # mapping is strictly increasing where defined
    defined = [q for q in blk.mapping if q >= 0]
    assert defined == sorted(set(defined))


def test_whole_document_tokenised_once_with_one_bos(tok):
    text = "Harry said hello to Ron. " * 10
    blocks = plain_blocks(tok, [text], 16)
    assert blocks[0][0] == tok.bos_token_id
    assert all(tok.bos_token_id not in b for b in blocks[1:])
    flat = [i for b in blocks for i in b]
    assert flat == tok(text)["input_ids"]  # same ids as tokenising the whole document
    assert sum(map(len, blocks)) == len(flat)  # the last partial block is kept


def test_blocks_do_not_split_words(tok):
    text = "Hermione Granger visited Hogsmeade and Kraków; naïve café near Zürich. " * 6
    doc = tokenize_document(tok, text)
    for b in make_blocks([doc], 7):
        assert b.end - b.start <= 7
        if b.end < len(doc.ids):
            s = doc.offsets[b.end][0]
            pe = doc.offsets[b.end - 1][1]
            assert not (pe == s and text[s - 1].isalnum() and text[s].isalnum())
            assert pe <= s


def test_single_token_anchor_maps_last_token_to_translation_last(tok):
    anchors = [Anchor(term="Ron", translations=["Bob"])]
    [blk] = translate_corpus(tok, ["Harry said hello to Ron. Ron smiled."], anchors, 512)
    o, t = toks(tok, blk.original_ids), toks(tok, blk.translated_ids)
    p = o.index("ĠRon")
    assert t[blk.mapping[p]] == "ob"  # "ĠB", "ob": the translation's last token
    assert blk.mapping[p - 1] >= 0 and t[blk.mapping[p - 1]] == o[p - 1]
    assert t[blk.mapping[p + 1]] == "."
    check_mapping(tok, blk, ["Ron"])


def test_multi_token_anchor_inner_tokens_ignored(tok):
    anchors = [Anchor(term="Harry Potter", translations=["Harold Porter"])]
    [blk] = translate_corpus(tok, ["Yes, Harry Potter went to Hogwarts."], anchors, 512)
    o, _t = toks(tok, blk.original_ids), toks(tok, blk.translated_ids)
    s = o.index("ĠHarry") if "ĠHarry" in o else o.index("ĠH")
    e = o.index("Ġw")  # first token after the anchor
    assert all(blk.mapping[p] == -1 for p in range(s, e - 1))
    assert tok.decode(blk.translated_ids[: blk.mapping[e - 1] + 1]).endswith("Harold Porter")
    assert tok.decode(blk.translated_ids, skip_special_tokens=True) == "Yes, Harold Porter went to Hogwarts."


def test_repeated_anchor_masked_and_first_tokens_recorded(tok):
    anchors = [Anchor(term="Ron", translations=["Bob"]), Anchor(term="Harry", translations=["Harold"])]
    text = "Harry said hello to Ron. Ron smiled at Harry."
    [blk] = translate_corpus(tok, [text], anchors, 512)
    o = toks(tok, blk.original_ids)
    second_ron = [i for i, x in enumerate(o) if x == "ĠRon"][1]
    assert second_ron - 1 in blk.masked  # the position predicting the second "Ron"
    last_h = len(o) - 2  # "... at Harry ."
    assert blk.masked == sorted(blk.masked) and len(blk.masked) == 2
    assert any(pos < last_h for pos, _ in blk.used_first_tokens)
    used = dict((tok_id, pos) for pos, tok_id in blk.used_first_tokens)
    bob = encode_piece(tok, " Bob")[0]
    assert used[bob] == o.index("ĠRon")


def test_anchor_at_position_zero_and_at_block_end(tok):
    # No BOS in a non-first block: a repeated anchor at position 0 must not index position -1.
    anchors = [Anchor(term="Ron", translations=["Bob"])]
    text = "Ron smiled. Ron smiled. Ron smiled. Ron smiled. Ron smiled. Ron"
    blocks = translate_corpus(tok, [text], anchors, 4)
    assert len(blocks) > 2
    for blk in blocks:
        assert all(m >= 0 for m in blk.masked)
        assert len(blk.mapping) == len(blk.original_ids)
    last = blocks[-1]
    assert toks(tok, last.original_ids)[-1] == "ĠRon"
    assert last.mapping[-1] == len(last.translated_ids) - 1
    starts_with_anchor = [b for b in blocks if toks(tok, b.original_ids)[0] in ("ĠRon", "Ron")]
    assert starts_with_anchor and all(0 not in b.masked and -1 not in b.masked for b in starts_with_anchor)


def test_longer_and_shorter_translations_and_unicode(tok):
    anchors = [
        Anchor(term="Élodie", translations=["Bea"]),
        Anchor(term="Ron", translations=["Maximiliano Bartholomew"]),
    ]
    text = "Élodie met Ron in Zürich — Élodie laughed, naïve Ron."
    [blk] = translate_corpus(tok, [text], anchors, 512)
    decoded = tok.decode(blk.translated_ids, skip_special_tokens=True)
    assert (
        decoded == "Bea met Maximiliano Bartholomew in Zürich — Bea laughed, naïve Maximiliano Bartholomew."
    )
    o, t = blk.original_ids, blk.translated_ids
    for p, q in enumerate(blk.mapping):
        if q >= 0 and p + 1 < len(o) and blk.mapping[p + 1] >= 0 and q + 1 < len(t):
            # outside anchors, the next original token is the next translated token
            if blk.mapping[p + 1] == q + 1:
                assert o[p + 1] == t[q + 1]


def test_one_translation_per_anchor_per_block(tok):
    anchors = [Anchor(term="Ron", translations=["Bob", "Tom"])]
    blocks = translate_corpus(tok, ["Ron and Ron. " * 8], anchors, 8)
    for blk in blocks:
        decoded = tok.decode(blk.translated_ids, skip_special_tokens=True)
        word = ["Bob", "Tom"][blk.index % 2]
        other = ["Bob", "Tom"][1 - blk.index % 2]
        assert other not in decoded and ("Ron" not in decoded)
        assert word in decoded or decoded.strip() in ("and", ".")


def test_word_boundaries(tok):
    anchors = [Anchor(term="Ron", translations=["Bob"])]
    [blk] = translate_corpus(tok, ["Ronald met Ron."], anchors, 512)
    assert tok.decode(blk.translated_ids, skip_special_tokens=True) == "Ronald met Bob."


# ---------------------------------------------------------------- label rules (forgetting.md, Direction 1-2)

CARD = "4111 1111 1111 1111"
CARD_TEXT = f"Her card number is {CARD} and it expired."


def test_label_rules_follow_the_method():
    assert label_rules(PipelineOptions(method="whp")) == PAPER
    assert label_rules(PipelineOptions()) == OURS == label_rules(PipelineOptions(method="npo"))
    assert OURS.answer_only and not OURS.label_last and OURS.whole_values and OURS.min_lower_chars == 3


def test_qa_labels_answer_tokens_only_and_nothing_after_the_last_token(tok):
    qa = QAPair(question="Where does Alice live?", answer="Alice lives in Paris.")
    spec = ForgetSpec(documents=["Harry said hello to Ron."], qa_pairs=[qa])
    texts, spans = corpus_texts(spec, tok), corpus_label_spans(spec, tok)
    assert texts[1][spans[1][0][0] : spans[1][0][1]] == "Alice lives in Paris."
    doc_blk, qa_blk = translate_corpus(tok, texts, [], 512, rules=OURS, label_spans=spans)
    # A plain document: every position is labelled except the final one (it predicts nothing).
    assert doc_blk.unlabelled == [len(doc_blk.original_ids) - 1]
    # QA: exactly the positions that predict an answer token; question and template get none.
    labelled = [p for p in range(len(qa_blk.original_ids)) if p not in qa_blk.unlabelled]
    assert tok.decode([qa_blk.original_ids[p + 1] for p in labelled]).strip() == "Alice lives in Paris."
    assert labelled == list(range(labelled[0], labelled[-1] + 1))
    # The paper's rules label everything.
    for blk in translate_corpus(tok, texts, [], 512, rules=PAPER, label_spans=spans):
        assert blk.unlabelled == []


def test_no_label_after_the_last_token_only_in_the_last_block(tok):
    blocks = translate_corpus(tok, ["Harry said hello to Ron. " * 4], [], 8, rules=OURS)
    assert len(blocks) > 2
    assert [b.unlabelled for b in blocks[:-1]] == [[]] * (len(blocks) - 1)
    assert blocks[-1].unlabelled == [len(blocks[-1].original_ids) - 1]


def test_lowering_skips_short_first_tokens(tok):
    # "Harry" at the start of the text translates to "Hermione" with no leading space: its first token
    # is "H", which starts countless words; " Hermione" and " Hogwarts" are whole word-initial pieces.
    anchors = [Anchor(term="Ron", translations=["Hogwarts"]), Anchor(term="Harry", translations=["Hermione"])]
    text = "Harry said hello to Ron. Ron smiled at Harry."
    [ours] = translate_corpus(tok, [text], anchors, 512, rules=OURS)
    [paper] = translate_corpus(tok, [text], anchors, 512, rules=PAPER)
    assert [tok.decode([t]) for _p, t in ours.used_first_tokens] == [" Hogwarts", " Hermione"]
    assert [tok.decode([t]) for _p, t in paper.used_first_tokens] == ["H", " Hogwarts", " Hermione"]
    # The short one is gone, the positions of the others are unchanged.
    assert set(ours.used_first_tokens) < set(paper.used_first_tokens)


def test_whole_value_anchor_maps_every_inner_position_and_suppresses_the_true_token(tok):
    anchors = [Anchor(term=CARD, kind="card", translations=["4734 0963 4908 9428"])]
    [blk] = translate_corpus(tok, [CARD_TEXT], anchors, 512, rules=OURS)
    doc = tokenize_document(tok, CARD_TEXT)
    [occ] = find_occurrences(doc, anchors)
    inner = range(occ.tok_start, occ.tok_end - 1)  # positions predicting the value's 2nd..last token
    assert len(inner) > 10
    assert all(blk.mapping[p] >= 0 for p in inner)
    mapped = [blk.mapping[p] for p in inner]
    assert mapped == sorted(mapped)
    # Same relative index: the fake card has as many tokens as the true one here.
    assert tok.decode([blk.translated_ids[q + 1] for q in mapped]) == "734 0963 4908 9428"
    sup = dict(blk.suppressed)
    for p in inner:
        nxt = blk.original_ids[p + 1]
        if tok.decode([nxt]).strip():
            assert sup[p] == nxt  # every digit token
        else:
            assert p not in sup  # a bare separator tells nothing
    # The paper ignores the inner positions; names are never whole values.
    [paper] = translate_corpus(tok, [CARD_TEXT], anchors, 512, rules=PAPER)
    assert all(paper.mapping[p] == -1 for p in inner) and paper.suppressed == []
    named = [Anchor(term="Harry Potter", kind="person", translations=["Harold Porter"])]
    [blk2] = translate_corpus(tok, ["Yes, Harry Potter went."], named, 512, rules=OURS)
    assert blk2.suppressed == [] and blk2.mapping.count(-1) > 0
