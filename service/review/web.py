"""The reviewer's web UI at ``/review``: sign in with an API key, a queue, one task at a time.

Server-rendered with Litestar's Jinja templates (``templates/review``) and a little plain JS
(``static/review.js``: highlights, selection-to-anchor and keyboard shortcuts); every form also works
without JS. Pages are never cached (they show personal data) and may not be framed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from sqlalchemy import select, update

from service.auth.keys import Principal, Role, lookup
from service.auth.models import ApiKey
from service.core.errors import Conflict, NotFound, ServiceError, Unprocessable
from service.core.state import Resources
from service.db.base import utcnow
from service.review import answers, materials, services
from service.review.controllers import store_of
from service.review.models import ReviewSessionEpoch, ReviewTask
from service.review.session import (
    COOKIE,
    LOGIN_COOKIE,
    ReviewSession,
    csrf_ok,
    decode_session,
    load_secret,
    new_session,
)

HERE = Path(__file__).parent
ResourcesDep = NamedDependency[Resources]
SECRET_KEY = "review_secret"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
KIND_TITLES = {
    answers.ANCHOR: "Anchor review",
    answers.TARGET: "Target review",
    answers.EVALUATION: "Evaluation review",
}


def template_config() -> TemplateConfig[Any]:
    from litestar.plugins.jinja import JinjaTemplateEngine

    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


def static_router() -> Router:
    return create_static_files_router(
        path="/review/static", directories=[HERE / "static"], name="review-static"
    )


def _secret(resources: Resources) -> bytes:
    secret: bytes | None = resources.extras.get(SECRET_KEY)
    if secret is None:
        secret = load_secret(resources.settings.data_dir)
        resources.extras[SECRET_KEY] = secret
    return secret


def _secure(request: Request[Any, Any, Any], resources: Resources) -> bool:
    return resources.settings.review_cookie_secure


def _page(
    name: str, context: dict[str, Any], status_code: int = 200, cookies: list[Cookie] | None = None
) -> Template:
    return Template(
        template_name=f"review/{name}",
        context={"kind_titles": KIND_TITLES, **context},
        status_code=status_code,
        headers=SECURITY_HEADERS,
        cookies=cookies or [],
    )


def _redirect(path: str, cookies: list[Cookie] | None = None) -> Redirect:
    return Redirect(path=path, status_code=303, headers=SECURITY_HEADERS, cookies=cookies or [])


async def current_session(request: Request[Any, Any, Any], resources: Resources) -> ReviewSession | None:
    """The signed-in reviewer, if the cookie is valid and their key is still active."""
    session = decode_session(_secret(resources), request.cookies.get(COOKIE))
    if session is None or session.principal.role not in (Role.REVIEWER, Role.ADMIN):
        return None
    async with resources.sessionmaker() as db:
        alive = await db.scalar(
            select(ApiKey.id).where(ApiKey.id == session.principal.key_id, ApiKey.revoked_at.is_(None))
        )
        epoch = await _epoch(db, session.principal.key_id) if alive else None
    return session if alive and epoch == session.epoch else None


async def _epoch(db: Any, key_id: str) -> int:
    value = await db.scalar(select(ReviewSessionEpoch.epoch).where(ReviewSessionEpoch.key_id == key_id))
    return int(value or 0)


async def _end_sessions(resources: Resources, key_id: str) -> None:
    """Sign-out: bump the key's epoch, so every cookie issued before is refused from now on."""
    async with resources.sessionmaker() as db:
        bumped = await db.execute(
            update(ReviewSessionEpoch)
            .where(ReviewSessionEpoch.key_id == key_id)
            .values(epoch=ReviewSessionEpoch.epoch + 1, updated_at=utcnow())
        )
        if not bumped.rowcount:  # type: ignore[attr-defined]
            db.add(ReviewSessionEpoch(key_id=key_id, epoch=1, updated_at=utcnow()))
        try:
            await db.commit()
        except Exception:  # another replica inserted it meanwhile: bump that row
            await db.rollback()
            await db.execute(
                update(ReviewSessionEpoch)
                .where(ReviewSessionEpoch.key_id == key_id)
                .values(epoch=ReviewSessionEpoch.epoch + 1, updated_at=utcnow())
            )
            await db.commit()


def _login_redirect() -> Redirect:
    return _redirect("/review/login")


def segments(text: str, anchors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A passage cut into plain text and highlighted anchor spans (for the no-JS rendering)."""
    by_term = {a["term"]: a for a in anchors}
    out: list[dict[str, Any]] = []
    last = 0
    for start, end, term in materials.spans(text, list(by_term)):
        if start > last:
            out.append({"text": text[last:start]})
        sources = by_term[term].get("sources") or ["reviewer"]
        out.append({"text": text[start:end], "term": term, "source": sources[0]})
        last = end
    if last < len(text):
        out.append({"text": text[last:]})
    return out


def parse_anchor_form(form: Any) -> dict[str, Any]:
    """Rows ``term_<i>``, ``kind_<i>``, ``translations_<i>`` (comma-separated), ``keep_<i>``."""
    rows = sorted(
        {key.split("_", 1)[1] for key in form if key.startswith("term_")},
        key=lambda k: int(k) if k.isdigit() else 1 << 30,
    )
    kept, shown = [], []
    for index in rows:
        term = str(form.get(f"term_{index}", "")).strip()
        if not term:
            continue
        row = {
            "term": term,
            "kind": str(form.get(f"kind_{index}", "other")),
            "translations": [
                t.strip() for t in str(form.get(f"translations_{index}", "")).split(",") if t.strip()
            ],
        }
        keep = form.get(f"keep_{index}") is not None
        shown.append({**row, "keep": keep})
        if keep:
            kept.append(row)
    # "rows" (every row, kept or not) lets the page be shown again as the reviewer left it.
    return {"anchors": kept, "rows": shown}


def parse_form(kind: str, form: Any) -> dict[str, Any]:
    if kind == answers.ANCHOR:
        return parse_anchor_form(form)
    if kind == answers.TARGET:
        return {"verdict": form.get("verdict"), "replacement": form.get("replacement", "")}
    return {"label": form.get("label"), "note": form.get("note", "")}


class ReviewWebController(Controller):
    path = "/review"
    include_in_schema = False

    @get("/")
    async def queue(self, request: Request[Any, Any, Any], resources: ResourcesDep) -> Template | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return _login_redirect()
        await services.sync_gates(resources)
        async with resources.sessionmaker() as db:
            gates = await services.queue_overview(db, session.principal.tenant, session.principal.actor)
            scores = await services.reviewer_scores(db, session.principal.tenant)
        return _page(
            "queue.html",
            {
                "session": session,
                "gates": gates,
                "score": scores.get(session.principal.actor),
                "message": request.query_params.get("message", ""),
            },
        )

    @get("/login")
    async def login_form(self, request: Request[Any, Any, Any], resources: ResourcesDep) -> Template:
        token = request.cookies.get(LOGIN_COOKIE) or _new_token()
        return _page(
            "login.html", {"csrf": token, "error": ""}, cookies=[_login_cookie(token, request, resources)]
        )

    @post("/login")
    async def login(self, request: Request[Any, Any, Any], resources: ResourcesDep) -> Template | Redirect:
        form = await request.form()
        token = request.cookies.get(LOGIN_COOKIE) or ""
        if not csrf_ok(token, form.get("csrf_token")):
            fresh = _new_token()
            return _page(
                "login.html",
                {"csrf": fresh, "error": "Your sign-in form expired; please try again."},
                status_code=403,
                cookies=[_login_cookie(fresh, request, resources)],
            )
        key = str(form.get("api_key", "")).strip()
        principal: Principal | None = None
        if key:
            async with resources.sessionmaker() as db:
                principal = await lookup(db, key)
        error = ""
        if principal is None:
            error = "That API key is not valid. Ask your administrator for a reviewer key."
        elif principal.role not in (Role.REVIEWER, Role.ADMIN):
            error = f"This key's role is {principal.role.value}; reviewing needs a reviewer or admin key."
        if error or principal is None:
            return _page("login.html", {"csrf": token, "error": error}, status_code=401)
        async with resources.sessionmaker() as db:
            epoch = await _epoch(db, principal.key_id)
        session = new_session(principal, resources.settings.review_session_ttl_s, epoch)
        cookie = Cookie(
            key=COOKIE,
            value=session.encode(_secret(resources)),
            path="/review",
            max_age=int(resources.settings.review_session_ttl_s),
            httponly=True,
            secure=_secure(request, resources),
            samesite="strict",
        )
        gone = Cookie(key=LOGIN_COOKIE, value="", path="/review", max_age=0, expires=0)
        return _redirect("/review", cookies=[cookie, gone])

    @post("/logout")
    async def logout(self, request: Request[Any, Any, Any], resources: ResourcesDep) -> Redirect:
        session = await current_session(request, resources)
        form = await request.form()
        if session is not None and not csrf_ok(session.csrf, form.get("csrf_token")):
            return _redirect("/review")
        if session is not None:
            await _end_sessions(resources, session.principal.key_id)
        return _redirect(
            "/review/login", cookies=[Cookie(key=COOKIE, value="", path="/review", max_age=0, expires=0)]
        )

    @get("/next")
    async def next_task(
        self,
        request: Request[Any, Any, Any],
        resources: ResourcesDep,
        kind: FromQuery[str | None] = None,
        request_id: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return _login_redirect()
        if kind is not None and kind not in answers.KINDS:
            kind = None
        await services.sync_gates(resources)
        async with resources.sessionmaker() as db:
            claimed = await services.claim_next(
                db,
                tenant=session.principal.tenant,
                reviewer=session.principal.actor,
                settings=resources.settings,
                kind=kind,
                request_id=request_id,
            )
            await db.commit()
        if claimed is None:
            return _redirect("/review?" + urlencode({"message": "Nothing left to review here. Thank you!"}))
        query = f"?{urlencode({'kind': kind})}" if kind else ""
        return _redirect(f"/review/tasks/{claimed.task.id}{query}")

    @get("/tasks/{task_id:str}")
    async def show_task(
        self,
        task_id: FromPath[str],
        request: Request[Any, Any, Any],
        resources: ResourcesDep,
        kind: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return _login_redirect()
        async with resources.sessionmaker() as db:
            try:
                claimed = await services.claim(
                    db,
                    tenant=session.principal.tenant,
                    reviewer=session.principal.actor,
                    task_id=task_id,
                    settings=resources.settings,
                )
                await db.commit()
            except (Conflict, NotFound) as exc:
                return _redirect("/review?" + urlencode({"message": exc.message}))
        return await _task_page(session, claimed.task, claimed.assignment.expires_at, kind)

    @post("/tasks/{task_id:str}")
    async def answer_task(
        self, task_id: FromPath[str], request: Request[Any, Any, Any], resources: ResourcesDep
    ) -> Template | Redirect:
        session = await current_session(request, resources)
        if session is None:
            return _login_redirect()
        form = await request.form()
        if not csrf_ok(session.csrf, form.get("csrf_token")):
            return _redirect("/review?" + urlencode({"message": "The form expired; please answer again."}))
        queue_kind = str(form.get("queue_kind") or "") or None
        async with resources.sessionmaker() as db:
            task = await services.get_task(db, session.principal.tenant, task_id)
            raw = parse_form(task.kind, form)
            try:
                await services.answer(
                    db,
                    tenant=session.principal.tenant,
                    reviewer=session.principal.actor,
                    task_id=task_id,
                    raw=raw,
                    settings=resources.settings,
                    store=store_of(resources),
                )
                await db.commit()
            except Unprocessable as exc:
                await db.rollback()
                task = await services.get_task(db, session.principal.tenant, task_id)
                held = await services.active_assignment(db, task.id, session.principal.actor)
                return await _task_page(
                    session,
                    task,
                    held.expires_at if held else None,
                    queue_kind,
                    error=exc.message,
                    draft=raw,
                    status=422,
                )
            except ServiceError as exc:
                return _redirect("/review?" + urlencode({"message": exc.message}))
        services._kick(resources)
        query = f"?{urlencode({'kind': queue_kind})}" if queue_kind else ""
        return _redirect(f"/review/next{query}")

    @post("/tasks/{task_id:str}/skip")
    async def skip_task(
        self, task_id: FromPath[str], request: Request[Any, Any, Any], resources: ResourcesDep
    ) -> Redirect:
        session = await current_session(request, resources)
        if session is None:
            return _login_redirect()
        form = await request.form()
        if csrf_ok(session.csrf, form.get("csrf_token")):
            async with resources.sessionmaker() as db:
                try:
                    await services.release(
                        db, tenant=session.principal.tenant, reviewer=session.principal.actor, task_id=task_id
                    )
                    await db.commit()
                except NotFound:
                    pass
        return _redirect("/review?" + urlencode({"message": "Task skipped; it goes back to the queue."}))


def _new_token() -> str:
    import secrets

    return secrets.token_urlsafe(24)


def _login_cookie(token: str, request: Request[Any, Any, Any], resources: Resources) -> Cookie:
    return Cookie(
        key=LOGIN_COOKIE,
        value=token,
        path="/review",
        max_age=3600,
        httponly=True,
        secure=_secure(request, resources),
        samesite="strict",
    )


async def _task_page(
    session: ReviewSession,
    task: ReviewTask,
    expires_at: Any,
    queue_kind: str | None,
    *,
    error: str = "",
    draft: dict[str, Any] | None = None,
    status: int = 200,
) -> Template:
    payload = task.payload
    context: dict[str, Any] = {
        "session": session,
        "task": task,
        "input": payload,
        "error": error,
        "queue_kind": queue_kind or "",
        "seconds_left": max(0, int(expires_at.timestamp() - time.time())) if expires_at else None,
        "title": KIND_TITLES[task.kind],
    }
    if task.kind == answers.ANCHOR:
        rows = (draft or {}).get("rows") if draft else None
        anchors = payload.get("anchors", [])
        context["rows"] = rows if rows is not None else anchors
        context["sources"] = {a["term"]: a.get("sources", []) for a in anchors}
        context["passages"] = [
            {**p, "segments": segments(p["text"], [r for r in context["rows"] if r.get("keep", True)])}
            for p in payload.get("passages", [])
        ]
        context["kinds"] = answers.ANCHOR_KINDS
    elif task.kind == answers.TARGET:
        context["replacement"] = (draft or {}).get("replacement") or payload.get("generic", "")
    return _page(f"{task.kind}.html", context, status_code=status)
