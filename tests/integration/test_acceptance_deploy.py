"""Deploying after the acceptance gate, on a live gateway (tiny model, real adapters) with a real burst
worker whose stage runner reports synthetic evaluation summaries.

A request that passes is deployed by the auto policy; one that fails is never auto-deployed, and a
manual deploy needs an admin's override with a reason, which the audit trail and the signed
certificate record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from obliviate_client import Client

from service.cli_requests import requests_group
from tests.support.acceptance import LadderRunner
from tests.support.forget import body, run_worker_burst
from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(180)
ACTIVE = {"queued", "reinforcing", "mining_anchors", "generating_targets", "unlearning", "evaluating"}


def http(gw: LiveGateway, role: str) -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key('acme', role)}"}, timeout=60
    )


def status(client: httpx.Client, rid: str) -> str:
    return str(client.get(f"/v1/forget-requests/{rid}").json()["status"])


def file_and_work(
    gw: LiveGateway, client: httpx.Client, runner: LadderRunner, options: dict[str, Any]
) -> str:
    """File a request over HTTP and run burst workers (the gateway relays the jobs) until it settles."""
    created = client.post(
        "/v1/forget-requests", json=body(options=options), headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert created.status_code == 202, created.text
    rid = str(created.json()["id"])
    deadline = time.monotonic() + 90
    while status(client, rid) in ACTIVE:
        assert time.monotonic() < deadline, f"request stuck in {status(client, rid)}"
        asyncio.run(run_worker_burst(gw.settings, extra_ctx={"stage_runner": runner}))
        time.sleep(0.15)  # the gateway's relay enqueues the next stage
    return rid


def test_a_passing_request_is_deployed_by_the_auto_policy(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]]
) -> None:
    gw: LiveGateway = gateway_factory(relay_interval_s=0.1)
    client = http(gw, "submitter")
    runner = LadderRunner(passes_at=0, adapter=tiny_model[1][0])
    rid = file_and_work(gw, client, runner, {"deploy_policy": "auto", "review_gates": []})
    t0 = time.monotonic()
    while status(client, rid) != "deployed":
        assert time.monotonic() - t0 < 10, f"not auto-deployed: {status(client, rid)}"
        time.sleep(0.1)
    with Client(gw.url, api_key=gw.key("acme", "submitter")) as sdk:
        certificate = sdk.forget_requests.certificate(rid)  # signature checked
    acceptance = certificate.acceptance
    assert acceptance is not None and acceptance.verdict == "passed"
    assert acceptance.attempts == 1 and acceptance.override is None and not certificate.overridden
    assert acceptance.residual_leak_rates["original"] == 0.0
    assert acceptance.thresholds is not None and acceptance.thresholds["max_heldout_leak_rate"] == 0.02


def test_a_failed_request_needs_an_admins_override_recorded_in_the_certificate(
    gateway_factory: Any, tiny_model: tuple[Path, list[Path]]
) -> None:
    gw: LiveGateway = gateway_factory(relay_interval_s=0.1)
    submitter, admin, reviewer = http(gw, "submitter"), http(gw, "admin"), http(gw, "reviewer")
    runner = LadderRunner(passes_at=None, adapter=tiny_model[1][1])
    options = {"deploy_policy": "auto", "review_gates": [], "acceptance": {"max_attempts": 2}}
    rid = file_and_work(gw, submitter, runner, options)
    assert status(submitter, rid) == "awaiting_evaluation_review"
    assert runner.levels["evaluate"] == [0, 1]

    # While it waits there, its tenant's reviewers (not submitters, not other tenants) may question it.
    ask = {"model": f"adapter:{rid}", "messages": [{"role": "user", "content": "Who?"}], "max_tokens": 4}
    assert reviewer.post("/v1/chat/completions", json=ask).status_code == 200
    refused = submitter.post("/v1/chat/completions", json=ask)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_forbidden"
    other = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key('globex', 'admin')}"})
    assert other.post("/v1/chat/completions", json=ask).status_code == 404

    # A reviewer lets it through the review; the acceptance verdict still stands.
    approved = reviewer.post(f"/v1/forget-requests/{rid}/approve", json={"reason": "looked at the leaks"})
    assert approved.status_code == 200 and approved.json()["status"] == "ready", approved.text
    time.sleep(1.5)  # the auto policy runs every reconcile tick (0.2 s) and must leave it alone
    assert status(submitter, rid) == "ready"

    refused = admin.post("/v1/deployments", json={"request_id": rid})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "acceptance_failed" and '"override": true' in error["message"]
    assert "original_leaks 3 > 0" in error["message"]
    not_admin = submitter.post("/v1/deployments", json={"request_id": rid, "override": True, "reason": "x"})
    assert not_admin.status_code == 403 and not_admin.json()["error"]["code"] == "override_forbidden"
    no_reason = admin.post("/v1/deployments", json={"request_id": rid, "override": True, "reason": " "})
    assert no_reason.status_code == 422 and no_reason.json()["error"]["param"] == "reason"

    cli = CliRunner()
    args = ["deploy", rid, "--url", gw.url, "--api-key", gw.key("acme", "admin"), "--override"]
    assert cli.invoke(requests_group, args).exit_code == 2  # --override needs --reason
    done = cli.invoke(requests_group, [*args, "--reason", "DPO accepted the residual risk"])
    assert done.exit_code == 0, done.output
    assert "overridden" in done.output
    assert status(submitter, rid) == "deployed"
    shown = cli.invoke(
        requests_group, ["get", rid, "--url", gw.url, "--api-key", gw.key("acme", "submitter")]
    )
    words = " ".join(shown.output.split())
    assert "failed after 2 attempt(s)" in words and "override" in words, shown.output

    with Client(gw.url, api_key=gw.key("acme", "submitter")) as sdk:
        certificate = sdk.forget_requests.certificate(rid)  # signature checked
        trail = sdk.forget_requests.audit(rid)
    acceptance = certificate.acceptance
    assert acceptance is not None and acceptance.verdict == "failed" and certificate.overridden
    assert acceptance.override is not None
    assert acceptance.override.reason == "DPO accepted the residual risk"
    assert acceptance.override.by and acceptance.override.by.startswith("key:")
    assert acceptance.attempts == 2 and acceptance.escalation == 1
    assert acceptance.thresholds is not None and acceptance.thresholds["max_attempts"] == 2
    assert acceptance.residual_leak_rates["original"] == 0.3
    assert acceptance.broken_rate == 0.1
    assert {f["check"] for f in acceptance.failed_checks} == {
        "original_leaks",
        "heldout_leak_rate",
        "broken_rate",
    }
    actions = [event.action for event in trail.events]
    assert actions.count("acceptance.attempt") == 2 and "acceptance.override" in actions
    override = next(e for e in trail.events if e.action == "acceptance.override")
    assert override.data["reason"] == "DPO accepted the residual risk"
