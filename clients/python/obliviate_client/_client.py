"""``Client`` and ``AsyncClient``: httpx-style twins with the same resources and behaviour.

Both accept an injected ``httpx.Client`` / ``httpx.AsyncClient`` (a Litestar test client works),
retry transient faults with backoff (see ``_transport.should_retry``) and raise the errors of
``_exceptions``. Endpoint knowledge lives in ``_resources``; this module only sends and waits.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import httpx
from httpx_sse import EventSource, SSEError

from obliviate_client import __version__
from obliviate_client import _resources as r
from obliviate_client._exceptions import APIVersionWarning, ObliviateError, TransportError
from obliviate_client._models import (
    AuditTrail,
    Certificate,
    Document,
    ForgetRequest,
    ForgetRequestPage,
    Hint,
    Options,
    Probe,
    PublicKey,
    QAPair,
    RequestEvent,
    ServerVersion,
)
from obliviate_client._progress import progress_view
from obliviate_client._transport import (
    API_VERSION_HEADER,
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    compatible,
    default_headers,
    raise_for_status,
    retry_or_raise,
)

CorpusItems = Sequence[str | Document | Mapping[str, Any]]


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, max_retries: int) -> None:
        self.base_url = (base_url or os.environ.get("OBLIVIATE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OBLIVIATE_API_KEY")
        self.retry = RetryPolicy(max_retries=max_retries)
        #: The API version the server stated in its last answer (None until it answered).
        self.server_api_version: str | None = None
        self._version_warned = False

    def _note_version(self, response: httpx.Response) -> None:
        """Remember the server's API version; warn once per client when this SDK does not speak it."""
        version = response.headers.get(API_VERSION_HEADER)
        if not version:
            return
        self.server_api_version = version
        if not self._version_warned and not compatible(version):
            self._version_warned = True
            warnings.warn(
                f"the Obliviate server speaks API version {version}, but obliviate-client {__version__} "
                f"speaks {__version__}: install obliviate-client {version} to match it",
                APIVersionWarning,
                stacklevel=4,
            )

    def _server_version(self, response: httpx.Response) -> ServerVersion:
        self._note_version(response)
        body = response.json() if response.content else {}
        version = body.get("api_version") if isinstance(body, dict) else None
        version = str(version) if version else self.server_api_version
        return ServerVersion(
            api_version=version,
            client_version=__version__,
            compatible=version is not None and compatible(version),
        )

    def _url(self, path: str, injected: bool, explicit_base: bool) -> str:
        # An injected client without an explicit base_url keeps its own base (e.g. a test client).
        return path if injected and not explicit_base else f"{self.base_url}{path}"


class Client(_Base):
    """Synchronous client. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
        certificate_key: str | bytes | None = None,
        certificate_key_id: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries)
        # Pins for certificates (see ForgetRequests.certificate): the signing key, or its id.
        self.certificate_key = certificate_key
        self.certificate_key_id = certificate_key_id
        self._explicit_base = base_url is not None
        self._injected = http_client is not None
        self._http = http_client or httpx.Client(timeout=timeout)
        self._headers = default_headers(self.api_key)
        self.forget_requests = ForgetRequests(self)
        self.deployments = Deployments(self)
        self.verifications = Verifications(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._injected:
            self._http.close()

    def send(self, call: r.Call) -> httpx.Response:
        """Send with retries; returns a 2xx response or raises an :class:`ObliviateError`."""
        headers = {**self._headers, **call.headers}
        url = self._url(call.path, self._injected, self._explicit_base)
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, url, json=call.json, params=call.params, headers=headers
                )
                self._note_version(response)
                outcome: httpx.Response | httpx.TransportError = response
            except httpx.TransportError as exc:
                outcome = exc
            delay = retry_or_raise(self.retry, attempt, call.method, headers, outcome)
            if delay is None:
                return response
            time.sleep(delay)
            attempt += 1

    def json(self, call: r.Call) -> Any:
        return self.send(call).json()

    def server_version(self) -> ServerVersion:
        """The API version the server speaks (``GET /health/live``) and whether this SDK speaks it."""
        return self._server_version(self.send(r.Call("GET", r.LIVE)))


class AsyncClient(_Base):
    """Asynchronous client. Use as an async context manager, or await :meth:`aclose`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
        certificate_key: str | bytes | None = None,
        certificate_key_id: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries)
        # Pins for certificates (see ForgetRequests.certificate): the signing key, or its id.
        self.certificate_key = certificate_key
        self.certificate_key_id = certificate_key_id
        self._explicit_base = base_url is not None
        self._injected = http_client is not None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._headers = default_headers(self.api_key)
        self.forget_requests = AsyncForgetRequests(self)
        self.deployments = AsyncDeployments(self)
        self.verifications = AsyncVerifications(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._injected:
            await self._http.aclose()

    async def send(self, call: r.Call) -> httpx.Response:
        """Send with retries; returns a 2xx response or raises an :class:`ObliviateError`."""
        headers = {**self._headers, **call.headers}
        url = self._url(call.path, self._injected, self._explicit_base)
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, url, json=call.json, params=call.params, headers=headers
                )
                self._note_version(response)
                outcome: httpx.Response | httpx.TransportError = response
            except httpx.TransportError as exc:
                outcome = exc
            delay = retry_or_raise(self.retry, attempt, call.method, headers, outcome)
            if delay is None:
                return response
            await asyncio.sleep(delay)
            attempt += 1

    async def json(self, call: r.Call) -> Any:
        return (await self.send(call)).json()

    async def server_version(self) -> ServerVersion:
        """The API version the server speaks (``GET /health/live``) and whether this SDK speaks it."""
        return self._server_version(await self.send(r.Call("GET", r.LIVE)))


# ---- forget requests ----------------------------------------------------------------------------


class ForgetRequests:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        subject: str,
        *,
        corpus: CorpusItems | None = None,
        qa_pairs: Sequence[QAPair | Mapping[str, Any]] | None = None,
        hints: Sequence[str | Hint | Mapping[str, Any]] | None = None,
        probes: Sequence[str | Probe | Mapping[str, Any]] | None = None,
        retain_examples: Sequence[str] | None = None,
        options: Options | Mapping[str, Any] | None = None,
        data_subject_ref: str | None = None,
        legal_basis: str | None = None,
        idempotency_key: str | None = None,
    ) -> ForgetRequest:
        """File a forget request. Retries reuse one Idempotency-Key, so they never duplicate it."""
        call = r.create_call(
            subject=subject, corpus=corpus, qa_pairs=qa_pairs, hints=hints, probes=probes,
            retain_examples=retain_examples, options=options, data_subject_ref=data_subject_ref,
            legal_basis=legal_basis, idempotency_key=idempotency_key,
        )  # fmt: skip
        return ForgetRequest.model_validate(self._client.json(call))

    def get(self, request_id: str) -> ForgetRequest:
        return ForgetRequest.model_validate(self._client.json(r.Call("GET", r.request_path(request_id))))

    def list_page(
        self,
        *,
        status: str | Sequence[str] | None = None,
        subject: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        due: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ForgetRequestPage:
        params = r.list_params(
            status=status, subject=subject, created_after=created_after,
            created_before=created_before, due=due, limit=limit, cursor=cursor,
        )  # fmt: skip
        return ForgetRequestPage.model_validate(
            self._client.json(r.Call("GET", f"{r.FORGET}/", params=params))
        )

    def list(self, **filters: Any) -> Iterator[ForgetRequest]:
        """Every matching request, newest first, fetching pages as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.list_page(**filters, cursor=cursor)
            yield from page.data
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, request_id: str, reason: str = "") -> ForgetRequest:
        call = r.Call("POST", r.request_path(request_id, "/cancel"), json={"reason": reason})
        return ForgetRequest.model_validate(self._client.json(call))

    def approve(self, request_id: str, reason: str = "", *, gate: str | None = None) -> ForgetRequest:
        call = r.Call(
            "POST", r.request_path(request_id, "/approve"), json=r.decision_body("approve", reason, gate)
        )
        return ForgetRequest.model_validate(self._client.json(call))

    def reject(self, request_id: str, reason: str, *, gate: str | None = None) -> ForgetRequest:
        call = r.Call(
            "POST", r.request_path(request_id, "/approve"), json=r.decision_body("reject", reason, gate)
        )
        return ForgetRequest.model_validate(self._client.json(call))

    def audit(self, request_id: str) -> AuditTrail:
        return AuditTrail.model_validate(
            self._client.json(r.Call("GET", r.request_path(request_id, "/audit")))
        )

    def certificate(
        self,
        request_id: str,
        *,
        verify: bool = True,
        pinned_key: str | bytes | None = None,
        pinned_key_id: str | None = None,
    ) -> Certificate:
        """The signed certificate; with ``verify`` (default) its Ed25519 signature is checked locally.

        Pin the signer with ``pinned_key`` (raw, base64 or PEM public key; the server's key is then not
        asked for) or ``pinned_key_id``; the client's ``certificate_key``/``certificate_key_id`` are the
        defaults. Without a pin, the server's current key is used.
        """
        cert = Certificate.model_validate(
            self._client.json(r.Call("GET", r.request_path(request_id, "/certificate")))
        )
        if verify:
            pin = pinned_key if pinned_key is not None else self._client.certificate_key
            pin_id = pinned_key_id if pinned_key_id is not None else self._client.certificate_key_id
            key = (
                None
                if pin is not None
                else PublicKey.model_validate(self._client.json(r.Call("GET", r.PUBLIC_KEY)))
            )
            r.verify_certificate(cert, key, pinned_key=pin, pinned_key_id=pin_id)
        return cert

    def events(
        self,
        request_id: str,
        *,
        last_event_id: str | None = None,
        follow: bool = True,
        max_reconnects: int = 20,
    ) -> Iterator[RequestEvent]:
        """Stage changes and progress as they happen; a dropped connection resumes after the last event."""
        reconnects = 0
        while True:
            headers = {**self._client._headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            url = self._client._url(
                r.request_path(request_id, "/events"), self._client._injected, self._client._explicit_base
            )
            try:
                with self._client._http.stream(
                    "GET", url, headers=headers, params={"follow": str(follow).lower()}
                ) as response:
                    self._client._note_version(response)
                    if response.status_code >= 400:
                        response.read()
                        raise_for_status(response)
                    ended = False
                    for sse in EventSource(response).iter_sse():
                        event = r.parse_event(sse)
                        if event is None:
                            continue  # the opening comment and retry delay, keep-alives
                        if event.type == "stream_end":
                            ended = True  # the server ended the stream early (lifetime, shutdown)
                            break
                        if sse.id:
                            last_event_id = sse.id
                        yield event
                if ended:
                    continue  # resume after the last event (a revoked key now answers 401)
                return  # the server closed the stream: the request settled (or follow=False)
            except SSEError as exc:  # not an event stream (a proxy's page): reconnecting will not help
                raise ObliviateError(
                    f"the events endpoint did not answer with an event stream: {exc}"
                ) from exc
            except (httpx.TransportError, httpx.StreamError) as exc:
                reconnects += 1
                if reconnects > max_reconnects:
                    raise TransportError(f"event stream kept dropping: {exc}") from exc
                time.sleep(self._client.retry.delay(min(reconnects, 5)))

    def wait(
        self,
        request_id: str,
        *,
        until: str = "settled",
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool | TextIO = False,
    ) -> ForgetRequest:
        """Block until the request settles (``until="settled"``), reaches a review gate (``"gate"``)
        or is deployed (``"deployed"``). ``progress=True`` (stderr) or a stream: a live bar on a
        terminal, one line per status change anywhere else (a log, a pipe)."""
        r.check_wait_until(until)
        bar = progress_view(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                request = self.get(request_id)
                if bar:
                    bar.update(request)
                if r.wait_is_over(request, until):
                    return request
                if deadline is not None and time.monotonic() >= deadline:
                    raise ObliviateError(f"request {request_id} still {request.status} after {timeout} s")
                time.sleep(poll_interval)
        finally:
            if bar:
                bar.close()


class AsyncForgetRequests:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        subject: str,
        *,
        corpus: CorpusItems | None = None,
        qa_pairs: Sequence[QAPair | Mapping[str, Any]] | None = None,
        hints: Sequence[str | Hint | Mapping[str, Any]] | None = None,
        probes: Sequence[str | Probe | Mapping[str, Any]] | None = None,
        retain_examples: Sequence[str] | None = None,
        options: Options | Mapping[str, Any] | None = None,
        data_subject_ref: str | None = None,
        legal_basis: str | None = None,
        idempotency_key: str | None = None,
    ) -> ForgetRequest:
        """File a forget request. Retries reuse one Idempotency-Key, so they never duplicate it."""
        call = r.create_call(
            subject=subject, corpus=corpus, qa_pairs=qa_pairs, hints=hints, probes=probes,
            retain_examples=retain_examples, options=options, data_subject_ref=data_subject_ref,
            legal_basis=legal_basis, idempotency_key=idempotency_key,
        )  # fmt: skip
        return ForgetRequest.model_validate(await self._client.json(call))

    async def get(self, request_id: str) -> ForgetRequest:
        return ForgetRequest.model_validate(
            await self._client.json(r.Call("GET", r.request_path(request_id)))
        )

    async def list_page(
        self,
        *,
        status: str | Sequence[str] | None = None,
        subject: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        due: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ForgetRequestPage:
        params = r.list_params(
            status=status, subject=subject, created_after=created_after,
            created_before=created_before, due=due, limit=limit, cursor=cursor,
        )  # fmt: skip
        return ForgetRequestPage.model_validate(
            await self._client.json(r.Call("GET", f"{r.FORGET}/", params=params))
        )

    async def list(self, **filters: Any) -> AsyncIterator[ForgetRequest]:
        """Every matching request, newest first, fetching pages as the iteration goes."""
        cursor: str | None = None
        while True:
            page = await self.list_page(**filters, cursor=cursor)
            for item in page.data:
                yield item
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, request_id: str, reason: str = "") -> ForgetRequest:
        call = r.Call("POST", r.request_path(request_id, "/cancel"), json={"reason": reason})
        return ForgetRequest.model_validate(await self._client.json(call))

    async def approve(self, request_id: str, reason: str = "", *, gate: str | None = None) -> ForgetRequest:
        call = r.Call(
            "POST", r.request_path(request_id, "/approve"), json=r.decision_body("approve", reason, gate)
        )
        return ForgetRequest.model_validate(await self._client.json(call))

    async def reject(self, request_id: str, reason: str, *, gate: str | None = None) -> ForgetRequest:
        call = r.Call(
            "POST", r.request_path(request_id, "/approve"), json=r.decision_body("reject", reason, gate)
        )
        return ForgetRequest.model_validate(await self._client.json(call))

    async def audit(self, request_id: str) -> AuditTrail:
        return AuditTrail.model_validate(
            await self._client.json(r.Call("GET", r.request_path(request_id, "/audit")))
        )

    async def certificate(
        self,
        request_id: str,
        *,
        verify: bool = True,
        pinned_key: str | bytes | None = None,
        pinned_key_id: str | None = None,
    ) -> Certificate:
        """The signed certificate, checked as :meth:`ForgetRequests.certificate` does."""
        cert = Certificate.model_validate(
            await self._client.json(r.Call("GET", r.request_path(request_id, "/certificate")))
        )
        if verify:
            pin = pinned_key if pinned_key is not None else self._client.certificate_key
            pin_id = pinned_key_id if pinned_key_id is not None else self._client.certificate_key_id
            key = (
                None
                if pin is not None
                else PublicKey.model_validate(await self._client.json(r.Call("GET", r.PUBLIC_KEY)))
            )
            r.verify_certificate(cert, key, pinned_key=pin, pinned_key_id=pin_id)
        return cert

    async def events(
        self,
        request_id: str,
        *,
        last_event_id: str | None = None,
        follow: bool = True,
        max_reconnects: int = 20,
    ) -> AsyncIterator[RequestEvent]:
        """Stage changes and progress as they happen; a dropped connection resumes after the last event."""
        reconnects = 0
        while True:
            headers = {**self._client._headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            url = self._client._url(
                r.request_path(request_id, "/events"), self._client._injected, self._client._explicit_base
            )
            try:
                async with self._client._http.stream(
                    "GET", url, headers=headers, params={"follow": str(follow).lower()}
                ) as response:
                    self._client._note_version(response)
                    if response.status_code >= 400:
                        await response.aread()
                        raise_for_status(response)
                    ended = False
                    async for sse in EventSource(response).aiter_sse():
                        event = r.parse_event(sse)
                        if event is None:
                            continue  # the opening comment and retry delay, keep-alives
                        if event.type == "stream_end":
                            ended = True  # the server ended the stream early (lifetime, shutdown)
                            break
                        if sse.id:
                            last_event_id = sse.id
                        yield event
                if ended:
                    continue  # resume after the last event (a revoked key now answers 401)
                return
            except SSEError as exc:  # not an event stream (a proxy's page): reconnecting will not help
                raise ObliviateError(
                    f"the events endpoint did not answer with an event stream: {exc}"
                ) from exc
            except (httpx.TransportError, httpx.StreamError) as exc:
                reconnects += 1
                if reconnects > max_reconnects:
                    raise TransportError(f"event stream kept dropping: {exc}") from exc
                await asyncio.sleep(self._client.retry.delay(min(reconnects, 5)))

    async def wait(
        self,
        request_id: str,
        *,
        until: str = "settled",
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors the sync twin's signature
        poll_interval: float = 1.0,
        progress: bool | TextIO = False,
    ) -> ForgetRequest:
        """Like :meth:`ForgetRequests.wait`, without blocking the event loop."""
        r.check_wait_until(until)
        bar = progress_view(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                request = await self.get(request_id)
                if bar:
                    bar.update(request)
                if r.wait_is_over(request, until):
                    return request
                if deadline is not None and time.monotonic() >= deadline:
                    raise ObliviateError(f"request {request_id} still {request.status} after {timeout} s")
                await asyncio.sleep(poll_interval)
        finally:
            if bar:
                bar.close()


# ---- deployments and verifications --------------------------------------------------------------


class Deployments:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> Any:
        return self._client.json(r.Call("GET", "/v1/deployments"))

    def deploy(
        self,
        request_id: str,
        *,
        alias: str | None = None,
        override: bool = False,
        reason: str | None = None,
        **options: Any,
    ) -> Any:
        """Deploy a ready request. One that failed the acceptance gate needs ``override=True`` and a
        ``reason`` (admin keys only); the audit trail and the certificate record both."""
        return self._client.json(
            r.Call(
                "POST", "/v1/deployments", json=r.deploy_body(request_id, alias, override, reason, options)
            )
        )

    def rollback(self, alias: str = "chat") -> Any:
        return self._client.json(r.Call("POST", f"/v1/deployments/{r._segment(alias)}/rollback"))


class AsyncDeployments:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> Any:
        return await self._client.json(r.Call("GET", "/v1/deployments"))

    async def deploy(
        self,
        request_id: str,
        *,
        alias: str | None = None,
        override: bool = False,
        reason: str | None = None,
        **options: Any,
    ) -> Any:
        """Deploy a ready request. One that failed the acceptance gate needs ``override=True`` and a
        ``reason`` (admin keys only); the audit trail and the certificate record both."""
        return await self._client.json(
            r.Call(
                "POST", "/v1/deployments", json=r.deploy_body(request_id, alias, override, reason, options)
            )
        )

    async def rollback(self, alias: str = "chat") -> Any:
        return await self._client.json(r.Call("POST", f"/v1/deployments/{r._segment(alias)}/rollback"))


class Verifications:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        request_id: str | None = None,
        prompts: Sequence[str | Mapping[str, Any]] = (),
        anchors: Sequence[str] = (),
        **options: Any,
    ) -> Any:
        """Before/after answers side by side for a request's probes and/or ad-hoc prompts."""
        return self._client.json(r.verification_call(request_id, prompts, anchors, options))


class AsyncVerifications:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        request_id: str | None = None,
        prompts: Sequence[str | Mapping[str, Any]] = (),
        anchors: Sequence[str] = (),
        **options: Any,
    ) -> Any:
        """Before/after answers side by side for a request's probes and/or ad-hoc prompts."""
        return await self._client.json(r.verification_call(request_id, prompts, anchors, options))
