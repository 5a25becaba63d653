"""The one interface the gateway, verification and deployments use to run a model: :class:`ServingBackend`.

Implementations: :mod:`service.serving.embedded` (the in-process engine, the default) and
:mod:`service.serving.upstream` (a pool of OpenAI-compatible servers such as vLLM). Names a backend
resolves: the base model (``base``), an alias (set with :meth:`ServingBackend.set_alias`, pointing to an
adapter or to the base model) and a loaded adapter's id. Errors are :mod:`service.serving.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from service.serving.types import Completion, Prompt, Sampling


class CompletionStream(Protocol):
    """A streamed completion: iterate its events; ``result`` is set once it finished."""

    @property
    def adapter_id(self) -> str | None: ...

    @property
    def result(self) -> Any: ...  # finish_reason and usage, once finished

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...

    async def aclose(self) -> None: ...


class ServingBackend(Protocol):
    """What serves the model: generate and stream, score, adapters, aliases, health."""

    kind: str  # "embedded" | "openai-upstream"

    async def prepare_chat(self, messages: list[dict[str, Any]]) -> Prompt:
        """Check and (where the backend tokenizes) render a chat prompt."""
        ...

    async def prepare_text(self, prompt: str | list[int]) -> Prompt: ...

    async def generate(self, prompt: Prompt, model: str, sampling: Sampling) -> Completion: ...

    async def stream(self, prompt: Prompt, model: str, sampling: Sampling) -> CompletionStream:
        """Start a streamed completion. Errors before the first token (unknown model, full queue, no
        upstream) are raised here, so the gateway answers them as ordinary error responses."""
        ...

    async def score(self, model: str, messages: list[dict[str, Any]], reference: str) -> list[float] | None:
        """Log-probability of each token of ``reference`` as the reply to ``messages`` (None: unscorable)."""
        ...

    async def load_adapter(self, adapter_id: str, path: str | Path, sha256: str) -> None:
        """Load an immutable adapter version (no-op when loaded); the content hash is checked."""
        ...

    async def unload_adapter(self, adapter_id: str) -> None: ...

    def is_loaded(self, adapter_id: str) -> bool: ...

    def loaded(self) -> list[str]:
        """Adapter ids this backend serves now."""
        ...

    def set_alias(self, alias: str, adapter_id: str | None) -> None:
        """Point ``alias`` at a loaded adapter (``None``: the base model), atomically."""
        ...

    def remove_alias(self, alias: str) -> None: ...

    def aliases(self) -> dict[str, str | None]: ...

    def can_serve(self, adapter_id: str | None) -> bool:
        """Whether a request for this adapter (``None``: base) would find a model to run on now."""
        ...

    async def reconcile(self) -> None:
        """Periodic upkeep run by the deployment reconciler (upstreams: health probes and re-warming)."""
        ...

    def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
