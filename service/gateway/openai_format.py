"""Response objects in the exact shapes the official ``openai`` client parses.

Engine results are read by attribute (duck typing) so this module stays free of torch imports.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object (compact: this runs once per token)."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def usage_dict(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": int(usage.prompt_tokens),
        "completion_tokens": int(usage.completion_tokens),
        "total_tokens": int(usage.prompt_tokens) + int(usage.completion_tokens),
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprob_entry(lp: Any) -> dict[str, Any]:
    """One entry of ``choices[].logprobs.content`` (ChatCompletionTokenLogprob)."""
    return {
        "token": lp.token,
        "logprob": float(lp.logprob),
        "bytes": _bytes(lp.token),
        "top_logprobs": [
            {"token": t.token, "logprob": float(t.logprob), "bytes": _bytes(t.token)} for t in lp.top_logprobs
        ],
    }


def chat_logprobs(entries: list[Any] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": [chat_logprob_entry(lp) for lp in entries], "refusal": None}


def completion_logprobs(entries: list[Any] | None, text_start: int = 0) -> dict[str, Any] | None:
    """Legacy completions logprobs: parallel lists plus the character offset of each token."""
    if entries is None:
        return None
    offsets: list[int] = []
    pos = text_start
    for lp in entries:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in entries],
        "token_logprobs": [float(lp.logprob) for lp in entries],
        # Two alternatives can decode to the same text; the first (most likely) one wins the key.
        "top_logprobs": [_top_map(lp) for lp in entries],
        "text_offset": offsets,
    }


def _top_map(lp: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in lp.top_logprobs:
        out.setdefault(t.token, float(t.logprob))
    return out


def chat_completion(
    *, completion_id: str, model: str, fingerprint: str | None, result: Any, want_logprobs: bool
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": chat_logprobs(result.logprobs) if want_logprobs else None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage_dict(result.usage),
    }


def text_completion(
    *, completion_id: str, model: str, fingerprint: str | None, result: Any, want_logprobs: bool
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "text": result.text,
                "logprobs": completion_logprobs(result.logprobs) if want_logprobs else None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage_dict(result.usage),
    }


class ChunkWriter:
    """Builds the SSE chunks of one streamed completion (chat or text)."""

    def __init__(
        self, *, chat: bool, model: str, fingerprint: str | None, include_usage: bool, want_logprobs: bool
    ) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        self.model = model
        self.fingerprint = fingerprint
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs
        self._text_pos = 0

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            # With include_usage every chunk carries "usage": null except the final usage-only chunk.
            chunk["usage"] = None
        return chunk

    def first(self) -> bytes | None:
        """Chat streams open with the assistant role; text completions have no such chunk."""
        if not self.chat:
            return None
        return sse(
            self._envelope(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        )

    def token(self, text: str, logprob: Any | None) -> bytes | None:
        if not text and (logprob is None or not self.want_logprobs):
            return None
        entries = [logprob] if (self.want_logprobs and logprob is not None) else None
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": chat_logprobs(entries),
                "finish_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": completion_logprobs(entries, self._text_pos),
                "finish_reason": None,
            }
            self._text_pos += len(text)
        return sse(self._envelope([choice]))

    def finish(self, finish_reason: str, usage: Any | None) -> list[bytes]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        out = [sse(self._envelope([choice]))]
        if self.include_usage and usage is not None:
            final = self._envelope([])
            final["usage"] = usage_dict(usage)
            out.append(sse(final))
        out.append(DONE)
        return out


def model_object(model_id: str, *, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    """A ``Model`` as ``/v1/models`` lists it; lineage fields ride along as extras the client keeps."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
