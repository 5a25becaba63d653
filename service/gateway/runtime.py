"""The serving backend of this replica: created once in the lifespan, closed at shutdown.

``OBLIVIATE_SERVING_BACKEND`` chooses it: ``embedded`` (the default) loads the model into this process
on the project's engine (torch is imported only then); ``openai-upstream`` sends requests to a pool of
OpenAI-compatible servers (``OBLIVIATE_UPSTREAM_URLS``, e.g. vLLM with runtime LoRA loading) and needs
no model here. ``OBLIVIATE_ENGINE=none`` serves no model at all (intake-only replicas and tests); the
OpenAI routes then answer 503.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from service.core.errors import Unavailable
from service.core.state import Resources
from service.serving.backend import ServingBackend

logger = logging.getLogger("obliviate.gateway")

BACKEND_KEY = "serving_backend"
ENGINE_KEY = "engine"  # the embedded engine itself, for tests and benchmarks that read its counters
BASE_MODEL_NAME = "base"


async def _embedded(resources: Resources) -> ServingBackend:
    # The engine and the demo model builder live behind service/serving/embedded.py (torch).
    from service.serving.embedded import start_embedded

    backend = await start_embedded(resources.settings, BASE_MODEL_NAME)
    resources.extras[ENGINE_KEY] = backend.engine
    logger.info("inference engine ready on %s", backend.engine.device)
    return backend


async def _upstream(resources: Resources) -> ServingBackend:
    from service.serving.upstream import UpstreamBackend

    # httpx logs every request at INFO: one line per completion and per probe is noise, and costs time.
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.setLevel(max(httpx_logger.getEffectiveLevel(), logging.WARNING))
    settings = resources.settings
    backend = UpstreamBackend(
        settings.upstream_urls,
        api_key=settings.upstream_api_key,
        model=settings.upstream_model,
        store_root=settings.data_dir / "adapters",
        upstream_store_root=settings.upstream_adapter_dir,
        timeout_s=settings.upstream_timeout_s,
        probe_interval_s=settings.upstream_probe_interval_s,
        default_max_tokens=settings.engine_max_tokens,
    )
    await backend.start()
    logger.info("serving through %d OpenAI-compatible upstream(s)", len(settings.upstream_urls))
    return backend


async def start_backend(resources: Resources, stack: AsyncExitStack) -> None:
    """Startup hook: start the configured backend; close it at shutdown."""
    settings = resources.settings
    if settings.engine == "none":
        return
    if settings.serving_backend == "openai-upstream":
        backend = await _upstream(resources)
    else:
        backend = await _embedded(resources)
    # No alias is set here: the served alias is created by the reconciler once it has read the database
    # (the base model when nothing is deployed). Until then it answers 503, never the base model.
    stack.push_async_callback(backend.close)
    resources.extras[BACKEND_KEY] = backend


start_engine = start_backend  # the name service.app's startup hooks use


def get_backend(resources: Resources) -> ServingBackend:
    """The running backend, or 503 when this replica serves no model."""
    backend: ServingBackend | None = resources.extras.get(BACKEND_KEY)
    if backend is None:
        raise Unavailable(
            "This server has no model loaded (OBLIVIATE_ENGINE=none)", retry_after=60, code="engine_disabled"
        )
    return backend
