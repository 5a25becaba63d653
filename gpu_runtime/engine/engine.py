"""InferenceEngine: one base model, many LoRA adapters, aliases with hot-swap, batched generation.

Typical use from an async server (e.g. the OpenAI-compatible gateway)::

    engine = InferenceEngine(model_dir, max_batch_size=16)
    async with engine:                                   # loads the model in a thread, starts the scheduler
        await engine.aload_adapter("req-42@v1", path, expected_hash=sha)
        engine.set_alias("chat", "req-42@v1")
        ids = engine.render_chat([{"role": "user", "content": "Hi"}])
        result = await engine.generate(GenerationRequest(prompt=ids, model="chat", max_tokens=64))
        async for event in await engine.stream(GenerationRequest(prompt=ids, model="chat")):
            ...

``stream`` is awaited first so that QueueFull / UnknownModel surface before a streaming response
starts; iterating yields TokenEvents.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_runtime.engine.adapters import attach_adapter, detach_adapter, read_adapter
from gpu_runtime.engine.errors import (
    AdapterInUse,
    ContextLengthExceeded,
    EngineError,
    EngineNotRunning,
    InvalidRequest,
)
from gpu_runtime.engine.lora_bank import LoraBank
from gpu_runtime.engine.registry import AdapterInfo, AdapterRegistry
from gpu_runtime.engine.scheduler import RequestHandle, Scheduler, SchedulerStats
from gpu_runtime.engine.types import GenerationRequest, GenerationResult, TokenEvent


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # Half precision matmuls are slow or unsupported on many CPUs; on GPUs bf16 is the usual choice.
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
    return value


class TokenStream(AsyncIterator[TokenEvent]):
    """Async iterator over one request's TokenEvents; ``result`` is set once the last event arrived.

    Closing it early (``aclose()``, ``async with``, or the consuming task being cancelled while it
    waits) cancels the request so its batch slot frees at the next step.
    """

    def __init__(self, handle: RequestHandle) -> None:
        self._h = handle
        self.result: GenerationResult | None = None
        self._ended = False

    @property
    def request_id(self) -> str:
        return self._h.request_id

    @property
    def model(self) -> str:
        return self._h.model

    @property
    def adapter_id(self) -> str | None:
        return self._h.adapter_id

    @property
    def prompt_tokens(self) -> int:
        return len(self._h.prompt_ids)

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._ended:
            raise StopAsyncIteration
        try:
            while True:
                item = await self._h.queue.get()
                if isinstance(item, BaseException):
                    self._ended = True
                    raise item
                if isinstance(item, GenerationResult):
                    self.result = item
                    self._ended = True
                    raise StopAsyncIteration
                return item
        except asyncio.CancelledError:
            self._h.cancel()
            raise

    def cancel(self) -> None:
        """Stop the request at the next step boundary (synchronous; safe from a finalizer)."""
        if not self._ended:
            self._h.cancel()
            self._ended = True

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class InferenceEngine:
    """Serves a Hugging Face causal LM and LoRA adapters on it with batched, step-wise decoding."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        max_batch_size: int = 16,
        max_queue: int = 64,
        adapter_capacity: int = 8,
        base_model_name: str = "base",
        default_max_tokens: int = 256,
        lora_backend: Literal["stacked", "peft"] = "stacked",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.base_model_name = base_model_name
        self.default_max_tokens = default_max_tokens
        if lora_backend not in ("stacked", "peft"):
            raise ValueError(f"lora_backend must be 'stacked' or 'peft', got {lora_backend!r}")
        # "stacked": stacked multi-LoRA (lora_bank.py) whenever every adapter is plain LoRA on linear
        # layers, else peft's adapter_names; "peft": always peft's adapter_names.
        self.lora_backend = lora_backend
        self._bank = LoraBank(adapter_capacity)
        self._registry = AdapterRegistry(adapter_capacity, base_model_name)
        # Held by the scheduler for each step and by adapter surgery, so peft's module tree never
        # changes under a running forward pass.
        self._model_lock = threading.RLock()
        # One adapter load at a time: eviction choice and injection stay consistent.
        self._load_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._tokenize_lock = threading.Lock()
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._scheduler: Scheduler | None = None
        self.max_context: int = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the tokenizer and base model (once) and start the scheduler thread. Blocking."""
        with self._start_lock:
            if self._scheduler is not None and self._scheduler.running:
                return
            if self._model is None:
                self._load_base()
            assert self._model is not None
            config = self._model.config
            base = self._model.get_base_model() if isinstance(self._model, PeftModel) else self._model
            params = inspect.signature(base.forward).parameters
            # transformers 5 renamed past_key_values to cache; support both.
            cache_kwarg = "cache" if "cache" in params else "past_key_values"
            self._scheduler = Scheduler(
                get_model=lambda: self._require_model(),
                model_lock=self._model_lock,
                detach=self._detach,
                bank=self._bank,
                tokenizer=self._tokenizer,
                registry=self._registry,
                eos_ids=self._eos_ids(),
                pad_id=self._pad_id(),
                cache_kwarg=cache_kwarg,
                cache_config=config,
                max_batch_size=self.max_batch_size,
                max_queue=self.max_queue,
            )
            self._scheduler.start(self.device)

    def _load_base(self) -> None:
        tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype, use_safetensors=True)
        model.to(self.device)
        model.eval()
        self._tokenizer = tok
        self._model = model
        cfg = model.config.get_text_config(decoder=True)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 0) or 2048

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop the scheduler; requests still queued or running fail with EngineNotRunning.

        With ``drain_timeout`` > 0 queued and running requests get that long to finish first.
        """
        with self._start_lock:
            if self._scheduler is not None:
                self._scheduler.stop(drain_timeout)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    def _require_model(self) -> torch.nn.Module:
        if self._model is None:
            raise EngineNotRunning("the inference engine is not started")
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineNotRunning("the inference engine is not started")
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The served model (a PeftModel once an adapter was loaded). Do not run it concurrently."""
        return self._require_model()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        gen = getattr(self._require_model(), "generation_config", None)
        value = getattr(gen, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
        return ids

    def _pad_id(self) -> int:
        for candidate in (self._tokenizer.pad_token_id, self._tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # -- adapters ----------------------------------------------------------------------------
    def load_adapter(
        self, adapter_id: str, path: str | Path, expected_hash: str | None = None
    ) -> AdapterInfo:
        """Load an immutable adapter version (safetensors only) under ``adapter_id``. Blocking.

        Re-loading the same id with the same content is a no-op; with different content it is an
        AdapterConflict. A full cache evicts the least recently used adapter that is neither
        aliased nor serving a request. Raises AdapterHashMismatch when ``expected_hash`` differs.
        """
        model = self._require_model()
        with self._load_lock:
            files = read_adapter(path, adapter_id=adapter_id, expected_hash=expected_hash)
            if not self._registry.lookup(adapter_id, files.sha256):
                files = files.to(dtype=self.dtype, device=self.device)
                name, victims = self._registry.make_room(adapter_id)
                with self._model_lock:
                    self._detach(victims, rebuild=False)
                    self._model = attach_adapter(self._model or model, name, files)
                    self._rebuild_bank()
                self._registry.add(adapter_id, name, files.sha256, files.path)
        return self._info(adapter_id)

    async def aload_adapter(
        self, adapter_id: str, path: str | Path, expected_hash: str | None = None
    ) -> AdapterInfo:
        """``load_adapter`` in a worker thread, for use from the event loop."""
        return await asyncio.to_thread(self.load_adapter, adapter_id, path, expected_hash)

    def unload_adapter(self, adapter_id: str) -> None:
        """Stop serving ``adapter_id`` at once; it leaves memory once its in-flight requests finish.

        Raises AdapterInUse while an alias points to it, UnknownModel if it is not loaded.
        """
        name = self._registry.retire(adapter_id)
        if name is None:
            return
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            # Deleted by the engine thread between two steps, so this call never waits on the model
            # lock (it is safe to call on the event loop).
            self._registry.doom(name)
            scheduler.wake()
        else:
            with self._model_lock:
                self._detach([name])

    def _detach(self, names: list[str], *, rebuild: bool = True) -> None:
        """Delete peft adapters ``names`` from the model (caller holds the model lock)."""
        model = self._require_model()
        for name in names:
            detach_adapter(model, name)
        if names and rebuild:
            self._rebuild_bank()

    def _rebuild_bank(self) -> None:
        self._bank.sync(self._require_model(), use_bank=self.lora_backend == "stacked")

    @property
    def active_lora_backend(self) -> str:
        """Which multi-LoRA path serves mixed batches right now: "stacked" or "peft"."""
        return "stacked" if self._bank.enabled else "peft"

    def set_alias(self, alias: str, adapter_id: str | None) -> str | None:
        """Point ``alias`` at a loaded adapter (``None`` = base model) atomically; returns the previous target.

        Requests already submitted keep the adapter they resolved to.
        """
        return self._registry.set_alias(alias, adapter_id)

    def remove_alias(self, alias: str) -> None:
        self._registry.remove_alias(alias)

    def swap(
        self,
        alias: str,
        adapter_id: str,
        path: str | Path,
        expected_hash: str | None = None,
        *,
        retire_previous: bool = True,
    ) -> str | None:
        """Hot-swap: load ``adapter_id`` first, then flip ``alias`` to it. Blocking; returns the previous target.

        With ``retire_previous`` the previous adapter is unloaded once its in-flight requests finish
        (unless another alias still serves it). Rollback is another swap to the old version.
        """
        self.load_adapter(adapter_id, path, expected_hash)
        previous = self.set_alias(alias, adapter_id)
        if retire_previous and previous is not None and previous != adapter_id:
            try:
                self.unload_adapter(previous)
            except AdapterInUse:
                pass  # another alias still serves it
        return previous

    async def aswap(
        self,
        alias: str,
        adapter_id: str,
        path: str | Path,
        expected_hash: str | None = None,
        *,
        retire_previous: bool = True,
    ) -> str | None:
        """``swap`` in a worker thread, for use from the event loop."""
        return await asyncio.to_thread(
            lambda: self.swap(alias, adapter_id, path, expected_hash, retire_previous=retire_previous)
        )

    def aliases(self) -> dict[str, str | None]:
        return self._registry.aliases()

    def loaded_adapters(self) -> list[AdapterInfo]:
        """Loaded adapters, least recently used first."""
        return self._registry.infos()

    def _info(self, adapter_id: str) -> AdapterInfo:
        for info in self._registry.infos():
            if info.adapter_id == adapter_id:
                return info
        raise EngineError(f"adapter {adapter_id!r} vanished right after loading")

    def resolve(self, model: str | None) -> str | None:
        """Alias / adapter id / base name → adapter id, ``None`` for the base model. Raises UnknownModel."""
        return self._registry.resolve(model)

    def model_names(self) -> list[str]:
        """Every name a request may use: the base, aliases, and loaded adapter ids (for ``/v1/models``)."""
        names = [self.base_model_name, *sorted(self._registry.aliases())]
        names += [i.adapter_id for i in self._registry.infos() if not i.retiring]
        return names

    # -- prompts -----------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Prompt token ids for a chat, from the tokenizer's chat template, ending with the assistant cue."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise InvalidRequest("this model has no chat template; use a completion prompt instead")
        try:
            rendered = tok.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception as exc:  # jinja errors from malformed messages are the caller's fault
            raise InvalidRequest(f"messages: cannot render chat template: {exc}") from exc
        ids = rendered["input_ids"]
        return [int(t) for t in ids]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=True)["input_ids"]]

    async def arender_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """``render_chat`` in a worker thread: tokenizing a long prompt must not stall the event loop."""
        return await asyncio.to_thread(self._tokenizing, self.render_chat, messages)

    async def aencode(self, text: str) -> list[int]:
        """``encode`` in a worker thread, for use from the event loop."""
        return await asyncio.to_thread(self._tokenizing, self.encode, text)

    def _tokenizing(self, fn: Any, arg: Any) -> list[int]:
        # One encode at a time: a fast tokenizer may adjust its padding/truncation state per call, which
        # concurrent callers on one tokenizer must not interleave ("Already borrowed").
        with self._tokenize_lock:
            return list(fn(arg))

    # -- generation --------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, *, streaming: bool = False) -> RequestHandle:
        """Queue a request; must be called on the event loop that will await its result.

        Raises at once (never waits): QueueFull, UnknownModel, ContextLengthExceeded, EngineNotRunning.
        """
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            raise EngineNotRunning("the inference engine is not running")
        loop = asyncio.get_running_loop()
        prompt_ids = self.encode(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
        vocab = self.tokenizer_vocab_size()
        if any(t >= vocab for t in prompt_ids):
            raise InvalidRequest(f"prompt: token ids must be < vocabulary size {vocab}")
        room = self.max_context - len(prompt_ids)
        max_tokens = (
            request.max_tokens if request.max_tokens is not None else min(self.default_max_tokens, room)
        )
        if max_tokens < 1 or max_tokens > room:
            raise ContextLengthExceeded(
                f"prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}; "
                f"together they must fit the context of {self.max_context} tokens"
            )
        lease = self._registry.acquire(request.model)
        handle = RequestHandle(request, prompt_ids, max_tokens, lease, loop, streaming=streaming)
        try:
            scheduler.enqueue(handle)
        except BaseException:
            self._registry.release(lease)
            raise
        return handle

    def tokenizer_vocab_size(self) -> int:
        emb = self._require_model().get_input_embeddings()
        return int(emb.weight.shape[0])

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one request to completion. Cancelling the awaiting task cancels the request."""
        handle = self.submit(request, streaming=False)
        try:
            while True:
                item = await handle.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenerationResult):
                    return item
        except asyncio.CancelledError:
            handle.cancel()
            raise

    async def stream(self, request: GenerationRequest) -> TokenStream:
        """Queue a request and return an async iterator of its TokenEvents.

        Errors that depend only on the request and load (QueueFull, UnknownModel, ...) are raised
        here, before the first event, so a gateway can still answer with an error status.
        """
        return TokenStream(self.submit(request, streaming=True))

    def score(self, model: str | None, prompt_ids: list[int], target_ids: list[int]) -> list[float]:
        """Log-probability of each of ``target_ids`` following ``prompt_ids`` under ``model`` (teacher forcing).

        Blocking; runs between decode steps under the model lock. Used by verification to report how
        likely a reference answer is before and after unlearning.
        """
        if not prompt_ids or not target_ids:
            raise InvalidRequest("score: prompt and target token ids must be non-empty")
        if len(prompt_ids) + len(target_ids) > self.max_context:
            raise ContextLengthExceeded(
                f"score: {len(prompt_ids) + len(target_ids)} tokens exceed the context of {self.max_context}"
            )
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            raise EngineNotRunning("the inference engine is not running")
        lease = self._registry.acquire(model)
        try:
            ids = torch.tensor([[*prompt_ids, *target_ids]], dtype=torch.long, device=self.device)
            with self._model_lock, torch.inference_mode():
                out = scheduler.run_model(self._require_model(), [lease.name], input_ids=ids, use_cache=False)
            logits = out.logits[0, len(prompt_ids) - 1 : -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, torch.tensor(target_ids, device=logp.device).unsqueeze(-1)).squeeze(-1)
            return [float(x) for x in picked.tolist()]
        finally:
            # A retired adapter whose last user this was is deleted by the scheduler at its next step.
            self._registry.release(lease)

    async def ascore(self, model: str | None, prompt_ids: list[int], target_ids: list[int]) -> list[float]:
        """``score`` in a worker thread, for use from the event loop."""
        return await asyncio.to_thread(self.score, model, prompt_ids, target_ids)

    def stats(self) -> SchedulerStats:
        if self._scheduler is None:
            return SchedulerStats(0, 0, 0, 0, 0)
        return self._scheduler.stats()
