"""The embedded backend: the project's own inference engine (``gpu_runtime.engine``) in this process.

The only module of ``service/`` that talks to the engine: it renders prompts with the model's tokenizer,
runs requests in the engine's batching scheduler, loads adapters and flips aliases in the engine's
registry (atomic; requests in flight keep the adapter they leased), and turns engine exceptions into
:mod:`service.serving.errors`. Imported only when this backend is configured (it pulls in torch); the
only module of ``service/`` that may import ``gpu_runtime`` torch code (``tests/unit/test_import_boundaries.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpu_runtime.engine import GenerationRequest, InferenceEngine
from gpu_runtime.engine import errors as E
from service.serving import errors as B
from service.serving.types import Prompt, Sampling
from service.settings import Settings


@contextmanager
def translated() -> Iterator[None]:
    """Engine exceptions → backend errors (the message is kept: it names the parameter or the adapter)."""
    try:
        yield
    except E.QueueFull as exc:
        raise B.Overloaded(str(exc), retry_after=exc.retry_after) from exc
    except E.UnknownModel as exc:
        raise B.UnknownModel(exc.model) from exc
    except E.ContextLengthExceeded as exc:
        raise B.ContextTooLong(str(exc)) from exc
    except E.InvalidRequest as exc:
        raise B.InvalidInput(str(exc)) from exc
    except E.EngineNotRunning as exc:
        raise B.BackendUnavailable(str(exc)) from exc
    except E.AdapterCapacityError as exc:
        raise B.AdapterError(str(exc), code="adapter_capacity") from exc
    except E.AdapterHashMismatch as exc:
        raise B.AdapterError(str(exc), code="hash_mismatch") from exc
    except E.AdapterConflict as exc:
        raise B.AdapterError(str(exc), code="adapter_conflict") from exc
    except (E.AdapterNotFound, FileNotFoundError) as exc:
        raise B.AdapterError(str(exc), code="adapter_missing") from exc
    except E.AdapterFormatError as exc:
        raise B.AdapterError(str(exc), code="adapter_format") from exc
    except E.AdapterError as exc:
        raise B.AdapterError(str(exc)) from exc
    except E.EngineError as exc:
        raise B.BackendError(str(exc)) from exc


class EmbeddedBackend:
    """:class:`~service.serving.backend.ServingBackend` over an in-process :class:`InferenceEngine`."""

    kind = "embedded"

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    # -- prompts and generation ----------------------------------------------------------------
    async def prepare_chat(self, messages: list[dict[str, Any]]) -> Prompt:
        with translated():
            ids = await self.engine.arender_chat(messages)
        return Prompt(chat=True, size=len(ids), messages=messages, token_ids=ids)

    async def prepare_text(self, prompt: str | list[int]) -> Prompt:
        if isinstance(prompt, str):
            with translated():
                ids = await self.engine.aencode(prompt)
            return Prompt(chat=False, size=len(ids), text=prompt, token_ids=ids)
        return Prompt(chat=False, size=len(prompt), token_ids=list(prompt))

    def _request(self, prompt: Prompt, model: str, sampling: Sampling) -> GenerationRequest:
        assert prompt.token_ids is not None, "prompts are prepared by this backend"
        return GenerationRequest(
            prompt=prompt.token_ids,
            model=model,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=sampling.stop,
            logprobs=sampling.logprobs,
            top_logprobs=sampling.top_logprobs,
        )

    async def generate(self, prompt: Prompt, model: str, sampling: Sampling) -> Any:
        with translated():
            return await self.engine.generate(self._request(prompt, model, sampling))

    async def stream(self, prompt: Prompt, model: str, sampling: Sampling) -> Any:
        # The engine's TokenStream already has the CompletionStream surface.
        with translated():
            return await self.engine.stream(self._request(prompt, model, sampling))

    async def score(self, model: str, messages: list[dict[str, Any]], reference: str) -> list[float] | None:
        with translated():
            prompt_ids = await self.engine.arender_chat(messages)
            encoded = await asyncio.to_thread(self.engine.tokenizer, reference, add_special_tokens=False)
            ref_ids = [int(t) for t in encoded["input_ids"]]
            if not ref_ids:
                return None
            return list(await self.engine.ascore(model, prompt_ids, ref_ids))

    # -- adapters and aliases --------------------------------------------------------------------
    async def load_adapter(self, adapter_id: str, path: str | Path, sha256: str) -> None:
        with translated():
            await self.engine.aload_adapter(adapter_id, path, sha256)

    async def unload_adapter(self, adapter_id: str) -> None:
        with translated():
            self.engine.unload_adapter(adapter_id)

    def is_loaded(self, adapter_id: str) -> bool:
        try:
            self.engine.resolve(adapter_id)
        except Exception:  # evicted (LRU) since it was loaded
            return False
        return True

    def loaded(self) -> list[str]:
        return [info.adapter_id for info in self.engine.loaded_adapters() if not info.retiring]

    def set_alias(self, alias: str, adapter_id: str | None) -> None:
        with translated():
            self.engine.set_alias(alias, adapter_id)

    def remove_alias(self, alias: str) -> None:
        with translated():
            self.engine.remove_alias(alias)

    def aliases(self) -> dict[str, str | None]:
        return self.engine.aliases()

    def can_serve(self, adapter_id: str | None) -> bool:
        return True  # one process: if the adapter is loaded, the engine serves it

    async def reconcile(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": str(self.engine.device)}

    def stats(self) -> dict[str, int]:
        """Requests queued and in the running batch (all models), for /metrics."""
        stats = self.engine.stats()
        return {"waiting": int(stats.waiting), "running": int(stats.running)}

    async def close(self) -> None:
        # Give requests in flight a moment to finish; new ones are refused from now on.
        await asyncio.to_thread(self.engine.close, 2.0)


def resolve_model_dir(settings: Settings) -> Path:
    """The served base model: the configured directory, else the demo model (built and cached on first use)."""
    if settings.base_model is not None:
        return settings.base_model
    from gpu_runtime.demo.build import build_demo_model

    return build_demo_model(cache_dir=settings.model_cache_dir)


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


async def start_embedded(settings: Settings, base_model_name: str) -> EmbeddedBackend:
    """Load the model into this process and start the engine's scheduler (the lifespan closes it)."""
    model_dir = await asyncio.to_thread(resolve_model_dir, settings)
    engine = InferenceEngine(
        model_dir,
        device=_device(settings.device),
        max_batch_size=settings.engine_max_batch,
        max_queue=settings.engine_max_queue,
        adapter_capacity=settings.engine_adapter_capacity,
        base_model_name=base_model_name,
        default_max_tokens=settings.engine_max_tokens,
    )
    await asyncio.to_thread(engine.start)
    return EmbeddedBackend(engine)
