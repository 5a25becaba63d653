"""``OBLIVIATE_METRICS_PORT``: ``/metrics`` alone on a port of its own, served by the API process.

A second uvicorn server in the API's event loop, started by a start-up hook once everything else is
up and stopped (within about a tenth of a second) when the app shuts down. It serves one small
Litestar app holding the same resources, so a scrape reads the same collectors and the same cached
snapshot as the main port did, under the same access rules (token, operator key, or
``metrics_public``); the main port's ``/metrics`` then answers 404. The socket is bound here, not by
uvicorn, so a port already in use fails the start-up with a message naming the setting (uvicorn
would log its own error and exit the process).

One process per port: under ``uvicorn --workers N --factory service.app:asgi`` the second process
could not bind it. ``obliviate serve`` runs one API process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import AsyncExitStack
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.logging.config import LoggingConfig

from service.core.errors import EXCEPTION_HANDLERS
from service.core.state import Resources
from service.observability.controller import METRICS_PATH, metrics_response

logger = logging.getLogger("obliviate.metrics")

#: Open scrapes get this long to finish when the server stops (Prometheus keeps connections alive).
_STOP_GRACE_S = 2.0


@get(METRICS_PATH, include_in_schema=False)
async def _metrics(request: Request[Any, Any, Any], resources: NamedDependency[Resources]) -> Response[bytes]:
    return await metrics_response(request, resources)


def metrics_app(resources: Resources) -> Litestar:
    """The app the metrics port serves: ``GET /metrics`` and nothing else (404 elsewhere)."""

    def provide_resources(state: State) -> Resources:
        return state.resources  # type: ignore[no-any-return]

    return Litestar(
        route_handlers=[_metrics],
        state=State({"resources": resources}),
        dependencies={"resources": Provide(provide_resources, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=None,
        logging_config=LoggingConfig(
            configure_root_logger=False, loggers={"litestar": {"level": "INFO", "propagate": True}}
        ),
        debug=False,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a ``RuntimeError`` that names the setting."""
    try:
        return socket.create_server((host, port), family=_family(host), backlog=64)
    except OSError as exc:
        raise RuntimeError(
            f"cannot serve /metrics on {host}:{port} (OBLIVIATE_METRICS_PORT): {exc.strerror or exc}"
        ) from exc


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def start_metrics_port(resources: Resources, stack: AsyncExitStack) -> None:
    """Start-up hook: serve ``/metrics`` on ``metrics_port`` until the app stops."""
    import uvicorn

    settings = resources.settings
    if settings.metrics_port is None or not settings.metrics_enabled:
        return
    sock = bind(settings.host, settings.metrics_port)
    config = uvicorn.Config(
        metrics_app(resources),
        lifespan="off",
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(_STOP_GRACE_S),
    )
    server = uvicorn.Server(config)
    # Server.serve installs its own SIGINT/SIGTERM handlers for its run (main thread only) and, once
    # stopped, puts back the ones it found -- the main server's -- and re-raises the signal it caught,
    # so a Ctrl-C or SIGTERM stops this server first and then the API as before.
    task = asyncio.create_task(server.serve(sockets=[sock]), name="obliviate-metrics-port")

    async def stop() -> None:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=_STOP_GRACE_S + 3)
        except TimeoutError:
            task.cancel()
        finally:
            sock.close()

    stack.push_async_callback(stop)
    for _ in range(100):  # usually one or two turns of the loop
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raise what stopped it
    logger.info("metrics on http://%s:%s%s", settings.host, settings.metrics_port, METRICS_PATH)
