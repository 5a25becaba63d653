"""A fake OpenAI-compatible upstream that behaves like vLLM with runtime LoRA updating, for tests and benches.

What it mimics (vLLM's ``serving_models.py`` semantics): ``POST /v1/load_lora_adapter``
``{"lora_name", "lora_path"}`` answers 200, 400 when the name is already loaded (or a field is missing)
and 404 when the path holds no adapter; ``POST /v1/unload_lora_adapter`` answers 404 for an unknown name;
``GET /v1/models`` lists the base model and every loaded LoRA (``parent`` = the base); a completion for a
model it does not hold is a 404 (never the base model). Chat and text completions, streamed or not,
answer deterministically and say which model answered: ``"<model> says: <the prompt's words>"``, one
word per token, with optional per-token latency (``token_delay_s``) so a benchmark can model decoding.
``/tokenize`` and ``echo`` + ``logprobs`` give prompt log-probabilities, as vLLM's do.

:class:`FakeUpstream` runs it with uvicorn on a free loopback port in a thread; ``restart()`` brings it
back empty on the same port (a restarted vLLM forgets runtime-loaded adapters). ``python -m
tests.support.fake_vllm --port N`` runs one as a process (benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_BASE = "fake-base-model"


def _token_id(word: str) -> int:
    return zlib.crc32(word.encode("utf-8")) % 50_000


def _logprob(model: str, token: str) -> float:
    """A deterministic log-probability that differs between models (so before/after scores differ)."""
    return -((zlib.crc32(f"{model}|{token}".encode()) % 1000) / 250.0) - 0.001


@dataclass
class FakeVLLM:
    """The ASGI app and its state (what is loaded, what was asked)."""

    name: str = "fake-vllm"
    base_model: str = DEFAULT_BASE
    token_delay_s: float = 0.0
    api_key: str | None = None
    loras: dict[str, str] = field(default_factory=dict)  # name -> path
    served: Counter[str] = field(default_factory=Counter)  # model -> completions answered
    load_calls: list[str] = field(default_factory=list)
    refuse_loads: bool = False  # answer loads with a 500 (an upstream that cannot take the adapter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if self.api_key is not None:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {self.api_key}":
                await self._json(send, 401, _error("Unauthorized", "AuthenticationError", 401))
                return
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            await self._json(send, 400, _error("invalid JSON", "BadRequestError", 400))
            return
        route = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/load_lora_adapter"): self._load,
            ("POST", "/v1/unload_lora_adapter"): self._unload,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/tokenize"): self._tokenize,
        }.get((method, path))
        if route is None:
            await self._json(send, 404, {"detail": "Not Found"})
            return
        await route(data, send)

    # -- plumbing -------------------------------------------------------------------------------------
    async def _json(self, send: Send, status: int, payload: Any) -> None:
        raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    async def _text(self, send: Send, status: int, text: str) -> None:
        raw = json.dumps(text).encode()  # vLLM answers a JSON string on success
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    # -- routes ------------------------------------------------------------------------------------------
    async def _health(self, data: Any, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def _models(self, data: Any, send: Send) -> None:
        cards = [{"id": self.base_model, "object": "model", "root": self.base_model, "parent": None}]
        cards += [
            {"id": name, "object": "model", "root": path, "parent": self.base_model}
            for name, path in self.loras.items()
        ]
        await self._json(send, 200, {"object": "list", "data": cards})

    async def _load(self, data: Any, send: Send) -> None:
        name, path = data.get("lora_name"), data.get("lora_path")
        self.load_calls.append(str(name))
        if not name or not path:
            await self._json(
                send,
                400,
                _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400),
            )
            return
        if self.refuse_loads:
            await self._json(send, 500, _error("out of LoRA memory", "InternalServerError", 500))
            return
        if name in self.loras:
            await self._json(
                send,
                400,
                _error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400),
            )
            return
        if not (Path(path) / "adapter_config.json").is_file():
            await self._json(send, 404, _error(f"No adapter found for {path}", "NotFoundError", 404))
            return
        self.loras[name] = path
        await self._text(send, 200, f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, data: Any, send: Send) -> None:
        name = data.get("lora_name")
        if name not in self.loras:
            await self._json(
                send, 404, _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            )
            return
        del self.loras[name]
        await self._text(send, 200, f"Success: LoRA adapter '{name}' removed successfully.")

    def _known(self, model: Any) -> bool:
        return model == self.base_model or model in self.loras

    async def _unknown(self, send: Send, model: Any) -> None:
        await self._json(send, 404, _error(f"The model `{model}` does not exist.", "NotFoundError", 404))

    @staticmethod
    def _render(messages: list[dict[str, Any]]) -> str:
        return " ".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")

    def _answer(self, model: str, prompt_words: list[str], max_tokens: int) -> tuple[list[str], str]:
        words = [f"{model}", "says:", *prompt_words] or ["..."]
        if len(words) > max_tokens:
            return words[:max_tokens], "length"
        return words, "stop"

    async def _chat(self, data: Any, send: Send) -> None:
        await self._complete(data, send, chat=True)

    async def _completions(self, data: Any, send: Send) -> None:
        await self._complete(data, send, chat=False)

    async def _complete(self, data: dict[str, Any], send: Send, *, chat: bool) -> None:
        model = data.get("model")
        if not self._known(model):
            await self._unknown(send, model)
            return
        assert isinstance(model, str)
        if chat:
            prompt_words = self._render(data.get("messages") or []).split()
        else:
            prompt = data.get("prompt")
            prompt_words = (
                [f"t{t}" for t in prompt] if isinstance(prompt, list) else str(prompt or "").split()
            )
        max_tokens = int(data.get("max_tokens") or 16)
        words, finish = self._answer(model, prompt_words, max_tokens)
        self.served[model] += 1
        usage = {
            "prompt_tokens": len(prompt_words),
            "completion_tokens": len(words),
            "total_tokens": len(prompt_words) + len(words),
        }
        want = data.get("logprobs")
        top_n = int(data.get("top_logprobs") or 0) if chat else int(want or 0)
        if data.get("stream"):
            await self._stream(send, data, model, words, finish, usage, chat=chat, want=want, top_n=top_n)
            return
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s * len(words))
        text = " ".join(words)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": [self._chat_lp(model, w, top_n) for w in words]} if want else None,
                "finish_reason": finish,
            }
        else:
            echo = bool(data.get("echo"))
            tokens = (prompt_words if echo else []) + words
            values: list[float | None] = [_logprob(model, t) for t in tokens]
            if echo and values:
                values[0] = None  # the first prompt token has no context, as in vLLM
            choice = {
                "index": 0,
                "text": (" ".join(prompt_words) + " " if echo else "") + text,
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": values,
                    "top_logprobs": [self._top(model, t, top_n) for t in tokens],
                    "text_offset": list(range(len(tokens))),
                }
                if want is not None
                else None,
                "finish_reason": finish,
            }
        await self._json(
            send,
            200,
            {
                "id": f"fake-{self.name}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    def _top(self, model: str, token: str, n: int) -> dict[str, float]:
        alts = [token, *(f"alt{i}" for i in range(1, n))][:n]
        return {t: _logprob(model, t) for t in alts}

    def _chat_lp(self, model: str, token: str, n: int) -> dict[str, Any]:
        return {
            "token": token,
            "logprob": _logprob(model, token),
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": v, "bytes": list(t.encode())}
                for t, v in self._top(model, token, n).items()
            ],
        }

    async def _stream(
        self,
        send: Send,
        data: dict[str, Any],
        model: str,
        words: list[str],
        finish: str,
        usage: dict[str, int],
        *,
        chat: bool,
        want: Any,
        top_n: int,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        envelope = {
            "id": f"fake-{self.name}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

        async def emit(payload: dict[str, Any]) -> None:
            raw = b"data: " + json.dumps({**envelope, **payload}).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": raw, "more_body": True})

        if chat:
            await emit(
                {
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ]
                }
            )
        for i, word in enumerate(words):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            piece = word if i == 0 else " " + word
            last = i == len(words) - 1
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": piece},
                    "logprobs": {"content": [self._chat_lp(model, word, top_n)]} if want else None,
                    "finish_reason": finish if last else None,
                }
            else:
                choice = {
                    "index": 0,
                    "text": piece,
                    "logprobs": {
                        "tokens": [word],
                        "token_logprobs": [_logprob(model, word)],
                        "top_logprobs": [self._top(model, word, top_n)],
                        "text_offset": [0],
                    }
                    if want is not None
                    else None,
                    "finish_reason": finish if last else None,
                }
            await emit({"choices": [choice]})
        if (data.get("stream_options") or {}).get("include_usage"):
            await emit({"choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _tokenize(self, data: Any, send: Send) -> None:
        model = data.get("model")
        if model is not None and not self._known(model):
            await self._unknown(send, model)
            return
        if "messages" in data:
            words = self._render(data["messages"]).split()
        else:
            words = str(data.get("prompt") or "").split()
        tokens = [_token_id(w) for w in words]
        await self._json(send, 200, {"count": len(tokens), "max_model_len": 4096, "tokens": tokens})


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeUpstream:
    """A :class:`FakeVLLM` served by uvicorn on loopback in a background thread."""

    def __init__(
        self,
        name: str = "fake-vllm",
        *,
        port: int | None = None,
        token_delay_s: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.token_delay_s = token_delay_s
        self.api_key = api_key
        self.app = self._fresh()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _fresh(self) -> FakeVLLM:
        return FakeVLLM(name=self.name, token_delay_s=self.token_delay_s, api_key=self.api_key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, timeout: float = 20.0) -> FakeUpstream:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"fake-vllm-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the fake upstream did not start on port {self.port}")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=20)
        self._server, self._thread = None, None

    def restart(self) -> None:
        """Stop and start again on the same port with nothing loaded, as a restarted vLLM."""
        self.stop()
        self.app = self._fresh()
        self.start()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a fake vLLM-like OpenAI-compatible upstream.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    parser.add_argument("--name", default="fake-vllm")
    args = parser.parse_args()
    app = FakeVLLM(name=args.name, token_delay_s=args.token_delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
