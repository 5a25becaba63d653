"""Registry of ORM model modules, so Alembic and tests see every table.

Each domain that adds tables lists its models module here.
"""

from __future__ import annotations

import importlib

MODEL_MODULES: tuple[str, ...] = (
    "service.db.base",
    "service.auth.models",
    "service.forget.models",
    "service.orchestration.models",
    "service.audit.models",
    "service.deployments.models",
    "service.review.models",
    "service.artifacts.models",
)


def import_all_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
