"""Block the tokenised corpus and translate anchors into generic terms, with the position mapping.

WHP (whp-method.md, "Anchored terms and translation"): each block of the original text is
copied with every anchor occurrence replaced by a translation chosen once per block; a mapping
links each original position to the translated position whose baseline logits stand for it.
Positions inside an anchor map to -1 (ignored), except the anchor's last token, which maps to the
translation's last token so that it still predicts the next real word.

Unlike the reference script, each document is tokenised once (no BOS per piece, no split words),
the last partial block is kept, a repeated anchor at position 0 is handled, and positions are
computed in one pass.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .errors import BadInput
from .models import render_qa, special_prefix
from .types import Anchor, ForgetSpec


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


def corpus_texts(spec: ForgetSpec, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Documents of the forget corpus: plain documents, then QA pairs rendered as chat."""
    texts = [d for d in spec.documents if d.strip()]
    texts += [render_qa(tokenizer, qa) for qa in spec.qa_pairs]
    return texts


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
        inside = set()
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


def translate_block(
    tokenizer: PreTrainedTokenizerBase, doc: DocTokens, block: Block, anchors: Sequence[Anchor]
) -> TranslatedBlock:
    original = doc.ids[block.start : block.end]
    translated: list[int] = []
    mapping = [-1] * len(original)
    masked: list[int] = []
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
        translated.extend(piece_ids)
        mapping[last_pos] = len(translated) - 1
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
    )


def translate_corpus(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], anchors: Sequence[Anchor], block_size: int
) -> list[TranslatedBlock]:
    """Tokenise, block and translate every document."""
    for a in anchors:
        if not a.translations or any(not w.strip() for w in a.translations):
            raise BadInput(f"anchor #{anchors.index(a)} has an empty translation")
    docs = [tokenize_document(tokenizer, t) for t in texts]
    occs = [find_occurrences(d, anchors) for d in docs]
    blocks = make_blocks(docs, block_size, occs)
    return [translate_block(tokenizer, docs[b.doc], b, anchors) for b in blocks]


def plain_blocks(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block_size: int
) -> list[list[int]]:
    """Blocks of token ids with no translation (reinforcement, mining, retain text)."""
    docs = [tokenize_document(tokenizer, t) for t in texts]
    return [docs[b.doc].ids[b.start : b.end] for b in make_blocks(docs, block_size)]
