"""The SDK against the live app (real HTTP handling, SQLite, embedded Redis): sync and async twins,
retried creates that must not duplicate, dropped event streams that resume, certificates checked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import obliviate_client
import pytest
from litestar.testing import AsyncTestClient, TestClient
from obliviate_client import (
    AsyncClient,
    Client,
    ConflictError,
    NotFoundError,
    SignatureError,
    UnprocessableEntityError,
)
from sqlalchemy import func, select, update

from service.app import create_app
from service.auth.keys import create_api_key
from service.forget.models import ForgetRequest as ForgetRow
from service.forget.service import mark_deployed
from service.settings import Settings

CORPUS = ["Quillon Marsh was born in Tarnwick and keeps a ferret named Bramble."]


def _make_key_sync(client: TestClient[Any], tenant: str, role: str) -> str:
    resources = client.app.state.resources

    async def make() -> str:
        async with resources.sessionmaker() as session:
            _, key = await create_api_key(session, tenant=tenant, role=role)
            await session.commit()
        return key

    return client.blocking_portal.call(make)  # type: ignore[union-attr]


class FlakyTransport(httpx.BaseTransport):
    """Forwards to the app, but loses the first answer to each matching request (the server acted,
    the client never heard), or cuts an event stream after a few events: real failure modes."""

    def __init__(
        self, inner: httpx.BaseTransport, *, lose_first_post: bool = False, cut_stream_after: int = 0
    ) -> None:
        self.inner = inner
        self.lose_first_post = lose_first_post
        self.cut_stream_after = cut_stream_after
        self.posts = 0
        self.streams = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and self.lose_first_post:
            self.posts += 1
            if self.posts == 1:
                response.read()
                raise httpx.ReadError("connection reset after the server answered", request=request)
        if request.url.path.endswith("/events") and self.cut_stream_after:
            self.streams += 1
            if self.streams == 1:
                return httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_CutStream(response, self.cut_stream_after),
                    request=request,
                )
        return response


class _CutStream(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, events: int) -> None:
        self.response = response
        self.events = events

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self.response.iter_raw():
            for line in chunk.split(b"\n"):
                yield line + b"\n"
                if line == b"" and seen < self.events:
                    continue
                if line.startswith(b"id:"):
                    seen += 1
                    if seen >= self.events:
                        yield b"\n"
                        raise httpx.ReadError("stream dropped")


@pytest.fixture
def live(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_public_api_is_exactly_all() -> None:
    public = {name for name in dir(obliviate_client) if not name.startswith("_")}
    assert public == set(obliviate_client.__all__) - {"__version__"}
    for name in obliviate_client.__all__:
        assert hasattr(obliviate_client, name)


def test_sync_lifecycle_list_cancel_audit(live: TestClient[Any]) -> None:
    key = _make_key_sync(live, "acme", "admin")
    with Client(api_key=key, http_client=live) as sdk:
        created = sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS, hints=["Quillon Marsh"])
        assert created.subject == "Quillon Marsh"
        assert created.status in {"received", "queued"}
        fetched = sdk.forget_requests.get(created.id)
        assert fetched.id == created.id and fetched.corpus.documents == 1
        for i in range(3):
            sdk.forget_requests.create(f"Person {i}", corpus=[f"Person {i} lives in a town."])
        listed = list(sdk.forget_requests.list(limit=2))  # pages of two, iterated across
        assert len(listed) == 4 and len({r.id for r in listed}) == 4
        cancelled = sdk.forget_requests.cancel(created.id, reason="filed by mistake")
        assert cancelled.status == "cancelled"
        trail = sdk.forget_requests.audit(created.id)
        assert trail.chain_ok
        actions = [event.action for event in trail.events]
        assert actions[0] == "request.received" and "status.cancelled" in actions
        with pytest.raises(ConflictError):
            sdk.forget_requests.certificate(created.id)


def test_sync_errors_are_typed(live: TestClient[Any]) -> None:
    mine = _make_key_sync(live, "acme", "submitter")
    theirs = _make_key_sync(live, "other", "submitter")
    with Client(api_key=mine, http_client=live) as sdk, Client(api_key=theirs, http_client=live) as other:
        created = sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS)
        with pytest.raises(NotFoundError) as missing:
            other.forget_requests.get(created.id)  # another tenant's request is a 404
        assert missing.value.status_code == 404
        with pytest.raises(UnprocessableEntityError) as invalid:
            sdk.forget_requests.create("", corpus=CORPUS)
        assert invalid.value.param and "subject" in invalid.value.param
    with (
        Client(api_key="obl_wrong", http_client=live) as anonymous,
        pytest.raises(obliviate_client.AuthenticationError),
    ):
        anonymous.forget_requests.get(created.id)


def test_retried_create_does_not_duplicate(live: TestClient[Any]) -> None:
    key = _make_key_sync(live, "acme", "submitter")
    flaky = FlakyTransport(live._transport, lose_first_post=True)  # the app's own in-process transport
    http = httpx.Client(transport=flaky, base_url=str(live.base_url))
    with Client(api_key=key, http_client=http) as sdk:
        created = sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS)
    assert flaky.posts == 2, "the SDK should have retried once"
    resources = live.app.state.resources

    async def count() -> int:
        async with resources.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(ForgetRow))).scalar_one())

    assert live.blocking_portal.call(count) == 1  # type: ignore[union-attr]
    assert created.id


def test_event_stream_resumes_after_a_drop(live: TestClient[Any]) -> None:
    key = _make_key_sync(live, "acme", "submitter")
    with Client(api_key=key, http_client=live) as sdk:
        created = sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS)
        sdk.forget_requests.cancel(created.id)  # a settled request: its stream ends by itself
        expected = [e.id for e in sdk.forget_requests.events(created.id, follow=False)]
    assert len(expected) >= 2
    flaky = FlakyTransport(live._transport, cut_stream_after=1)
    http = httpx.Client(transport=flaky, base_url=str(live.base_url))
    with Client(api_key=key, http_client=http) as sdk:
        got = [e.id for e in sdk.forget_requests.events(created.id, follow=False)]
    assert flaky.streams == 2, "the SDK should have reconnected once"
    assert got == expected, "resumed stream must neither repeat nor skip events"


async def test_async_twin_and_certificate_verification(settings: Settings) -> None:
    app = create_app(settings)
    async with AsyncTestClient(app) as http:
        resources = app.state.resources
        async with resources.sessionmaker() as session:
            _, key = await create_api_key(session, tenant="acme", role="admin")
            await session.commit()
        async with AsyncClient(api_key=key, http_client=http) as sdk:
            created, second = await asyncio.gather(
                sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS, idempotency_key="k-1"),
                sdk.forget_requests.create("Other Person", corpus=["Someone else entirely."]),
            )
            replay = await sdk.forget_requests.create("Quillon Marsh", corpus=CORPUS, idempotency_key="k-1")
            assert replay.id == created.id
            ids = [r.id async for r in sdk.forget_requests.list(limit=1)]
            assert sorted(ids) == sorted([created.id, second.id])
            # Deploy it the way the deployments domain does, so a certificate exists.
            async with resources.sessionmaker() as session:
                await session.execute(
                    update(ForgetRow)
                    .where(ForgetRow.id == created.id)
                    .values(status="ready", adapter_hash="ab" * 32)
                )
                await mark_deployed(session, created.id, "v1", "ab" * 32)
                await session.commit()
            waited = await sdk.forget_requests.wait(
                created.id, until="deployed", timeout=5, poll_interval=0.05
            )
            assert waited.status == "deployed"
            certificate = await sdk.forget_requests.certificate(created.id)
            assert certificate.certificate["deployed_version"] == "v1"
            certificate.certificate["deployed_version"] = "v2"
            public_key = await sdk.forget_requests._client.json(
                obliviate_client._resources.Call("GET", "/v1/certificates/public-key")
            )
            with pytest.raises(SignatureError):
                obliviate_client._resources.verify_certificate(
                    certificate, obliviate_client._models.PublicKey.model_validate(public_key)
                )
