"""Stage durations and attempts, counted by every worker in one Redis hash and read at scrape time.

Workers are separate processes (often on other hosts), so they do not serve metrics themselves: each
finished stage job adds to ``obliviate:metrics:stages`` (a bucket count, the sum and the count of its
duration, and one attempt by outcome) in one pipelined round trip, and any API replica's ``/metrics``
turns the hash into a histogram and a counter. The numbers are cumulative for as long as Redis keeps
them, the same on every replica (aggregate with ``max``, not ``sum``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("obliviate.metrics")

STAGES_KEY = "obliviate:metrics:stages"
#: Stage run times run from seconds (the demo model) to hours (a 7B model).
BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)


def _bucket(seconds: float) -> str:
    for bound in BUCKETS:
        if seconds <= bound:
            return f"{bound:g}"
    return "+Inf"


async def record(redis: Any, stage: str, outcome: str, seconds: float | None) -> None:
    """Count one attempt of ``stage`` (and its duration, when it ran). Best effort: never raises."""
    if redis is None:
        return
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hincrby(STAGES_KEY, f"attempts|{stage}|{outcome}", 1)
        if seconds is not None:
            pipe.hincrby(STAGES_KEY, f"bucket|{stage}|{_bucket(seconds)}", 1)
            pipe.hincrbyfloat(STAGES_KEY, f"sum|{stage}", float(seconds))
        await pipe.execute()
    except Exception as exc:
        logger.debug("stage metrics not recorded: %s", type(exc).__name__)


@dataclass
class Observed:
    """What the job says about itself; ``outcome`` defaults to ``error`` if the body raised."""

    outcome: str | None = None
    ran: bool = True
    started: float = field(default_factory=time.monotonic)


@contextlib.asynccontextmanager
async def observe(redis: Any, stage: str) -> AsyncIterator[Observed]:
    """Time a stage job and count it: ``stale`` jobs (nothing ran) count as attempts without a duration."""
    seen = Observed()
    try:
        yield seen
    except BaseException as exc:
        outcome = "retry" if type(exc).__name__ == "Retry" else "error"
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "CancelledError":
            outcome = "interrupted"
        await record(redis, stage, outcome, time.monotonic() - seen.started)
        raise
    outcome = seen.outcome or "ok"
    ran = seen.ran and outcome != "stale"
    await record(redis, stage, outcome, time.monotonic() - seen.started if ran else None)


@dataclass
class StageStats:
    """A parsed snapshot of the hash: per stage, bucket counts (non-cumulative), sum; attempts by outcome."""

    buckets: dict[str, dict[str, int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)

    def histogram(self, stage: str) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` buckets ending with ``+Inf``, and the sum."""
        counts = self.buckets.get(stage, {})
        running, out = 0, []
        for bound in BUCKETS:
            running += counts.get(f"{bound:g}", 0)
            out.append((f"{bound:g}", float(running)))
        running += counts.get("+Inf", 0)
        out.append(("+Inf", float(running)))
        return out, self.sums.get(stage, 0.0)


def parse(raw: dict[Any, Any]) -> StageStats:
    stats = StageStats()
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        parts = name.split("|")
        try:
            if parts[0] == "attempts" and len(parts) == 3:
                stats.attempts[(parts[1], parts[2])] = int(text)
            elif parts[0] == "bucket" and len(parts) == 3:
                stats.buckets.setdefault(parts[1], {})[parts[2]] = int(text)
            elif parts[0] == "sum" and len(parts) == 2:
                value_f = float(text)
                stats.sums[parts[1]] = value_f if math.isfinite(value_f) else 0.0
        except ValueError:
            continue
    return stats
