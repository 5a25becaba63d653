"""Optional OpenTelemetry spans: intake, outbox dispatch, each stage job, deploy; off unless configured.

One trace per forget request across processes: the intake span's context is kept in Redis under the
request id (``obliviate:trace:<id>``, expiring) and every later span of that request -- the relay's
enqueue, the worker's stage job, the deploy -- starts as its child. The arq job itself carries only ids
(its arguments are part of the job's identity), so the context travels beside it, not inside it; if the
key is gone (expired, Redis restarted) the span still carries ``obliviate.request_id`` to join on.
Attributes are ids, stage names, statuses and counts only.

Without the ``otel`` extra installed, or with ``tracing=off``, every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger("obliviate.tracing")

TRACE_KEY_PREFIX = "obliviate:trace:"
TRACE_TTL_S = 30 * 24 * 3600
INSTRUMENTATION = "obliviate"

_lock = threading.Lock()
_provider: Any = None  # the tracer provider chosen for this process (None: not configured yet)
_mode: str | None = None


def set_provider(provider: Any) -> None:
    """Use ``provider`` for every span of this process whatever the mode (tests pass an SDK provider with
    an in-memory exporter); ``None`` goes back to choosing by the setting."""
    global _provider, _mode
    with _lock:
        _provider, _mode = provider, ("explicit" if provider is not None else None)


def _tracer(settings: Any) -> Any:
    """The tracer for ``settings.tracing``, or ``None`` when tracing is off or OpenTelemetry is missing."""
    global _provider, _mode
    mode = getattr(settings, "tracing", "off")
    if mode == "off":
        return None
    with _lock:
        if _provider is None or (_mode != "explicit" and _mode != mode):
            _provider = _make_provider(mode)
            _mode = mode
        provider = _provider
    return None if provider is None else provider.get_tracer(INSTRUMENTATION)


def _make_provider(mode: str) -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        logger.warning("tracing=%s but OpenTelemetry is not installed (pip install 'obliviate[otel]')", mode)
        return None
    if mode == "global":
        return trace.get_tracer_provider()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "obliviate"}))
    if mode == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logger.warning("tracing=otlp needs opentelemetry-exporter-otlp-proto-http; no spans exported")
            return None
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def enabled(settings: Any) -> bool:
    return _tracer(settings) is not None


def _carrier_of(span: Any) -> dict[str, str]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


async def _parent(redis: Any, request_id: str) -> Any:
    """The request's trace context kept in Redis (``None``: none kept, or Redis away)."""
    if redis is None:
        return None
    try:
        raw = await redis.get(TRACE_KEY_PREFIX + request_id)
    except Exception:  # tracing never fails a request
        return None
    if not raw:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    value = raw.decode() if isinstance(raw, bytes) else str(raw)
    return TraceContextTextMapPropagator().extract({"traceparent": value})


async def remember(settings: Any, redis: Any, request_id: str, span: Any) -> None:
    """Keep ``span``'s context as the request's trace parent (best effort)."""
    if span is None or redis is None or not enabled(settings):
        return
    traceparent = _carrier_of(span).get("traceparent")
    if traceparent:
        with contextlib.suppress(Exception):
            await redis.set(TRACE_KEY_PREFIX + request_id, traceparent, ex=TRACE_TTL_S)


@contextlib.asynccontextmanager
async def request_span(
    settings: Any,
    redis: Any,
    name: str,
    request_id: str,
    *,
    root: bool = False,
    **attributes: str | int | float | bool | None,
) -> AsyncIterator[Any]:
    """A span of one forget request: a child of the request's trace when one is kept (``root``: starts
    the request's trace and keeps it). Yields the span (``None`` when tracing is off)."""
    tracer = _tracer(settings)
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import Status, StatusCode

    context = None if root else await _parent(redis, request_id)
    attrs = {"obliviate.request_id": request_id}
    attrs.update({f"obliviate.{k}": v for k, v in attributes.items() if v is not None})  # type: ignore[misc]
    with tracer.start_as_current_span(
        name, context=context, attributes=attrs, record_exception=False, set_status_on_exception=False
    ) as span:
        if root:
            await remember(settings, redis, request_id, span)
        try:
            yield span
        except BaseException as exc:
            # The type only: messages of arbitrary exceptions may quote personal data.
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute("obliviate.error", type(exc).__name__)
            raise


def set_attributes(span: Any, **attributes: str | int | float | bool | None) -> None:
    """Add ``obliviate.*`` attributes to a span from :func:`request_span` (no-op for ``None``)."""
    if span is None:
        return
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(f"obliviate.{key}", value)


async def intake_span(
    settings: Any, redis: Any, request_id: str, started_ns: int, **attributes: str | int | float | bool | None
) -> None:
    """The request's root span (from ``started_ns`` until now), kept as the parent of its later spans."""
    tracer = _tracer(settings)
    if tracer is None:
        return
    attrs: dict[str, Any] = {"obliviate.request_id": request_id}
    attrs.update({f"obliviate.{k}": v for k, v in attributes.items() if v is not None})
    span = tracer.start_span("obliviate.intake", attributes=attrs, start_time=started_ns)
    try:
        await remember(settings, redis, request_id, span)
    finally:
        span.end()
