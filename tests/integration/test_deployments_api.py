"""Deployments over HTTP: who may deploy and roll back what, integrity checks, and replicas converging."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(180)

CHAT = {"messages": [{"role": "user", "content": "Ada Lovelace wrote"}], "max_tokens": 6, "temperature": 0}


def http(gw: LiveGateway, tenant: str = "acme", role: str = "admin") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key(tenant, role)}"}, timeout=60
    )


def served_fingerprint(client: httpx.Client, model: str = "chat") -> str:
    response = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    assert response.status_code == 200, response.text
    return str(response.json()["system_fingerprint"])


def request_status(client: httpx.Client, rid: str) -> str:
    response = client.get(f"/v1/forget-requests/{rid}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def test_deploy_and_rollback_rules(gateway_factory: Any, tiny_model: tuple[Path, list[Path]]) -> None:
    gw: LiveGateway = gateway_factory()
    adapters = tiny_model[1]
    acme, globex = http(gw), http(gw, "globex")
    mine, theirs = gw.ready_request(adapters[0]), gw.ready_request(adapters[1], tenant="globex")

    # Another tenant's request is invisible; a reviewer key may not deploy.
    assert acme.post("/v1/deployments", json={"request_id": theirs}).status_code == 404
    reviewer = http(gw, "acme", "reviewer")
    assert reviewer.post("/v1/deployments", json={"request_id": mine}).status_code == 403
    # Nothing deployed: nothing to roll back.
    nothing = acme.post("/v1/deployments/chat/rollback")
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back"

    first = acme.post("/v1/deployments", json={"request_id": mine})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["version"] == 1 and body["parent"] is None and body["deployed"]["request_id"] == mine
    assert served_fingerprint(acme) == body["fingerprint"]
    assert request_status(acme, mine) == "deployed"
    # Deploying the same request again: it is no longer ready.
    again = acme.post("/v1/deployments", json={"request_id": mine})
    assert again.status_code == 409

    second = globex.post("/v1/deployments", json={"request_id": theirs})
    assert second.status_code == 201, second.text
    assert second.json()["version"] == 2 and second.json()["parent"] == body["version_id"]
    assert request_status(acme, mine) == "superseded"

    # acme may not undo globex's version; globex may.
    foreign = acme.post("/v1/deployments/chat/rollback")
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "foreign_version"
    rolled = globex.post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1 and served_fingerprint(acme) == body["fingerprint"]
    assert request_status(globex, theirs) == "rolled_back"

    # Lineage and tenancy in the listing: globex sees acme's version, not acme's request id.
    listing = globex.get("/v1/deployments").json()
    versions = {v["version"]: v for v in listing["versions"]}
    assert versions[1]["request_id"] is None and versions[1]["mine"] is False
    assert versions[2]["request_id"] == theirs and versions[2]["parent"] == versions[1]["id"]
    models = {m["id"]: m for m in globex.get("/v1/models").json()["data"]}
    assert models["chat"]["version"] == 1 and models["chat"]["version_id"] == versions[1]["id"]

    # Back to the base model (version 0) by an explicit target.
    to_base = acme.post("/v1/deployments/chat/rollback", json={"to_version": 0})
    assert to_base.status_code == 200, to_base.text
    assert served_fingerprint(acme) == "fp_base"


def test_integrity_checks(gateway_factory: Any, tiny_model: tuple[Path, list[Path]], tmp_path: Path) -> None:
    gw: LiveGateway = gateway_factory()
    client = http(gw)
    # Files changed after evaluation: the recorded hash no longer matches.
    tampered = Path(shutil.copytree(tiny_model[1][0], tmp_path / "tampered"))
    rid = gw.ready_request(tampered)
    with (tampered / "adapter_config.json").open("a") as f:
        f.write("\n")
    refused = client.post("/v1/deployments", json={"request_id": rid})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "hash_mismatch"
    # A pickle file is never served.
    pickled = Path(shutil.copytree(tiny_model[1][0], tmp_path / "pickled"))
    (pickled / "adapter_model.bin").write_bytes(b"not really")
    refused = client.post("/v1/deployments", json={"request_id": gw.ready_request(pickled)})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "adapter_unavailable"
    # Composed on another version than the one served: deploying would undo other requests.
    stale = Path(shutil.copytree(tiny_model[1][1], tmp_path / "stale"))
    (stale / "manifest.json").write_text(json.dumps({"deployed_adapter_sha256": "f" * 64}))
    refused = client.post("/v1/deployments", json={"request_id": gw.ready_request(stale)})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "stale_parent"
    fresh = Path(shutil.copytree(tiny_model[1][1], tmp_path / "fresh"))
    (fresh / "manifest.json").write_text(json.dumps({"deployed_adapter_sha256": None}))
    first = client.post("/v1/deployments", json={"request_id": gw.ready_request(fresh)})
    assert first.status_code == 201, first.text
    # The next adapter must be composed on version 1: its manifest names version 1's directory hash.
    from service.deployments.storage import dir_hash

    served_dir = gw.settings.data_dir / "adapters" / dir_hash(fresh)
    on_top = Path(shutil.copytree(tiny_model[1][2], tmp_path / "on-top"))
    (on_top / "manifest.json").write_text(json.dumps({"deployed_adapter_sha256": dir_hash(served_dir)}))
    assert client.post("/v1/deployments", json={"request_id": gw.ready_request(on_top)}).status_code == 201
    # Nothing of the refused deploys was recorded.
    assert [v["version"] for v in client.get("/v1/deployments").json()["versions"]] == [2, 1]


def test_replicas_converge_and_a_restart_serves_the_same_version(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    # Polling alone would take up to 5 s here: following within 1 s is the pub/sub announcement's doing.
    one: LiveGateway = gateway_factory(data_dir=shared, reconcile_interval=5.0)
    two: LiveGateway = gateway_factory(data_dir=shared, reconcile_interval=5.0)
    a, b = http(one), http(two)
    rid = one.ready_request(tiny_model[1][3])
    deployed = a.post("/v1/deployments", json={"request_id": rid})
    assert deployed.status_code == 201, deployed.text
    fp = deployed.json()["fingerprint"]
    t0 = time.monotonic()
    while served_fingerprint(b) != fp:
        assert time.monotonic() - t0 < 1.0, "the second replica did not follow within 1 s"
        time.sleep(0.02)
    # A replica started after the deploy serves the deployed version from its first request.
    two.stop()
    three: LiveGateway = gateway_factory(data_dir=shared)
    assert served_fingerprint(http(three)) == fp


def test_a_replica_behind_the_database_never_answers_with_the_version_the_alias_left(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Admission reads the alias from the database: a replica whose reconciler has not noticed a deploy
    or a rollback made on another replica catches up before it answers, from the very next request."""
    shared = tmp_path / "shared"
    one: LiveGateway = gateway_factory(data_dir=shared)
    # The second replica's reconciler neither polls (an hour) nor hears announcements (its wake-up
    # event is swapped for one nobody waits on): only admission can bring it up to date.
    two: LiveGateway = gateway_factory(data_dir=shared, reconcile_interval=3600.0)
    serving = two.app.state.resources.extras["serving"]
    serving.wake = asyncio.Event()
    passes = serving.passes
    a, b = http(one), http(two)
    assert served_fingerprint(b) == "fp_base"
    first, second = one.ready_requests(tiny_model[1][:2])
    fps = []
    for rid in (first, second):
        deployed = a.post("/v1/deployments", json={"request_id": rid})
        assert deployed.status_code == 201, deployed.text
        fps.append(deployed.json()["fingerprint"])
        # The first request after the deploy returned: the new version, never the one the alias left.
        assert served_fingerprint(b) == fps[-1]
    rolled = a.post("/v1/deployments/chat/rollback")
    assert rolled.status_code == 200 and rolled.json()["version"] == 1, rolled.text
    streamed = b.post("/v1/chat/completions", json={"model": "chat", "stream": True, **CHAT})
    assert streamed.status_code == 200 and f'"system_fingerprint":"{fps[0]}"' in streamed.text.replace(
        " ", ""
    )
    assert served_fingerprint(b) == fps[0]
    assert serving.passes == passes, "the reconciler ran: this test would not show what admission does"
    assert serving.replica_state()["aliases"]["chat"]["loaded_version"] == 1


def test_auto_policy_deploys_a_ready_request(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]]
) -> None:
    gw: LiveGateway = gateway_factory()
    client = http(gw)
    rid = gw.ready_request(tiny_model[1][2], policy="auto")
    t0 = time.monotonic()
    while request_status(client, rid) != "deployed":
        assert time.monotonic() - t0 < 5.0, "the auto policy did not deploy the ready request"
        time.sleep(0.05)
    listing = client.get("/v1/deployments").json()
    assert listing["versions"][0]["request_id"] == rid
    assert served_fingerprint(client) == listing["data"][0]["fingerprint"]


def test_idempotency_key_makes_a_retried_rollback_safe(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]]
) -> None:
    gw: LiveGateway = gateway_factory()
    client = http(gw)
    for rid in gw.ready_requests(tiny_model[1][:3]):
        assert client.post("/v1/deployments", json={"request_id": rid}).status_code == 201
    headers = {"Idempotency-Key": "rollback-once"}
    first = client.post("/v1/deployments/chat/rollback", headers=headers)
    assert first.status_code == 200 and first.json()["version"] == 2
    retried = client.post("/v1/deployments/chat/rollback", headers=headers)
    assert retried.status_code == 200 and retried.json() == first.json()  # replayed, not rolled back again
    listing = client.get("/v1/deployments").json()
    assert listing["data"][0]["version"] == 2
    reused = client.post("/v1/deployments/chat/rollback", headers=headers, json={"to_version": 0})
    assert reused.status_code == 422  # same key, different request
