"""Gateway hardening (issue 11): one tenant's bad parameters vs. another tenant's batch, and the event
loop while a large prompt is tokenized.

Starts ``obliviate``'s app under uvicorn in a subprocess (SQLite + embedded Redis in a temporary data
directory, the in-process engine on a random tiny Llama built on the spot, no worker), then

1. ``rounds`` times: tenant B sends 8 chat requests (temperature 0.8, distinct seeds) while tenant A
   sends one with parameters that pass OpenAI's ranges but used to break the shared batch (``top_p``
   1e-50 with a temperature), and once with ``seed`` 2**64. Reports how many of B's requests succeeded
   and what A got.
2. posts one large completion prompt (``--prompt-mb`` megabytes) while probing ``/health/live`` every
   50 ms; reports the worst probe latency and what the large request got.

    .venv/bin/python bench/gateway_hardening.py --against e62326a --out bench/out/gateway_hardening.json

``--against REF`` first measures the ``service`` and ``gpu_runtime`` code of git revision REF (exported
to a temporary directory), then the working tree, under the same load, and reports both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

SERVER = """
import asyncio, sys, uvicorn
from pathlib import Path
from service.app import create_app
from service.auth.keys import create_api_key
from service.db import create_engine, migrate
from service.settings import Settings
from sqlalchemy.ext.asyncio import async_sessionmaker
from gpu_runtime.engine.testing import build_model_with_adapters

data_dir = Path(sys.argv[1])
model_dir, _ = build_model_with_adapters(data_dir / "tiny", 0)
values = dict(data_dir=data_dir, run_migrations=True, redis_url=sys.argv[3] or None, engine="inprocess",
              base_model=model_dir, device="cpu", workers=0, engine_max_batch=16, engine_max_tokens=16)
if "gateway_max_prompt_chars" in Settings.model_fields:
    # The working tree caps prompts by characters; lift the cap so both revisions tokenize the prompt.
    values["gateway_max_prompt_chars"] = 100_000_000
    values["gateway_tokens_per_minute"] = 1_000_000_000
settings = Settings(**values)

async def make_keys():
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    keys = []
    async with async_sessionmaker(engine)() as session:
        for tenant in ("tenant-a", "tenant-b"):
            _, key = await create_api_key(session, tenant=tenant, role="admin")
            keys.append(key)
        await session.commit()
    await engine.dispose()
    return keys

print(" ".join(asyncio.run(make_keys())), flush=True)
import torch
torch.set_num_threads(1)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""

MESSAGES = [{"role": "user", "content": "Ada Lovelace wrote"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batch_round(base: str, key_a: str, key_b: str, bad: dict[str, Any]) -> tuple[int, int]:
    """8 requests of tenant B around one of tenant A's; returns (B's successes, A's status)."""
    normal = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.8}

    def call(i: int) -> int:
        key = key_a if i == 4 else key_b
        body = {**normal, **bad} if i == 4 else {**normal, "seed": i}
        with httpx.Client(base_url=base, timeout=120) as client:
            response = client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        codes = list(pool.map(call, range(9)))
    a = codes.pop(4)
    return sum(1 for c in codes if c == 200), a


def _large_prompt(base: str, key: str, megabytes: float) -> dict[str, Any]:
    prompt = "Ada Lovelace wrote notes on the engine. " * int(megabytes * 1_000_000 / 40)
    outcome: dict[str, Any] = {}

    def big() -> None:
        started = time.perf_counter()
        with httpx.Client(base_url=base, timeout=600) as client:
            response = client.post(
                "/v1/completions",
                json={"model": "chat", "prompt": prompt, "max_tokens": 4},
                headers={"Authorization": f"Bearer {key}"},
            )
        outcome["status"] = response.status_code
        outcome["code"] = (response.json().get("error") or {}).get("code") if response.content else None
        outcome["seconds"] = round(time.perf_counter() - started, 2)

    thread = threading.Thread(target=big)
    thread.start()
    probes: list[float] = []
    with httpx.Client(base_url=base, timeout=600) as probe:
        while thread.is_alive():
            started = time.perf_counter()
            probe.get("/health/live")
            probes.append(time.perf_counter() - started)
            time.sleep(0.05)
    thread.join()
    return {
        "prompt_mb": megabytes,
        "large_request_status": outcome.get("status"),
        "large_request_code": outcome.get("code"),
        "large_request_s": outcome.get("seconds"),
        "live_probes": len(probes),
        "live_worst_ms": round(max(probes) * 1000, 1) if probes else None,
    }


def _measure(args: argparse.Namespace, source: Path | None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="obliviate-bench-"))
    port = _free_port()
    env = dict(os.environ)
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
        key_a, key_b = server.stdout.readline().split()
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        _batch_round(base, key_a, key_b, {})  # warm-up
        top_p = [
            _batch_round(base, key_a, key_b, {"top_p": 1e-50, "temperature": 1.0}) for _ in range(args.rounds)
        ]
        seed = [_batch_round(base, key_a, key_b, {"seed": 2**64}) for _ in range(args.rounds)]
        large = _large_prompt(base, key_a, args.prompt_mb)
    finally:
        server.terminate()
        server.wait(30)
    return {
        "code": args.against if source is not None else "working tree",
        "rounds": args.rounds,
        "b_ok_with_tiny_top_p": f"{sum(ok for ok, _ in top_p)}/{8 * args.rounds}",
        "a_status_tiny_top_p": sorted({a for _, a in top_p}),
        "b_ok_with_big_seed": f"{sum(ok for ok, _ in seed)}/{8 * args.rounds}",
        "a_status_big_seed": sorted({a for _, a in seed}),
        **large,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }


def _export(ref: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="obliviate-bench-ref-"))
    archive = subprocess.run(
        ["git", "archive", ref, "service", "gpu_runtime"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-mb", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/gateway_hardening.json"))
    parser.add_argument("--against", metavar="REF", help="also measure this git revision, first")
    args = parser.parse_args()
    results = []
    if args.against:
        results.append(_measure(args, _export(args.against)))
    results.append(_measure(args, None))
    header = f"{'code':>14} {'B ok (top_p)':>13} {'A':>6} {'B ok (seed)':>12} {'A':>6} {'MB':>5} {'big req':>14} {'live worst ms':>14}"
    print(header)
    for r in results:
        big = f"{r['large_request_status']} {r['large_request_s']}s"
        print(
            f"{str(r['code'])[:14]:>14} {r['b_ok_with_tiny_top_p']:>13} {r['a_status_tiny_top_p']!s:>6} "
            f"{r['b_ok_with_big_seed']:>12} {r['a_status_big_seed']!s:>6} {r['prompt_mb']:>5} {big:>14} "
            f"{r['live_worst_ms']:>14}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
