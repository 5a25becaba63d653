"""Incremental detokenization with stop sequences: turns generated token ids into safe text deltas.

Deltas are computed by decoding a short window of recent tokens twice (with and without the
newest ones) and taking the difference, so tokenizers whose decode of a slice differs from the
decode of the whole (leading-space markers, byte fallback) still yield exact text. Text that ends
inside a multi-byte character, or that could still become a stop sequence, is held back.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


_REPLACEMENT = "\ufffd"


class TextAssembler:
    """Accumulates one request's output text; trims at the first stop sequence."""

    def __init__(self, tokenizer: Decoder, stop: list[str]) -> None:
        self._tok = tokenizer
        self._stop = list(stop)
        self._max_stop = max((len(s) for s in stop), default=0)
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens whose text is already in self.text
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def _absorb(self, *, final: bool) -> None:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(_REPLACEMENT)):
            before = len(self.text)
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._check_stop(before)

    def _check_stop(self, before: int) -> None:
        if not self._stop:
            return
        # Only text that could overlap the new part needs searching.
        start = max(0, before - self._max_stop + 1)
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop sequence."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def add(self, token_id: int) -> str:
        """Add a generated token; returns the text that is now safe to emit (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        self._absorb(final=False)
        if self.stopped:
            return self.flush()
        safe = len(self.text) - self._held_back()
        if safe <= self._emitted:
            return ""
        delta = self.text[self._emitted : safe]
        self._emitted = safe
        return delta

    def flush(self) -> str:
        """At the end of generation: emit whatever was held back (partial characters included)."""
        if not self.stopped and self._read < len(self._ids):
            self._absorb(final=True)
        delta = self.text[self._emitted :]
        self._emitted = len(self.text)
        return delta
