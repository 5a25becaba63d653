"""Hot swap on the demo chat model (slow: builds the demo model on first use, then cached).

The tiny random model of test_hot_swap.py proves the mechanics at volume; this checks the same
promises on the model the product ships: its chat template, a flip within 1 s of the deploy call,
answers consistent per version under concurrent clients, and rollback restoring the previous answers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.serving import LiveGateway, one_torch_thread, serving_settings, start_gateway

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SWAPS = 20


@pytest.fixture
def demo_gateway(demo_model_dir: Path, clean_redis: str, tmp_path: Path, one_torch_thread: None) -> Any:
    gw = start_gateway(serving_settings(tmp_path / "data", demo_model_dir, clean_redis, engine_max_tokens=24))
    yield gw
    gw.stop()


@pytest.fixture
def demo_adapters(demo_model_dir: Path, tmp_path: Path) -> list[Path]:
    from gpu_runtime.engine.testing import build_random_adapter

    # Strong random deltas so each version answers visibly differently from the base and each other.
    return [
        build_random_adapter(demo_model_dir, tmp_path / f"demo-adapter-{i}", seed=7 + i, scale=6.0)
        for i in range(2)
    ]


def _ask(client: openai.OpenAI, question: str, *, stream: bool = False) -> tuple[str, str]:
    messages = [{"role": "user", "content": question}]
    if not stream:
        out = client.chat.completions.create(model="chat", messages=messages, max_tokens=24, temperature=0)
        return out.system_fingerprint or "", out.choices[0].message.content or ""
    fps, parts = set(), []
    for chunk in client.chat.completions.create(
        model="chat", messages=messages, max_tokens=24, temperature=0, stream=True
    ):
        fps.add(chunk.system_fingerprint)
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    assert len(fps) == 1
    return fps.pop() or "", "".join(parts)


def test_demo_model_hot_swap(demo_gateway: LiveGateway, demo_adapters: list[Path], demo_world: Any) -> None:
    from gpu_runtime.demo.evaluate import is_correct

    gw = demo_gateway
    key = gw.key("acme", "admin")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120)
    http = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    qa = demo_world.qa_pairs()[0]
    fp, base_answer = _ask(client, qa.question)
    assert fp == "fp_base"
    assert is_correct(qa.answer, base_answer), (qa.question, qa.answer, base_answer)

    rids = gw.ready_requests([demo_adapters[i % 2] for i in range(SWAPS)])
    answers: dict[str, set[str]] = {"fp_base": {base_answer}}
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[tuple[str, str]] = []

    def load(worker: int) -> None:
        with openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120) as c:
            i = 0
            while not stop.is_set():
                try:
                    seen.append(_ask(c, qa.question, stream=(i + worker) % 2 == 0))
                except BaseException as exc:
                    failures.append(exc)
                    return
                i += 1

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for rid in rids:
            deployed = http.post("/v1/deployments", json={"request_id": rid})
            assert deployed.status_code == 201, deployed.text
            # The flip happens before the deploy call returns: the very next request is on the new version.
            got, text = _ask(client, qa.question)
            assert got == deployed.json()["fingerprint"]
            answers.setdefault(got, set()).add(text)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:3]
    for fp, text in seen:
        answers.setdefault(fp, set()).add(text)
    # One answer per version: no response mixed versions.
    assert all(len(texts) == 1 for texts in answers.values()), answers
    assert len(answers) == 3 and len({next(iter(t)) for t in answers.values()}) >= 2

    before = _ask(client, qa.question)
    rolled = http.post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200, rolled.text
    after = _ask(client, qa.question)
    assert after[0] == rolled.json()["fingerprint"] != before[0]
    assert after[1] == next(iter(answers[after[0]]))
    back_to_base = http.post("/v1/deployments/chat/rollback", json={"to_version": 0})
    assert back_to_base.status_code == 200
    assert _ask(client, qa.question) == ("fp_base", base_answer)
    client.close()
    http.close()
