"""The app's Prometheus metrics: what the gateway counts as it serves, and gauges read at scrape time.

Two kinds live here, in one registry per app (tests run several apps in one process):

- **Event metrics** the gateway updates as it serves (tokens, time to first token, inter-token
  latency, requests waiting and running), labelled by the model name clients use: an alias, ``base``,
  or ``adapter`` for any request-scoped adapter (one label, however many requests there are).
- **State gauges** computed when ``/metrics`` is scraped: forget requests by status, overdue and due
  soon, open review tasks by gate, the outbox, stage durations and attempts (from the workers' Redis
  hash, see :mod:`service.observability.stages`), the arq queue, worker liveness, and this replica's
  serving state per alias (served and desired version, unavailable, loads, swaps, load failures).
  The database and Redis part is one aggregate statement and one Redis pipeline, cached for
  ``metrics_cache_s`` (with the rendered text) so a burst of scrapes (several Prometheus servers)
  costs one refresh.

HTTP requests by route template and status come from Litestar's Prometheus middleware
(``obliviate_http_*``, process-wide registry). Database-derived numbers are the same on every replica:
aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import CompoundSelect, Select, bindparam, func, literal, null, select, union_all

from service import jobs
from service.core.state import Resources
from service.db.base import utcnow
from service.observability import stages as stage_metrics

logger = logging.getLogger("obliviate.metrics")

METRICS_KEY = "metrics"
#: Streaming latencies on a CPU demo model are tens of milliseconds; on a GPU a few.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# Deadlines count only while a request is still being worked on (views.due_flags says the same).
_NOT_OPEN = ("ready", "deployed", "superseded", "rolled_back", "failed", "cancelled")
_STAGE_STATUSES = ("reinforcing", "mining_anchors", "generating_targets", "unlearning", "evaluating")


def model_label(public_name: str) -> str:
    """The ``model`` label of a gateway metric: aliases and ``base`` as named, every adapter as ``adapter``."""
    return "adapter" if public_name.startswith("adapter:") else public_name


@dataclass
class StateSnapshot:
    """What one refresh read from the database and Redis."""

    taken_at: float = 0.0  # monotonic
    refresh_seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)
    overdue: int = 0
    due_soon: int = 0
    oldest_heartbeat_age_s: float = 0.0
    review_open: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    queue_depth: int = 0
    queue_oldest_age_s: float = 0.0
    live_workers: int = 0
    stages: stage_metrics.StageStats = field(default_factory=stage_metrics.StageStats)
    errors: int = 0


class Metrics:
    """The per-app registry, the gateway's event metrics and the scrape-time state."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.prompt_tokens = Counter(
            "obliviate_gateway_prompt_tokens",
            "Prompt tokens of completed gateway requests.",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "obliviate_gateway_completion_tokens", "Tokens the gateway generated.", ["model"], registry=r
        )
        self.completions = Counter(
            "obliviate_gateway_completions",
            "Gateway completion requests answered, by outcome (ok, error, cancelled).",
            ["model", "stream", "outcome"],
            registry=r,
        )
        self.ttft = Histogram(
            "obliviate_gateway_time_to_first_token_seconds",
            "Time from queueing a streamed request to its first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "obliviate_gateway_inter_token_latency_seconds",
            "Time between consecutive tokens of a streamed response.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "obliviate_gateway_requests_waiting",
            "Streamed requests queued in the backend without a first token yet.",
            ["model"],
            registry=r,
        )
        self.running = Gauge(
            "obliviate_gateway_requests_running",
            "Completion requests in progress at this gateway (queued or generating).",
            ["model"],
            registry=r,
        )
        self.snapshot = StateSnapshot()
        self._refresh_lock = asyncio.Lock()
        self._rendered: tuple[float, bytes] | None = None
        r.register(_StateCollector(self))

    # -- scrape-time state ---------------------------------------------------------------------
    async def render(self, exposition: Callable[[CollectorRegistry], bytes]) -> bytes:
        """The exposition text, rendered at most once per ``metrics_cache_s`` (rendering ~130 samples
        costs more than the cached database read; Prometheus scrapes every 15 s or so anyway)."""
        ttl = float(self.resources.settings.metrics_cache_s)
        cached = self._rendered
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        await self.refresh()
        body = exposition(self.registry)
        self._rendered = (time.monotonic(), body)
        return body

    async def refresh(self) -> StateSnapshot:
        """Re-read the database and Redis unless the last read is younger than ``metrics_cache_s``."""
        ttl = float(self.resources.settings.metrics_cache_s)
        if self.snapshot.taken_at and time.monotonic() - self.snapshot.taken_at < ttl:
            return self.snapshot
        async with self._refresh_lock:
            if self.snapshot.taken_at and time.monotonic() - self.snapshot.taken_at < ttl:
                return self.snapshot  # another scrape refreshed it while this one waited
            started = time.perf_counter()
            fresh = StateSnapshot(errors=self.snapshot.errors)
            try:
                await self._read_database(fresh)
            except Exception as exc:  # keep serving the other metrics; count the failure
                fresh = _carry(self.snapshot, fresh)
                fresh.errors += 1
                logger.warning("metrics: database read failed: %s", type(exc).__name__)
            try:
                await self._read_redis(fresh)
            except Exception as exc:
                fresh.errors += 1
                logger.warning("metrics: Redis read failed: %s", type(exc).__name__)
            fresh.refresh_seconds = time.perf_counter() - started
            fresh.taken_at = time.monotonic()
            self.snapshot = fresh
            return fresh

    async def _read_database(self, out: StateSnapshot) -> None:
        """One prepared statement, one round trip (``_state_statement``)."""
        now = utcnow()
        soon = now + timedelta(seconds=float(self.resources.settings.due_soon_s))
        async with self.resources.engine.connect() as connection:
            rows = (await connection.execute(_state_statement(), {"now": now, "soon": soon})).all()
        for kind, name, count, heartbeat in rows:
            if kind == "status":
                out.by_status[str(name)] = int(count)
            elif kind == "overdue":
                out.overdue = int(count)
            elif kind == "due_soon":
                out.due_soon = int(count)
            elif kind == "heartbeat" and heartbeat is not None:
                if heartbeat.tzinfo is None:
                    heartbeat = heartbeat.replace(tzinfo=now.tzinfo)
                out.oldest_heartbeat_age_s = max(0.0, (now - heartbeat).total_seconds())
            elif kind == "review":
                out.review_open[str(name)] = int(count)
            elif kind == "outbox":
                out.outbox_pending = int(count)

    async def _read_redis(self, out: StateSnapshot) -> None:
        redis = self.resources.arq
        pipe = redis.pipeline(transaction=False)
        pipe.zcard(jobs.QUEUE_NAME)
        pipe.zrange(jobs.QUEUE_NAME, 0, 0, withscores=True)
        pipe.hgetall(stage_metrics.STAGES_KEY)
        depth, oldest, raw_stages = await pipe.execute()
        out.queue_depth = int(depth or 0)
        if oldest:
            # arq scores a job with the time (ms) it may run; a deferred retry is not "waiting" yet.
            out.queue_oldest_age_s = max(0.0, time.time() - float(oldest[0][1]) / 1000.0)
        out.stages = stage_metrics.parse(raw_stages or {})
        from service.orchestration.workers import live_workers

        out.live_workers = len(await live_workers(redis))


@functools.cache
def _state_statement() -> CompoundSelect:
    """The database part of a scrape: one ``UNION ALL`` of aggregates, rows ``(kind, name, count,
    heartbeat)``, built once (building it costs about as much as running it) with ``now`` and
    ``soon`` bound at each run.

    Every forget-request branch reads the ``(status, due_at)`` index (migration 0007): counts by
    status scan the index alone, overdue and due soon are range counts over the statuses still being
    worked on (``views.due_flags`` says the same), the oldest heartbeat visits only rows in a stage,
    so ``heartbeat_at`` (written every few seconds while a stage runs) needs no index of its own.
    """
    from service.forget.lifecycle import Status
    from service.forget.models import ForgetRequest as fr
    from service.orchestration.models import OutboxEntry
    from service.review.models import ReviewGate, ReviewTask

    now, soon = bindparam("now", type_=fr.due_at.type), bindparam("soon", type_=fr.due_at.type)
    still_open = fr.status.in_([s.value for s in Status if s.value not in _NOT_OPEN])
    no_time = null().cast(fr.heartbeat_at.type)

    def count(kind: str, *where: Any) -> Select[Any]:
        return select(literal(kind), literal(""), func.count(), no_time).where(*where)

    by_status = select(literal("status"), fr.status, func.count(), no_time).group_by(fr.status)
    heartbeat = select(literal("heartbeat"), literal(""), func.count(), func.min(fr.heartbeat_at))
    review = (
        select(literal("review"), ReviewGate.gate, func.count(), no_time)
        .select_from(ReviewTask)
        .join(ReviewGate, ReviewGate.id == ReviewTask.gate_id)
        .where(ReviewTask.status == "open", ReviewTask.control.is_(False))
        .group_by(ReviewGate.gate)
    )
    return union_all(
        by_status,
        count("overdue", still_open, fr.due_at <= now),
        count("due_soon", still_open, fr.due_at > now, fr.due_at <= soon),
        heartbeat.where(fr.status.in_(_STAGE_STATUSES)),
        review,
        count("outbox", OutboxEntry.dispatched_at.is_(None)),
    )


def _carry(old: StateSnapshot, new: StateSnapshot) -> StateSnapshot:
    """Keep the last database numbers when a refresh could not read the database."""
    for name in (
        "by_status",
        "overdue",
        "due_soon",
        "oldest_heartbeat_age_s",
        "review_open",
        "outbox_pending",
    ):
        setattr(new, name, getattr(old, name))
    return new


class _StateCollector(Collector):
    """Turns the last snapshot and this replica's serving state into metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot
        resources = self.metrics.resources
        yield from _forget_families(snap)
        yield from _queue_families(snap)
        yield from _worker_families(snap)
        yield from _serving_families(resources)
        yield from _engine_families(resources)
        yield GaugeMetricFamily(
            "obliviate_metrics_refresh_seconds",
            "How long the last database and Redis read for /metrics took.",
            value=snap.refresh_seconds,
        )
        yield CounterMetricFamily(
            "obliviate_metrics_refresh_errors",
            "Failed database or Redis reads for /metrics.",
            value=snap.errors,
        )


def _forget_families(snap: StateSnapshot) -> Iterator[Metric]:
    from service.forget.lifecycle import Status

    by_status = GaugeMetricFamily(
        "obliviate_forget_requests", "Forget requests in the database, by status.", labels=["status"]
    )
    for status in Status:
        by_status.add_metric([status.value], snap.by_status.get(status.value, 0))
    yield by_status
    yield GaugeMetricFamily(
        "obliviate_forget_requests_overdue",
        "Forget requests still being worked on whose due date has passed.",
        value=snap.overdue,
    )
    yield GaugeMetricFamily(
        "obliviate_forget_requests_due_soon",
        "Forget requests still being worked on that are due within due_soon_s.",
        value=snap.due_soon,
    )
    review = GaugeMetricFamily(
        "obliviate_review_tasks_open", "Open review tasks (control tasks excluded), by gate.", labels=["gate"]
    )
    for gate in ("anchor_review", "target_review", "evaluation_review"):
        review.add_metric([gate], snap.review_open.get(gate, 0))
    yield review
    duration = HistogramMetricFamily(
        "obliviate_stage_duration_seconds",
        "Run time of pipeline stage jobs (all workers), by stage.",
        labels=["stage"],
    )
    attempts = CounterMetricFamily(
        "obliviate_stage_attempts",
        "Pipeline stage jobs run (all workers), by stage and outcome.",
        labels=["stage", "outcome"],
    )
    for stage in jobs.PIPELINE_STAGES:
        buckets, total = snap.stages.histogram(stage)
        duration.add_metric([stage], buckets, total)
    for (stage, outcome), count in sorted(snap.stages.attempts.items()):
        attempts.add_metric([stage, outcome], count)
    yield duration
    yield attempts


def _queue_families(snap: StateSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("obliviate_queue_depth", "Jobs in the arq queue.", value=snap.queue_depth)
    yield GaugeMetricFamily(
        "obliviate_queue_oldest_job_age_seconds",
        "How long the longest-waiting job in the queue has been due.",
        value=snap.queue_oldest_age_s,
    )
    yield GaugeMetricFamily(
        "obliviate_outbox_pending", "Outbox rows not yet enqueued.", value=snap.outbox_pending
    )


def _worker_families(snap: StateSnapshot) -> Iterator[Metric]:
    from service.orchestration.workers import COUNTERS

    yield GaugeMetricFamily(
        "obliviate_workers_live", "Workers whose Redis heartbeat key is alive.", value=snap.live_workers
    )
    yield GaugeMetricFamily(
        "obliviate_stage_heartbeat_age_seconds",
        "Age of the oldest heartbeat of a running stage (0: none running).",
        value=snap.oldest_heartbeat_age_s,
    )
    yield GaugeMetricFamily(
        "obliviate_workers_embedded_running",
        "Worker processes this server supervises that are running.",
        value=COUNTERS.running,
    )
    yield CounterMetricFamily(
        "obliviate_worker_restarts", "Embedded workers restarted after they exited.", value=COUNTERS.restarts
    )
    yield CounterMetricFamily("obliviate_worker_exits", "Embedded worker exits.", value=COUNTERS.exits)
    yield GaugeMetricFamily(
        "obliviate_requests_waiting_without_worker",
        "Requests waiting for a stage while no worker was alive (at the last readiness check).",
        value=COUNTERS.waiting_without_worker,
    )


def _serving_families(resources: Resources) -> Iterator[Metric]:
    from service.deployments.serving import SERVING_KEY

    serving = resources.extras.get(SERVING_KEY)
    served = GaugeMetricFamily(
        "obliviate_alias_served_version",
        "Adapter version this replica serves for the alias (0: the base model; absent: nothing).",
        labels=["alias"],
    )
    desired = GaugeMetricFamily(
        "obliviate_alias_desired_version",
        "Adapter version the database says the alias serves (0: the base model).",
        labels=["alias"],
    )
    unavailable = GaugeMetricFamily(
        "obliviate_alias_unavailable",
        "1 while this replica cannot load the alias's desired version (fail closed: it answers 503).",
        labels=["alias"],
    )
    reason = GaugeMetricFamily(
        "obliviate_alias_unavailable_reason",
        "1 for the reason an alias is unavailable here (hash_mismatch, adapter_missing, load_failed, ...).",
        labels=["alias", "code"],
    )
    loads = CounterMetricFamily("obliviate_adapter_loads", "Adapters loaded, by alias.", labels=["alias"])
    swaps = CounterMetricFamily(
        "obliviate_alias_swaps", "Times an alias was pointed at another adapter here.", labels=["alias"]
    )
    failures = CounterMetricFamily(
        "obliviate_adapter_load_failures", "Failed adapter loads, by alias.", labels=["alias"]
    )
    refused = CounterMetricFamily(
        "obliviate_alias_refused_requests",
        "Requests answered 503 alias_unavailable, by alias.",
        labels=["alias"],
    )
    transitions = CounterMetricFamily(
        "obliviate_alias_unavailable_transitions", "Times an alias became unavailable here.", labels=["alias"]
    )
    if serving is not None and serving.serves:
        m = serving.metrics
        for alias in serving.aliases():
            loaded, wanted, fault = serving.views.get(alias), serving.wanted.get(alias), serving.fault(alias)
            if loaded is not None and fault is None:
                served.add_metric([alias], loaded.version)
            if wanted is not None:
                desired.add_metric([alias], wanted.version)
            unavailable.add_metric([alias], int(fault is not None))
            if fault is not None:
                reason.add_metric([alias, fault.code], 1)
        for family, counts in (
            (loads, m.loads_total),
            (swaps, m.swaps_total),
            (failures, m.load_failures_total),
            (refused, m.refused_requests_total),
            (transitions, m.unavailable_transitions_total),
        ):
            for alias, count in sorted(counts.items()):
                family.add_metric([alias], count)
    yield from (served, desired, unavailable, reason, loads, swaps, failures, refused, transitions)


def _engine_families(resources: Resources) -> Iterator[Metric]:
    from service.gateway.runtime import BACKEND_KEY

    backend = resources.extras.get(BACKEND_KEY)
    stats = getattr(backend, "stats", None)
    if stats is None:
        return
    try:
        numbers = stats()
    except Exception:
        return
    yield GaugeMetricFamily(
        "obliviate_engine_requests_waiting",
        "Requests queued in the in-process engine (all models).",
        value=numbers.get("waiting", 0),
    )
    yield GaugeMetricFamily(
        "obliviate_engine_requests_running",
        "Requests in the in-process engine's running batch (all models).",
        value=numbers.get("running", 0),
    )


def get_metrics(resources: Resources) -> Metrics:
    """The app's metrics (created on first use)."""
    metrics: Metrics | None = resources.extras.get(METRICS_KEY)
    if metrics is None:
        metrics = resources.extras[METRICS_KEY] = Metrics(resources)
    return metrics


def metrics_if_any(resources: Resources) -> Metrics | None:
    """The app's metrics, or ``None`` when metrics are off (instrumentation then does nothing)."""
    if not resources.settings.metrics_enabled:
        return None
    return get_metrics(resources)
