"""The batching scheduler: one background thread that owns every forward pass.

Each loop iteration (a "step boundary"):
  1. deletes adapters whose last request finished after they were retired,
  2. admits queued requests into free batch slots and prefills them together (left-padded) with a
     fresh KV cache, sampling their first token, then merges that cache into the running batch,
  3. runs one decode step for every running row (one token per row, each row on its own adapter
     via peft's ``adapter_names``), and drops rows that finished or whose client went away.

Models whose cache layers cannot be padded and merged (sliding-window, quantized caches) fall back
to waves: new requests are admitted only when the batch is empty.

Results go back to the asyncio side with ``loop.call_soon_threadsafe``; the event loop never runs
model code.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from transformers import DynamicCache

from gpu_runtime.engine.batch import KVBatch
from gpu_runtime.engine.errors import EngineError, EngineNotRunning, QueueFull
from gpu_runtime.engine.lora_bank import LoraBank
from gpu_runtime.engine.registry import AdapterRegistry, Lease
from gpu_runtime.engine.sampling import RowSampling, choose_tokens
from gpu_runtime.engine.text import TextAssembler
from gpu_runtime.engine.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class RequestHandle:
    """One submitted request: what the scheduler needs, and the channel back to the event loop."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        max_tokens: int,
        lease: Lease,
        loop: asyncio.AbstractEventLoop,
        *,
        streaming: bool,
    ) -> None:
        self.request = request
        self.request_id = request.request_id or f"gen-{next(_ids)}-{secrets.token_hex(4)}"
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.lease = lease
        self.streaming = streaming
        self.submitted_at = time.monotonic()
        self.loop = loop
        self.queue: asyncio.Queue[TokenEvent | GenerationResult | BaseException] = asyncio.Queue()
        self.cancelled = False
        self.done = False

    @property
    def model(self) -> str:
        return self.lease.model

    @property
    def adapter_id(self) -> str | None:
        return self.lease.adapter_id

    def cancel(self) -> None:
        """Stop generating for this request at the next step boundary (the client went away)."""
        self.cancelled = True

    def deliver(self, item: TokenEvent | GenerationResult | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the client's event loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(slots=True)
class _Row:
    handle: RequestHandle
    sampling: RowSampling
    text: TextAssembler
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    pending: int = -1  # last sampled token, fed at the next decode step


@dataclass(slots=True)
class SchedulerStats:
    waiting: int
    running: int
    requests_finished: int
    tokens_generated: int
    steps: int


class Scheduler:
    """Owns the request queue, the running batch and the thread that drives the model."""

    def __init__(
        self,
        *,
        get_model: Callable[[], torch.nn.Module],
        model_lock: threading.RLock,
        detach: Callable[[list[str]], None],
        bank: LoraBank,
        tokenizer: Any,
        registry: AdapterRegistry,
        eos_ids: set[int],
        pad_id: int,
        cache_kwarg: str,
        cache_config: Any,
        max_batch_size: int,
        max_queue: int,
    ) -> None:
        self._get_model = get_model
        self._model_lock = model_lock
        self._detach = detach
        self._bank = bank
        self._tok = tokenizer
        self._registry = registry
        self._eos = eos_ids
        self._pad = pad_id
        self._cache_kwarg = cache_kwarg
        self._cache_config = cache_config
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._cv = threading.Condition()
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._rows: list[_Row] = []
        self._batch: KVBatch | None = None
        self._mergeable: bool | None = None  # learnt from the first prefill
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._finished = 0
        self._tokens = 0
        self._steps = 0
        self._device: torch.device | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        self._device = device
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="obliviate-engine", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 0.0) -> None:
        deadline = time.monotonic() + drain_timeout
        with self._cv:
            while (self._waiting or self._rows) and time.monotonic() < deadline:
                self._cv.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0.0)))
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    def stats(self) -> SchedulerStats:
        with self._cv:
            return SchedulerStats(
                len(self._waiting), len(self._rows), self._finished, self._tokens, self._steps
            )

    def wake(self) -> None:
        """Make the engine thread look at its work (e.g. adapters to delete) now."""
        with self._cv:
            self._cv.notify_all()

    # -- submission (event-loop thread) ------------------------------------------------------
    def enqueue(self, handle: RequestHandle) -> None:
        with self._cv:
            if not self.running:
                raise EngineNotRunning("the inference engine is not running")
            if len(self._waiting) >= self.max_queue:
                # Rough hint for Retry-After: the queue drains about one batch per few hundred ms.
                raise QueueFull(
                    f"request queue is full ({self.max_queue} waiting); retry later", retry_after=1.0
                )
            self._waiting.append(handle)
            self._cv.notify_all()

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    # Never wait for the model lock while holding the queue lock: an adapter load holds
                    # the model lock for a while, and enqueue (on the event loop) must not block on it.
                    self._collect_doomed()
                    with self._cv:
                        if not (self._stopping or self._waiting or self._rows):
                            self._cv.wait(timeout=0.1)
                            continue
                        if self._stopping:
                            break
                        admitted = self._admit()
                    try:
                        with self._model_lock:
                            if admitted:
                                self._prefill(admitted)
                            self._drop_cancelled()
                            if self._rows:
                                self._decode()
                    except Exception as exc:
                        # Fail the requests of this batch, keep serving the rest of the queue.
                        log.exception("engine step failed")
                        self._fail_all_running(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
                        for h in admitted:
                            if not h.done:
                                self._finish_error(h, EngineError(f"generation failed: {exc}"))
        finally:
            with self._cv:
                waiting, self._waiting = list(self._waiting), collections.deque()
                self._cv.notify_all()
            for h in waiting:
                self._finish_error(h, EngineNotRunning("the inference engine shut down"))
            self._fail_all_running(EngineNotRunning("the inference engine shut down"))

    def _collect_doomed(self) -> None:
        doomed = self._registry.take_doomed()
        if doomed:
            with self._model_lock:
                self._detach(doomed)

    def _admit(self) -> list[RequestHandle]:
        """Take queued requests into free slots (caller holds the condition lock)."""
        free = self.max_batch_size - len(self._rows)
        if free <= 0 or (self._rows and self._mergeable is False):
            return []
        admitted: list[RequestHandle] = []
        while self._waiting and len(admitted) < free:
            h = self._waiting.popleft()
            if h.cancelled:
                self._finish_cancelled(h)
                continue
            admitted.append(h)
        if admitted:
            self._cv.notify_all()  # stop() may wait for the queue to drain
        return admitted

    # -- model calls -------------------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, adapters: list[str], **kwargs: Any) -> torch.Tensor:
        return self.run_model(model, adapters, **kwargs).logits[:, -1, :]

    def run_model(self, model: torch.nn.Module, adapters: list[str], **kwargs: Any) -> Any:
        """One forward pass, each row on its adapter (peft names); the caller holds the model lock."""
        if isinstance(model, PeftModel):
            if self._bank.enabled:
                # Stacked path: peft's layers are off, the bank's hooks add each row's LoRA delta.
                assert self._device is not None
                self._bank.set_rows(adapters, self._device)
                model = model.get_base_model()
            elif model.peft_config:
                kwargs["adapter_names"] = adapters
            else:
                # Every adapter was unloaded: peft's forward needs an active config, the bare model does not.
                model = model.get_base_model()
        return model(**kwargs)

    def _prefill(self, handles: list[RequestHandle]) -> None:
        assert self._device is not None
        # Per-row setup first (seeded generators, stop handling): a row that cannot be set up fails
        # alone, before the batch's forward pass.
        rows: list[_Row] = []
        for h in handles:
            try:
                rows.append(self._new_row(h))
            except Exception as exc:
                self._fail_row(h, exc)
        handles = [r.handle for r in rows]
        if not handles:
            return
        width = max(len(h.prompt_ids) for h in handles)
        ids = torch.full((len(handles), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(handles), width), dtype=torch.long)
        for i, h in enumerate(handles):
            n = len(h.prompt_ids)
            ids[i, width - n :] = torch.tensor(h.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._cache_config)
        logits = self._forward(
            self._get_model(),
            [h.lease.name for h in handles],
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        batch = KVBatch(cache, mask)
        if self._mergeable is None:
            self._mergeable = batch.mergeable
        keep = self._accept(rows, logits)
        batch.select(keep)
        rows = [rows[i] for i in keep]
        if not rows:
            return
        if self._batch is None or not self._rows:
            self._batch, self._rows = batch, rows
        else:
            self._batch.merge(batch)
            self._rows.extend(rows)

    def _decode(self) -> None:
        assert self._batch is not None and self._device is not None
        batch = self._batch
        positions = batch.positions()
        mask = batch.extend()
        ids = torch.tensor([[r.pending] for r in self._rows], dtype=torch.long, device=self._device)
        logits = self._forward(
            self._get_model(),
            [r.handle.lease.name for r in self._rows],
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kwarg: batch.cache},
        )
        keep = self._accept(self._rows, logits)
        self._steps += 1
        batch.select(keep)
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._batch = None

    def _drop_cancelled(self) -> None:
        if not self._rows or not any(r.handle.cancelled for r in self._rows):
            return
        keep = [i for i, r in enumerate(self._rows) if not r.handle.cancelled]
        for r in self._rows:
            if r.handle.cancelled:
                self._finish_cancelled(r.handle)
        assert self._batch is not None
        self._batch.select(keep)
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._batch = None

    # -- rows --------------------------------------------------------------------------------
    def _new_row(self, h: RequestHandle) -> _Row:
        req = h.request
        generator: torch.Generator | None = None
        if req.temperature > 0.0:
            assert self._device is not None
            generator = torch.Generator(device=self._device)
            generator.manual_seed(req.seed if req.seed is not None else secrets.randbits(63))
        top = req.top_logprobs if (req.logprobs or req.top_logprobs) else 0
        return _Row(
            handle=h,
            sampling=RowSampling(req.temperature, req.top_p, generator, top),
            text=TextAssembler(self._tok, req.stop),
        )

    def _token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)

    def _accept(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Sample one token per row, deliver it, and return the indices of rows that go on."""
        choice = choose_tokens(logits, [r.sampling for r in rows])
        keep: list[int] = []
        for i, row in enumerate(rows):
            h = row.handle
            if h.cancelled:
                self._finish_cancelled(h)
                continue
            if i in choice.errors:
                self._fail_row(h, choice.errors[i])
                continue
            try:
                if self._accept_row(row, choice, i):
                    keep.append(i)
            except Exception as exc:  # detokenizing, stop handling: this request fails, not its batch
                self._fail_row(h, exc)
        return keep

    def _fail_row(self, h: RequestHandle, exc: Exception) -> None:
        log.warning("request %s failed alone in its batch: %s", h.request_id, type(exc).__name__)
        self._finish_error(h, EngineError(f"generation failed for this request: {type(exc).__name__}"))

    def _accept_row(self, row: _Row, choice: Any, i: int) -> bool:
        """Take row ``i``'s sampled token; True if the row goes on."""
        h = row.handle
        token = choice.token_ids[i]
        row.generated.append(token)
        self._tokens += 1
        is_eos = token in self._eos and not h.request.ignore_eos
        delta = "" if is_eos else row.text.add(token)
        finish: FinishReason | None = None
        if is_eos or row.text.stopped:
            finish = "stop"
        elif len(row.generated) >= h.max_tokens:
            finish = "length"
        if finish is not None:
            delta += row.text.flush()
        lp: TokenLogprob | None = None
        if h.request.logprobs or h.request.top_logprobs:
            lp = TokenLogprob(
                token_id=token,
                token=self._token_text(token),
                logprob=choice.logprobs[i],
                top_logprobs=[TopLogprob(t, self._token_text(t), v) for t, v in choice.top[i]],
            )
            row.logprobs.append(lp)
        usage = Usage(len(h.prompt_ids), len(row.generated)) if finish else None
        if h.streaming:
            h.deliver(TokenEvent(len(row.generated) - 1, token, delta, lp, finish, usage))
        if finish is None:
            row.pending = token
            return True
        self._finish(row, finish)
        return False

    def _finish(self, row: _Row, reason: FinishReason) -> None:
        h = row.handle
        result = GenerationResult(
            request_id=h.request_id,
            model=h.model,
            adapter_id=h.adapter_id,
            text=row.text.text,
            token_ids=list(row.generated),
            finish_reason=reason,
            usage=Usage(len(h.prompt_ids), len(row.generated)),
            logprobs=list(row.logprobs) if (h.request.logprobs or h.request.top_logprobs) else None,
        )
        self._release(h)
        h.deliver(result)

    def _release(self, h: RequestHandle) -> None:
        if not h.done:
            h.done = True
            self._registry.release(h.lease)
            with self._cv:
                self._finished += 1
                self._cv.notify_all()

    def _finish_cancelled(self, h: RequestHandle) -> None:
        self._release(h)
        h.deliver(asyncio.CancelledError())

    def _finish_error(self, h: RequestHandle, exc: BaseException) -> None:
        self._release(h)
        h.deliver(exc)

    def _fail_all_running(self, exc: BaseException) -> None:
        rows, self._rows, self._batch = self._rows, [], None
        for r in rows:
            self._finish_error(r.handle, exc)
