"""Block the tokenised corpus and translate anchors into generic terms, with the position mapping.

WHP (whp-method.md, "Anchored terms and translation"): each block of the original text is
copied with every anchor occurrence replaced by a translation chosen once per block; a mapping
links each original position to the translated position whose baseline logits stand for it.
Positions inside an anchor map to -1 (ignored), except the anchor's last token, which maps to the
translation's last token so that it still predicts the next real word.

Unlike the reference script, each document is tokenised once (no BOS per piece, no split words),
the last partial block is kept, a repeated anchor at position 0 is handled, and positions are
computed in one pass.

``LabelRules`` holds where our labels differ from the paper's (forgetting.md, Direction 1-2); the
paper's rules stay available (``PipelineOptions.method == "whp"``):
- answer only: in QA/chat input, only positions that predict an answer token are labelled;
- no label after the last token of a document (it predicts nothing);
- whole values: inside a typed or value anchor (a card number, a date), each inner position is
  mapped to the translation's token at the same relative index and its true next token (unless a
  bare separator) is suppressed, so the model given the first digits does not complete the rest;
- lowering a used translation's first token only when it is a word-initial piece of at least
  ``min_lower_chars`` characters (lowering " H" or " 4" would hit every word starting with it).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .errors import BadInput
from .models import render_qa, special_prefix
from .types import Anchor, ForgetSpec, PipelineOptions, QAPair

#: Anchor kinds whose every token is labelled (structured values and attribute values).
WHOLE_VALUE_KINDS = frozenset(
    {"email", "phone", "card", "account", "iban", "date", "url", "handle", "address", "value"}
)


@dataclass(frozen=True)
class LabelRules:
    """Which positions get labels, and which tokens are lowered; ``PAPER`` is the WHP script's."""

    answer_only: bool = True
    label_last: bool = False
    whole_values: bool = True
    min_lower_chars: int = 3


PAPER = LabelRules(answer_only=False, label_last=True, whole_values=False, min_lower_chars=0)
OURS = LabelRules()


def label_rules(options: PipelineOptions) -> LabelRules:
    """The paper's rules for ``method="whp"``, ours otherwise."""
    return PAPER if getattr(options, "method", "combined") == "whp" else OURS


@dataclass(frozen=True)
class Occurrence:
    """One anchor occurrence in a document: characters [start, end), tokens [tok_start, tok_end)."""

    anchor: int
    start: int
    end: int
    tok_start: int
    tok_end: int


@dataclass
class DocTokens:
    """A document tokenised once. ``ids`` includes the tokenizer's own prefix (BOS) if it has one;
    ``offsets`` are character offsets into ``text`` (prefix tokens get (0, 0))."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    n_prefix: int


@dataclass
class Block:
    doc: int
    index: int
    start: int  # token index into DocTokens.ids
    end: int
    occurrences: list[Occurrence] = field(default_factory=list)


@dataclass
class TranslatedBlock:
    """One block, original and translated.

    ``mapping[p]``: translated position whose baseline logits stand for original position p, or
    -1 (ignored). ``masked``: original positions whose label is -100 because they predict a
    repeated anchor (first-occurrence rule). ``used_first_tokens``: (position, token id) pairs:
    from original position ``position`` on, ``token id`` (a translation's first token that has
    appeared) is lowered to the row mean in the baseline logits.
    """

    doc: int
    index: int
    original_ids: list[int]
    translated_ids: list[int]
    mapping: list[int]
    masked: list[int]
    used_first_tokens: list[tuple[int, int]]
    translation_index: int
    #: Positions whose label is -100 by ``LabelRules`` (question/template tokens, after the last token).
    unlabelled: list[int] = field(default_factory=list)
    #: (position, token id): the true next token inside a whole-value anchor, lowest in g there.
    suppressed: list[tuple[int, int]] = field(default_factory=list)


def corpus_texts(spec: ForgetSpec, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Documents of the forget corpus: plain documents, then QA pairs rendered as chat."""
    texts = [d for d in spec.documents if d.strip()]
    texts += [render_qa(tokenizer, qa) for qa in spec.qa_pairs]
    return texts


def qa_spans(tokenizer: PreTrainedTokenizerBase, qa: QAPair) -> tuple[tuple[int, int], tuple[int, int]]:
    """Character spans (question, answer) of a QA pair in its rendered text (``render_qa``).

    The answer is searched after the question, so an answer that repeats the question's words is
    still found in its own turn; if a template rewrote the content, everything after the question
    counts as the answer.
    """
    text = render_qa(tokenizer, qa)
    q, a = qa.question.strip(), qa.answer.strip()
    qs = text.find(q)
    q_span = (qs, qs + len(q)) if qs >= 0 else (0, 0)
    as_ = text.find(a, q_span[1])
    a_span = (as_, as_ + len(a)) if as_ >= 0 else (q_span[1], len(text))
    return q_span, a_span


def corpus_label_spans(
    spec: ForgetSpec, tokenizer: PreTrainedTokenizerBase
) -> list[list[tuple[int, int]] | None]:
    """Per text of ``corpus_texts``: the character spans whose tokens are labelled (None: all)."""
    spans: list[list[tuple[int, int]] | None] = [None for d in spec.documents if d.strip()]
    spans += [[qa_spans(tokenizer, qa)[1]] for qa in spec.qa_pairs]
    return spans


def content_spans(spec: ForgetSpec, tokenizer: PreTrainedTokenizerBase) -> list[list[tuple[int, int]] | None]:
    """Per text of ``corpus_texts``: the spans a person wrote (question and answer, no template)."""
    spans: list[list[tuple[int, int]] | None] = [None for d in spec.documents if d.strip()]
    spans += [list(qa_spans(tokenizer, qa)) for qa in spec.qa_pairs]
    return spans


def tokenize_document(tokenizer: PreTrainedTokenizerBase, text: str) -> DocTokens:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    prefix = special_prefix(tokenizer)
    # A chat template may already write BOS into the text; never add a second one.
    if prefix and ids[: len(prefix)] == prefix:
        prefix = []
    return DocTokens(
        text=text, ids=prefix + ids, offsets=[(0, 0)] * len(prefix) + offsets, n_prefix=len(prefix)
    )


def _term_pattern(term: str) -> re.Pattern[str]:
    # Whole words only: "Ron" must not match inside "Ronald" (\w is Unicode-aware).
    return re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)")


def find_occurrences(doc: DocTokens, anchors: Sequence[Anchor]) -> list[Occurrence]:
    """Non-overlapping anchor occurrences, longest terms first ("Harry Potter" before "Harry")."""
    order = sorted(range(len(anchors)), key=lambda i: (-len(anchors[i].term), anchors[i].term))
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, int, int]] = []
    for i in order:
        for m in _term_pattern(anchors[i].term).finditer(doc.text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            found.append((s, e, i))
    found.sort()
    occs: list[Occurrence] = []
    ends = [e for _s, e in doc.offsets]  # non-decreasing: binary search, not a scan per occurrence
    for s, e, i in found:
        ts = max(bisect.bisect_right(ends, s), doc.n_prefix)
        te = ts
        while te < len(doc.ids) and doc.offsets[te][0] < e:
            te += 1
        if te == ts:
            continue
        if occs and ts < occs[-1].tok_end:
            # Two anchors sharing a token (no word boundary between them in the tokenisation):
            # keep the first; the second is rare enough to leave untranslated.
            continue
        occs.append(Occurrence(anchor=i, start=s, end=e, tok_start=ts, tok_end=te))
    return occs


def _can_split_before(doc: DocTokens, t: int) -> bool:
    """May a block end just before token t? Not inside a word (two touching alphanumerics)."""
    if t <= doc.n_prefix or t >= len(doc.ids):
        return t >= len(doc.ids) or t == doc.n_prefix
    (_ps, pe), (s, _e) = doc.offsets[t - 1], doc.offsets[t]
    if pe > s:  # both tokens are pieces of one character (byte-level BPE)
        return False
    if pe == s and 0 < s < len(doc.text) and doc.text[s - 1].isalnum() and doc.text[s].isalnum():
        return False
    return True


def make_blocks(
    docs: Sequence[DocTokens], block_size: int, occurrences: Sequence[Sequence[Occurrence]] | None = None
) -> list[Block]:
    """Cut each document into blocks of at most ``block_size`` tokens at word boundaries.

    Anchor occurrences are never split; the last partial block is kept.
    """
    blocks: list[Block] = []
    for d, doc in enumerate(docs):
        occs = list(occurrences[d]) if occurrences is not None else []
        inside: set[int] = set()
        for o in occs:
            inside.update(range(o.tok_start + 1, o.tok_end))
        n, start = len(doc.ids), 0
        while start < n:
            end = min(start + block_size, n)
            if end < n:
                cut = end
                while cut > start + 1 and (cut in inside or not _can_split_before(doc, cut)):
                    cut -= 1
                # A single word longer than a block: cut it anyway rather than loop forever.
                end = cut if cut > start + 1 else end
            blocks.append(
                Block(
                    doc=d,
                    index=len(blocks),
                    start=start,
                    end=end,
                    occurrences=[o for o in occs if o.tok_start >= start and o.tok_end <= end],
                )
            )
            start = end
    return blocks


def encode_piece(tokenizer: PreTrainedTokenizerBase, piece: str) -> list[int]:
    """Token ids of ``piece`` as it would be tokenised in running text (mid-document).

    Encoding after a newline and dropping the newline's ids avoids SentencePiece's dummy prefix
    and keeps a leading space attached the way it is in context.
    """
    pre = tokenizer.encode("\n", add_special_tokens=False)
    ids = tokenizer.encode("\n" + piece, add_special_tokens=False)
    if ids[: len(pre)] == pre and len(ids) > len(pre):
        return list(ids[len(pre) :])
    return list(tokenizer.encode(piece, add_special_tokens=False))


def _lowerable(tokenizer: PreTrainedTokenizerBase, token: int, min_chars: int) -> bool:
    """May a translation's first token be lowered? Only a word-initial piece of ``min_chars`` or more
    characters ("ĠHar"), not " ", " H" or " 4", which start countless other words."""
    if min_chars <= 0:
        return True
    core = str(tokenizer.decode([token])).strip()
    return len(core) >= min_chars and core[0].isalpha()


def _unlabelled_positions(
    doc: DocTokens, block: Block, spans: Sequence[tuple[int, int]] | None, rules: LabelRules
) -> list[int]:
    """Block positions whose label is -100 by the rules (QA: not predicting an answer token; the
    document's final position)."""
    out: list[int] = []
    if rules.answer_only and spans is not None:
        for t in range(block.start, block.end):
            nxt = t + 1
            if nxt >= len(doc.ids):
                out.append(t - block.start)
                continue
            s, e = doc.offsets[nxt]
            if nxt < doc.n_prefix or not any(s < b and a < max(e, s + 1) for a, b in spans):
                out.append(t - block.start)
    if not rules.label_last and block.end == len(doc.ids) and block.end > block.start:
        out.append(block.end - 1 - block.start)
    return sorted(set(out))


def translate_block(
    tokenizer: PreTrainedTokenizerBase,
    doc: DocTokens,
    block: Block,
    anchors: Sequence[Anchor],
    rules: LabelRules = PAPER,
    label_spans: Sequence[tuple[int, int]] | None = None,
) -> TranslatedBlock:
    original = doc.ids[block.start : block.end]
    translated: list[int] = []
    mapping = [-1] * len(original)
    masked: list[int] = []
    suppressed: list[tuple[int, int]] = []
    used: dict[int, int] = {}
    seen_anchors: set[int] = set()
    k = block.index
    occ_at = {o.tok_start: o for o in block.occurrences}
    t = block.start
    while t < block.end:
        occ = occ_at.get(t)
        if occ is None:
            mapping[t - block.start] = len(translated)
            translated.append(doc.ids[t])
            t += 1
            continue
        anchor = anchors[occ.anchor]
        word = anchor.translations[k % len(anchor.translations)]
        # Raw character span of the anchor's tokens: from the end of the previous token, so that a
        # leading space a tokenizer trims from the offsets is still part of the piece.
        raw_start = doc.offsets[occ.tok_start - 1][1] if occ.tok_start > doc.n_prefix else 0
        raw_end = doc.offsets[occ.tok_end - 1][1]
        piece = doc.text[raw_start : occ.start] + word + doc.text[occ.end : raw_end]
        piece_ids = encode_piece(tokenizer, piece)
        first_pos = occ.tok_start - block.start
        last_pos = occ.tok_end - 1 - block.start
        if occ.anchor in seen_anchors and first_pos > 0:
            masked.append(first_pos - 1)
        seen_anchors.add(occ.anchor)
        t0 = len(translated)
        translated.extend(piece_ids)
        mapping[last_pos] = len(translated) - 1
        n_orig, n_tr = last_pos - first_pos + 1, len(piece_ids)
        if rules.whole_values and anchor.kind in WHOLE_VALUE_KINDS and n_orig > 1:
            # Inner position j (predicting the value's token j+1) stands for the translation's
            # token at the same relative index, and may not predict the true token, unless that
            # is a bare separator (" ", "-", "@", "."), which tells nothing about the value.
            for j in range(n_orig - 1):
                q = t0 + (j * (n_tr - 1)) // (n_orig - 1) if n_tr > 1 else t0
                mapping[first_pos + j] = q
                nxt = original[first_pos + j + 1]
                if any(ch.isalnum() for ch in str(tokenizer.decode([nxt]))):
                    suppressed.append((first_pos + j, nxt))
        if _lowerable(tokenizer, piece_ids[0], rules.min_lower_chars):
            used.setdefault(piece_ids[0], last_pos)
        t = occ.tok_end
    return TranslatedBlock(
        doc=block.doc,
        index=block.index,
        original_ids=list(original),
        translated_ids=translated,
        mapping=mapping,
        masked=masked,
        used_first_tokens=sorted((pos, tok) for tok, pos in used.items()),
        translation_index=k,
        unlabelled=_unlabelled_positions(doc, block, label_spans, rules),
        suppressed=suppressed,
    )


def translate_corpus(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    anchors: Sequence[Anchor],
    block_size: int,
    *,
    rules: LabelRules = PAPER,
    label_spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
) -> list[TranslatedBlock]:
    """Tokenise, block and translate every document.

    ``label_spans[d]``: character spans of text ``d`` whose tokens get labels (``corpus_label_spans``;
    None: every token), used when ``rules.answer_only``.
    """
    for a in anchors:
        if not a.translations or any(not w.strip() for w in a.translations):
            raise BadInput(f"anchor #{anchors.index(a)} has an empty translation")
    if label_spans is not None and len(label_spans) != len(texts):
        raise ValueError("label_spans must have one entry per text")
    docs = [tokenize_document(tokenizer, t) for t in texts]
    occs = [find_occurrences(d, anchors) for d in docs]
    blocks = make_blocks(docs, block_size, occs)
    return [
        translate_block(
            tokenizer, docs[b.doc], b, anchors, rules, label_spans[b.doc] if label_spans is not None else None
        )
        for b in blocks
    ]


def plain_blocks(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block_size: int
) -> list[list[int]]:
    """Blocks of token ids with no translation (reinforcement, mining, retain text)."""
    docs = [tokenize_document(tokenizer, t) for t in texts]
    return [docs[b.doc].ids[b.start : b.end] for b in make_blocks(docs, block_size)]
