"""A per-tenant budget of verification prompts per minute, shared by every replica through Redis.

Verification shows what a model said before unlearning; unmetered, it would be a cheap oracle for
probing what other requests removed. Fixed one-minute windows are enough for that purpose.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from service.core.errors import RateLimited

WINDOW_S = 60


async def spend(redis: Redis, tenant: str, prompts: int, limit: int) -> None:
    """Take ``prompts`` from the tenant's budget for this minute, or raise 429 with Retry-After."""
    now = time.time()
    window = int(now // WINDOW_S)
    key = f"obliviate:verify:{tenant}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incrby(key, prompts)
        pipe.expire(key, WINDOW_S * 2)
        used, _ = await pipe.execute()
    if int(used) > limit:
        # Give the prompts back: a refused call should not eat the budget of the next one.
        await redis.decrby(key, prompts)
        raise RateLimited(
            f"Verification budget exhausted: {limit} prompts per minute per tenant",
            retry_after=(window + 1) * WINDOW_S - now,
            code="verification_rate_limited",
        )
