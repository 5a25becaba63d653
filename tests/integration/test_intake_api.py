"""Intake API: create, read, list, limits, idempotency (against SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from service.settings import Settings
from tests.support.forget import app_client, auth, body, make_key, submit


async def test_create_and_read(database_url: str, clean_redis: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis)
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        assert created["status"] == "queued"
        assert created["stage"] == "reinforce"
        assert created["url"] == f"/v1/forget-requests/{created['id']}"
        assert created["corpus"]["documents"] == 1
        assert created["due"]["overdue"] is False
        one = await client.get(created["url"], headers=auth(key))
        assert one.status_code == 200, one.text
        assert one.json()["id"] == created["id"]
        listed = await client.get("/v1/forget-requests", headers=auth(key))
        assert [item["id"] for item in listed.json()["data"]] == [created["id"]]


async def test_idempotency_replay_conflict_and_mismatch(settings: Settings) -> None:
    async with app_client(settings) as client:
        key = await make_key(client)
        idem = str(uuid.uuid4())
        first = await client.post("/v1/forget-requests", json=body(), headers=auth(key, idem))
        again = await client.post("/v1/forget-requests", json=body(), headers=auth(key, idem))
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        assert again.headers.get("idempotent-replayed") == "true"
        other = await client.post("/v1/forget-requests", json=body("Someone Else"), headers=auth(key, idem))
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        missing = await client.post("/v1/forget-requests", json=body(), headers=auth(key))
        assert missing.status_code == 400  # the IETF draft: a missing key is a bad request
        assert missing.json()["error"]["param"] == "Idempotency-Key"
        # Keys are per tenant: another tenant may use the same key for its own request.
        other_tenant = await make_key(client, tenant="globex")
        theirs = await client.post("/v1/forget-requests", json=body(), headers=auth(other_tenant, idem))
        assert theirs.status_code == 202
        assert theirs.json()["id"] != first.json()["id"]


def _stored_corpora(settings: Settings) -> list[str]:
    root = Path(settings.artifacts_dir)
    return sorted(path.parent.parent.name for path in root.glob("*/input/spec.json"))


async def test_replay_leaves_one_stored_corpus_and_a_consistent_audit_chain(settings: Settings) -> None:
    """A replayed key (the path a retry from another process takes too) keeps no second corpus."""
    from service.audit import chain

    async with app_client(settings) as client:
        key = await make_key(client)
        idem = str(uuid.uuid4())
        first = await client.post("/v1/forget-requests", json=body(), headers=auth(key, idem))
        again = await client.post("/v1/forget-requests", json=body(), headers=auth(key, idem))
        assert again.headers.get("idempotent-replayed") == "true"
        assert _stored_corpora(settings) == [first.json()["id"]]
        # Several requests written in one batch still form one unbroken chain.
        await asyncio.gather(*[submit(client, key) for _ in range(20)])
        async with client.app.state.resources.sessionmaker() as session:
            verdict = await chain.verify(session)
        assert verdict.ok, verdict.problems
        assert verdict.events == 2 * 21


async def test_fifty_concurrent_identical_posts_create_one_request(
    database_url: str, clean_redis: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=clean_redis)
    async with app_client(settings) as client:
        key = await make_key(client)
        idem = str(uuid.uuid4())
        responses = await asyncio.gather(
            *[client.post("/v1/forget-requests", json=body(), headers=auth(key, idem)) for _ in range(50)]
        )
        codes = {r.status_code for r in responses}
        assert codes <= {202, 409}, [r.text for r in responses if r.status_code not in {202, 409}]
        ids = {r.json()["id"] for r in responses if r.status_code == 202}
        assert len(ids) == 1
        listed = await client.get("/v1/forget-requests", headers=auth(key))
        assert len(listed.json()["data"]) == 1
        conflict = [r for r in responses if r.status_code == 409]
        for response in conflict:
            assert response.json()["error"]["code"] == "idempotency_in_flight"


async def test_bad_input_is_4xx_naming_the_field(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_hints": 2, "max_corpus_bytes": 1000})
    async with app_client(settings) as client:
        key = await make_key(client)

        async def post(payload: object) -> tuple[int, dict[str, object]]:
            response = await client.post(
                "/v1/forget-requests", json=payload, headers=auth(key, str(uuid.uuid4()))
            )
            return response.status_code, response.json()["error"]

        status, error = await post(body(subject=""))
        assert status == 422 and "subject" in str(error["message"]) + str(error["param"])
        status, error = await post(body(corpus=[], qa_pairs=[]))
        assert status == 422 and error["param"] == "corpus"
        status, error = await post(body(corpus=[{"text": "x" * 2000}]))
        assert status == 413 and error["param"] == "corpus"
        hints = [{"term": f"T{i}"} for i in range(3)]
        status, error = await post(body(hints=hints))
        assert status == 422 and error["param"] == "hints"
        status, error = await post(body(hints=[{"term": "A", "kind": "dragon"}]))
        assert status == 422 and "kind" in str(error["message"])
        status, error = await post(body(unknown_field=1))
        assert status == 422
        status, error = await post(["not", "an", "object"])
        assert status == 422
        raw = await client.post(
            "/v1/forget-requests",
            content=b"{not json",
            headers={**auth(key, "k1"), "Content-Type": "application/json"},
        )
        assert raw.status_code in {400, 422}
        assert "error" in raw.json()
        bad_cursor = await client.get("/v1/forget-requests?cursor=%%%", headers=auth(key))
        assert bad_cursor.status_code == 422


async def test_body_limit_is_413(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 2000})
    async with app_client(settings) as client:
        key = await make_key(client)
        response = await client.post(
            "/v1/forget-requests", json=body(corpus=[{"text": "y" * 5000}]), headers=auth(key, "big")
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


async def test_multipart_upload_of_txt_and_jsonl(settings: Settings) -> None:
    import json

    async with app_client(settings) as client:
        key = await make_key(client)
        meta = json.dumps({"subject": "Upload Subject", "hints": [{"term": "Harry"}]})
        jsonl = "\n".join(json.dumps({"text": f"Harry line {i}"}) for i in range(3)).encode()
        response = await client.post(
            "/v1/forget-requests/upload",
            data={"metadata": meta},
            files=[
                ("corpus", ("a.txt", b"Harry Potter lives at Privet Drive.", "text/plain")),
                ("corpus", ("b.jsonl", jsonl, "application/jsonl")),
            ],
            headers=auth(key, "upload-1"),
        )
        assert response.status_code == 202, response.text
        assert response.json()["corpus"]["documents"] == 4
        bad = await client.post(
            "/v1/forget-requests/upload",
            data={"metadata": meta},
            files=[("corpus", ("c.bin", b"\x00\x01", "application/octet-stream"))],
            headers=auth(key, "upload-2"),
        )
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "corpus"


async def test_list_filters_and_cursor_pagination(settings: Settings) -> None:
    async with app_client(settings) as client:
        key = await make_key(client)
        ids = [(await submit(client, key, subject=f"S{i % 2}"))["id"] for i in range(5)]
        page = await client.get("/v1/forget-requests?limit=2", headers=auth(key))
        seen = [item["id"] for item in page.json()["data"]]
        while page.json()["has_more"]:
            cursor = page.json()["next_cursor"]
            page = await client.get(f"/v1/forget-requests?limit=2&cursor={cursor}", headers=auth(key))
            seen += [item["id"] for item in page.json()["data"]]
        assert seen == list(reversed(ids))
        s0 = await client.get("/v1/forget-requests?subject=S0", headers=auth(key))
        assert len(s0.json()["data"]) == 3
        queued = await client.get("/v1/forget-requests?status=queued,failed", headers=auth(key))
        assert len(queued.json()["data"]) == 5
        bad = await client.get("/v1/forget-requests?status=nope", headers=auth(key))
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"
        overdue = await client.get("/v1/forget-requests?due=overdue", headers=auth(key))
        assert overdue.json()["data"] == []
        soon = await client.get("/v1/forget-requests?due=due_soon", headers=auth(key))
        assert soon.json()["data"] == []
