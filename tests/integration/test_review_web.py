"""The /review UI over HTTP: sign-in, session cookie, CSRF, roles, tenants, answering by form."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy import select

from service.auth.dependencies import invalidate_cache
from service.auth.keys import revoke
from service.auth.models import ApiKey
from service.settings import Settings
from tests.support.forget import AppClient, app_client, auth, drive, make_key, resources_of, submit
from tests.support.review import seed_report


def _quiet(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
            "review_interval_s": 3600,
            "auth_cache_s": 0,
        }
    )


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def _browser(client: AppClient) -> httpx.AsyncClient:
    # HTTPS, so the Secure cookie is sent back as a browser would.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="https://testserver")


async def _sign_in(web: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await web.get("/review/login")
    return await web.post("/review/login", data={"api_key": key, "csrf_token": _csrf(form.text)})


async def _evaluation_request(client: AppClient, settings: Settings, tenant: str = "acme") -> str:
    key = await make_key(client, tenant=tenant)
    created = await submit(client, key, options={"review_gates": ["evaluation_review"]})
    assert (await drive(client, settings, created["id"]))["status"] == "awaiting_evaluation_review"
    seed_report(
        settings, created["id"], [("Who went to Hogwarts?", "Harry Potter did.", "Harry Potter.")], [None]
    )
    return str(created["id"])


async def test_sign_in_cookie_csrf_and_roles(settings: Settings) -> None:
    settings = _quiet(settings)
    async with app_client(settings) as client, _browser(client) as web:
        reviewer = await make_key(client, role="reviewer")
        submitter = await make_key(client)
        first = await web.get("/review")
        assert first.status_code == 303 and first.headers["location"] == "/review/login"
        page = await web.get("/review/login")
        assert page.status_code == 200 and "Sign in to review" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]

        forged = await web.post("/review/login", data={"api_key": reviewer, "csrf_token": "forged"})
        assert forged.status_code == 403 and "obliviate_review=" not in forged.headers.get("set-cookie", "")
        wrong_role = await _sign_in(web, submitter)
        assert wrong_role.status_code == 401 and "needs a reviewer or admin key" in wrong_role.text

        signed = await _sign_in(web, reviewer)
        assert signed.status_code == 303 and signed.headers["location"] == "/review"
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("obliviate_review="))
        lowered = cookie.lower()
        assert "httponly" in lowered and "secure" in lowered and "samesite=strict" in lowered
        assert reviewer not in cookie
        queue = await web.get("/review")
        assert queue.status_code == 200 and "Nothing is waiting for review" in queue.text
        assert (await web.get("/review/static/review.js")).status_code == 200

        # Revoking the key ends the session.
        async with resources_of(client).sessionmaker() as session:
            key_id = (await session.scalars(select(ApiKey.id).where(ApiKey.role == "reviewer"))).one()
            await revoke(session, key_id)
            await session.commit()
        invalidate_cache(resources_of(client))
        assert (await web.get("/review")).status_code == 303


async def test_answer_by_form_with_csrf_and_tenant_isolation(settings: Settings) -> None:
    settings = _quiet(settings)
    async with app_client(settings) as client, _browser(client) as web:
        mine = await _evaluation_request(client, settings)
        theirs = await _evaluation_request(client, settings, tenant="other")
        reviewer = await make_key(client, role="reviewer")
        other_reviewer = await make_key(client, tenant="other", role="reviewer")
        await _sign_in(web, reviewer)
        queue = (await web.get("/review")).text
        assert mine in queue and theirs not in queue
        listed: dict[str, Any] = (
            await client.get(f"/v1/review/tasks?request_id={theirs}", headers=auth(other_reviewer))
        ).json()
        foreign = listed["data"][0]["id"]
        blocked = await web.get(f"/review/tasks/{foreign}")
        assert blocked.status_code == 303 and "No+review+task" in blocked.headers["location"]

        start = await web.get("/review/next?kind=evaluation")
        assert start.status_code == 303
        task_url = start.headers["location"].split("?")[0]
        page = await web.get(task_url)
        assert page.status_code == 200 and "Harry Potter did." in page.text and "Leaks" in page.text
        no_csrf = await web.post(task_url, data={"label": "leaks"})
        assert no_csrf.status_code == 303 and "expired" in no_csrf.headers["location"]
        invalid = await web.post(task_url, data={"label": "maybe", "csrf_token": _csrf(page.text)})
        assert invalid.status_code == 422 and "label must be" in invalid.text
        done = await web.post(task_url, data={"label": "generic", "csrf_token": _csrf(page.text)})
        assert done.status_code == 303 and done.headers["location"] == "/review/next"
        key = await make_key(client)
        status = (await client.get(f"/v1/forget-requests/{mine}", headers=auth(key))).json()
        assert status["status"] == "ready"
        assert status["decisions"][-1]["reason"].startswith("no leaks in 1 probe")
