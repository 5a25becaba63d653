"""The lifecycle table, gates, due dates and overall progress."""

from __future__ import annotations

from datetime import UTC, datetime

from service.forget.lifecycle import ALLOWED, Status, after_gate, after_stage, can_move, overall_progress
from service.forget.service import add_months


def test_no_deploy_before_evaluation_and_terminal_states_are_final() -> None:
    assert not can_move("unlearning", "deployed")
    assert not can_move("evaluating", "deployed")
    assert can_move("ready", "deployed")
    assert can_move("deployed", "rolled_back") and not can_move("deployed", "cancelled")
    for status in (Status.FAILED, Status.CANCELLED, Status.SUPERSEDED, Status.ROLLED_BACK):
        assert ALLOWED[status] == frozenset()


def test_gates_are_entered_only_when_on() -> None:
    assert after_stage("mine_anchors", []) == (Status.GENERATING_TARGETS, "generate_targets")
    assert after_stage("mine_anchors", ["anchor_review"]) == (Status.AWAITING_ANCHOR_REVIEW, None)
    assert after_stage("evaluate", ["evaluation_review"]) == (Status.AWAITING_EVALUATION_REVIEW, None)
    assert after_stage("evaluate", []) == (Status.READY, None)
    assert after_gate("generate_targets") == (Status.UNLEARNING, "unlearn")
    assert not can_move("awaiting_anchor_review", "unlearning")


def test_a_failed_acceptance_gate_may_retrain_only_from_evaluating() -> None:
    assert can_move("evaluating", "unlearning")
    assert can_move("evaluating", "awaiting_evaluation_review")
    assert not can_move("awaiting_evaluation_review", "unlearning")
    assert not can_move("ready", "unlearning") and not can_move("deployed", "unlearning")


def test_due_date_is_one_calendar_month() -> None:
    assert add_months(datetime(2025, 1, 31, 12, tzinfo=UTC), 1) == datetime(2025, 2, 28, 12, tzinfo=UTC)
    assert add_months(datetime(2024, 1, 31, tzinfo=UTC), 1) == datetime(2024, 2, 29, tzinfo=UTC)
    assert add_months(datetime(2025, 12, 15, tzinfo=UTC), 1) == datetime(2026, 1, 15, tzinfo=UTC)


def test_overall_progress_weights_stages() -> None:
    assert overall_progress({}) == 0.0
    done = {
        s: {"state": "done"} for s in ("reinforce", "mine_anchors", "generate_targets", "unlearn", "evaluate")
    }
    assert overall_progress(done) == 1.0
    assert overall_progress({"reinforce": {"state": "running", "progress": 0.5}}) == 0.125
