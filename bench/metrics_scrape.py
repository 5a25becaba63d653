"""What a Prometheus scrape of ``/metrics`` costs with 1,000 forget requests in SQLite.

Builds the app in-process (SQLite + embedded Redis in a temporary data directory, no model, no
worker; the app's background loops slowed to once an hour), writes 1,000 requests across every status with due dates spread over +-20 days, then times
``GET /metrics`` through the ASGI interface (no network) in three ways, side by side:

- ``cached``: the default ``metrics_cache_s=2`` (what a 15 s scrape interval, or several scrapers
  hitting one replica, mostly sees between refreshes);
- ``uncached``: ``metrics_cache_s=0``, the two aggregate queries and the Redis pipeline on every scrape;
- ``naive``: for comparison, loading every request row and counting in Python (what a per-row
  computation, as the listing's ``to_out`` does, would cost), without the rest of the scrape.

    .venv/bin/python bench/metrics_scrape.py --requests 1000 --scrapes 300 --out bench/out/metrics_scrape.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.app import create_app
from service.db.base import utcnow
from service.forget.lifecycle import Status
from service.settings import Settings


async def fill(app: Any, count: int) -> None:
    from service.forget.models import ForgetRequest
    from service.forget.service import new_request_id

    resources = app.state.resources
    statuses = list(Status)
    now = utcnow()
    async with resources.sessionmaker() as session, session.begin():
        for i in range(count):
            session.add(
                ForgetRequest(
                    id=new_request_id(),
                    tenant=f"tenant-{i % 7}",
                    subject="bench subject",
                    status=statuses[i % len(statuses)].value,
                    attempt=1,
                    gates=[],
                    options={},
                    meta={},
                    probes=[],
                    corpus_hash="0" * 64,
                    corpus_bytes=100,
                    document_count=1,
                    hint_count=0,
                    stages={},
                    progress=0.0,
                    metrics={},
                    decisions=[],
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                    heartbeat_at=now - timedelta(seconds=i % 30),
                    due_at=now + timedelta(hours=(i % 960) - 480),
                )
            )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def time_scrapes(client: httpx.AsyncClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get("/metrics")
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return out


async def naive(app: Any, n: int) -> list[float]:
    from sqlalchemy import select

    from service.forget.models import ForgetRequest

    resources = app.state.resources
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with resources.sessionmaker() as session:
            rows = (await session.scalars(select(ForgetRequest))).all()
        counts: dict[str, int] = {}
        now = utcnow()
        overdue = 0
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
            overdue += int(row.due_at <= now)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(requests: int, scrapes: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for label, cache_s in (("cached", 2.0), ("uncached", 0.0)):
            settings = Settings(
                data_dir=data,
                engine="none",
                workers=0,
                metrics_public=True,
                metrics_cache_s=cache_s,
                # The app's own loops (review gates, sweeper, relay) would otherwise work through the
                # 1,000 synthetic requests on the same event loop while the scrapes are timed.
                review_interval_s=3600,
                sweep_interval_s=3600,
                relay_interval_s=3600,
            )
            app = create_app(settings)
            async with app.lifespan():
                if label == "cached":
                    await fill(app, requests)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                    await time_scrapes(client, 20)  # warm: imports, statement compilation, first refresh
                    times = await time_scrapes(client, scrapes)
                    body = (await client.get("/metrics")).text
                results[label] = {
                    "p50_ms": round(statistics.median(times), 3),
                    "p90_ms": round(pct(times, 0.9), 3),
                    "p99_ms": round(pct(times, 0.99), 3),
                    "scrapes": scrapes,
                    "bytes": len(body),
                }
                if label == "uncached":
                    await naive(app, 5)
                    times = await naive(app, max(20, scrapes // 5))
                    results["naive"] = {
                        "p50_ms": round(statistics.median(times), 3),
                        "p90_ms": round(pct(times, 0.9), 3),
                        "p99_ms": round(pct(times, 0.99), 3),
                        "scrapes": len(times),
                        "bytes": None,
                    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/out/metrics_scrape.json"))
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    results = asyncio.run(run(args.requests, args.scrapes))
    print(f"/metrics scrape, {args.requests} requests in SQLite (in-process ASGI, no network)")
    print(f"{'mode':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'n':>5}")
    for mode, row in results.items():
        print(
            f"{mode:<10} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['scrapes']:>5}"
        )
    report = {
        "bench": "metrics_scrape",
        "requests": args.requests,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
