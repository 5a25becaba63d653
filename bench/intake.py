"""Intake throughput: requests/s and p50/p99 latency of small forget-request POSTs on loopback.

Starts ``obliviate``'s app under uvicorn (SQLite + embedded Redis in a temporary data directory, no
worker, no model), then fires small POSTs with unique Idempotency-Keys from an asyncio client at a
fixed concurrency for a bounded time. Prints a table and writes JSON.

    .venv/bin/python bench/intake.py --seconds 10 --concurrency 32 --out bench/out/intake.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

SERVER = """
import asyncio, sys, uvicorn
from service.app import create_app
from service.auth.keys import create_api_key
from service.db import create_engine, migrate
from service.settings import Settings
from sqlalchemy.ext.asyncio import async_sessionmaker

settings = Settings(data_dir=sys.argv[1], run_migrations=True, redis_url=sys.argv[3] or None)

async def make_key():
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    async with async_sessionmaker(engine)() as session:
        _, key = await create_api_key(session, tenant="bench", role="submitter")
        await session.commit()
    await engine.dispose()
    return key

print(asyncio.run(make_key()), flush=True)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False, loop="uvloop", http="httptools")
"""

BODY = {
    "subject": "Bench Subject",
    "corpus": [{"text": "A short document about a fictional person who lives in a fictional town."}],
    "hints": [{"term": "Fictional Person", "kind": "person"}],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _load(base: str, key: str, seconds: float, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def user() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
                started = time.perf_counter()
                response = await client.post("/v1/forget-requests", json=BODY, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    errors += 1

        await asyncio.gather(*[user() for _ in range(concurrency)])
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/out/intake.json"))
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="obliviate-bench-"))
    port = _free_port()
    env = {**os.environ, "OBLIVIATE_ENGINE": "none"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data_dir), str(port), os.environ.get("REDIS_URL", "")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        key = server.stdout.readline().strip()
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(_load(base, key, args.warmup, args.concurrency))
        started = time.perf_counter()
        latencies, errors = asyncio.run(_load(base, key, args.seconds, args.concurrency))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(15)
    latencies.sort()
    result = {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "concurrency": args.concurrency,
        "database": "sqlite",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{'requests':>10} {'errors':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  concurrency")
    print(
        f"{result['requests']:>10} {errors:>7} {result['requests_per_s']:>9} "
        f"{result['p50_ms']:>8} {result['p99_ms']:>8}  {args.concurrency}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
