"""Routes of the request report: ``GET /v1/forget-requests/{id}/report`` and its review-UI pages.

The API route answers HTML unless the caller prefers JSON (``Accept: application/json``) or asks for
it (``?format=json``); both carry the same data. It is tenant-scoped like every request route (another
tenant's request is a 404). The review UI shows the same page to a signed-in reviewer or admin at
``/review/requests/{id}/report``, with ``/review/reports`` listing the tenant's requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlalchemy import select

from service.auth.dependencies import AUTH_DEPENDENCIES, Principal, Role, require_role
from service.core.errors import NotFound
from service.core.openapi import AUTH, SECURITY, errors, operation
from service.core.state import Resources
from service.forget import service as forget_service
from service.forget.models import ForgetRequest
from service.forget.views import BASE
from service.report import data, render
from service.review.web import SECURITY_HEADERS, current_session

READ = require_role(Role.SUBMITTER, Role.REVIEWER)
PrincipalDep = NamedDependency[Principal]
ResourcesDep = NamedDependency[Resources]
HTML = "text/html"
JSON = "application/json"

_Base = operation()


@dataclass
class _TwoFormats(_Base):  # type: ignore[misc,valid-type]
    """The 200 answer is documented in both media types the route negotiates."""

    def __post_init__(self) -> None:
        super().__post_init__()
        responses: dict[str, Any] = dict(getattr(self, "responses", None) or {})
        responses["200"] = OpenAPIResponse(
            description="The report: an HTML page (default) or the same data as JSON.",
            content={
                HTML: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
                JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT)),
            },
        )
        self.responses = responses


def wants_json(request: Request[Any, Any, Any], fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "json"
    return request.accept.best_match([HTML, JSON], default=HTML) == JSON


async def report_of(resources: Resources, tenant: str, request_id: str, actor: str) -> dict[str, Any]:
    """The report of one of ``tenant``'s requests (NotFound otherwise); reading it is audited."""
    async with resources.sessionmaker() as session:
        row = await forget_service.get_for_tenant(session, tenant, request_id)
        report = await data.build(session, row, signer=resources.extras.get("signer"))
        await forget_service.record_access(session, row, actor=actor, what="report")
        await session.commit()
    return report


class ReportController(Controller):
    path = BASE
    tags = ["forget requests"]
    dependencies = AUTH_DEPENDENCIES
    security = SECURITY

    @get(
        "/{request_id:str}/report",
        guards=[READ],
        summary="The request report: what was asked, timeline, gate, leak rates, plot, certificate",
        description=(
            "HTML (printable, a server-rendered SVG plot, no script) unless `Accept` prefers"
            " `application/json` or `format=json`; the JSON has the same data. Counts and hashes of the"
            " corpus and probes, never their text."
        ),
        operation_class=_TwoFormats,
        responses=errors(*AUTH, 404, 422),
    )
    async def report(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[str],
        principal: PrincipalDep,
        resources: ResourcesDep,
        format: FromQuery[Literal["html", "json"] | None] = None,
    ) -> Response[Any]:
        report = await report_of(resources, principal.tenant, request_id, principal.actor)
        if wants_json(request, format):
            return Response(report, media_type=JSON, headers={"Cache-Control": "no-store", "Vary": "Accept"})
        return Response(
            render.render_html(report),
            media_type=HTML,
            headers={**render.headers(), "Vary": "Accept"},
        )


class ReportWebController(Controller):
    """The report in the review UI (session cookie, reviewer or admin of the tenant)."""

    path = "/review"
    include_in_schema = False

    @get("/reports")
    async def reports(self, request: Request[Any, Any, Any], resources: ResourcesDep) -> Template | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return Redirect("/review/login", status_code=303)
        async with resources.sessionmaker() as db:
            rows = (
                await db.execute(
                    select(
                        ForgetRequest.id,
                        ForgetRequest.subject,
                        ForgetRequest.status,
                        ForgetRequest.created_at,
                    )
                    .where(ForgetRequest.tenant == session.principal.tenant)
                    .order_by(ForgetRequest.id.desc())
                    .limit(100)
                )
            ).all()
        requests = [
            {"id": r.id, "subject": r.subject, "status": r.status, "created_at": r.created_at.isoformat()}
            for r in rows
        ]
        return Template(
            template_name="review/reports.html",
            context={"session": session, "requests": requests},
            headers=SECURITY_HEADERS,
        )

    @get("/requests/{request_id:str}/report")
    async def report_page(
        self, request_id: FromPath[str], request: Request[Any, Any, Any], resources: ResourcesDep
    ) -> Response[Any] | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return Redirect("/review/login", status_code=303)
        try:
            report = await report_of(resources, session.principal.tenant, request_id, session.principal.actor)
        except NotFound:
            return Redirect("/review/reports", status_code=303)
        nav = [("Reports", "/review/reports"), ("Review queue", "/review")]
        return Response(render.render_html(report, nav=nav), media_type=HTML, headers=render.headers())
