"""SDK pieces of the acceptance gate: the option on the wire, the deploy body, the certificate view."""

from __future__ import annotations

from obliviate_client import Acceptance, Certificate, Options
from obliviate_client._resources import create_call, deploy_body


def _create_body(options: Options) -> dict[str, object]:
    call = create_call(
        subject="Jane Roe",
        corpus=["text"],
        qa_pairs=None,
        hints=None,
        probes=None,
        retain_examples=None,
        options=options,
        data_subject_ref=None,
        legal_basis=None,
        idempotency_key="k",
    )
    assert isinstance(call.json, dict)
    return call.json


def test_only_the_thresholds_given_are_sent() -> None:
    body = _create_body(Options(acceptance=Acceptance(max_attempts=2, max_broken_rate=0.1)))
    assert body["options"] == {
        "deploy_policy": "manual",
        "target_alias": "chat",
        "acceptance": {"max_attempts": 2, "max_broken_rate": 0.1},
    }
    assert "acceptance" not in _create_body(Options())["options"]  # type: ignore[operator]


def test_deploy_body_carries_an_override_only_when_asked() -> None:
    assert deploy_body("fr_1", None, False, None, {}) == {"request_id": "fr_1"}
    assert deploy_body("fr_1", "chat", True, "why", {}) == {
        "request_id": "fr_1",
        "alias": "chat",
        "override": True,
        "reason": "why",
    }


def test_certificate_acceptance_view_reads_the_signed_payload() -> None:
    payload = {
        "request_id": "fr_1",
        "acceptance": {
            "verdict": "failed",
            "thresholds": {"max_attempts": 3, "max_heldout_leak_rate": 0.02},
            "residual_leak_rates": {"original": 0.3, "probe": None},
            "attempts": 3,
            "override": {"by": "key:abc", "reason": "accepted risk", "at": "2026-11-30T21:00:00+00:00"},
        },
    }
    cert = Certificate(certificate=payload, signature="s", key_id="k")
    assert cert.acceptance is not None and cert.acceptance.verdict == "failed"
    assert cert.acceptance.residual_leak_rates["original"] == 0.3
    assert cert.overridden and cert.acceptance.override is not None
    assert cert.acceptance.override.reason == "accepted risk"
    assert cert.certificate == payload  # the signed bytes are not rewritten by the typed view
    assert Certificate(certificate={}, signature="s", key_id="k").acceptance is None


def test_waiting_for_a_deploy_ends_when_the_gate_stopped_the_request() -> None:
    from obliviate_client._models import AcceptanceSummary, ForgetRequest
    from obliviate_client._resources import wait_is_over

    def request(status: str, verdict: str | None) -> ForgetRequest:
        acceptance = AcceptanceSummary(verdict=verdict) if verdict else None  # type: ignore[arg-type]
        return ForgetRequest.model_construct(status=status, acceptance=acceptance)

    assert wait_is_over(request("awaiting_evaluation_review", "failed"), "deployed")
    # A human review gate the request reached without a failed verdict: a person may still deploy it.
    assert not wait_is_over(request("awaiting_evaluation_review", "passed"), "deployed")
    assert not wait_is_over(request("awaiting_evaluation_review", None), "deployed")
    assert not wait_is_over(request("ready", "passed"), "deployed")
    assert wait_is_over(request("deployed", "passed"), "deployed")


def test_the_sdk_ships_its_type_annotations() -> None:
    """PEP 561: type checkers read the SDK's inline annotations only with the py.typed marker."""
    from importlib.resources import files

    assert files("obliviate_client").joinpath("py.typed").is_file()
