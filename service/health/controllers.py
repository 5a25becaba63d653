"""``/health/live`` says the process answers; ``/health/ready`` checks the database and Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from service import API_VERSION
from service.core.openapi import PLAIN
from service.core.state import Resources
from service.db import ping as db_ping

CHECK_TIMEOUT_S = 2.0


async def _check(name: str, probe: Any) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout=CHECK_TIMEOUT_S)
    except Exception as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return name, {"ok": False, "error": reason[:300]}
    return name, {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _workers(resources: Resources) -> dict[str, Any]:
    from service.health.workers import worker_check

    try:
        return await asyncio.wait_for(worker_check(resources), timeout=CHECK_TIMEOUT_S)
    except Exception as exc:
        return {"ok": False, "error": f"worker check failed: {type(exc).__name__}"}


def _serving(resources: Resources) -> dict[str, Any]:
    """Fail closed: not ready while an alias cannot serve the version the database says it serves."""
    from service.deployments.serving import get_serving

    serving = get_serving(resources)
    state = serving.replica_state()
    down = {alias: a for alias, a in state["aliases"].items() if a["state"] != "serving"}
    check: dict[str, Any] = {"ok": not down, "replica": state["replica"], "aliases": state["aliases"]}
    if down:
        check["unavailable"] = sorted(down)
        check["error"] = "; ".join(
            f"alias {alias} cannot serve version {a['desired_version']}: {a['error']['code'] if a['error'] else '?'}"
            for alias, a in sorted(down.items())
        )
    return check


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "/live",
        summary="The process is up",
        description="Also states the HTTP API version this server speaks (`api_version`; the "
        "`Obliviate-API-Version` header of every response says the same).",
    )
    async def live(self) -> dict[str, str]:
        return {"status": "ok", "api_version": API_VERSION}

    @get(
        "/ready",
        summary="Database, Redis, workers and served aliases are fine",
        description="503 names each failed dependency, and each alias this replica cannot serve (alias:<name>).",
        operation_class=PLAIN,
        responses={503: ResponseSpec(data_container=dict[str, Any], description="Not ready: see `failed`.")},
    )
    async def ready(self, resources: NamedDependency[Resources]) -> Response[dict[str, Any]]:
        checks = dict(
            await asyncio.gather(
                _check("database", db_ping(resources.engine)),
                _check("redis", resources.arq.ping()),
            )
        )
        if checks["database"]["ok"] and checks["redis"]["ok"]:
            checks["workers"] = await _workers(resources)
        checks["serving"] = _serving(resources)
        ok = all(check["ok"] for check in checks.values())
        failed = [name for name, check in checks.items() if not check["ok"]]
        failed += [f"alias:{alias}" for alias in checks["serving"].get("unavailable", [])]
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
        if failed:
            body["failed"] = failed
        return Response(body, status_code=200 if ok else 503)
