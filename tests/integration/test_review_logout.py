"""Review sign-out ends the session on the server: a copy of the cookie no longer works."""

from __future__ import annotations

import re

import httpx

from service.settings import Settings
from tests.support.forget import AppClient, app_client, make_key


def _browser(client: AppClient) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="https://testserver")


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


async def _sign_in(web: httpx.AsyncClient, key: str) -> None:
    form = await web.get("/review/login")
    signed = await web.post("/review/login", data={"api_key": key, "csrf_token": _csrf(form.text)})
    assert signed.status_code == 303 and signed.headers["location"] == "/review", signed.text


async def test_logout_ends_every_copy_of_the_session(database_url: str, clean_redis: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=clean_redis,
        sweep_interval_s=3600,
        relay_interval_s=3600,
        review_interval_s=3600,
    )
    async with app_client(settings) as client, _browser(client) as web, _browser(client) as thief:
        reviewer = await make_key(client, role="reviewer")
        await _sign_in(web, reviewer)
        queue = await web.get("/review")
        assert queue.status_code == 200
        # Someone copied the cookie (a shared machine, a proxy log, a stolen laptop backup).
        copied = {"Cookie": f"obliviate_review={web.cookies['obliviate_review']}"}
        assert (await thief.get("/review", headers=copied)).status_code == 200
        logout = await web.post("/review/logout", data={"csrf_token": _csrf(queue.text)})
        assert logout.status_code == 303 and logout.headers["location"] == "/review/login"
        assert (await web.get("/review")).status_code == 303
        stolen = await thief.get("/review", headers=copied)
        assert stolen.status_code == 303 and stolen.headers["location"] == "/review/login"
        # Signing in again works (a new session at the new epoch), and a later logout ends it too.
        await _sign_in(web, reviewer)
        again = await web.get("/review")
        assert again.status_code == 200
        await web.post("/review/logout", data={"csrf_token": _csrf(again.text)})
        assert (await web.get("/review")).status_code == 303
