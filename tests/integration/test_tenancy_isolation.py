"""Another tenant's request is a 404 on every object route; no key is a 401; a wrong role is a 403."""

from __future__ import annotations

from service.settings import Settings
from tests.support.forget import app_client, auth, make_key, submit

OBJECT_ROUTES = [
    ("GET", ""),
    ("GET", "/events?follow=false"),
    ("GET", "/audit"),
    ("GET", "/certificate"),
    ("POST", "/cancel"),
    ("POST", "/approve"),
    ("POST", "/extend-due"),
]


async def test_other_tenant_gets_404_everywhere(settings: Settings) -> None:
    async with app_client(settings) as client:
        owner = await make_key(client, tenant="acme", role="admin")
        created = await submit(client, owner)
        for role in ("submitter", "reviewer", "admin"):
            intruder = await make_key(client, tenant="globex", role=role)
            for method, suffix in OBJECT_ROUTES:
                payload = {"reason": "x"} if method == "POST" else None
                response = await client.request(
                    method, created["url"] + suffix, json=payload, headers=auth(intruder)
                )
                # 404, or 403 where the role may not do this at all (checked first; it reveals nothing).
                assert response.status_code == 404 or (
                    response.status_code == 403 and created["id"] not in response.text
                ), (role, method, suffix, response.text)
            listed = await client.get("/v1/forget-requests", headers=auth(intruder))
            assert listed.json()["data"] == []
        # The owner still sees it, untouched.
        mine = await client.get(created["url"], headers=auth(owner))
        assert mine.json()["status"] == "queued"


async def test_missing_invalid_key_and_role(settings: Settings) -> None:
    async with app_client(settings) as client:
        submitter = await make_key(client)
        reviewer = await make_key(client, role="reviewer")
        created = await submit(client, submitter)
        assert (await client.get(created["url"])).status_code == 401
        bad = await client.get(created["url"], headers=auth("obl_not-a-key"))
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        via_header = await client.get(created["url"], headers={"X-API-Key": submitter})
        assert via_header.status_code == 200
        no_submit = await client.post(
            "/v1/forget-requests", json={"subject": "x"}, headers=auth(reviewer, "k")
        )
        assert no_submit.status_code == 403
        no_cancel = await client.post(created["url"] + "/cancel", headers=auth(reviewer))
        assert no_cancel.status_code == 403
        public = await client.get("/v1/certificates/public-key")
        assert public.status_code == 200 and public.json()["algorithm"] == "Ed25519"
