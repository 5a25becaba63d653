"""Hot swap under load: ≥100 deploys while several clients stream and poll the served alias.

Each adapter gives a distinct greedy answer, so a response that mixed two versions (or ran on another
version than its ``system_fingerprint`` says) would not match that version's answer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["Ada Lovelace wrote", "Harry walked to", "The quick brown", "Prices rise", "Numbers:"]
SWAPS = 100
MAX_TOKENS = 8


def _answer(client: openai.OpenAI, model: str, prompt: str, *, stream: bool) -> tuple[str, str]:
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        out = client.chat.completions.create(
            model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        return out.system_fingerprint or "", out.choices[0].message.content or ""
    fingerprints, parts = set(), []
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
    ):
        fingerprints.add(chunk.system_fingerprint)
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    assert len(fingerprints) == 1, f"one stream, several versions: {fingerprints}"
    return fingerprints.pop() or "", "".join(parts)


def _deploy(http: httpx.Client, rid: str) -> dict[str, Any]:
    response = http.post("/v1/deployments", json={"request_id": rid})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_hot_swap_under_concurrent_load(gateway_factory: Any, tiny_model: tuple[Path, list[Path]]) -> None:
    # A load test: one tenant makes far more requests than the default per-tenant limits allow.
    gw: LiveGateway = gateway_factory(
        engine_adapter_capacity=16,
        engine_max_batch=8,
        engine_max_queue=256,
        gateway_requests_per_minute=1_000_000,
        gateway_tokens_per_minute=100_000_000,
    )
    adapters = tiny_model[1]
    key = gw.key("acme", "operator")  # the answers of "base" are part of the expected table
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60)
    http = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    # The answer of every version (by fingerprint), through the per-request model names.
    probe_requests = gw.ready_requests(adapters)
    expected_by_prompt: dict[str, dict[str, str]] = {}
    for prompt in PROMPTS:
        table = dict([_answer(client, "base", prompt, stream=False)])
        for rid in probe_requests:
            fp, text = _answer(client, f"adapter:{rid}", prompt, stream=False)
            table[fp] = text
        expected_by_prompt[prompt] = table
    prompt = max(PROMPTS, key=lambda p: len(set(expected_by_prompt[p].values())))
    expected = expected_by_prompt[prompt]
    assert len(expected) == len(adapters) + 1
    assert len(set(expected.values())) >= 3, f"adapters should answer differently: {expected}"

    # Deployable requests: each deploy is a new immutable version (same files, cycled).
    queue = gw.ready_requests([adapters[i % len(adapters)] for i in range(SWAPS)])

    stop = threading.Event()
    results: list[tuple[str, str]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        with openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60) as c:
            i = 0
            while not stop.is_set():
                try:
                    outcome = _answer(c, "chat", prompt, stream=(worker + i) % 2 == 0)
                except BaseException as exc:  # every failure counts; none is allowed
                    with lock:
                        failures.append(exc)
                    return
                with lock:
                    results.append(outcome)
                i += 1

    workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(4)]
    for t in workers:
        t.start()
    flip_delays: list[float] = []
    deploy_times: list[float] = []
    started = time.monotonic()
    try:
        for rid in queue:
            t_deploy = time.monotonic()
            deployed = _deploy(http, rid)
            deploy_times.append(time.monotonic() - t_deploy)
            fp = deployed["fingerprint"]
            # The alias serves the new version as soon as the deploy call returns (within 1 s).
            t0 = time.monotonic()
            while True:
                got_fp, text = _answer(client, "chat", prompt, stream=False)
                if got_fp == fp:
                    break
                assert time.monotonic() - t0 < 1.0, "the alias did not flip within 1 s"
            flip_delays.append(time.monotonic() - t0)
            assert text == expected[fp]
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=60)
    deploy_times.sort()
    print(
        f"{SWAPS} swaps in {time.monotonic() - started:.1f}s, {len(results)} responses under load; deploy call "
        f"p50 {deploy_times[len(deploy_times) // 2] * 1000:.0f} ms, max {deploy_times[-1] * 1000:.0f} ms"
    )
    assert not failures, failures[:3]
    assert len(results) >= 50, len(results)
    for fp, text in results:
        assert fp in expected, fp
        assert text == expected[fp], (fp, text, expected[fp])
    seen = {fp for fp, _ in results}
    assert len(seen) >= 3, "the load should have run on several versions"

    # History: 100 versions in one lineage, each composed on the previous.
    listing = http.get("/v1/deployments").json()
    chat = next(d for d in listing["data"] if d["alias"] == "chat")
    assert chat["version"] == SWAPS
    versions = {v["id"]: v for v in listing["versions"]}
    assert versions[chat["version_id"]]["parent"] is not None

    # Rollback restores the previous version's answers.
    before = chat["fingerprint"]
    parent = versions[versions[chat["version_id"]]["parent"]]
    rolled = http.post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == SWAPS - 1
    fp, text = _answer(client, "chat", prompt, stream=True)
    assert fp == parent["fingerprint"] and text == expected[fp]
    assert fp != before or expected[fp] == expected[before]
    client.close()
    http.close()
