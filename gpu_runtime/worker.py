"""The arq worker: runs pipeline stages (and ``ping``) by the names in :mod:`service.jobs`.

Heavy imports (torch, the pipeline) happen inside the jobs, so a worker that only answers ``ping``
starts in a fraction of a second. GPU workers run one job at a time.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Worker
from arq.worker import func

from service import jobs
from service.queue.pool import redis_settings
from service.settings import Settings

JobFunction = Callable[..., Awaitable[Any]]

# Extra job functions registered by other modules (pipeline stages), by job name.
_EXTRA_FUNCTIONS: dict[str, tuple[JobFunction, float]] = {}
# Start-up/shut-down callbacks of those modules (e.g. the stage jobs open their database engine).
_LIFECYCLE: list[
    tuple[Callable[[dict[str, Any]], Awaitable[None]], Callable[[dict[str, Any]], Awaitable[None]]]
] = []


def register_lifecycle(
    startup: Callable[[dict[str, Any]], Awaitable[None]],
    shutdown: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Run ``startup(ctx)`` when a worker starts and ``shutdown(ctx)`` when it stops."""
    if (startup, shutdown) not in _LIFECYCLE:
        _LIFECYCLE.append((startup, shutdown))


def register_job(name: str, timeout_s: float) -> Callable[[JobFunction], JobFunction]:
    """Register an async job function under a shared job name with its own timeout."""
    if name not in jobs.ALL_JOBS:
        raise ValueError(f"unknown job name {name!r}; add it to service.jobs first")

    def decorator(fn: JobFunction) -> JobFunction:
        _EXTRA_FUNCTIONS[name] = (fn, timeout_s)
        return fn

    return decorator


async def ping(ctx: dict[str, Any], payload: str = "") -> dict[str, Any]:
    """Round-trip check: echoes its payload with the worker's identity."""
    return {"pong": payload, "worker": ctx.get("worker_id", ""), "pid": os.getpid(), "at": time.time()}


def _load_stage_modules() -> None:
    # Stage jobs live in gpu_runtime.jobs (added by the orchestration work); importing registers them.
    try:
        import gpu_runtime.jobs  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "gpu_runtime.jobs":
            raise


async def _on_startup(ctx: dict[str, Any]) -> None:
    ctx["worker_id"] = f"{socket.gethostname()}:{os.getpid()}"
    for startup, _ in _LIFECYCLE:
        await startup(ctx)
    hook = ctx.get("startup_hook")
    if hook is not None:
        await hook(ctx)


async def _on_shutdown(ctx: dict[str, Any]) -> None:
    hook = ctx.get("shutdown_hook")
    if hook is not None:
        await hook(ctx)
    for _, shutdown in reversed(_LIFECYCLE):
        await shutdown(ctx)


def create_worker(
    settings: Settings,
    redis_url: str,
    *,
    burst: bool = False,
    max_jobs: int = 1,
    handle_signals: bool = True,
    extra_ctx: dict[str, Any] | None = None,
) -> Worker:
    """Build the arq worker for this installation (call from an entry point)."""
    _load_stage_modules()
    functions = [func(ping, name=jobs.PING, timeout=30)]
    functions += [func(fn, name=name, timeout=timeout) for name, (fn, timeout) in _EXTRA_FUNCTIONS.items()]
    ctx: dict[str, Any] = {"settings": settings}
    ctx.update(extra_ctx or {})
    # Its own health key (not arq's shared one): a killed worker vanishes from Redis within an interval.
    health_key = f"{jobs.WORKER_HEALTH_PREFIX}{socket.gethostname()}:{os.getpid()}"
    return Worker(
        functions=functions,
        queue_name=jobs.QUEUE_NAME,
        redis_settings=redis_settings(redis_url),
        burst=burst,
        max_jobs=max_jobs,
        handle_signals=handle_signals,
        on_startup=_on_startup,
        on_shutdown=_on_shutdown,
        ctx=ctx,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        keep_result=3600,
        max_tries=5,
        poll_delay=0.2,
        log_results=False,  # results may echo request metadata; never log corpus-derived values
        health_check_key=health_key,
        health_check_interval=settings.worker_health_interval_s,
    )
