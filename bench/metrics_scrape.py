"""What a Prometheus scrape of ``/metrics`` costs with 1,000 forget requests in SQLite.

Builds the app in-process (SQLite + embedded Redis in a temporary data directory, no model, no
worker; the app's background loops slowed to once an hour), writes 1,000 requests across every
status with due dates spread over +-20 days, then times ``GET /metrics`` through the ASGI interface
(no network) in three ways, side by side (wall clock, and this process's CPU time per scrape):

- ``cached``: the default ``metrics_cache_s=2`` (what a 15 s scrape interval, or several scrapers
  hitting one replica, mostly sees between refreshes);
- ``uncached``: ``metrics_cache_s=0``, the database statement and the Redis reads on every scrape;
- ``naive``: for comparison, loading every request row and counting in Python (what a per-row
  computation, as the listing's ``to_out`` does, would cost), without the rest of the scrape.

    .venv/bin/python bench/metrics_scrape.py --requests 1000 --scrapes 300 --out bench/out/metrics_scrape.json

``--baseline REV`` also runs this script over the code and schema of git revision ``REV`` (exported
with ``git archive``, run in a child process), alternating with the working tree's code ``--rounds``
times, so a change is measured before and after on one machine in one run (on a shared machine the
load moves between runs more than the change does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
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


async def time_scrapes(client: httpx.AsyncClient, n: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock ms per scrape; ``cpu`` gets this process's CPU ms per scrape (all its threads, the
    aiosqlite one included; not the embedded Redis server), which a loaded machine inflates far less."""
    out = []
    for _ in range(n):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = await client.get("/metrics")
        out.append((time.perf_counter() - started) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - started_cpu) * 1000)
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
                    cpu: list[float] = []
                    times = await time_scrapes(client, scrapes, cpu)
                    body = (await client.get("/metrics")).text
                results[label] = {
                    "cpu_p50_ms": round(statistics.median(cpu), 3),
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
                        "cpu_p50_ms": None,
                        "p50_ms": round(statistics.median(times), 3),
                        "p90_ms": round(pct(times, 0.9), 3),
                        "p99_ms": round(pct(times, 0.99), 3),
                        "scrapes": len(times),
                        "bytes": None,
                    }
    return results


def run_baseline(rev: str, requests: int, scrapes: int) -> dict[str, Any]:
    """This script over ``rev``'s code and schema, in a child process."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        # This script (the same measurement) over that revision's code and schema.
        shutil.copy(Path(__file__), Path(tmp) / "bench" / "metrics_scrape.py")
        out = Path(tmp) / "baseline.json"
        child = subprocess.run(
            [
                sys.executable,
                "bench/metrics_scrape.py",
                "--requests",
                str(requests),
                "--scrapes",
                str(scrapes),
                "--out",
                str(out),
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if child.returncode:
            raise SystemExit(f"the bench at {rev} failed:\n{child.stderr[-4000:]}")
        return dict(json.loads(out.read_text(encoding="utf-8"))["results"])


def show(title: str, results: dict[str, Any]) -> None:
    print(title)
    print(f"  {'mode':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'cpu p50':>8} {'n':>5}")
    for mode, row in results.items():
        cpu = "" if row.get("cpu_p50_ms") is None else f"{row['cpu_p50_ms']:.2f}"
        print(
            f"  {mode:<10} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} {row['p99_ms']:>8.2f} {cpu:>8} "
            f"{row['scrapes']:>5}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--baseline", default=None, help="a git revision to measure side by side")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs (with --baseline)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/metrics_scrape.json"))
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    print(f"/metrics scrape, {args.requests} requests in SQLite (in-process ASGI, no network)")
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds if args.baseline else 1):
        pair: dict[str, Any] = {}
        if args.baseline:
            pair["before"] = run_baseline(args.baseline, args.requests, args.scrapes)
            show(f"round {index + 1}, before ({args.baseline}):", pair["before"])
        pair["after"] = asyncio.run(run(args.requests, args.scrapes))
        show(
            f"round {index + 1}, {'after (working tree)' if args.baseline else 'working tree'}:",
            pair["after"],
        )
        rounds.append(pair)
    report = {
        "bench": "metrics_scrape",
        "requests": args.requests,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "baseline": args.baseline,
        "results": rounds[-1]["after"],
        "rounds": rounds,
    }
    if args.baseline:
        for side in ("before", "after"):
            p50s = [pair[side]["uncached"]["p50_ms"] for pair in rounds]
            cpus = [pair[side]["uncached"]["cpu_p50_ms"] for pair in rounds]
            print(
                f"uncached p50 {side}: median over rounds {statistics.median(p50s):.2f} ms wall {p50s}, "
                f"{statistics.median(cpus):.2f} ms CPU {cpus}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
