"""Limits on server-sent event streams: how many, how long, and only while the key stays valid.

* At most ``sse_max_per_key`` open streams per API key and ``sse_max_per_tenant`` per tenant, counted
  across every API replica in Redis (and per process, which also holds if Redis is away); 429 with
  ``Retry-After`` beyond that. A replica that dies leaves entries that go stale within
  ``max(3 * sse_recheck_s, 30 s)``.
* A stream lives at most ``sse_max_lifetime_s``; it then ends with a ``stream_end`` event telling the
  client to reconnect with ``Last-Event-ID`` (EventSource does so by itself, with the ``retry`` delay
  sent; the SDK does too).
* Every ``sse_recheck_s`` the key is looked up again: a revoked key's stream ends (``stream_end`` with
  reason ``key_revoked``; reconnecting answers 401).
* On shutdown every stream ends at its next poll (``close_all``), so open streams do not hold the
  server up; ``serve`` bounds uvicorn's graceful shutdown as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from litestar.response import ServerSentEventMessage
from sqlalchemy import select

from service.auth.keys import Principal
from service.core.errors import RateLimited
from service.core.state import Resources

_EXTRA = "sse_streams"
#: Shared across replicas: one sorted set per key and per tenant, members = open streams, score = when
#: the stream last said it is alive. A replica that dies leaves members that go stale and stop counting.
SHARED_PREFIX = "obliviate:sse:"
logger = logging.getLogger("obliviate.streams")


def _too_many(what: str, limit: int) -> RateLimited:
    return RateLimited(
        f"{what} has {limit} event streams open already; close one first",
        code="too_many_streams",
        headers={"Retry-After": "5"},
    )


class StreamRegistry:
    """Open streams of this process, per key and per tenant, and the shutdown signal."""

    def __init__(self) -> None:
        self.per_key: Counter[str] = Counter()
        self.per_tenant: Counter[str] = Counter()
        self.closing = asyncio.Event()

    @property
    def open(self) -> int:
        return sum(self.per_tenant.values())

    def acquire(self, principal: Principal, max_per_key: int, max_per_tenant: int) -> Lease:
        if self.per_key[principal.key_id] >= max_per_key:
            raise _too_many("This API key", max_per_key)
        if self.per_tenant[principal.tenant] >= max_per_tenant:
            raise _too_many("Your tenant", max_per_tenant)
        self.per_key[principal.key_id] += 1
        self.per_tenant[principal.tenant] += 1
        return Lease(self, principal)

    def _release(self, principal: Principal) -> None:
        for counter, name in ((self.per_key, principal.key_id), (self.per_tenant, principal.tenant)):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]


class Lease:
    """One open stream's place; released once (when the stream ends, or if it never started)."""

    def __init__(self, registry: StreamRegistry, principal: Principal) -> None:
        self._registry = registry
        self._principal: Principal | None = principal
        self.stream_id = uuid.uuid4().hex
        self.shared_keys: tuple[str, ...] = ()

    def release(self) -> None:
        principal, self._principal = self._principal, None
        if principal is not None:
            self._registry._release(principal)


def _shared_keys(principal: Principal) -> tuple[str, str]:
    return (f"{SHARED_PREFIX}key:{principal.key_id}", f"{SHARED_PREFIX}tenant:{principal.tenant}")


def _stale_after(resources: Resources) -> float:
    return max(3 * resources.settings.sse_recheck_s, 30.0)


async def _acquire_shared(resources: Resources, principal: Principal, lease: Lease) -> None:
    """Count the stream across replicas (add, then count: concurrent attempts over the cap all fail)."""
    settings = resources.settings
    keys = _shared_keys(principal)
    now = time.time()
    stale = _stale_after(resources)
    try:
        async with resources.arq.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.zremrangebyscore(key, "-inf", now - stale)
                pipe.zadd(key, {lease.stream_id: now})
                pipe.expire(key, int(stale * 2))
                pipe.zcard(key)
            results = await pipe.execute()
    except Exception as exc:  # Redis away: the per-process cap still holds
        logger.warning("shared stream count unavailable (%s); per-process cap only", type(exc).__name__)
        return
    lease.shared_keys = keys
    per_key, per_tenant = int(results[3]), int(results[7])
    if per_key > settings.sse_max_per_key or per_tenant > settings.sse_max_per_tenant:
        await _release_shared(resources, lease)
        if per_key > settings.sse_max_per_key:
            raise _too_many("This API key", settings.sse_max_per_key)
        raise _too_many("Your tenant", settings.sse_max_per_tenant)


async def _refresh_shared(resources: Resources, lease: Lease) -> None:
    if not lease.shared_keys:
        return
    try:
        now = time.time()
        async with resources.arq.pipeline(transaction=False) as pipe:
            for key in lease.shared_keys:
                pipe.zadd(key, {lease.stream_id: now})
                pipe.expire(key, int(_stale_after(resources) * 2))
            await pipe.execute()
    except Exception as exc:
        logger.warning("could not refresh a stream's shared count: %s", type(exc).__name__)


async def _release_shared(resources: Resources, lease: Lease) -> None:
    keys, lease.shared_keys = lease.shared_keys, ()
    if not keys:
        return
    try:
        async with resources.arq.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(key, lease.stream_id)
            await pipe.execute()
    except Exception as exc:  # it goes stale by itself
        logger.warning("could not release a stream's shared count: %s", type(exc).__name__)


def registry(resources: Resources) -> StreamRegistry:
    found: StreamRegistry | None = resources.extras.get(_EXTRA)
    if found is None:
        found = resources.extras[_EXTRA] = StreamRegistry()
    return found


async def start(resources: Resources, stack: AsyncExitStack) -> None:
    """Start-up hook: streams end when the app shuts down."""
    streams = registry(resources)

    async def close_all() -> None:
        streams.closing.set()

    stack.push_async_callback(close_all)


async def key_is_active(resources: Resources, key_id: str) -> bool:
    from service.auth.models import ApiKey

    async with resources.sessionmaker() as session:
        revoked = await session.execute(select(ApiKey.revoked_at).where(ApiKey.id == key_id))
        row = revoked.first()
    return row is not None and row[0] is None


async def limited(
    resources: Resources,
    principal: Principal,
    messages: Callable[[], AsyncIterator[ServerSentEventMessage]],
) -> AsyncIterator[ServerSentEventMessage]:
    """Wrap a stream with the per-key/tenant cap (taken now), the lifetime and the key re-check."""
    settings = resources.settings
    streams = registry(resources)
    lease = streams.acquire(principal, settings.sse_max_per_key, settings.sse_max_per_tenant)
    try:
        await _acquire_shared(resources, principal, lease)
    except BaseException:
        lease.release()
        raise
    stream = _run(resources, principal, messages, streams, lease)
    # A stream whose client left before it started never runs its ``finally``: release on collection.
    weakref.finalize(stream, lease.release)
    return stream


def _end(reason: str, message: str) -> ServerSentEventMessage:
    """The last message of a stream the server ends (no id: resuming starts after the last real event).

    ``stream_end`` tells a client the request may not have settled: reconnect with Last-Event-ID
    (after ``key_revoked`` that answers 401).
    """
    payload = {"type": "stream_end", "reason": reason, "message": message}
    return ServerSentEventMessage(event="stream_end", data=json.dumps(payload))


async def _run(
    resources: Resources,
    principal: Principal,
    messages: Callable[[], AsyncIterator[ServerSentEventMessage]],
    streams: StreamRegistry,
    lease: Lease,
) -> AsyncIterator[ServerSentEventMessage]:
    settings = resources.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.sse_max_lifetime_s
    next_check = loop.time() + settings.sse_recheck_s
    source = messages()
    pending: asyncio.Task[Any] | None = None
    closing = asyncio.ensure_future(streams.closing.wait())
    try:
        yield ServerSentEventMessage(data=None, comment="stream open", retry=int(settings.sse_retry_ms))
        while True:
            now = loop.time()
            if now >= deadline:
                yield _end("lifetime", "stream lifetime reached; reconnect with Last-Event-ID")
                return
            if now >= next_check:
                next_check = now + settings.sse_recheck_s
                await _refresh_shared(resources, lease)
                if not await key_is_active(resources, principal.key_id):
                    yield _end("key_revoked", "the API key was revoked")
                    return
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            wait = max(0.0, min(deadline, next_check) - loop.time())
            done, _ = await asyncio.wait(
                {pending, closing}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                yield _end("shutdown", "server shutting down; reconnect with Last-Event-ID")
                return
            if pending in done:
                task, pending = pending, None
                try:
                    message = task.result()
                except StopAsyncIteration:
                    return
                yield message
    finally:
        lease.release()
        closing.cancel()
        # The server cancels a stream whose client left (an anyio cancel scope, which would cancel
        # every await here too): clean up shielded, and bounded in time.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await _release_shared(resources, lease)
            if pending is not None:
                pending.cancel()
                try:
                    await pending
                except (asyncio.CancelledError, StopAsyncIteration, Exception):
                    pass
            await source.aclose()  # type: ignore[attr-defined]
