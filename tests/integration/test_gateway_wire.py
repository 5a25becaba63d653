"""The gateway's wire contract without a model (OBLIVIATE_ENGINE=none): auth, validation, 503, listings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth.keys import create_api_key
from service.settings import Settings


async def _key(client: AsyncTestClient[Any], tenant: str = "acme", role: str = "admin") -> dict[str, str]:
    resources = client.app.state.resources
    async with resources.sessionmaker() as session, session.begin():
        _, key = await create_api_key(session, tenant=tenant, role=role)
    return {"Authorization": f"Bearer {key}"}


def _envelope(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_wire_contract_without_a_model(settings: Settings) -> None:
    settings = settings.model_copy(update={"engine": "none"})
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with AsyncTestClient(create_app(settings)) as client:
        anonymous = await client.post("/v1/chat/completions", json=chat)
        assert anonymous.status_code == 401 and _envelope(anonymous.json())["type"] == "authentication_error"
        auth = await _key(client)
        # Validation happens before the engine is needed, and names the parameter.
        missing = await client.post("/v1/chat/completions", json={"messages": chat["messages"]}, headers=auth)
        assert missing.status_code == 400
        assert _envelope(missing.json())["param"] == "model"
        assert missing.json()["error"]["code"] == "missing_required_parameter"
        bad_role = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "robot", "content": "x"}]},
            headers=auth,
        )
        assert bad_role.status_code == 400 and bad_role.json()["error"]["param"] == "messages[0].role"
        stop = await client.post(
            "/v1/completions", json={"model": "chat", "prompt": "x", "stop": ["a"] * 5}, headers=auth
        )
        assert stop.status_code == 400 and stop.json()["error"]["param"] == "stop"
        not_json = await client.post(
            "/v1/chat/completions", content=b"{nope", headers={**auth, "Content-Type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
        # No model in this process: 503 with Retry-After, in the same envelope.
        unavailable = await client.post("/v1/chat/completions", json=chat, headers=auth)
        assert unavailable.status_code == 503 and "retry-after" in unavailable.headers
        assert _envelope(unavailable.json())["code"] == "engine_disabled"
        # Listings still work (an intake-only replica answers them from the database).
        models = (await client.get("/v1/models", headers=auth)).json()
        assert [m["id"] for m in models["data"]] == ["chat"]  # base: operator keys only
        assert models["data"][0]["version"] == 0 and models["data"][0]["fingerprint"] == "fp_base"
        operator = await _key(client, "ops", "operator")
        models = (await client.get("/v1/models", headers=operator)).json()
        assert [m["id"] for m in models["data"]] == ["base", "chat"]
        deployments = (await client.get("/v1/deployments", headers=auth)).json()
        assert deployments["data"][0]["alias"] == "chat" and deployments["versions"] == []
        unknown = await client.get("/v1/models/nope", headers=auth)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_deploy_on_a_replica_without_a_model(settings: Settings, tmp_path: Path) -> None:
    """The desired state is recorded by any replica; serving replicas load it (see test_deployments_api)."""
    settings = settings.model_copy(update={"engine": "none"})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    async with AsyncTestClient(create_app(settings)) as client:
        auth = await _key(client)
        from tests.support.serving import _make_ready_requests

        (rid,) = await _make_ready_requests(settings, [adapter], "acme", [], "manual")
        deployed = await client.post("/v1/deployments", json={"request_id": rid}, headers=auth)
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["version"] == 1
        listing = (await client.get("/v1/models", headers=auth)).json()["data"]
        assert {m["id"]: m for m in listing}["chat"]["version"] == 1
        own = {m["id"]: m for m in listing}[f"adapter:{rid}"]
        assert own["status"] == "deployed" and own["version"] == 1 and own["owned_by"] == "acme"
