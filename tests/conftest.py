"""Suite-wide fixtures: the demo world and the demo chat model (built once, cached across runs).

Heavy imports stay inside the fixtures so collecting the suite does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Imported first so it captures DATABASE_URL / REDIS_URL before any test builds Settings().
import tests.support.infra  # noqa: F401

if TYPE_CHECKING:
    from gpu_runtime.demo.world import World


@pytest.fixture(scope="session")
def demo_world() -> World:
    """The default demo world (seed 0, 32 people)."""
    from gpu_runtime.demo.world import build_world

    return build_world()


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The default demo model, from `$OBLIVIATE_MODEL_CACHE` or `~/.cache/obliviate/models`.

    The first run of the suite pays for the build (about a minute on two cores); later runs find
    it in the cache by content hash.
    """
    from gpu_runtime.demo.build import build_demo_model, default_cache_dir

    return build_demo_model(cache_dir=default_cache_dir())
