"""The ``openai-upstream`` serving backend against two fake vLLM upstreams (no torch, no model here).

Deploys go through the gateway's deployment API and load the adapter into every healthy upstream under
its content-hash name; chat goes through the gateway with the official ``openai`` client; a restarted
(empty) upstream is re-warmed by the reconciler; an alias no upstream can serve answers 503
``alias_unavailable`` (the embedded fail-closed code), never the base model.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.deployments.storage import engine_hash
from service.serving.upstream import lora_name
from tests.support.fake_vllm import DEFAULT_BASE, FakeUpstream
from tests.support.serving import LiveGateway, serving_settings, start_gateway

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Where was Jane Roe born?"}]


def make_adapter(root: Path, seed: int) -> Path:
    """An adapter directory as the pipeline leaves one (the fake upstream never parses the weights)."""
    path = root / f"adapter-{seed}"
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    (path / "adapter_config.json").write_text(json.dumps({**config, "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(random.Random(seed).randbytes(256))
    return path


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    pool = [FakeUpstream("gpu1").start(), FakeUpstream("gpu2").start()]
    yield pool
    for up in pool:
        up.stop()


@pytest.fixture
def gateway(upstreams: list[FakeUpstream], clean_redis: str, tmp_path: Path) -> Iterator[LiveGateway]:
    settings = serving_settings(
        tmp_path / "data",
        tmp_path / "no-model-here",
        clean_redis,
        serving_backend="openai-upstream",
        upstream_urls=[up.url for up in upstreams],
        upstream_probe_interval_s=0.2,
    )
    gw = start_gateway(settings)
    yield gw
    gw.stop()


def http(gw: LiveGateway, tenant: str = "acme", role: str = "admin") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key(tenant, role)}"}, timeout=30
    )


def chat(client: httpx.Client, model: str = "chat", **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 6, **extra}
    )


def deploy(gw: LiveGateway, adapter: Path) -> dict[str, Any]:
    rid = gw.ready_request(adapter)
    response = http(gw).post("/v1/deployments", json={"request_id": rid})
    assert response.status_code == 201, response.text
    return {**response.json(), "request_id": rid}


def test_deploy_and_chat_through_two_upstreams(
    gateway: LiveGateway, upstreams: list[FakeUpstream], tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path, 1)
    name = lora_name(engine_hash(adapter))
    deployed = deploy(gateway, adapter)
    # Both upstreams hold the adapter under its content-hash name before the alias moved.
    for up in upstreams:
        assert name in up.app.loras, up.name
        assert Path(up.app.loras[name]).is_dir()  # the store copy, which the upstreams read
    assert deployed["sha256"] == engine_hash(adapter)

    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0) as client:
        reply = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6)  # type: ignore[arg-type]
        text = reply.choices[0].message.content or ""
        assert text.startswith(f"{name} says:"), text  # the adapter answered, not the base model
        assert reply.model == "chat" and reply.system_fingerprint == deployed["fingerprint"]
        assert reply.usage is not None and reply.usage.completion_tokens == 6
        assert reply.choices[0].finish_reason == "length"

        # Streaming passes through chunk for chunk: same text, usage at the end when asked for.
        stream = client.chat.completions.create(
            model="chat",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "length"
        ]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

        # Logprobs come through the chat shape the client parses.
        scored = client.chat.completions.create(
            model="chat",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            logprobs=True,
            top_logprobs=2,
        )
        content = scored.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None and len(content) == 3 and len(content[0].top_logprobs) == 2

        # Text completions too.
        completion = client.completions.create(model="chat", prompt="Jane Roe was", max_tokens=4)
        assert completion.choices[0].text.startswith(f"{name} says:")

        # Requests are spread over the healthy upstreams.
        for _ in range(8):
            client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert all(up.app.served[name] >= 2 for up in upstreams), [up.app.served for up in upstreams]

    # The operator's base model is the upstream's base model.
    base = chat(http(gateway, "ops", "operator"), "base")
    assert base.status_code == 200 and base.json()["choices"][0]["message"]["content"].startswith(
        DEFAULT_BASE
    )

    # A request's own adapter by name, and a verification scored through the upstreams.
    rid = deployed["request_id"]
    own = chat(http(gateway), f"adapter:{rid}")
    assert own.status_code == 200 and own.json()["choices"][0]["message"]["content"].startswith(name)
    verified = http(gateway).post(
        "/v1/verifications",
        json={
            "request_id": rid,
            "prompts": [{"prompt": "Where was Jane Roe born?", "reference": "Tarnwick"}],
        },
    )
    assert verified.status_code in (200, 201), verified.text
    (result,) = verified.json()["results"]
    assert result["before"]["answer"].startswith(DEFAULT_BASE) and result["after"]["answer"].startswith(name)
    assert result["after"]["reference_logprob"] is not None
    assert result["before"]["reference_logprob"] != result["after"]["reference_logprob"]

    # /health/ready and /v1/deployments show the pool.
    ready = httpx.get(gateway.url + "/health/ready", timeout=10).json()
    pool = ready["checks"]["serving"]
    assert pool["ok"] is True
    listing = http(gateway).get("/v1/deployments").json()
    entry = {d["alias"]: d for d in listing["data"]}["chat"]
    assert entry["state"] == "serving" and entry["version"] == 1


def test_restarted_upstream_is_rewarmed_and_never_answers_with_the_base_model(
    gateway: LiveGateway, upstreams: list[FakeUpstream], tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path, 2)
    name = lora_name(engine_hash(adapter))
    deploy(gateway, adapter)
    client = http(gateway)
    gpu1 = upstreams[0]
    before = gpu1.app
    gpu1.restart()  # back on the same port with nothing loaded
    # A fresh upstream: the reconciler may already have loaded the adapter into it once, nothing else.
    assert gpu1.app is not before and gpu1.app.load_calls in ([], [name])
    # Every answer meanwhile comes from the adapter (the other upstream, or gpu1 once re-warmed).
    deadline = time.monotonic() + 15
    while name not in gpu1.app.loras:
        assert time.monotonic() < deadline, "the restarted upstream was not re-warmed"
        response = chat(client)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].startswith(name)
        time.sleep(0.05)
    # Once re-warmed it takes requests again; the base model never answered "chat".
    wait_for(
        lambda: chat(client).status_code == 200 and gpu1.app.served[name] > 0, 10, "gpu1 serves no requests"
    )
    assert all(up.app.served[DEFAULT_BASE] == 0 for up in upstreams)


def test_alias_no_upstream_can_serve_answers_503_then_recovers(
    gateway: LiveGateway, upstreams: list[FakeUpstream], tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path, 3)
    name = lora_name(engine_hash(adapter))
    deploy(gateway, adapter)
    client = http(gateway)
    assert chat(client).status_code == 200
    for up in upstreams:
        up.stop()

    refused = chat(client)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "alias_unavailable" and error["param"] == "model"
    assert "retry-after" in refused.headers
    assert chat(client, stream=True).status_code == 503
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0) as official:
        with pytest.raises(openai.InternalServerError) as unavailable:
            official.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
        assert unavailable.value.status_code == 503 and unavailable.value.code == "alias_unavailable"

    # The reconciler marks the alias unavailable: readiness names it.
    def not_ready() -> bool:
        ready = httpx.get(gateway.url + "/health/ready", timeout=10)
        return ready.status_code == 503 and "alias:chat" in ready.json()["failed"]

    wait_for(not_ready, 10, "readiness did not report the alias")
    entry = {d["alias"]: d for d in client.get("/v1/deployments").json()["data"]}["chat"]
    assert entry["replicas"][0]["error"]["code"] == "upstream_unavailable"

    # One upstream comes back, empty: it is re-warmed, then the alias serves the same version again.
    upstreams[1].restart()
    wait_for(lambda: chat(client).status_code == 200, 30, "the alias did not recover")
    assert name in upstreams[1].app.loras
    assert chat(client).json()["choices"][0]["message"]["content"].startswith(name)
    assert upstreams[1].app.served[DEFAULT_BASE] == 0


def test_alias_flips_only_when_every_healthy_upstream_holds_the_version(
    gateway: LiveGateway, upstreams: list[FakeUpstream], tmp_path: Path
) -> None:
    first, second = make_adapter(tmp_path, 4), make_adapter(tmp_path, 5)
    deploy(gateway, first)
    old, new = lora_name(engine_hash(first)), lora_name(engine_hash(second))
    upstreams[1].app.refuse_loads = True
    rid = gateway.ready_request(second)
    refused = http(gateway).post("/v1/deployments", json={"request_id": rid})
    assert refused.status_code >= 500, refused.text
    # Still version 1 everywhere: no upstream answers "chat" with the new adapter.
    for _ in range(4):
        assert chat(http(gateway)).json()["choices"][0]["message"]["content"].startswith(old)
    assert all(up.app.served[new] == 0 for up in upstreams)
    upstreams[1].app.refuse_loads = False
    retried = http(gateway).post("/v1/deployments", json={"request_id": rid})
    assert retried.status_code == 201, retried.text
    assert all(new in up.app.loras for up in upstreams)
    assert chat(http(gateway)).json()["choices"][0]["message"]["content"].startswith(new)
    # Rollback serves version 1 again (still loaded everywhere: adapters are never unloaded).
    rolled = http(gateway).post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200, rolled.text
    assert chat(http(gateway)).json()["choices"][0]["message"]["content"].startswith(old)


def test_two_replicas_serve_the_same_version_through_the_pool(
    gateway: LiveGateway, upstreams: list[FakeUpstream], tmp_path: Path
) -> None:
    """A deploy on replica A is served by replica B through the upstreams within 2 s (issue 12's target)."""
    other = start_gateway(gateway.settings)  # same database, data directory and Redis
    try:
        client_b = httpx.Client(
            base_url=other.url, headers={"Authorization": f"Bearer {gateway.key()}"}, timeout=30
        )
        adapter = make_adapter(tmp_path, 7)
        name = lora_name(engine_hash(adapter))
        deployed = deploy(gateway, adapter)
        started = time.monotonic()

        def b_serves_it() -> bool:
            reply = chat(client_b)
            return reply.status_code == 200 and reply.json()["system_fingerprint"] == deployed["fingerprint"]

        wait_for(b_serves_it, 2.0, "replica B did not serve the new version within 2 s")
        assert time.monotonic() - started < 2.0
        a, b = chat(http(gateway)).json(), chat(client_b).json()
        assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
        assert a["choices"][0]["message"]["content"].startswith(name)
        assert all(up.app.served[name] > 0 for up in upstreams)  # spread over the pool by both replicas
    finally:
        other.stop()


def test_duplicate_and_unknown_names_behave_like_vllm(upstreams: list[FakeUpstream], tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, 6)
    up = upstreams[0].url
    body = {"lora_name": "obl-x", "lora_path": str(adapter)}
    assert httpx.post(up + "/v1/load_lora_adapter", json=body).status_code == 200
    assert httpx.post(up + "/v1/load_lora_adapter", json=body).status_code == 400
    assert httpx.post(up + "/v1/unload_lora_adapter", json={"lora_name": "nope"}).status_code == 404
    models = [m["id"] for m in httpx.get(up + "/v1/models").json()["data"]]
    assert models == [DEFAULT_BASE, "obl-x"]
    missing = {"model": "obl-y", "messages": MESSAGES}
    assert httpx.post(up + "/v1/chat/completions", json=missing).status_code == 404


def test_upstream_urls_setting_reads_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from service.settings import Settings, settings_env

    monkeypatch.setenv("OBLIVIATE_ENGINE", "inprocess")  # the test session's default is "none"
    monkeypatch.setenv("OBLIVIATE_SERVING_BACKEND", "openai-upstream")
    monkeypatch.setenv("OBLIVIATE_UPSTREAM_URLS", "http://gpu1:8000, http://gpu2:8000/")
    settings = Settings()
    assert settings.upstream_urls == ["http://gpu1:8000", "http://gpu2:8000"]
    # A worker started by `serve` reads the same list back from its environment.
    env = settings_env(settings, base={})
    monkeypatch.setenv("OBLIVIATE_UPSTREAM_URLS", env["OBLIVIATE_UPSTREAM_URLS"])
    assert Settings().upstream_urls == settings.upstream_urls
    monkeypatch.setenv("OBLIVIATE_UPSTREAM_URLS", "")
    with pytest.raises(ValidationError, match="OBLIVIATE_UPSTREAM_URLS"):
        Settings()
    monkeypatch.setenv("OBLIVIATE_UPSTREAM_URLS", "gpu1:8000")
    with pytest.raises(ValidationError, match="http"):
        Settings()


TORCH_FREE = """
import sys, tempfile
from pathlib import Path
import httpx
from service.settings import Settings
from tests.support.fake_vllm import FakeUpstream
from tests.support.serving import start_gateway

up = FakeUpstream("gpu1").start()
settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=None, redis_url=sys.argv[1], workers=0,
                    engine="inprocess", serving_backend="openai-upstream", upstream_urls=[up.url])
gw = start_gateway(settings)
reply = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": "Bearer " + gw.key()},
                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
gw.stop()
up.stop()
heavy = [m for m in ("torch", "transformers", "peft", "gpu_runtime.engine") if m in sys.modules]
print(reply.status_code, ",".join(heavy))
"""


def test_a_replica_serving_through_upstreams_imports_no_torch(clean_redis: str) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, clean_redis], cwd=root, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "200", result.stdout
