"""The worker's stage jobs: one arq job per pipeline stage, driven by the database.

A job ``stage(ctx, request_id, stage, attempt)``:

1. claims the request (compare-and-set on status and attempt; a stale or duplicate job does nothing),
2. runs the stage in an executor thread, with a heartbeat task that writes progress and notices a
   cancel or a newer attempt (the stage then stops at its next batch),
3. moves the request to the next state and writes the next outbox row in one transaction (or to a
   review gate when that gate is on). After ``evaluate`` the acceptance gate decides
   (``gpu_runtime.pipeline.gate``, fail closed): a miss goes back to ``unlearn`` one escalation level
   up, and after the last level to the evaluation review; it is never made ready for auto-deploy.

Bad input fails the request with the pipeline's message; other faults retry (``Retry``) up to
``settings.stage_max_tries``. The runner is injectable (``ctx["stage_runner"]``) so orchestration
can be tested with a fast test double; the default runs ``gpu_runtime.pipeline`` stages.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arq import Retry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gpu_runtime.worker import register_job, register_lifecycle
from service import jobs
from service.artifacts.store import ADAPTER, INPUT, SPEC_FILE, WORK, store_for
from service.audit import chain
from service.core import logs
from service.db import create_engine
from service.db.base import utcnow
from service.deployments.models import AdapterVersion, ServedAlias
from service.forget import lifecycle
from service.forget.lifecycle import STAGE_STATUS, Status
from service.forget.models import ForgetRequest, RequestEvent
from service.forget.service import transition
from service.observability import stages as stage_metrics
from service.observability import tracing
from service.settings import Settings

if TYPE_CHECKING:
    from gpu_runtime.pipeline.gate import AcceptanceThresholds

logger = logging.getLogger("obliviate.jobs")

#: Default run-time cap of each stage (seconds); ``settings.stage_timeout_s`` lowers all of them.
STAGE_TIMEOUTS: dict[str, float] = {
    jobs.REINFORCE: 4 * 3600,
    jobs.MINE_ANCHORS: 2 * 3600,
    jobs.GENERATE_TARGETS: 4 * 3600,
    jobs.UNLEARN: 6 * 3600,
    jobs.EVALUATE: 4 * 3600,
}
WORKER = "worker"


@dataclass
class StageInput:
    """Everything a stage runner needs (runs in a thread: no database, no event loop)."""

    request_id: str
    stage: str
    spec: dict[str, Any]
    options: dict[str, Any]
    work_dir: Path
    adapter_dir: Path
    settings: Settings
    deployed_adapter: str | None
    progress: Callable[[float, str], None]
    should_cancel: Callable[[], bool]


@dataclass
class StageOutput:
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    adapter_path: str | None = None
    adapter_hash: str | None = None


StageRunner = Callable[[StageInput], StageOutput]

_BASE_MODEL_LOCK = threading.Lock()
_BASE_MODEL: dict[str, Path] = {}


def base_model_dir(settings: Settings) -> Path:
    """``settings.base_model`` or the demo model (built once, cached)."""
    if settings.base_model is not None:
        return settings.base_model
    with _BASE_MODEL_LOCK:
        key = str(settings.model_cache_dir)
        if key not in _BASE_MODEL:
            from gpu_runtime.demo.build import build_demo_model

            _BASE_MODEL[key] = Path(build_demo_model(cache_dir=settings.model_cache_dir))
        return _BASE_MODEL[key]


def _numbers_only(value: Any) -> Any:
    """Keep the numeric skeleton of a report: completions may quote the corpus and must not be stored."""
    if isinstance(value, dict):
        kept = {str(k): _numbers_only(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        items = [_numbers_only(v) for v in value]
        return [v for v in items if v is not None] if all(isinstance(v, int | float) for v in value) else None
    if isinstance(value, bool | int | float):
        return value
    return None


def pipeline_spec(spec: dict[str, Any], options: dict[str, Any]) -> Any:
    """The pipeline's ``ForgetSpec`` from the stored corpus and the request's options."""
    from gpu_runtime.pipeline.types import ForgetSpec, PipelineOptions

    pipeline_options: dict[str, Any] = {}
    if "alpha" in options:
        pipeline_options["alpha"] = options["alpha"]
    pipeline_options.update(options.get("pipeline", {}))
    return ForgetSpec(
        documents=spec.get("documents", []),
        qa_pairs=spec.get("qa_pairs", []),
        hints=spec.get("hints", []),
        probes=[{"prompt": p["prompt"], "reference": p.get("reference", "")} for p in spec.get("probes", [])],
        retain_texts=spec.get("retain_texts", []),
        earlier_probes=spec.get("earlier_probes", []),
        earlier_terms=spec.get("earlier_terms", []),
        options=PipelineOptions(**pipeline_options),
    )


def pipeline_runner(inp: StageInput) -> StageOutput:
    """The real runner: one ``gpu_runtime.pipeline`` stage on the request's work directory."""
    from gpu_runtime.pipeline.artifacts import hash_dir
    from gpu_runtime.pipeline.run import run_stage

    spec = pipeline_spec(inp.spec, inp.options)
    result = run_stage(
        inp.stage,
        base_model_dir(inp.settings),
        spec,
        inp.work_dir,
        deployed_adapter=inp.deployed_adapter,
        progress=lambda _stage, fraction, message: inp.progress(fraction, message),
        should_cancel=inp.should_cancel,
    )
    output = StageOutput(summary=_numbers_only(result.summary) or {})
    if inp.stage == jobs.UNLEARN:
        served = Path(result.artifact) / "served"
        source = served if served.is_dir() else Path(result.artifact)
        # Copy out of work/ (purged after deployment) into adapter/ (kept while it may be served).
        target = inp.adapter_dir
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        output.adapter_path = str(target)
        output.adapter_hash = hash_dir(target)
    if inp.stage == jobs.EVALUATE:
        output.metrics = _numbers_only(result.summary) or {}
    return output


# ---------------------------------------------------------------------------------------------------
# Worker lifecycle: the jobs need the database.


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if "obliviate_sessionmaker" not in ctx:
        engine = create_engine(settings.resolved_database_url)
        ctx["obliviate_engine"] = engine
        ctx["obliviate_sessionmaker"] = async_sessionmaker(engine, expire_on_commit=False)


async def _shutdown(ctx: dict[str, Any]) -> None:
    engine = ctx.pop("obliviate_engine", None)
    ctx.pop("obliviate_sessionmaker", None)
    if engine is not None:
        await engine.dispose()


register_lifecycle(_startup, _shutdown)


# ---------------------------------------------------------------------------------------------------
# The job.


class _Live:
    """Progress shared between the stage thread (writer) and the heartbeat task (reader)."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.message = "started"
        self.cancel = threading.Event()

    def update(self, fraction: float, message: str) -> None:
        self.fraction = max(0.0, min(1.0, float(fraction)))
        self.message = message[:200]


def _expected_status(stage: str) -> list[str]:
    status = STAGE_STATUS[stage].value
    return [Status.QUEUED.value, status] if stage == jobs.REINFORCE else [status]


async def _deployed_adapter(session: AsyncSession, alias: str, store: Any) -> str | None:
    """The adapter ``alias`` serves now, which the new delta builds on (None: the base model).

    Read from the deployments' desired state, so it is right after a rollback too, and it is the
    immutable store copy, which outlives the purge of the deployed request's working files.
    """
    path = (
        await session.execute(
            select(AdapterVersion.path)
            .join(ServedAlias, ServedAlias.version_id == AdapterVersion.id)
            .where(ServedAlias.alias == alias)
        )
    ).scalar_one_or_none()
    if not path:
        return None
    try:  # a local directory, or (object store) a hash-checked download of the same content
        local = await asyncio.to_thread(store.adapter_dir, path)
    except (OSError, ValueError):
        return None
    return str(local) if await asyncio.to_thread(local.is_dir) else None


async def _earlier_probes(
    session: AsyncSession, store: Any, request_id: str, alias: str, limit: int = 400
) -> tuple[list[dict[str, Any]], list[str]]:
    """The probes and terms of every request in the lineage of the version ``alias`` serves (the new
    adapter is composed on theirs and must keep them forgotten: sequential composition). Their own
    probes, and their corpus's questions while the corpus is still stored (purged after retention)."""
    version_id = (
        await session.execute(select(ServedAlias.version_id).where(ServedAlias.alias == alias))
    ).scalar_one_or_none()
    request_ids: list[str] = []
    seen: set[str] = set()
    while version_id is not None and version_id not in seen:
        seen.add(version_id)
        version = await session.get(AdapterVersion, version_id)
        if version is None:
            break
        if version.request_id and version.request_id != request_id:
            request_ids.append(version.request_id)
        version_id = version.parent_id
    probes: list[dict[str, Any]] = []
    terms: list[str] = []
    for rid in request_ids:
        row = await session.get(ForgetRequest, rid)
        if row is None:
            continue
        probes += [
            {"prompt": p["prompt"], "reference": p.get("reference", "")}
            for p in row.probes
            if p.get("prompt")
        ]
        try:
            earlier = await asyncio.to_thread(store.get_json, rid, INPUT, SPEC_FILE)
        except (FileNotFoundError, ValueError):
            continue  # purged: its probes (above), if any are left, are what can be checked
        probes += [
            {"prompt": qa["question"], "reference": qa["answer"]}
            for qa in earlier.get("qa_pairs", [])
            if qa.get("question") and qa.get("answer")
        ]
        terms += [h["term"] for h in earlier.get("hints", []) if h.get("term")]
    return probes[:limit], sorted(set(terms))


async def _claim(
    sessionmaker: async_sessionmaker[AsyncSession], request_id: str, stage: str, attempt: int
) -> ForgetRequest | None:
    async with sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id)
        if row is None or row.attempt != attempt or row.status not in _expected_status(stage):
            return None
        now = utcnow()
        stages = dict(row.stages)
        previous = stages.get(stage) or {}
        stages[stage] = {
            "state": "running",
            "progress": 0.0,
            "message": "started",
            "started_at": previous.get("started_at") or now.isoformat(),
            "attempts": int(previous.get("attempts", 0)) + 1,
        }
        values = {"stages": stages, "heartbeat_at": now, "started_at": row.started_at or now}
        target = STAGE_STATUS[stage]
        if row.status != target.value:
            moved = await transition(
                session,
                request_id,
                expected=[row.status],
                to=target,
                actor=WORKER,
                attempt=attempt,
                values=values,
            )
            if moved is None:
                return None
        else:
            result = await session.execute(
                update(ForgetRequest)
                .where(
                    ForgetRequest.id == request_id,
                    ForgetRequest.status == row.status,
                    ForgetRequest.attempt == attempt,
                )
                .values(updated_at=now, **values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return None
        session.add(
            RequestEvent(request_id=request_id, kind="stage", data={"stage": stage, "state": "running"})
        )
        await session.commit()
        row = await session.get(ForgetRequest, request_id, populate_existing=True)
        return row


async def _heartbeat(
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    stage: str,
    attempt: int,
    stages: dict[str, Any],
    live: _Live,
    interval: float,
) -> None:
    """Write heartbeat + progress; set the cancel flag if the request moved on without us."""
    last_written: tuple[float, str] | None = None
    status = STAGE_STATUS[stage].value
    while not live.cancel.is_set():
        await asyncio.sleep(interval)
        snapshot = (round(live.fraction, 3), live.message)
        stages[stage] = {**stages[stage], "progress": snapshot[0], "message": snapshot[1]}
        try:
            async with sessionmaker() as session:
                result = await session.execute(
                    update(ForgetRequest)
                    .where(
                        ForgetRequest.id == request_id,
                        ForgetRequest.status == status,
                        ForgetRequest.attempt == attempt,
                    )
                    .values(
                        heartbeat_at=utcnow(),
                        stages=stages,
                        progress=lifecycle.overall_progress(stages),
                    )
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    live.cancel.set()  # cancelled, failed or re-attempted elsewhere: stop this run
                    return
                if snapshot != last_written:
                    session.add(
                        RequestEvent(
                            request_id=request_id,
                            kind="progress",
                            data={"stage": stage, "progress": snapshot[0], "message": snapshot[1]},
                        )
                    )
                    last_written = snapshot
                await session.commit()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database hiccup must not kill the stage; the next beat retries
            logger.warning("heartbeat of %s failed: %s", request_id, type(exc).__name__)


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession],
    row: ForgetRequest,
    stage: str,
    attempt: int,
    stages: dict[str, Any],
    output: StageOutput,
    settings: Settings,
) -> str | None:
    now = utcnow()
    stages[stage] = {
        **stages[stage],
        "state": "done",
        "progress": 1.0,
        "message": "done",
        "finished_at": now.isoformat(),
        "summary": output.summary,
    }
    target, job = lifecycle.after_stage(stage, list(row.gates))
    values: dict[str, Any] = {"heartbeat_at": None}
    if output.adapter_path is not None:
        values.update(adapter_path=output.adapter_path, adapter_hash=output.adapter_hash)
    if output.metrics is not None:
        values["metrics"] = output.metrics
    acceptance: Acceptance | None = None
    if stage == jobs.EVALUATE:
        acceptance = accept(row, output.metrics or {}, stages)
        target, job = acceptance.target, acceptance.job
        values.update(acceptance.values)
    values.update(stages=stages, progress=lifecycle.overall_progress(stages))
    if target == Status.READY:
        values["finished_at"] = now
    async with sessionmaker() as session:
        if acceptance is not None:
            await _record_attempt(session, row, acceptance)
        moved = await transition(
            session,
            row.id,
            expected=[STAGE_STATUS[stage].value],
            to=target,
            actor=WORKER,
            attempt=attempt,
            enqueue=job,
            values=values,
            audit_data={"stage": stage, "adapter_sha256": output.adapter_hash}
            if output.adapter_hash
            else {"stage": stage},
        )
        if moved is None:
            await session.rollback()
            return None
        # A ready request with deploy_policy=auto is deployed by the gateway replicas' reconciler
        # (service/deployments/serving.py): deploying means loading into the serving engine, which
        # lives in the API processes, not in this worker.
        await session.commit()
    return target.value


# ---------------------------------------------------------------------------------------------------
# The acceptance gate after each evaluation: pass, climb the escalation ladder, or stop at review.


@dataclass
class Acceptance:
    """Where an evaluated request goes, and what the gate's verdict adds to its row."""

    target: Status
    job: str | None
    values: dict[str, Any]
    attempt: dict[str, Any]
    next_escalation: int | None


def _thresholds(options: dict[str, Any]) -> AcceptanceThresholds:
    from pydantic import ValidationError

    from gpu_runtime.pipeline.gate import AcceptanceThresholds

    try:
        return AcceptanceThresholds(**(options.get("acceptance") or {}))
    except (ValidationError, TypeError):
        # Intake validates the option; a row edited since falls back to the policy's defaults.
        logger.warning("invalid stored acceptance thresholds; using the defaults")
        return AcceptanceThresholds()


def accept(row: ForgetRequest, metrics: dict[str, Any], stages: dict[str, Any]) -> Acceptance:
    """Run the acceptance gate on an evaluation (fail closed) and plan the next step.

    Passed: on as before (evaluation review if that gate is on, else ready). Failed with rungs left:
    back to ``unlearn`` at the next ``options.pipeline.escalation`` level (the pipeline trains harder).
    Failed on the last rung: the evaluation review, opened even when the request had it off. Every
    attempt's verdict is kept in ``metrics["gate"]["attempts"]``; a failed verdict is never deployed
    without an admin's override (``service/deployments/services.py``).
    """
    from gpu_runtime.pipeline.gate import attempt_record, decide, next_escalation

    thresholds = _thresholds(dict(row.options))
    pipeline_options = dict(row.options.get("pipeline") or {})
    current = int(pipeline_options.get("escalation", 0))
    previous = (row.metrics or {}).get("gate") if isinstance(row.metrics, dict) else None
    # Earlier rungs of this ladder (a re-run of the same rung replaces its own record).
    attempts = [
        a
        for a in (previous or {}).get("attempts", [])
        if isinstance(a, dict) and isinstance(a.get("escalation"), int) and a["escalation"] < current
    ]
    start = int(attempts[0]["escalation"]) if attempts else current
    verdict = decide(metrics, thresholds)
    record = attempt_record(current, verdict)
    attempts.append(record)
    gate = {**verdict.record(), "escalation": current, "attempts": attempts}
    values: dict[str, Any] = {"metrics": {**metrics, "gate": gate, "passed": verdict.passed}}
    following: int | None = None
    if verdict.passed:
        target, job = lifecycle.after_stage(jobs.EVALUATE, list(row.gates))
    else:
        following = next_escalation(thresholds, current, start)
        if following is not None:
            target, job = Status.UNLEARNING, jobs.UNLEARN
            values["options"] = {**row.options, "pipeline": {**pipeline_options, "escalation": following}}
            message = f"acceptance gate failed; retraining at escalation {following}"
            for again in (jobs.UNLEARN, jobs.EVALUATE):
                stages[again] = {
                    **stages.get(again, {}),
                    "state": "pending",
                    "progress": 0.0,
                    "message": message,
                }
        else:
            target, job = Status.AWAITING_EVALUATION_REVIEW, None
            values["gates"] = sorted({*row.gates, lifecycle.Gate.EVALUATION_REVIEW.value})
    return Acceptance(target, job, values, record, following)


async def _record_attempt(session: AsyncSession, row: ForgetRequest, acceptance: Acceptance) -> None:
    """An audit link and an event per rung of the ladder (numbers and check names: no corpus text)."""
    outcome = (
        "passed"
        if acceptance.attempt["passed"]
        else ("escalate" if acceptance.next_escalation is not None else "evaluation_review")
    )
    data = {**acceptance.attempt, "outcome": outcome, "next_escalation": acceptance.next_escalation}
    await chain.append(
        session, action="acceptance.attempt", actor=WORKER, tenant=row.tenant, request_id=row.id, data=data
    )
    session.add(
        RequestEvent(
            request_id=row.id,
            kind="acceptance",
            data={
                "escalation": acceptance.attempt["escalation"],
                "passed": acceptance.attempt["passed"],
                "failed_checks": [f["check"] for f in acceptance.attempt["failures"]],
                "outcome": outcome,
            },
        )
    )


async def _fail(
    sessionmaker: async_sessionmaker[AsyncSession],
    row: ForgetRequest,
    stage: str,
    attempt: int,
    stages: dict[str, Any],
    code: str,
    reason: str,
) -> None:
    now = utcnow()
    stages[stage] = {**stages.get(stage, {}), "state": "failed", "finished_at": now.isoformat()}
    retention = float(row.options.get("retention_s", 7 * 86400))
    async with sessionmaker() as session:
        moved = await transition(
            session,
            row.id,
            expected=[STAGE_STATUS[stage].value],
            to=Status.FAILED,
            actor=WORKER,
            attempt=attempt,
            values={
                "stages": stages,
                "failure_code": code,
                "failure_reason": reason[:2000],
                "finished_at": now,
                "heartbeat_at": None,
                "purge_after": now + timedelta(seconds=retention),
            },
            audit_data={"stage": stage, "code": code},
        )
        if moved is not None:
            await session.commit()


def _pipeline_error_types() -> tuple[type[BaseException], type[BaseException]]:
    from gpu_runtime.pipeline.errors import BadInput, Cancelled

    return BadInput, Cancelled


async def run_stage_job(ctx: dict[str, Any], request_id: str, stage: str, attempt: int) -> dict[str, Any]:
    """Run ``stage`` of ``request_id`` if ``attempt`` is still current (at least once, idempotent)."""
    settings: Settings = ctx["settings"]
    sessionmaker: async_sessionmaker[AsyncSession] = ctx["obliviate_sessionmaker"]
    runner: StageRunner = ctx.get("stage_runner") or pipeline_runner
    row = await _claim(sessionmaker, request_id, stage, attempt)
    if row is None:
        return {"request_id": request_id, "stage": stage, "attempt": attempt, "outcome": "stale"}
    stages = dict(row.stages)
    store = store_for(settings)
    live = _Live()
    alias = str(row.options.get("target_alias") or settings.served_alias)
    async with sessionmaker() as session:
        deployed = await _deployed_adapter(session, alias, store)
        earlier: tuple[list[dict[str, Any]], list[str]] = ([], [])
        if stage == jobs.EVALUATE and deployed is not None:
            earlier = await _earlier_probes(session, store, request_id, alias)
    try:
        spec = await asyncio.to_thread(store.get_json, request_id, INPUT, SPEC_FILE)
    except FileNotFoundError:
        await _fail(
            sessionmaker, row, stage, attempt, stages, "corpus_missing", "The corpus is no longer stored"
        )
        return {"request_id": request_id, "stage": stage, "outcome": "failed"}
    spec["probes"] = list(row.probes)
    spec["earlier_probes"], spec["earlier_terms"] = earlier
    # The object store stages the work area in a local scratch directory (the local store: in place).
    work_dir = await asyncio.to_thread(store.local_dir, request_id, WORK)
    adapter_dir = await asyncio.to_thread(store.local_dir, request_id, ADAPTER)
    inp = StageInput(
        request_id=request_id,
        stage=stage,
        spec=spec,
        options=dict(row.options),
        work_dir=work_dir,
        adapter_dir=adapter_dir,
        settings=settings,
        deployed_adapter=deployed,
        progress=live.update,
        should_cancel=live.cancel.is_set,
    )
    timeout = min(STAGE_TIMEOUTS[stage], settings.stage_timeout_s or STAGE_TIMEOUTS[stage])
    beat = asyncio.create_task(
        _heartbeat(sessionmaker, request_id, stage, attempt, stages, live, settings.heartbeat_interval_s)
    )
    bad_input, cancelled = _pipeline_error_types()
    loop = asyncio.get_running_loop()
    try:
        # The stage thread runs in a copy of this context: its log lines carry the request id too.
        in_context = contextvars.copy_context().run
        output = await asyncio.wait_for(loop.run_in_executor(None, in_context, runner, inp), timeout=timeout)
        # Outputs stored (object store: uploaded, the adapter content-addressed) before the stage counts.
        output.adapter_path = await asyncio.to_thread(store.save_outputs, request_id, output.adapter_path)
    except TimeoutError:
        live.cancel.set()
        await _fail(
            sessionmaker,
            row,
            stage,
            attempt,
            stages,
            "stage_timeout",
            f"Stage {stage} ran over {timeout:.0f} s",
        )
        return {"request_id": request_id, "stage": stage, "outcome": "timeout"}
    except asyncio.CancelledError:
        live.cancel.set()  # arq's own timeout or shutdown: stop the thread at its next batch
        raise
    except Exception as exc:
        live.cancel.set()
        if isinstance(exc, cancelled):
            return {"request_id": request_id, "stage": stage, "outcome": "cancelled"}
        if isinstance(exc, bad_input):
            # BadInput messages are written for the requester; they name what to change.
            await _fail(sessionmaker, row, stage, attempt, stages, "bad_input", str(exc))
            return {"request_id": request_id, "stage": stage, "outcome": "bad_input"}
        tries = int(ctx.get("job_try", 1))
        # Only the type is logged: messages of arbitrary exceptions may quote the corpus.
        logger.warning("stage %s of %s failed (try %d): %s", stage, request_id, tries, type(exc).__name__)
        if tries < settings.stage_max_tries:
            raise Retry(defer=min(60, 2 * tries)) from None
        await _fail(
            sessionmaker,
            row,
            stage,
            attempt,
            stages,
            "stage_error",
            f"Stage {stage} failed after {tries} tries ({type(exc).__name__})",
        )
        return {"request_id": request_id, "stage": stage, "outcome": "failed"}
    finally:
        live.cancel.set()
        beat.cancel()
        try:
            await beat
        except (asyncio.CancelledError, Exception):
            pass
        await asyncio.to_thread(store.release, request_id)  # no scratch copy outlives the job
    new_status = await _finish(sessionmaker, row, stage, attempt, stages, output, settings)
    return {"request_id": request_id, "stage": stage, "attempt": attempt, "outcome": new_status or "stale"}


#: Job outcomes other than "the stage finished" (then the outcome is the request's next status).
_NOT_DONE = frozenset({"stale", "failed", "timeout", "cancelled", "bad_input"})


def _make_job(stage: str) -> Callable[..., Any]:
    async def job(
        ctx: dict[str, Any], request_id: str, job_stage: str = stage, attempt: int = 1
    ) -> dict[str, Any]:
        # Metrics (durations and attempts, in Redis for every API replica's /metrics) and an optional
        # span joined to the request's trace; both carry ids and stage names only. Every line logged
        # meanwhile (the stage thread's too) carries the request id.
        redis = ctx.get("redis")
        with logs.request_context(request_id):
            async with (
                tracing.request_span(
                    ctx["settings"],
                    redis,
                    f"obliviate.stage.{stage}",
                    request_id,
                    stage=stage,
                    attempt=int(attempt),
                    job_try=int(ctx.get("job_try", 1)),
                ) as span,
                stage_metrics.observe(redis, stage) as seen,
            ):
                result = await run_stage_job(ctx, request_id, stage, int(attempt))
                outcome = str(result.get("outcome"))
                seen.outcome = outcome if outcome in _NOT_DONE else "ok"
                tracing.set_attributes(span, outcome=seen.outcome)
                return result

    job.__name__ = f"{stage}_job"
    job.__qualname__ = job.__name__
    return job


for _stage in jobs.PIPELINE_STAGES:
    # arq's timeout sits above ours so the job can record the timeout itself.
    register_job(_stage, timeout_s=STAGE_TIMEOUTS[_stage] + 120)(_make_job(_stage))
