"""Per-tenant limits on the OpenAI-compatible routes: requests and tokens per minute, across replicas,
and requests in flight on this replica.

One tenant must not take the shared model from the others. Each tenant has a budget of requests and of
tokens (prompt tokens plus the completion tokens it may generate) per clock minute, counted in Redis so
every replica shares it. A request over budget answers 429 with ``Retry-After`` (the seconds to the next
window) in the OpenAI envelope. Tokens a request reserved but did not generate are given back.

Requests in flight (queued or generating, streams included) are capped per tenant on each replica, so
one tenant cannot fill the engine's shared queue and batch slots by itself.

Redis down: the per-minute limits are skipped (logged once per outage) rather than refusing every request; the
bounded engine queue still protects the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from service.core.errors import BadRequest, RateLimited
from service.core.state import Resources

logger = logging.getLogger("obliviate.gateway")

WINDOW_S = 60
_PREFIX = "obliviate:gateway:"
_OUTAGE_KEY = "gateway_limits_outage"


def _window() -> tuple[int, float]:
    now = time.time()
    window = int(now // WINDOW_S)
    return window, (window + 1) * WINDOW_S - now


def _outage(resources: Resources, exc: Exception) -> None:
    if not resources.extras.get(_OUTAGE_KEY):
        resources.extras[_OUTAGE_KEY] = True
        logger.warning("gateway limits skipped: Redis unavailable (%s)", type(exc).__name__)


def _recovered(resources: Resources) -> None:
    if resources.extras.pop(_OUTAGE_KEY, None):
        logger.warning("gateway limits enforced again: Redis answers")


async def _take(resources: Resources, key: str, amount: int, limit: int) -> bool | None:
    """Add ``amount`` to ``key`` in this window; False (and given back) if over ``limit``; None: no Redis."""
    redis = resources.arq
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, WINDOW_S * 2)
            used, _ = await pipe.execute()
        if int(used) > limit:
            await redis.decrby(key, amount)
            return False
    except Exception as exc:
        _outage(resources, exc)
        return None
    _recovered(resources)
    return True


async def admit_request(resources: Resources, tenant: str) -> None:
    """Count one completion request against the tenant's requests per minute, or raise 429."""
    limit = int(resources.settings.gateway_requests_per_minute)
    window, retry = _window()
    if await _take(resources, f"{_PREFIX}req:{tenant}:{window}", 1, limit) is False:
        raise RateLimited(
            f"Rate limit reached for your organization: {limit} requests per minute. "
            "Retry after the time in Retry-After.",
            retry_after=retry,
            code="rate_limit_exceeded",
        )


@dataclass
class TokenReservation:
    """Tokens taken from a tenant's budget for one request; ``settle`` gives back what was not used."""

    resources: Resources
    key: str
    reserved: int
    active: bool

    async def settle(self, used: int) -> None:
        unused = self.reserved - max(0, used)
        if not self.active or unused <= 0:
            return
        self.active = False
        try:
            await self.resources.arq.decrby(self.key, unused)
        except Exception as exc:  # the window expires anyway
            _outage(self.resources, exc)


async def reserve_tokens(resources: Resources, tenant: str, tokens: int) -> TokenReservation:
    """Reserve ``tokens`` (prompt + most completion tokens) from the tenant's budget, or raise 429."""
    limit = int(resources.settings.gateway_tokens_per_minute)
    window, retry = _window()
    key = f"{_PREFIX}tok:{tenant}:{window}"
    if tokens > limit:
        # Never fits, however long the client waits: a 400 that says what to change, not a 429.
        raise BadRequest(
            f"This request needs up to {tokens} tokens (prompt + max_tokens) but your organization's budget is "
            f"{limit} tokens per minute; lower max_tokens or shorten the prompt.",
            param="max_tokens",
            code="tokens_exceeded",
        )
    taken = await _take(resources, key, tokens, limit)
    if taken is False:
        raise RateLimited(
            f"Token budget reached for your organization: {limit} tokens per minute "
            "(prompt + max_tokens of requests in this minute). Retry after the time in Retry-After.",
            retry_after=retry,
            code="tokens_exceeded",
        )
    return TokenReservation(resources, key, tokens, active=taken is True)


class InFlight:
    """Requests each tenant has in flight on this replica (the event loop is the only writer)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def acquire(self, tenant: str, limit: int) -> None:
        current = self.counts.get(tenant, 0)
        if current >= limit:
            raise RateLimited(
                f"Your organization already has {current} requests in progress on this server (at most "
                f"{limit}); wait for one to finish, then retry.",
                retry_after=1.0,
                code="too_many_concurrent_requests",
            )
        self.counts[tenant] = current + 1

    def release(self, tenant: str) -> None:
        left = self.counts.get(tenant, 0) - 1
        if left > 0:
            self.counts[tenant] = left
        else:
            self.counts.pop(tenant, None)


def in_flight(resources: Resources) -> InFlight:
    tracker = resources.extras.get("gateway_in_flight")
    if not isinstance(tracker, InFlight):
        tracker = resources.extras["gateway_in_flight"] = InFlight()
    return tracker
