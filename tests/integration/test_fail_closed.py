"""Fail closed: an alias whose deployed version cannot be loaded answers 503, never another model.

Reproduces issue 11's critical finding: deploy, stop, damage the stored adapter, start again. Before the
fix the restarted replica answered ``chat`` with the base model (which still knows what was forgotten),
said it was ready and listed version 1 as served.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.deployments.storage import dir_hash
from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(240)

CHAT = {"messages": [{"role": "user", "content": "Ada Lovelace wrote"}], "max_tokens": 4, "temperature": 0}


def http(gw: LiveGateway, tenant: str = "acme", role: str = "admin") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key(tenant, role)}"}, timeout=60
    )


def chat(client: httpx.Client, model: str = "chat") -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, **CHAT})


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


class Records(logging.Handler):
    """Collects one logger's records (the app reconfigures the root logger, so caplog misses them)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def test_damaged_adapter_after_restart_fails_closed_and_recovers(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    first: LiveGateway = gateway_factory(data_dir=shared)
    rid = first.ready_request(tiny_model[1][0])
    deployed = http(first).post("/v1/deployments", json={"request_id": rid})
    assert deployed.status_code == 201, deployed.text
    fp = deployed.json()["fingerprint"]
    assert chat(http(first)).json()["system_fingerprint"] == fp
    first.stop()

    # Damage one byte of the stored (served) copy while no replica runs.
    stored = shared / "adapters" / dir_hash(tiny_model[1][0]) / "adapter_model.safetensors"
    original = stored.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    with Records("obliviate.deployments") as caplog:
        restarted_fails_closed(gateway_factory, shared, stored, original, fp, caplog)


def restarted_fails_closed(
    gateway_factory: Any, shared: Path, stored: Path, original: bytes, fp: str, caplog: Records
) -> None:
    gw: LiveGateway = gateway_factory(data_dir=shared)
    client, operator = http(gw), http(gw, "ops", "operator")

    # The alias answers 503 with a clear code: not the base model, not any other version.
    refused = chat(client)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "alias_unavailable" and error["param"] == "model"
    assert "retry-after" in refused.headers
    streamed = client.post("/v1/chat/completions", json={"model": "chat", "stream": True, **CHAT})
    assert streamed.status_code == 503
    assert client.post("/v1/completions", json={"model": "chat", "prompt": "Ada"}).status_code == 503
    # The official client sees a server error with the code (and would retry after Retry-After).
    with openai.OpenAI(base_url=gw.base_url, api_key=gw.key("acme", "admin"), max_retries=0) as official:
        with pytest.raises(openai.InternalServerError) as unavailable:
            official.chat.completions.create(model="chat", messages=CHAT["messages"], max_tokens=4)
        assert unavailable.value.status_code == 503 and unavailable.value.code == "alias_unavailable"
    # The engine itself no longer has the alias (nothing can reach the base model through it).
    assert "chat" not in gw.engine.aliases()
    # The operator can still reach the base model explicitly (that is what it is for).
    assert chat(operator, "base").status_code == 200

    # Readiness names the alias.
    ready = httpx.get(gw.url + "/health/ready", timeout=30)
    assert ready.status_code == 503, ready.text
    assert "alias:chat" in ready.json()["failed"]
    assert ready.json()["checks"]["serving"]["aliases"]["chat"]["error"]["code"] == "hash_mismatch"

    # /v1/deployments: desired version 1, loaded nothing, with the error, per replica.
    listing = client.get("/v1/deployments").json()
    entry = {d["alias"]: d for d in listing["data"]}["chat"]
    assert entry["version"] == 1 and entry["state"] == "unavailable"
    (replica,) = entry["replicas"]
    assert replica["state"] == "unavailable" and replica["desired_version"] == 1
    assert replica["loaded_version"] is None and replica["error"]["code"] == "hash_mismatch"
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["chat"]["version"] == 1 and models["chat"]["available"] is False

    # Several reconcile ticks later: retried (counted), but logged once, not every tick.
    serving = gw.app.state.resources.extras["serving"]
    wait_for(lambda: serving.metrics.load_failures_total.get("chat", 0) >= 3, 30, "no retries")
    lines = [r for r in caplog.records if "alias chat is unavailable" in r.getMessage()]
    assert len(lines) == 1
    snapshot = serving.metrics.snapshot(serving)
    assert snapshot["alias_unavailable"]["chat"] == 1
    assert snapshot["alias_unavailable_transitions_total"]["chat"] == 1
    assert snapshot["alias_refused_requests_total"]["chat"] >= 3

    # Repaired file: the replica loads version 1 and serves it again, and says so once.
    stored.write_bytes(original)
    wait_for(lambda: chat(client).status_code == 200, 30, "the replica did not recover")
    assert chat(client).json()["system_fingerprint"] == fp
    assert httpx.get(gw.url + "/health/ready", timeout=30).status_code == 200
    assert len([r for r in caplog.records if "alias chat serves again" in r.getMessage()]) == 1
    assert serving.metrics.snapshot(serving)["alias_unavailable"]["chat"] == 0


def test_missing_newer_version_never_falls_back_to_the_older_one(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Version 2's files are gone on restart while version 1's are intact: 503, not version 1."""
    shared = tmp_path / "shared"
    first: LiveGateway = gateway_factory(data_dir=shared)
    client = http(first)
    one, two = first.ready_requests(tiny_model[1][1:3])
    assert client.post("/v1/deployments", json={"request_id": one}).status_code == 201
    v2 = client.post("/v1/deployments", json={"request_id": two})
    assert v2.status_code == 201 and v2.json()["version"] == 2
    first.stop()
    stored = shared / "adapters" / dir_hash(tiny_model[1][2])
    for f in stored.iterdir():
        f.unlink()
    stored.rmdir()

    gw: LiveGateway = gateway_factory(data_dir=shared)
    client = http(gw)
    refused = chat(client)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "alias_unavailable"
    entry = {d["alias"]: d for d in client.get("/v1/deployments").json()["data"]}["chat"]
    assert entry["version"] == 2 and entry["replicas"][0]["error"]["code"] == "adapter_missing"
    # Rolling back to version 1 (a deliberate act of the tenant that deployed version 2) serves again.
    rolled = client.post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200, rolled.text
    assert chat(client).status_code == 200
    assert httpx.get(gw.url + "/health/ready", timeout=30).status_code == 200
