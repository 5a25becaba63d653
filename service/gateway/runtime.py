"""The in-process inference engine: created once in the lifespan, torch imported only there.

``OBLIVIATE_ENGINE=none`` skips it (intake-only replicas and tests); the OpenAI routes then answer 503.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from service.core.errors import Unavailable
from service.core.state import Resources
from service.settings import Settings

logger = logging.getLogger("obliviate.gateway")

ENGINE_KEY = "engine"
BASE_MODEL_NAME = "base"


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_dir(settings: Settings) -> Path:
    """The served base model: the configured directory, else the demo model (built and cached on first use)."""
    if settings.base_model is not None:
        return settings.base_model
    from gpu_runtime.demo.build import build_demo_model

    return build_demo_model(cache_dir=settings.model_cache_dir)


async def start_engine(resources: Resources, stack: AsyncExitStack) -> None:
    """Startup hook: load the model and start the batching scheduler; stop it at shutdown."""
    settings = resources.settings
    if settings.engine == "none":
        return
    from gpu_runtime.engine import InferenceEngine

    model_dir = await asyncio.to_thread(resolve_model_dir, settings)
    engine = InferenceEngine(
        model_dir,
        device=_device(settings.device),
        max_batch_size=settings.engine_max_batch,
        max_queue=settings.engine_max_queue,
        adapter_capacity=settings.engine_adapter_capacity,
        base_model_name=BASE_MODEL_NAME,
        default_max_tokens=settings.engine_max_tokens,
    )
    await asyncio.to_thread(engine.start)
    # No alias is set here: the served alias is created by the reconciler once it has read the database
    # (the base model when nothing is deployed). Until then it answers 503, never the base model.

    async def _close() -> None:
        # Give requests in flight a moment to finish; new ones are refused from now on.
        await asyncio.to_thread(engine.close, 2.0)

    stack.push_async_callback(_close)
    resources.extras[ENGINE_KEY] = engine
    logger.info("inference engine ready on %s", engine.device)


def get_engine(resources: Resources) -> Any:
    """The running engine, or 503 when this replica serves no model."""
    engine = resources.extras.get(ENGINE_KEY)
    if engine is None:
        raise Unavailable(
            "This server has no model loaded (OBLIVIATE_ENGINE=none)", retry_after=60, code="engine_disabled"
        )
    return engine
