"""Gateway through the ``openai-upstream`` backend vs. calling the upstream directly, side by side.

Starts a fake vLLM upstream (``tests/support/fake_vllm.py``, with a per-token delay that stands in for
decoding) and the Obliviate app under uvicorn with ``OBLIVIATE_SERVING_BACKEND=openai-upstream``, each
in its own process (SQLite + embedded Redis in a temporary data directory; no model, no worker). Then
``--concurrency`` clients each alternate a request straight to the upstream (model = its base model)
and the same request through the gateway (model ``chat``, which serves the base model: nothing is
deployed), so both paths see the same machine load. Reports p50/p99 latency of both and the overhead
the gateway adds (auth, tenant limits in Redis, alias resolution, one more HTTP hop), for non-streamed
answers and for streams (time to the first content chunk and to the end).

    .venv/bin/python bench/serving_upstream.py --out bench/out/serving_upstream.json

Target (issue 12): the gateway adds at most 5% at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import asyncio, sys, uvicorn
from pathlib import Path
from service.app import create_app
from service.auth.keys import create_api_key
from service.db import create_engine, migrate
from service.settings import Settings
from sqlalchemy.ext.asyncio import async_sessionmaker

data_dir, port, upstream = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
settings = Settings(
    data_dir=data_dir, database_url=None, redis_url=None, workers=0, serving_backend="openai-upstream",
    upstream_urls=[upstream], gateway_requests_per_minute=10_000_000, gateway_tokens_per_minute=1_000_000_000,
    gateway_max_in_flight_per_tenant=10_000, engine_max_tokens=64,
)

async def make_key():
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    async with async_sessionmaker(engine)() as session:
        _, key = await create_api_key(session, tenant="bench", role="admin")
        await session.commit()
    await engine.dispose()
    return key

print(asyncio.run(make_key()), flush=True)
uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

PROMPT = " ".join(f"word{i}" for i in range(300))  # long enough for --tokens up to ~300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index] * 1000


async def _one(
    client: httpx.AsyncClient, url: str, key: str | None, model: str, tokens: int, stream: bool
) -> tuple[float, float]:
    """(seconds to the first content, seconds to the end) of one chat completion."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    if not stream:
        response = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        assert response.json()["usage"]["completion_tokens"] == tokens
        done = time.perf_counter() - started
        return done, done
    first = None
    chunks = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            choices = json.loads(line[5:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
    done = time.perf_counter() - started
    assert chunks == tokens, chunks
    return first or done, done


async def _measure(
    gateway: str, upstream: str, key: str, base: str, args: argparse.Namespace, stream: bool
) -> dict[str, Any]:
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
    limits = httpx.Limits(
        max_connections=args.concurrency * 4, max_keepalive_connections=args.concurrency * 4
    )
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker(index: int, count: int, record: bool) -> None:
            for i in range(count):
                # Alternate which path goes first so neither always runs on a warmer machine.
                order = ("direct", "gateway") if (i + index) % 2 == 0 else ("gateway", "direct")
                for path in order:
                    if path == "direct":
                        sample = await _one(client, upstream, None, base, args.tokens, stream)
                    else:
                        sample = await _one(client, gateway, key, "chat", args.tokens, stream)
                    if record:
                        results[path].append(sample)

        await asyncio.gather(*(worker(i, args.warmup, False) for i in range(args.concurrency)))
        per_worker = max(1, args.requests // args.concurrency)
        await asyncio.gather(*(worker(i, per_worker, True) for i in range(args.concurrency)))
    out: dict[str, Any] = {"stream": stream, "requests_per_path": len(results["direct"])}
    for path, samples in results.items():
        ends = [s[1] for s in samples]
        firsts = [s[0] for s in samples]
        out[path] = {
            "p50_ms": round(_pct(ends, 50), 2),
            "p99_ms": round(_pct(ends, 99), 2),
            "first_p50_ms": round(_pct(firsts, 50), 2),
            "first_p99_ms": round(_pct(firsts, 99), 2),
        }
    for stat in ("p50_ms", "p99_ms", "first_p50_ms", "first_p99_ms"):
        direct, through = out["direct"][stat], out["gateway"][stat]
        out[f"added_{stat}"] = round(through - direct, 2)
        out[f"added_{stat.replace('_ms', '')}_pct"] = round(100 * (through - direct) / direct, 2)
    return out


def _wait(url: str, check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="measured requests per path (and per mode)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests per client first")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="completion tokens per request")
    parser.add_argument(
        "--token-delay", type=float, default=0.01, help="upstream seconds per token (decoding)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("OBLIVIATE_")}
    env["PYTHONPATH"] = str(ROOT)
    processes: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="obliviate-bench-upstream-") as tmp:
            up_port, gw_port = _free_port(), _free_port()
            delay = ["--token-delay", str(args.token_delay)]
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.support.fake_vllm", "--port", str(up_port), *delay],
                    cwd=ROOT,
                    env=env,
                    text=True,
                )
            )
            upstream = f"http://127.0.0.1:{up_port}"
            _wait(upstream, lambda: httpx.get(upstream + "/v1/models").status_code == 200, 30, "upstream")
            base = httpx.get(upstream + "/v1/models").json()["data"][0]["id"]
            gateway_proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, tmp, str(gw_port), upstream],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
            )
            processes.append(gateway_proc)
            assert gateway_proc.stdout is not None
            key = gateway_proc.stdout.readline().strip()
            gateway = f"http://127.0.0.1:{gw_port}"

            def chat_ok() -> bool:
                response = httpx.post(
                    gateway + "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                    headers={"Authorization": f"Bearer {key}"},
                )
                return response.status_code == 200

            _wait(gateway, chat_ok, 60, "gateway")
            runs = [
                asyncio.run(_measure(gateway, upstream, key, base, args, stream)) for stream in (False, True)
            ]
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
    }
    for run in runs:
        mode = "stream" if run["stream"] else "non-stream"
        print(
            f"{mode:>10}: direct p50 {run['direct']['p50_ms']:.1f} ms p99 {run['direct']['p99_ms']:.1f} ms | "
            f"gateway p50 {run['gateway']['p50_ms']:.1f} ms p99 {run['gateway']['p99_ms']:.1f} ms | "
            f"added p50 {run['added_p50_ms']:+.1f} ms ({run['added_p50_pct']:+.1f}%), "
            f"p99 {run['added_p99_ms']:+.1f} ms ({run['added_p99_pct']:+.1f}%), "
            f"first chunk p50 {run['added_first_p50_ms']:+.1f} ms"
        )
    print(json.dumps(report["machine"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
