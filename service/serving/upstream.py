"""The ``openai-upstream`` backend: a pool of OpenAI-compatible servers (vLLM with runtime LoRA loading).

Written for vLLM started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ... --enable-lora`` (SGLang's
OpenAI server works the same way). What it relies on:

- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 when loaded, 400 when the name is
  already loaded (counted as success: a name is derived from the adapter's content hash, so the same
  name always means the same weights; names are never reused for other content, because vLLM keeps
  serving cached blocks of a reused name); ``POST /v1/unload_lora_adapter``: 404 for an unknown name.
- ``GET /v1/models`` lists the base model(s) and every loaded LoRA (with a ``parent``): the probe that
  tells whether an upstream is up and what it holds; a restarted upstream lists no LoRA and is re-warmed
  by :meth:`UpstreamBackend.reconcile`, which the deployment reconciler runs every tick.
- Chat and text completions, streamed or not, with the LoRA's name as ``model``; a name the upstream
  does not hold is a 404, never an answer by the base model.

Routing: a request goes to the healthy upstream with the fewest requests in flight among those that
hold its adapter. A transport error or a 404 for the adapter (the upstream restarted) moves it to the
next one before anything was sent to the client. An alias or adapter no upstream can serve raises
:class:`~service.serving.errors.AliasUnavailable` (503 ``alias_unavailable``): fail closed. Aliases live
here (alias → adapter id); the deployment layer flips one only after :meth:`UpstreamBackend.load_adapter`
succeeded on every healthy upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.deployments import storage
from service.serving import errors as B
from service.serving.types import (
    Completion,
    Prompt,
    Sampling,
    StreamEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
    estimate_tokens,
)

logger = logging.getLogger("obliviate.serving")

LORA_PREFIX = "obl-"
BASE_NAME = "base"
PROBE_TIMEOUT_S = 2.0


def lora_name(sha256: str) -> str:
    """The upstream name of an adapter: derived from its content hash, so it is never reused."""
    return LORA_PREFIX + sha256.lower().removeprefix("sha256:")[:32]


@dataclass(frozen=True)
class _Adapter:
    adapter_id: str
    name: str
    path: str  # as the upstreams read it
    sha256: str


@dataclass(eq=False)
class Upstream:
    """One OpenAI-compatible server and what this replica knows of it."""

    url: str
    healthy: bool = False
    base: str | None = None
    loaded: set[str] = field(default_factory=set)  # LoRA names it holds
    inflight: int = 0
    served: int = 0
    error: str | None = None
    checked_at: float = 0.0

    def state(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "base_model": self.base,
            "adapters": len(self.loaded),
            "in_flight": self.inflight,
            "served": self.served,
            "error": self.error,
        }


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI (``{"error": {...}}``) or vLLM (``{"message", ...}``) error body."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300]
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(data)[:300]


def _param_of(message: str) -> str | None:
    head, sep, _ = message.partition(":")
    return head if sep and head.isidentifier() else None


def _chat_logprobs(raw: Any) -> list[TokenLogprob]:
    entries = (raw or {}).get("content") or []
    return [
        TokenLogprob(
            token=str(e.get("token", "")),
            logprob=float(e.get("logprob", 0.0)),
            top_logprobs=[
                TopLogprob(str(t.get("token", "")), float(t.get("logprob", 0.0)))
                for t in e.get("top_logprobs") or []
            ],
        )
        for e in entries
    ]


def _text_logprobs(raw: Any) -> list[TokenLogprob]:
    if not raw:
        return []
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(
            token=str(tok),
            logprob=float(lp if lp is not None else 0.0),
            top_logprobs=[TopLogprob(str(k), float(v)) for k, v in (top or {}).items()],
        )
        for tok, lp, top in zip(tokens, values, tops, strict=False)
    ]


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


class UpstreamBackend:
    """:class:`~service.serving.backend.ServingBackend` over a pool of OpenAI-compatible servers."""

    kind = "openai-upstream"

    def __init__(
        self,
        urls: list[str],
        *,
        api_key: str | None = None,
        model: str | None = None,
        store_root: Path | None = None,
        upstream_store_root: str | None = None,
        timeout_s: float = 300.0,
        probe_interval_s: float = 2.0,
        default_max_tokens: int = 256,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the openai-upstream backend needs at least one upstream URL")
        self.upstreams = [Upstream(url.rstrip("/")) for url in urls]
        self.model = model
        self.store_root = store_root
        self.upstream_store_root = upstream_store_root
        self.probe_interval_s = probe_interval_s
        self.default_max_tokens = default_max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=PROBE_TIMEOUT_S),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )
        self.adapters: dict[str, _Adapter] = {}  # adapter id -> what each upstream must hold
        self._aliases: dict[str, str | None] = {}
        self._rr = itertools.count()
        self._probed_at = 0.0
        self._suspect = False  # a request saw an upstream fail or lose an adapter: probe at the next tick
        self._load_lock = asyncio.Lock()

    # -- pool upkeep ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Probe every upstream once (not fatal: an upstream may come up later)."""
        await self._probe_all()
        if not any(u.healthy for u in self.upstreams):
            logger.warning("no upstream answers yet (%s); serving answers 503 until one does", self._urls())

    def _urls(self) -> str:
        return ", ".join(u.url for u in self.upstreams)

    async def _probe(self, up: Upstream) -> None:
        try:
            response = await self.client.get(up.url + "/v1/models", timeout=PROBE_TIMEOUT_S)
            response.raise_for_status()
            data = response.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            if up.healthy:
                logger.warning("upstream %s is down: %s", up.url, type(exc).__name__)
            up.healthy, up.error = False, f"{type(exc).__name__}: {exc}"[:300]
            up.loaded.clear()
            return
        bases = [str(m.get("id")) for m in data if isinstance(m, dict) and not m.get("parent")]
        if not up.healthy:
            logger.info("upstream %s is up (base model %s)", up.url, bases[0] if bases else "?")
        up.base = self.model or (bases[0] if bases else None)
        up.loaded = {str(m.get("id")) for m in data if isinstance(m, dict) and m.get("parent")}
        up.healthy, up.error, up.checked_at = True, None, time.time()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))
        self._probed_at = time.monotonic()
        self._suspect = False

    async def reconcile(self) -> None:
        """Probe the upstreams (every ``probe_interval_s``, or at once after a failure) and re-warm any
        healthy upstream that lacks an adapter this replica serves (a restarted one holds none)."""
        if not self._suspect and time.monotonic() - self._probed_at < self.probe_interval_s:
            return
        await self._probe_all()
        async with self._load_lock:
            wanted = list(self.adapters.values())
            for up in self.upstreams:
                missing = [a for a in wanted if up.healthy and a.name not in up.loaded]
                if not missing:
                    continue
                results = await asyncio.gather(
                    *(self._load_one(up, a) for a in missing), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                logger.warning(
                    "upstream %s re-warmed: %d of %d adapter(s) loaded%s",
                    up.url,
                    len(missing) - len(failed),
                    len(missing),
                    f"; {failed[0]}" if failed else "",
                )

    # -- adapters and aliases -----------------------------------------------------------------------
    def _upstream_path(self, path: Path) -> str:
        if self.store_root is not None and self.upstream_store_root:
            with contextlib.suppress(ValueError):
                rel = path.resolve().relative_to(self.store_root.resolve())
                return f"{self.upstream_store_root.rstrip('/')}/{rel.as_posix()}"
        return str(path)

    async def _load_one(self, up: Upstream, adapter: _Adapter) -> None:
        """Load on one upstream; "already loaded" (400) is success. Transport errors mark it down."""
        try:
            response = await self.client.post(
                up.url + "/v1/load_lora_adapter",
                json={"lora_name": adapter.name, "lora_path": adapter.path},
            )
        except httpx.TransportError as exc:
            self._down(up, exc)
            raise
        message = _error_message(response.content) if response.status_code != 200 else ""
        if response.status_code == 200 or (response.status_code == 400 and "already" in message.lower()):
            up.loaded.add(adapter.name)
            return
        code = "adapter_missing" if response.status_code == 404 else "load_failed"
        raise B.AdapterError(
            f"upstream {up.url} refused adapter {adapter.adapter_id!r} ({adapter.name}): "
            f"HTTP {response.status_code}: {message}",
            code=code,
        )

    async def load_adapter(self, adapter_id: str, path: str | Path, sha256: str) -> None:
        local = Path(path)
        await asyncio.to_thread(_check_files, adapter_id, local, sha256)
        adapter = _Adapter(adapter_id, lora_name(sha256), self._upstream_path(local), sha256)
        known = self.adapters.get(adapter_id)
        if known is not None and known.sha256 != adapter.sha256:
            raise B.AdapterError(
                f"adapter {adapter_id!r} is loaded with other content; versions are immutable",
                code="adapter_conflict",
            )
        async with self._load_lock:
            if not any(u.healthy for u in self.upstreams):
                await self._probe_all()
            healthy = [u for u in self.upstreams if u.healthy]
            if not healthy:
                raise B.AdapterError(
                    f"no upstream is reachable ({self._urls()})", code="upstream_unavailable"
                )
            todo = [u for u in healthy if adapter.name not in u.loaded]
            results = await asyncio.gather(
                *(self._load_one(u, adapter) for u in todo), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, B.AdapterError)]
            if refused:
                raise refused[0]
            unexpected = [
                r for r in results if isinstance(r, BaseException) and not isinstance(r, httpx.HTTPError)
            ]
            if unexpected:
                raise unexpected[0]
            if not any(adapter.name in u.loaded for u in self.upstreams if u.healthy):
                raise B.AdapterError(
                    f"no upstream could load adapter {adapter_id!r} ({self._urls()})",
                    code="upstream_unavailable",
                )
            # Every upstream still healthy holds it now; one that went down meanwhile is re-warmed later.
            self.adapters[adapter_id] = adapter

    async def unload_adapter(self, adapter_id: str) -> None:
        adapter = self.adapters.pop(adapter_id, None)
        if adapter is None or any(a.name == adapter.name for a in self.adapters.values()):
            return
        for up in self.upstreams:
            if not up.healthy:
                continue
            with contextlib.suppress(httpx.HTTPError):
                # 404: the upstream does not hold it (restarted): nothing to do.
                await self.client.post(up.url + "/v1/unload_lora_adapter", json={"lora_name": adapter.name})
            up.loaded.discard(adapter.name)

    def is_loaded(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters

    def loaded(self) -> list[str]:
        return sorted(self.adapters)

    def set_alias(self, alias: str, adapter_id: str | None) -> None:
        if adapter_id is not None and adapter_id not in self.adapters:
            raise B.UnknownModel(adapter_id)
        self._aliases[alias] = adapter_id

    def remove_alias(self, alias: str) -> None:
        self._aliases.pop(alias, None)

    def aliases(self) -> dict[str, str | None]:
        return dict(self._aliases)

    def _resolve(self, model: str) -> tuple[str | None, str | None]:
        """(adapter id, LoRA name) of a model name; ``(None, None)`` is the base model."""
        if model == BASE_NAME:
            return None, None
        if model in self._aliases:
            adapter_id = self._aliases[model]
        elif model in self.adapters:
            adapter_id = model
        else:
            raise B.UnknownModel(model)
        if adapter_id is None:
            return None, None
        adapter = self.adapters.get(adapter_id)
        if adapter is None:
            raise B.UnknownModel(model)
        return adapter_id, adapter.name

    def _candidates(self, name: str | None) -> list[Upstream]:
        return [u for u in self.upstreams if u.healthy and (name is None or name in u.loaded)]

    def can_serve(self, adapter_id: str | None) -> bool:
        if adapter_id is None:
            return bool(self._candidates(None))
        adapter = self.adapters.get(adapter_id)
        return adapter is not None and bool(self._candidates(adapter.name))

    def _down(self, up: Upstream, exc: BaseException) -> None:
        if up.healthy:
            logger.warning("upstream %s failed: %s; taken out of rotation", up.url, type(exc).__name__)
        up.healthy, up.error = False, f"{type(exc).__name__}: {exc}"[:300]
        up.loaded.clear()
        self._suspect = True

    # -- requests ---------------------------------------------------------------------------------------
    def _pick(self, candidates: list[Upstream]) -> Upstream:
        start = next(self._rr) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda u: u.inflight)

    def _unservable(self, model: str, name: str | None) -> B.BackendError:
        if model != BASE_NAME:
            reason = (
                "no healthy upstream holds its adapter"
                if any(u.healthy for u in self.upstreams)
                else "no upstream is reachable"
            )
            return B.AliasUnavailable(model, reason)
        return B.BackendUnavailable(f"no upstream is reachable ({self._urls()})")

    def _body(self, prompt: Prompt, sampling: Sampling, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": sampling.max_tokens or self.default_max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if prompt.chat:
            body["messages"] = prompt.messages
            if sampling.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = sampling.top_logprobs
        else:
            body["prompt"] = prompt.text if prompt.text is not None else prompt.token_ids
            if sampling.logprobs:
                body["logprobs"] = sampling.top_logprobs
        if stream:
            # Usage is always asked for: the tenant's token budget is settled on it.
            body["stream_options"] = {"include_usage": True}
        return body

    async def _open(
        self, path: str, model: str, body: dict[str, Any]
    ) -> tuple[Upstream, httpx.Response, str | None]:
        """Send to the best upstream for ``model``; on a transport error or a lost adapter, the next one.

        Returns the upstream (its in-flight count taken), the streaming response and the adapter id.
        """
        adapter_id, name = self._resolve(model)
        tried: set[int] = set()
        while True:
            candidates = [u for u in self._candidates(name) if id(u) not in tried]
            if not candidates:
                raise self._unservable(model, name)
            up = self._pick(candidates)
            tried.add(id(up))
            target = name if name is not None else up.base
            if target is None:
                continue
            up.inflight += 1
            try:
                request = self.client.build_request("POST", up.url + path, json={**body, "model": target})
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                up.inflight -= 1
                self._down(up, exc)
                continue
            except BaseException:
                up.inflight -= 1
                raise
            if response.status_code == 200:
                return up, response, adapter_id
            raw = await response.aread()
            await response.aclose()
            up.inflight -= 1
            message = _error_message(raw)
            if response.status_code == 404 and name is not None:
                # The upstream lost the adapter (restarted): never let it answer this alias until re-warmed.
                logger.warning("upstream %s no longer holds %s; re-warming", up.url, name)
                up.loaded.discard(name)
                self._suspect = True
                continue
            if response.status_code in (502, 503, 504):
                self._down(up, RuntimeError(f"HTTP {response.status_code}: {message}"))
                continue
            raise self._http_error(response.status_code, message, model)

    def _http_error(self, status: int, message: str, model: str) -> B.BackendError:
        if status == 429:
            return B.Overloaded(f"upstream at capacity: {message}")
        if status == 404:
            return B.UnknownModel(model)
        if status in (400, 422):
            if "context" in message.lower() and "length" in message.lower():
                return B.ContextTooLong(message)
            return B.InvalidInput(message, param=_param_of(message))
        return B.BackendError(f"upstream answered HTTP {status}: {message}")

    async def prepare_chat(self, messages: list[dict[str, Any]]) -> Prompt:
        size = estimate_tokens(sum(len(str(m.get("content") or "")) for m in messages))
        return Prompt(chat=True, size=size, messages=messages)

    async def prepare_text(self, prompt: str | list[int]) -> Prompt:
        if isinstance(prompt, str):
            return Prompt(chat=False, size=estimate_tokens(len(prompt)), text=prompt)
        return Prompt(chat=False, size=len(prompt), token_ids=list(prompt))

    async def generate(self, prompt: Prompt, model: str, sampling: Sampling) -> Completion:
        path = "/v1/chat/completions" if prompt.chat else "/v1/completions"
        up, response, adapter_id = await self._open(path, model, self._body(prompt, sampling, stream=False))
        try:
            raw = await response.aread()
        except httpx.TransportError as exc:
            self._down(up, exc)
            raise B.BackendError(f"upstream {up.url} failed mid-response") from exc
        finally:
            await response.aclose()
            up.inflight -= 1
        up.served += 1
        data = json.loads(raw)
        choice = (data.get("choices") or [{}])[0]
        if prompt.chat:
            text = (choice.get("message") or {}).get("content") or ""
            logprobs = _chat_logprobs(choice.get("logprobs")) if sampling.logprobs else None
        else:
            text = choice.get("text") or ""
            logprobs = _text_logprobs(choice.get("logprobs")) if sampling.logprobs else None
        usage = _usage(data.get("usage")) or Usage(prompt.size, 0)
        return Completion(
            text=text,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            usage=usage,
            adapter_id=adapter_id,
            logprobs=logprobs,
        )

    async def stream(self, prompt: Prompt, model: str, sampling: Sampling) -> UpstreamStream:
        path = "/v1/chat/completions" if prompt.chat else "/v1/completions"
        up, response, adapter_id = await self._open(path, model, self._body(prompt, sampling, stream=True))
        return UpstreamStream(self, up, response, adapter_id, chat=prompt.chat)

    async def _post_json(self, up: Upstream, path: str, body: dict[str, Any]) -> Any:
        response = await self.client.post(up.url + path, json=body)
        if response.status_code != 200:
            raise B.BackendError(f"upstream {up.url}{path}: HTTP {response.status_code}")
        return response.json()

    async def score(self, model: str, messages: list[dict[str, Any]], reference: str) -> list[float] | None:
        """vLLM: tokenize the chat and the reference (``/tokenize``), then ``/v1/completions`` with the
        token ids, ``echo`` and ``logprobs`` returns the log-probability of every prompt token."""
        _, name = self._resolve(model)
        candidates = self._candidates(name)
        if not candidates:
            raise self._unservable(model, name)
        up = self._pick(candidates)
        target = name if name is not None else up.base
        try:
            prompt = await self._post_json(
                up, "/tokenize", {"model": target, "messages": messages, "add_generation_prompt": True}
            )
            ref = await self._post_json(
                up, "/tokenize", {"model": target, "prompt": reference, "add_special_tokens": False}
            )
            prompt_ids, ref_ids = list(prompt["tokens"]), list(ref["tokens"])
            if not ref_ids:
                return None
            data = await self._post_json(
                up,
                "/v1/completions",
                {
                    "model": target,
                    "prompt": prompt_ids + ref_ids,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "echo": True,
                    "logprobs": 0,
                },
            )
            values = data["choices"][0]["logprobs"]["token_logprobs"]
            picked = values[len(prompt_ids) : len(prompt_ids) + len(ref_ids)]
            if len(picked) != len(ref_ids) or any(v is None for v in picked):
                return None
            return [float(v) for v in picked]
        except (httpx.HTTPError, B.BackendError, KeyError, IndexError, TypeError, ValueError) as exc:
            # An upstream without /tokenize or prompt logprobs: the verification shows no probabilities.
            logger.info("scoring on %s unavailable: %s", up.url, type(exc).__name__)
            return None

    def health(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": any(u.healthy for u in self.upstreams),
            "upstreams": [u.state() for u in self.upstreams],
        }

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()


def _check_files(adapter_id: str, path: Path, sha256: str) -> None:
    """The store copy the upstreams will read must be the version recorded (fail closed otherwise)."""
    try:
        storage.check_adapter_dir(path)
        actual = storage.engine_hash(path)
    except storage.AdapterFilesError as exc:
        raise B.AdapterError(f"adapter {adapter_id!r} at {path}: {exc}", code="adapter_missing") from exc
    except OSError as exc:
        raise B.AdapterError(f"adapter {adapter_id!r} at {path}: {exc}", code="adapter_missing") from exc
    want = sha256.lower().removeprefix("sha256:")
    if actual != want:
        raise B.AdapterError(
            f"adapter {adapter_id!r}: content hash sha256:{actual} does not match expected {want}; "
            "refusing to load",
            code="hash_mismatch",
        )


class UpstreamStream:
    """A streamed completion read from an upstream's server-sent events, chunk for chunk.

    Each upstream chunk becomes one event (text, logprobs, finish reason, usage as the upstream sent
    them); a chunk with several logprob entries becomes one event per entry, the text on the first.
    """

    def __init__(
        self,
        backend: UpstreamBackend,
        up: Upstream,
        response: httpx.Response,
        adapter_id: str | None,
        *,
        chat: bool,
    ) -> None:
        self.backend = backend
        self.up = up
        self.response = response
        self.adapter_id = adapter_id
        self.chat = chat
        self.result: Completion | None = None
        self._lines = response.aiter_lines()
        self._queue: deque[StreamEvent] = deque()
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._text: list[str] = []
        self._closed = False
        self._done = False

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                self._end()
                continue
            except httpx.TransportError as exc:
                self.backend._down(self.up, exc)
                await self.aclose()
                raise B.BackendError(f"upstream {self.up.url} failed mid-stream") from exc
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                self._end()
                continue
            self._read(json.loads(payload))
        return self._queue.popleft()

    def _read(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk and not chunk.get("choices"):
            raise B.BackendError(f"upstream error mid-stream: {_error_message(json.dumps(chunk).encode())}")
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or []:
            if self.chat:
                text = (choice.get("delta") or {}).get("content") or ""
                entries = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                entries = _text_logprobs(choice.get("logprobs"))
            finish = choice.get("finish_reason")
            self._text.append(text)
            events = [StreamEvent(text if i == 0 else "", lp) for i, lp in enumerate(entries)] or [
                StreamEvent(text)
            ]
            if finish is not None:
                self._finish = str(finish)
                last = events[-1]
                events[-1] = StreamEvent(last.text, last.logprob, self._finish, self._usage)
            self._queue.extend(e for e in events if e.text or e.logprob is not None or e.finish_reason)

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        self.up.served += 1
        self.result = Completion(
            text="".join(self._text),
            finish_reason=self._finish or "stop",
            usage=self._usage or Usage(0, 0),
            adapter_id=self.adapter_id,
        )

    def cancel(self) -> None:
        """Stop reading (the client left): closing the connection makes the upstream abort the request."""
        try:
            asyncio.get_running_loop().create_task(self.aclose())
        except RuntimeError:  # no loop (collected at shutdown): at least give the slot back
            if not self._closed:
                self._closed = True
                self.up.inflight -= 1

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.up.inflight -= 1
        with contextlib.suppress(Exception):
            await self.response.aclose()
