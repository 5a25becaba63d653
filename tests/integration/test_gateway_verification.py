"""POST /v1/verifications: before/after answers, leak flags, reference probabilities, tenancy, rate limit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.verification.services import normalize
from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["Ada Lovelace wrote", "Harry walked to", "The quick brown", "Prices rise"]


def http(gw: LiveGateway, tenant: str = "acme", role: str = "reviewer") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key(tenant, role)}"}, timeout=60
    )


def answer(client: httpx.Client, model: str, prompt: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_verification_side_by_side(gateway_factory: Any, tiny_model: tuple[Path, list[Path]]) -> None:
    gw: LiveGateway = gateway_factory(verification_prompts_per_minute=100)
    client = http(gw)
    # The reference answers are what the base model says: "before" leaks them by construction.
    operator = http(gw, "ops", "operator")
    probes = [{"prompt": p, "reference": answer(operator, "base", p)} for p in PROMPTS]
    probes = [p for p in probes if normalize(p["reference"])]
    assert probes
    rid = gw.ready_request(tiny_model[1][0], probes=probes)
    anchor = normalize(probes[0]["reference"]).split()[0]
    response = client.post(
        "/v1/verifications",
        json={
            "request_id": rid,
            "prompts": [{"prompt": "Numbers:", "anchors": ["zzzz-never"]}],
            "anchors": [anchor],
            "max_tokens": 12,
        },
    )
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["before_model"] == "base" and out["after_model"] == f"adapter:{rid}"
    results = out["results"]
    assert [r["source"] for r in results] == ["probe"] * len(probes) + ["ad_hoc"]
    for r in results[: len(probes)]:
        assert r["before"]["leaks"]["reference"] is True
        assert (
            r["before"]["reference_probability"] is not None and 0 < r["before"]["reference_probability"] <= 1
        )
        if r["changed"]:
            # Greedy base tokens are the base model's most likely ones; the adapter prefers others.
            assert r["after"]["reference_logprob"] < r["before"]["reference_logprob"]
    assert anchor in results[0]["before"]["leaks"]["anchors"]
    assert results[-1]["reference"] is None and results[-1]["before"]["reference_probability"] is None
    assert results[-1]["anchors"] == [anchor, "zzzz-never"]
    summary = out["summary"]
    assert summary["prompts"] == len(probes) + 1
    assert summary["before"]["reference_leaks"] == len(probes)
    assert summary["changed"] >= 1
    assert summary["verdict"] in ("no_leaks", "leaks_found")

    # Tenancy: another tenant cannot verify this request, nor name its adapter.
    other = http(gw, "globex", "admin")
    assert other.post("/v1/verifications", json={"request_id": rid}).status_code == 404
    assert (
        other.post(
            "/v1/verifications",
            json={"prompts": [{"prompt": "hi"}], "before": "chat", "after": f"adapter:{rid}"},
        ).status_code
        == 404
    )
    # A submitter may not look at the base model, here as anywhere.
    submitter = http(gw, "acme", "submitter")
    denied = submitter.post("/v1/verifications", json={"request_id": rid})
    assert denied.status_code == 403 and denied.json()["error"]["param"] == "model"
    # Reviewers and admins see base only as the "before" of one of their own requests, not freely.
    for role in ("reviewer", "admin"):
        free = http(gw, "acme", role).post("/v1/verifications", json={"prompts": [{"prompt": "hi"}]})
        assert free.status_code == 403 and free.json()["error"]["code"] == "model_forbidden"
        direct = http(gw, "acme", role).post(
            "/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert direct.status_code == 403
    ok = submitter.post("/v1/verifications", json={"request_id": rid, "before": "chat", "max_tokens": 4})
    assert ok.status_code == 200, ok.text
    assert client.post("/v1/verifications", json={}).status_code == 400


def test_verification_is_rate_limited_per_tenant(gateway_factory: Any) -> None:
    gw: LiveGateway = gateway_factory(verification_prompts_per_minute=3)
    acme, globex = http(gw), http(gw, "globex")
    body = {"prompts": [{"prompt": "hi"}, {"prompt": "hello"}], "max_tokens": 2, "before": "chat"}
    # Budgets are per clock minute: do not straddle a boundary.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    assert acme.post("/v1/verifications", json=body).status_code == 200
    limited = acme.post("/v1/verifications", json=body)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "verification_rate_limited"
    # The budget is per tenant, and a refused call did not spend any of it.
    assert globex.post("/v1/verifications", json=body).status_code == 200
    assert (
        acme.post(
            "/v1/verifications", json={"prompts": [{"prompt": "hi"}], "max_tokens": 2, "before": "chat"}
        ).status_code
        == 200
    )
