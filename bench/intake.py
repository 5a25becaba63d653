"""Intake throughput: requests/s and p50/p99 latency of small forget-request POSTs on loopback.

Starts ``obliviate``'s app under uvicorn (SQLite + embedded Redis in a temporary data directory, no
worker, no model), then fires small POSTs with unique Idempotency-Keys from an asyncio client at a
fixed concurrency for a bounded time. Prints a table and writes JSON.

    .venv/bin/python bench/intake.py --seconds 10 --concurrency 32 --out bench/out/intake.json

``--against REF`` first measures the service code of git revision REF (exported to a temporary
directory), then the working tree, back to back under the same load, and reports both.
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


def _measure(args: argparse.Namespace, source: Path | None) -> dict[str, object]:
    """Start a server (from ``source``, or this checkout), load it, stop it; returns the numbers."""
    data_dir = Path(tempfile.mkdtemp(prefix="obliviate-bench-"))
    port = _free_port()
    env = {**os.environ, "OBLIVIATE_ENGINE": "none"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data_dir), str(port), os.environ.get("REDIS_URL", "")],
        stdout=subprocess.PIPE,
        env=env,
        cwd=source,
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
        load = _load_raw if args.client == "raw" else _load
        asyncio.run(load(base, key, args.warmup, args.concurrency))
        started = time.perf_counter()
        latencies, errors = asyncio.run(load(base, key, args.seconds, args.concurrency))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(15)
    latencies.sort()
    return {
        "code": args.against if source is not None else "working tree",
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 2),
        "concurrency": args.concurrency,
        "client": args.client,
        "database": "sqlite",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }


def _export(ref: str) -> Path:
    """The ``service`` package of git revision ``ref`` in a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="obliviate-bench-ref-"))
    archive = subprocess.run(["git", "archive", ref, "service"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


async def _load_raw(base: str, key: str, seconds: float, concurrency: int) -> tuple[list[float], int]:
    """The same load from a minimal HTTP/1.1 keep-alive client on raw sockets.

    httpx spends about a millisecond of CPU per request; on two cores shared with the server the
    load generator, not the server, was the limit. This client parses only the status line and
    Content-Length.
    """
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(BODY).encode()
    head = (
        f"POST /v1/forget-requests HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nIdempotency-Key: "
    ).encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def user() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(head + uuid.uuid4().hex.encode() + b"\r\n\r\n" + payload)
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if header[9:12] != b"202":
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*[user() for _ in range(concurrency)])
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/out/intake.json"))
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator")
    parser.add_argument("--against", metavar="REF", help="also measure this git revision, first")
    args = parser.parse_args()
    results = []
    if args.against:
        results.append(_measure(args, _export(args.against)))
    results.append(_measure(args, None))
    print(f"{'code':>14} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  load")
    for result in results:
        print(
            f"{str(result['code'])[:14]:>14} {result['requests']:>9} {result['errors']:>7} "
            f"{result['requests_per_s']:>8} {result['p50_ms']:>8} {result['p99_ms']:>8}  "
            f"{result['load_average']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
