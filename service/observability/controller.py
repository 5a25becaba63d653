"""``GET /metrics``: Prometheus text format, for a scraper holding the metrics token or an operator key.

With ``metrics_port`` set the endpoint moves to that port (``service.observability.port``) and this
one answers 404. Who may scrape, on either port (``docs/operations.md``): with ``metrics_public``
anyone who reaches the port (a private network); otherwise a bearer token equal to
``metrics_bearer_token`` or an operator API key; anything else is 401 (no credentials) or 403 (a key
of another role). The body is the process-wide registry
(Litestar's ``obliviate_http_*`` metrics, process and Python runtime) followed by this app's registry.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.core.errors import Forbidden, NotFound
from service.core.state import Resources
from service.observability.metrics import get_metrics

METRICS_PATH = "/metrics"


async def _check_access(request: Request[Any, Any, Any], resources: Resources) -> None:
    settings = resources.settings
    if not settings.metrics_enabled:
        raise NotFound("Metrics are switched off on this server (OBLIVIATE_METRICS_ENABLED)")
    if settings.metrics_public:
        return
    header = request.headers.get("authorization", "")
    token = settings.metrics_bearer_token
    if token and header.lower().startswith("bearer "):
        presented = header[7:].strip()
        if hmac.compare_digest(presented.encode(), token.encode()):
            return
    from service.auth.dependencies import Role, authenticate

    principal = await authenticate(request)  # 401 without a valid key
    if principal.role != Role.OPERATOR:
        raise Forbidden(f"/metrics needs an operator key or the metrics token; your key is {principal.role}")


async def metrics_response(request: Request[Any, Any, Any], resources: Resources) -> Response[bytes]:
    """The exposition, after the access check (the main port and ``OBLIVIATE_METRICS_PORT`` alike)."""
    await _check_access(request, resources)
    body = await get_metrics(resources).render(
        lambda registry: generate_latest(REGISTRY) + generate_latest(registry)
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


class MetricsController(Controller):
    path = METRICS_PATH
    include_in_schema = False

    @get("/", opt={"exclude_from_metrics": True})
    async def metrics(
        self, request: Request[Any, Any, Any], resources: NamedDependency[Resources]
    ) -> Response[bytes]:
        if resources.settings.metrics_port is not None:
            # Served on its own port (service.observability.port); not here as well, so a network
            # policy that keeps the metrics port private is not undone by the public one.
            raise NotFound("Metrics are served on a port of their own here (OBLIVIATE_METRICS_PORT)")
        return await metrics_response(request, resources)


def http_metrics_middleware() -> Any:
    """Litestar's Prometheus middleware: HTTP requests by method, route template and status."""
    from litestar.plugins.prometheus import PrometheusConfig

    config = PrometheusConfig(
        app_name="obliviate",
        prefix="obliviate_http",
        group_path=True,  # the route template, not the path: request ids are not label values
        exclude_opt_key="exclude_from_metrics",
        buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    )
    return config.middleware
