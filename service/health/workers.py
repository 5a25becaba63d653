"""Worker liveness for ``/health/ready``: live workers (their Redis health keys) against waiting requests.

Not ready (503) when requests wait for a stage and no worker is alive to run them: an operator's load
balancer or orchestrator then sees what a user would otherwise find out only after their request
stayed ``queued`` for good.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from service.core.state import Resources
from service.forget.lifecycle import ACTIVE
from service.forget.models import ForgetRequest
from service.orchestration.workers import COUNTERS, live_workers


async def waiting_requests(resources: Resources) -> int:
    """Requests that need a worker now (queued or in a stage)."""
    async with resources.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).where(ForgetRequest.status.in_([status.value for status in ACTIVE]))
        )
    return int(count or 0)


async def worker_check(resources: Resources) -> dict[str, Any]:
    """``{"ok", "live", "workers", "waiting_requests", "waiting_without_worker"}``; not ok only when
    requests wait and no worker is alive."""
    workers = await live_workers(resources.arq)
    waiting = await waiting_requests(resources)
    stranded = waiting if not workers else 0
    COUNTERS.waiting_without_worker = stranded
    check: dict[str, Any] = {
        "ok": stranded == 0 or not resources.settings.ready_requires_worker,
        "live": len(workers),
        "workers": workers[:50],
        "waiting_requests": waiting,
        "waiting_without_worker": stranded,
    }
    if stranded:
        check["error"] = f"{stranded} request(s) wait for a stage and no worker is alive"
    return check
