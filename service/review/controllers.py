"""HTTP routes of programmatic review under ``/v1/review`` (roles reviewer and admin).

Tasks: list, get, claim (the next one or a given one), answer, release. Gates: list, a request's
review summary, and JSONL export/import for external crowdsourcing platforms. Every object is
looked up within the caller's tenant; another tenant's task is a 404. Reviewers do not see which
tasks are controls (that would defeat them); admins do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Meta, Struct
from sqlalchemy import select

from service.artifacts.store import ArtifactStore, store_for
from service.auth.dependencies import AUTH_DEPENDENCIES, Principal, Role, require_role
from service.core.errors import PayloadTooLarge, Unprocessable
from service.core.openapi import AUTH, PLAIN, SECURITY, errors, operation
from service.core.state import Resources
from service.forget import service as forget_service
from service.review import answers, services
from service.review.models import ReviewAssignment, ReviewGate, ReviewTask

REVIEW = require_role(Role.REVIEWER)
ADMIN = require_role(Role.ADMIN)
MAX_IMPORT_BYTES = 16 * 1024 * 1024
PrincipalDep = NamedDependency[Principal]
ResourcesDep = NamedDependency[Resources]
_KIND = Meta(extra_json_schema={"enum": list(answers.KINDS)})


class ClaimBody(Struct, forbid_unknown_fields=True):
    """Optional filters for the next task."""

    kind: Annotated[str, _KIND] | None = None
    request_id: str | None = None


class AnswerBody(Struct, forbid_unknown_fields=True):
    """The answer's fields depend on the task's kind: see the task's ``output_fields``."""

    answer: dict[str, Any]


def store_of(resources: Resources) -> ArtifactStore:
    store: ArtifactStore | None = resources.extras.get("artifacts")
    return store if store is not None else store_for(resources.settings)


def task_out(
    task: ReviewTask,
    principal: PrincipalDep,
    *,
    assignment: ReviewAssignment | None = None,
    full: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": task.id,
        "object": "review_task",
        "request_id": task.request_id,
        "gate_id": task.gate_id,
        "kind": task.kind,
        "position": task.position,
        "status": task.status,
        "required_answers": task.required,
        "agreement": task.agreement,
        "resolution": task.resolution,
        "created_at": task.created_at.isoformat(),
        "resolved_at": task.resolved_at.isoformat() if task.resolved_at else None,
        "output_fields": answers.OUTPUT_FIELDS[task.kind],
    }
    if full:
        out["input"] = task.payload
    if principal.role == Role.ADMIN:
        out["control"] = task.control
        out["expected"] = task.expected
    if assignment is not None:
        out["assignment"] = {
            "id": assignment.id,
            "status": assignment.status,
            "assigned_at": assignment.assigned_at.isoformat(),
            "expires_at": assignment.expires_at.isoformat() if assignment.expires_at else None,
        }
    return out


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in answers.KINDS:
        raise Unprocessable(f"kind must be one of {', '.join(answers.KINDS)}", param="kind")


class ReviewController(Controller):
    path = "/v1/review"
    tags = ["review"]
    dependencies = AUTH_DEPENDENCIES
    guards = [REVIEW]
    security = SECURITY

    @get(
        "/tasks",
        summary="Review tasks of your tenant (without their input; filter by status, kind, request)",
        operation_class=PLAIN,
        responses=errors(*AUTH, 422),
    )
    async def list_tasks(
        self,
        principal: PrincipalDep,
        resources: ResourcesDep,
        status: Annotated[str | None, QueryParameter(description="open or resolved")] = "open",
        kind: Annotated[str | None, QueryParameter(schema_extra={"enum": list(answers.KINDS)})] = None,
        request_id: FromQuery[str | None] = None,
        gate_id: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        _check_kind(kind)
        await services.sync_gates(resources)
        query = select(ReviewTask).where(ReviewTask.tenant == principal.tenant)
        if principal.role != Role.ADMIN:
            query = query.where(ReviewTask.control.is_(False))
        if status:
            query = query.where(ReviewTask.status == status)
        if kind:
            query = query.where(ReviewTask.kind == kind)
        if request_id:
            query = query.where(ReviewTask.request_id == request_id)
        if gate_id:
            query = query.where(ReviewTask.gate_id == gate_id)
        query = query.order_by(ReviewTask.created_at, ReviewTask.position).limit(limit)
        async with resources.sessionmaker() as session:
            rows = list((await session.execute(query)).scalars())
        return {"object": "list", "data": [task_out(t, principal, full=False) for t in rows]}

    @get(
        "/tasks/{task_id:str}",
        summary="One review task with its input",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def get_task(
        self, task_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            task = await services.get_task(session, principal.tenant, task_id)
            held = await services.active_assignment(session, task.id, principal.actor)
        return task_out(task, principal, assignment=held)

    @post(
        "/tasks/claim",
        status_code=200,
        summary="Claim the next task (204 when none is left); a claim expires after the task time limit",
        operation_class=operation(optional_body=True),
        responses={
            **errors(400, *AUTH, 413, 422),
            204: ResponseSpec(data_container=None, description="No task is left to claim."),
        },
    )
    async def claim_next(
        self, principal: PrincipalDep, resources: ResourcesDep, data: JSONBody[ClaimBody | None] = None
    ) -> Response[Any]:
        body = data or ClaimBody()
        _check_kind(body.kind)
        await services.sync_gates(resources)
        async with resources.sessionmaker() as session:
            claimed = await services.claim_next(
                session,
                tenant=principal.tenant,
                reviewer=principal.actor,
                settings=resources.settings,
                kind=body.kind,
                request_id=body.request_id,
            )
            await session.commit()
        if claimed is None:
            return Response(content=None, status_code=204)
        return Response(task_out(claimed.task, principal, assignment=claimed.assignment))

    @post(
        "/tasks/{task_id:str}/claim",
        status_code=200,
        summary="Claim this task",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404, 409, s409="The task is resolved, or has all the reviewers it needs."),
    )
    async def claim(
        self, task_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            claimed = await services.claim(
                session,
                tenant=principal.tenant,
                reviewer=principal.actor,
                task_id=task_id,
                settings=resources.settings,
            )
            await session.commit()
        return task_out(claimed.task, principal, assignment=claimed.assignment)

    @post(
        "/tasks/{task_id:str}/answer",
        status_code=200,
        summary="Answer a task (fields per its kind)",
        responses=errors(
            400, *AUTH, 404, 409, 413, 422, s409="The task is resolved, or you answered it already."
        ),
    )
    async def answer(
        self,
        task_id: FromPath[str],
        data: JSONBody[AnswerBody],
        principal: PrincipalDep,
        resources: ResourcesDep,
    ) -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            task = await services.answer(
                session,
                tenant=principal.tenant,
                reviewer=principal.actor,
                task_id=task_id,
                raw=data.answer,
                settings=resources.settings,
                store=store_of(resources),
            )
            await session.commit()
            task = await services.get_task(session, principal.tenant, task_id)
        services._kick(resources)
        return task_out(task, principal, full=False)

    @post(
        "/tasks/{task_id:str}/release",
        status_code=200,
        summary="Give a claimed task back (skip it)",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def release(
        self, task_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            released = await services.release(
                session, tenant=principal.tenant, reviewer=principal.actor, task_id=task_id
            )
            await session.commit()
        return {"task_id": task_id, "released": released}

    @get(
        "/requests/{request_id:str}",
        summary="A request's review: its gates and how many tasks are open",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def request_summary(
        self, request_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> dict[str, Any]:
        await services.sync_gates(resources, request_id)
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, request_id)
            return await services.request_summary(session, row)

    @get("/gates", summary="Review gates of your tenant", operation_class=PLAIN, responses=errors(*AUTH))
    async def list_gates(
        self,
        principal: PrincipalDep,
        resources: ResourcesDep,
        status: FromQuery[str | None] = None,
        request_id: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        await services.sync_gates(resources)
        query = select(ReviewGate).where(ReviewGate.tenant == principal.tenant)
        if status:
            query = query.where(ReviewGate.status == status)
        if request_id:
            query = query.where(ReviewGate.request_id == request_id)
        async with resources.sessionmaker() as session:
            gates = list((await session.execute(query.order_by(ReviewGate.created_at))).scalars())
            counts = await services.open_counts(session, [g.request_id for g in gates])
        return {
            "object": "list",
            "data": [
                services.gate_out(
                    g,
                    counts.get(g.request_id, 0) if g.status == "open" else 0,
                    int(g.summary.get("tasks", 0)),
                )
                for g in gates
            ],
        }

    @get(
        "/gates/{gate_id:str}/export",
        summary="A gate's tasks as JSONL for an external crowdsourcing platform",
        description="One object per line: `task_id`, `kind`, `input` (the fields shown to reviewers),"
        " `output_fields` (what an answer holds), and `known_solution` for control tasks.",
        media_type="application/x-ndjson",
        operation_class=PLAIN,
        responses=errors(*AUTH, 404),
    )
    async def export(
        self, gate_id: FromPath[str], principal: PrincipalDep, resources: ResourcesDep
    ) -> Response[bytes]:
        async with resources.sessionmaker() as session:
            gate = await services.get_gate(session, principal.tenant, gate_id)
            query = select(ReviewTask).where(ReviewTask.gate_id == gate.id)
            if principal.role != Role.ADMIN:
                query = query.where(ReviewTask.control.is_(False))
            tasks = list((await session.execute(query.order_by(ReviewTask.position))).scalars())
        lines = services.export_lines(gate, tasks)
        if principal.role != Role.ADMIN:
            for line in lines:
                line.pop("control", None)
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{gate.id}.jsonl"'},
        )

    @post(
        "/gates/{gate_id:str}/import",
        guards=[ADMIN],
        status_code=200,
        summary="Bring answers back from an external platform (JSONL); add control tasks",
        description='Lines `{"task_id", "worker", "output": {...}}` (or `"answers": [{"worker", "output"}]`)'
        ' answer tasks as `external:<worker>`; lines `{"control": true, "input": {...}, "known_solution": {...}}`'
        " add control tasks. Bad lines are reported and skipped.",
        operation_class=operation(
            body={"type": "string", "description": "JSONL: one JSON object per line."},
            media_type="application/x-ndjson",
        ),
        responses=errors(*AUTH, 404, 413, 422, s422="The body is not UTF-8."),
    )
    async def import_answers(
        self,
        gate_id: FromPath[str],
        request: Request[Any, Any, Any],
        principal: PrincipalDep,
        resources: ResourcesDep,
    ) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"An import is at most {MAX_IMPORT_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Unprocessable("The body must be UTF-8 JSONL") from None
        parsed: list[tuple[int, Any]] = []
        errors: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed.append((number, json.loads(line)))
            except json.JSONDecodeError:
                errors.append({"line": number, "error": "not valid JSON"})
        async with resources.sessionmaker() as session:
            gate = await services.get_gate(session, principal.tenant, gate_id)
            report = await services.import_lines(
                session, gate, parsed, resources.settings, store_of(resources)
            )
            await session.commit()
            gate = await services.get_gate(session, principal.tenant, gate_id)
        services._kick(resources)
        return {
            "gate_id": gate_id,
            "gate_status": gate.status,
            "answers": report.answers,
            "controls": report.controls,
            "errors": errors + (report.errors or []),
        }

    @get(
        "/reviewers",
        summary="Reviewers' answers and control-task accuracy (admins see everyone)",
        responses=errors(*AUTH),
    )
    async def reviewers(self, principal: PrincipalDep, resources: ResourcesDep) -> dict[str, Any]:
        async with resources.sessionmaker() as session:
            scores = await services.reviewer_scores(session, principal.tenant)
        if principal.role != Role.ADMIN:
            scores = {k: v for k, v in scores.items() if k == principal.actor}
        threshold = resources.settings.review_min_control_accuracy
        return {
            "object": "list",
            "min_control_accuracy": threshold,
            "data": [
                {
                    "reviewer": reviewer,
                    **score,
                    "counts_in_majority": not (
                        threshold > 0
                        and score["controls"] >= services.MIN_CONTROLS_TO_SCORE
                        and (score["accuracy"] or 0.0) < threshold
                    ),
                }
                for reviewer, score in sorted(scores.items())
            ],
        }
