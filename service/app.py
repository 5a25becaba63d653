"""The application factory: ``create_app(settings)`` builds the Litestar app; nothing reads the environment here.

The lifespan opens the database (running migrations), the embedded Redis when no URL is configured and
the arq pool once, and closes them at shutdown. Importing this module does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging.config import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.types import Message, Scope
from sqlalchemy.ext.asyncio import async_sessionmaker

from service import API_VERSION, API_VERSION_HEADER
from service.core import logs
from service.core.errors import EXCEPTION_HANDLERS
from service.core.openapi import StructSchemas
from service.core.openapi import components as openapi_components
from service.core.state import Resources
from service.db import create_engine, migrate
from service.health.controllers import HealthController
from service.queue import EmbeddedRedis, create_pool
from service.settings import Settings

logger = logging.getLogger("obliviate")

# A domain hook receives the resources at start-up and may register a shutdown callback on the stack.
StartupHook = Callable[[Resources, AsyncExitStack], Awaitable[None]]


def _domain_route_handlers() -> list[Any]:
    """Route handlers of every domain (each domain module is imported here, not at package import)."""
    from service.deployments.controllers import DeploymentsController
    from service.forget.controllers import CertificateKeyController, ForgetRequestController
    from service.gateway.controllers import OpenAIController
    from service.observability.controller import MetricsController
    from service.report.controllers import ReportController, ReportWebController
    from service.review.controllers import ReviewController
    from service.review.web import ReviewWebController, static_router
    from service.verification.controllers import VerificationController

    return [
        HealthController,
        ForgetRequestController,
        CertificateKeyController,
        OpenAIController,
        DeploymentsController,
        VerificationController,
        ReviewController,
        ReviewWebController,
        ReportController,
        ReportWebController,
        MetricsController,
        static_router(),
    ]


def _domain_startup_hooks() -> list[StartupHook]:
    from service.deployments.serving import start_reconciler
    from service.gateway.runtime import start_engine
    from service.orchestration.startup import start as start_forget_domain
    from service.review.startup import start as start_review

    # The engine first: the reconciler loads the deployed adapters into it.
    return [start_forget_domain, start_engine, start_reconciler, start_review]


def _template_config() -> Any:
    from service.review.web import template_config

    return template_config()


_API_VERSION_HEADER = (API_VERSION_HEADER.lower().encode("latin-1"), API_VERSION.encode("latin-1"))


async def _api_version_header(message: Message, scope: Scope) -> None:
    """Every response says which API version it speaks (the SDK compares it with its own)."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", ()), _API_VERSION_HEADER]


def create_app(
    settings: Settings,
    *,
    extra_route_handlers: Sequence[Any] = (),
    startup_hooks: Sequence[StartupHook] = (),
) -> Litestar:
    """Build the Obliviate API for ``settings``."""
    hooks = [*_domain_startup_hooks(), *startup_hooks]
    if settings.metrics_enabled and settings.metrics_port is not None:
        from service.observability.port import start_metrics_port

        hooks.append(start_metrics_port)  # last: it opens once the rest is up, and closes first
    # First: everything the request logs, metrics middleware included, carries the forget request id.
    middleware: list[Any] = [logs.request_context_middleware]
    if settings.metrics_enabled:
        from service.observability.controller import http_metrics_middleware

        middleware.append(http_metrics_middleware())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            engine = create_engine(settings.resolved_database_url)
            stack.push_async_callback(engine.dispose)
            if settings.run_migrations:
                await migrate(engine)
            redis_url = settings.redis_url
            if not redis_url:
                embedded = EmbeddedRedis(settings.data_dir)
                redis_url = embedded.start()
                stack.callback(embedded.stop)
            arq = create_pool(redis_url)
            stack.push_async_callback(arq.aclose)
            resources = Resources(
                settings=settings,
                engine=engine,
                sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
                arq=arq,
                redis_url=redis_url,
            )
            app.state.resources = resources
            for hook in hooks:
                await hook(resources, stack)
            yield

    def provide_resources(state: State) -> Resources:
        return state.resources  # type: ignore[no-any-return]

    return Litestar(
        route_handlers=[*_domain_route_handlers(), *extra_route_handlers],
        lifespan=[lifespan],
        dependencies={"resources": Provide(provide_resources, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=middleware,
        template_config=_template_config(),
        before_send=[_api_version_header],
        # The root logger is the entry point's (service.core.logs.configure: text or JSON lines);
        # Litestar's default would replace its handler with its own format.
        logging_config=LoggingConfig(
            configure_root_logger=False, loggers={"litestar": {"level": "INFO", "propagate": True}}
        ),
        request_max_body_size=settings.max_body_bytes,
        # Body schemas as msgspec validates them (see service.core.openapi).
        plugins=[StructSchemas()],
        openapi_config=OpenAPIConfig(
            title="Obliviate", version=API_VERSION, path="/docs", components=openapi_components()
        ),
        debug=False,
    )


def asgi() -> Litestar:
    """ASGI factory for external servers: ``uvicorn --factory service.app:asgi``."""
    from service.settings import get_settings

    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)
