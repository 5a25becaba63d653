"""Issue 11 on the gateway: parameter ranges, bad input as 400s, prompt caps, tenant limits, operator role.

The first test needs no model (OBLIVIATE_ENGINE=none): everything it checks is refused before the engine.
The others run a live gateway on a tiny random Llama.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth.keys import create_api_key
from service.settings import Settings
from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

MESSAGES = [{"role": "user", "content": "Ada Lovelace wrote"}]


async def _key(client: AsyncTestClient[Any], tenant: str = "acme", role: str = "admin") -> dict[str, str]:
    resources = client.app.state.resources
    async with resources.sessionmaker() as session, session.begin():
        _, key = await create_api_key(session, tenant=tenant, role=role)
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("chat", {"seed": 2**63}, "seed"),
        ("chat", {"seed": -(2**63) - 1}, "seed"),
        ("completions", {"seed": 2**64}, "seed"),
        ("chat", {"temperature": 2.01}, "temperature"),
        ("chat", {"temperature": -0.1}, "temperature"),
        ("chat", {"top_p": 0}, "top_p"),
        ("chat", {"top_p": 1.5}, "top_p"),
        ("chat", {"max_tokens": 0}, "max_tokens"),
        ("chat", {"max_completion_tokens": 2**70}, "max_completion_tokens"),
        ("chat", {"n": 0}, "n"),
        ("chat", {"n": 129}, "n"),
        ("chat", {"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("chat", {"presence_penalty": 2.5}, "presence_penalty"),
        ("chat", {"frequency_penalty": -3}, "frequency_penalty"),
        ("chat", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("chat", {"stop": "x" * 1001}, "stop"),
        ("chat", {"user": "u" * 257}, "user"),
        ("completions", {"best_of": 0}, "best_of"),
    ],
)
async def test_openai_parameter_ranges(
    settings: Settings, route: str, extra: dict[str, Any], param: str
) -> None:
    settings = settings.model_copy(update={"engine": "none"})
    body: dict[str, Any] = {"model": "chat", **extra}
    body.update({"messages": MESSAGES} if route == "chat" else {"prompt": "Ada"})
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post(path, json=body, headers=await _key(client))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_bad_bodies_are_400s_not_500s(settings: Settings) -> None:
    settings = settings.model_copy(update={"engine": "none", "gateway_max_prompt_chars": 1000})
    async with AsyncTestClient(create_app(settings)) as client:
        auth = {**await _key(client), "Content-Type": "application/json"}
        # A lone surrogate is valid JSON but not Unicode: no tokenizer can take it.
        lone = await client.post(
            "/v1/completions", content=b'{"model": "chat", "prompt": "hi \\ud800 there"}', headers=auth
        )
        assert lone.status_code == 400 and lone.json()["error"]["param"] == "prompt", lone.text
        in_chat = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "chat", "messages": [{"role": "user", "content": "\\udfff"}]}',
            headers=auth,
        )
        assert in_chat.status_code == 400 and in_chat.json()["error"]["param"] == "messages[0].content"
        # A proper surrogate pair is fine (it reaches the engine check: 503 without a model).
        pair = await client.post(
            "/v1/completions", content=b'{"model": "chat", "prompt": "\\ud83d\\ude00"}', headers=auth
        )
        assert pair.status_code == 503
        # Deeply nested JSON, below and above the parser's recursion limit.
        for depth in (100, 100_000):
            nested = b'{"model": "chat", "prompt": "x", "user": ' + b"[" * depth + b"]" * depth + b"}"
            deep = await client.post("/v1/completions", content=nested, headers=auth)
            assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json", deep.text
        # NaN and Infinity are not JSON.
        nan = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            headers=auth,
        )
        assert nan.status_code == 400 and nan.json()["error"]["code"] == "invalid_json"
        # Prompts over the character cap are refused before any tokenizing.
        long_prompt = await client.post(
            "/v1/completions", json={"model": "chat", "prompt": "x" * 1001}, headers=auth
        )
        assert long_prompt.status_code == 400 and long_prompt.json()["error"]["code"] == "prompt_too_long"
        long_chat = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "y" * 600}] * 2},
            headers=auth,
        )
        assert long_chat.status_code == 400 and long_chat.json()["error"]["param"] == "messages"
        many_ids = await client.post(
            "/v1/completions", json={"model": "chat", "prompt": [1] * 1001}, headers=auth
        )
        assert many_ids.status_code == 400 and many_ids.json()["error"]["code"] == "prompt_too_long"


def http(gw: LiveGateway, tenant: str = "acme", role: str = "admin") -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key(tenant, role)}"}, timeout=120
    )


@pytest.mark.timeout(240)
def test_one_tenants_bad_parameters_do_not_fail_the_batch(gateway_factory: Any) -> None:
    gw: LiveGateway = gateway_factory(engine_max_batch=16)
    acme, globex = http(gw), http(gw, "globex")
    # Accepted by OpenAI's ranges, and used to raise inside the shared batch (top_p underflows float32).
    odd = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "top_p": 1e-50}
    normal = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.8, "seed": 1}

    def call(i: int) -> httpx.Response:
        if i == 3:
            return acme.post("/v1/chat/completions", json=odd)
        return globex.post("/v1/chat/completions", json={**normal, "seed": i})

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        responses = list(pool.map(call, range(9)))
    assert [r.status_code for r in responses] == [200] * 9, [
        r.text for r in responses if r.status_code != 200
    ]
    big_seed = acme.post("/v1/chat/completions", json={**normal, "seed": 2**63})
    assert big_seed.status_code == 400 and big_seed.json()["error"]["param"] == "seed"
    edge_seed = acme.post("/v1/chat/completions", json={**normal, "seed": 2**63 - 1})
    assert edge_seed.status_code == 200


@pytest.mark.timeout(240)
def test_a_large_prompt_does_not_stall_the_event_loop(gateway_factory: Any) -> None:
    gw: LiveGateway = gateway_factory(gateway_max_prompt_chars=5_000_000)
    client = http(gw)
    prompt = "Ada Lovelace wrote notes on the engine. " * 80_000  # 3.2 M characters
    outcome: dict[str, Any] = {}

    def big() -> None:
        t0 = time.monotonic()
        outcome["response"] = client.post("/v1/completions", json={"model": "chat", "prompt": prompt})
        outcome["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=big)
    thread.start()
    worst = 0.0
    with httpx.Client(base_url=gw.url, timeout=30) as probe:
        while thread.is_alive():
            t0 = time.monotonic()
            assert probe.get("/health/live").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)
    thread.join()
    response = outcome["response"]
    # Far over the tiny model's context: refused after tokenizing, and the loop answered meanwhile.
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("context_length_exceeded", "tokens_exceeded")
    assert worst < max(1.0, outcome["seconds"] / 3), (worst, outcome["seconds"])
    # Over the character cap: refused at once.
    capped = client.post("/v1/completions", json={"model": "chat", "prompt": "x" * 5_000_001})
    assert capped.status_code == 400 and capped.json()["error"]["code"] == "prompt_too_long"


@pytest.mark.timeout(240)
def test_per_tenant_request_rate_and_token_budget(gateway_factory: Any) -> None:
    if time.time() % 60 > 45:  # budgets are per clock minute: do not straddle a boundary
        time.sleep(61 - time.time() % 60)
    gw: LiveGateway = gateway_factory(gateway_requests_per_minute=3, gateway_tokens_per_minute=400)
    acme, globex = http(gw), http(gw, "globex")
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    assert [acme.post("/v1/chat/completions", json=body).status_code for _ in range(3)] == [200] * 3
    limited = acme.post("/v1/chat/completions", json=body)
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    streamed = acme.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 429
    # Another tenant has its own budget.
    first = globex.post("/v1/chat/completions", json=body)
    assert first.status_code == 200
    prompt_tokens = first.json()["usage"]["prompt_tokens"]
    # Tokens: a request that can never fit the budget says what to change (400), one that would
    # overdraw this minute's remainder waits (429).
    never = globex.post("/v1/chat/completions", json={**body, "max_tokens": 400 - prompt_tokens + 1})
    assert never.status_code == 400 and never.json()["error"]["param"] == "max_tokens", never.text
    over = globex.post("/v1/chat/completions", json={**body, "max_tokens": 400 - prompt_tokens})
    assert over.status_code == 429 and over.json()["error"]["code"] == "tokens_exceeded", over.text
    assert int(over.headers["retry-after"]) >= 1


@pytest.mark.timeout(240)
def test_operator_role_alone_reaches_base_and_manages_other_aliases(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]]
) -> None:
    gw: LiveGateway = gateway_factory()
    base = {"model": "base", "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    for role in ("submitter", "reviewer", "admin"):
        denied = http(gw, "acme", role).post("/v1/chat/completions", json=base)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_forbidden"
        assert "base" not in [m["id"] for m in http(gw, "acme", role).get("/v1/models").json()["data"]]
    operator = http(gw, "ops", "operator")
    assert operator.post("/v1/chat/completions", json=base).status_code == 200
    assert "base" in [m["id"] for m in operator.get("/v1/models").json()["data"]]
    # A tenant admin deploys to the served alias, not to a new global alias.
    rid = gw.ready_request(tiny_model[1][0])
    other = http(gw).post("/v1/deployments", json={"request_id": rid, "alias": "special"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "alias_forbidden"
    assert http(gw).post("/v1/deployments/special/rollback").status_code == 403
    own = gw.ready_request(tiny_model[1][1], tenant="ops")
    special = operator.post("/v1/deployments", json={"request_id": own, "alias": "special"})
    assert special.status_code == 201, special.text
    assert http(gw).post("/v1/deployments", json={"request_id": rid}).status_code == 201
    # The auto policy does not create a global alias on a tenant's behalf either.
    auto = gw.ready_request(tiny_model[1][2])
    asyncio.run(_set_options(gw.settings, auto, {"deploy_policy": "auto", "target_alias": "tenant-made"}))
    time.sleep(1.5)  # several reconcile ticks (0.2 s)
    listing = http(gw).get("/v1/deployments").json()
    assert "tenant-made" not in [d["alias"] for d in listing["data"]]
    assert http(gw).get(f"/v1/forget-requests/{auto}").json()["status"] == "ready"


async def _set_options(settings: Settings, rid: str, options: dict[str, Any]) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from service.db import create_engine
    from service.forget.models import ForgetRequest

    engine = create_engine(settings.resolved_database_url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            row = await session.get(ForgetRequest, rid)
            assert row is not None
            row.options = {**row.options, **options}
    finally:
        await engine.dispose()


@pytest.mark.timeout(240)
def test_requests_in_flight_are_capped_per_tenant(gateway_factory: Any) -> None:
    gw: LiveGateway = gateway_factory(engine_max_batch=1, gateway_max_in_flight_per_tenant=2)
    acme, globex = http(gw), http(gw, "globex")
    long = {"model": "chat", "prompt": "Numbers:", "max_tokens": 400, "temperature": 0, "stream": True}
    short = {"model": "chat", "prompt": "Numbers:", "max_tokens": 2, "temperature": 0}
    with (
        acme.stream("POST", "/v1/completions", json=long) as one,
        acme.stream("POST", "/v1/completions", json=long) as two,
    ):
        assert one.status_code == 200 and two.status_code == 200
        third = acme.post("/v1/completions", json=short)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "too_many_concurrent_requests"
        assert third.headers["retry-after"] == "1"
        # Another tenant is not affected by acme's streams.
        assert globex.post("/v1/completions", json=short).status_code == 200
        for response in (one, two):
            for _ in response.iter_bytes():
                pass
    # Finished streams give their slots back.
    assert acme.post("/v1/completions", json=short).status_code == 200
    assert acme.post("/v1/completions", json=short).status_code == 200


@pytest.mark.timeout(240)
def test_clients_that_leave_at_once_give_their_slots_back(gateway_factory: Any) -> None:
    import json
    import socket

    gw: LiveGateway = gateway_factory(engine_max_batch=2, gateway_max_in_flight_per_tenant=2)
    key = gw.key("acme", "admin")
    body = json.dumps(
        {"model": "chat", "prompt": "Numbers:", "max_tokens": 400, "temperature": 0, "stream": True}
    ).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    for _ in range(6):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        time.sleep(0.2)  # the server accepted it and may or may not have started the body
    tracker = gw.app.state.resources.extras.get("gateway_in_flight")
    deadline = time.monotonic() + 30
    while tracker is not None and tracker.counts.get("acme", 0):
        assert time.monotonic() < deadline, f"slots never came back: {tracker.counts}"
        time.sleep(0.1)
    short = {"model": "chat", "prompt": "Numbers:", "max_tokens": 2, "temperature": 0}
    assert http(gw).post("/v1/completions", json=short).status_code == 200
