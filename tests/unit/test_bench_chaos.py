"""Pure parts of the fault-injection bench (bench/chaos.py): the seeded fault plan, when a planned fault
fires, the synthetic requests, and the counting of lost, stuck, duplicated and mis-served."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

from bench.chaos import (
    POINTS,
    STAGES,
    Fault,
    Outcome,
    acceptable,
    chat_history,
    classify,
    due,
    judge_probe,
    plan_faults,
    summarise,
    synthetic_request,
    targets_met,
)

RATES = {"kill_worker": 0.5, "flush_redis": 0.3, "restart_api": 0.3}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def test_plan_is_seeded_and_respects_rates_and_points() -> None:
    a, b = plan_faults(200, 7, RATES), plan_faults(200, 7, RATES)
    assert [[(f.kind, f.point, f.delay_s) for f in p] for p in a] == [
        [(f.kind, f.point, f.delay_s) for f in p] for p in b
    ]
    assert a != plan_faults(200, 8, RATES)
    kinds = Counter(f.kind for p in a for f in p)
    assert 70 <= kinds["kill_worker"] <= 130 and 30 <= kinds["flush_redis"] <= 90
    for p in a:
        assert len({f.kind for f in p}) == len(p), "at most one fault of each kind per request"
        assert [POINTS.index(f.point) for f in p] == sorted(POINTS.index(f.point) for f in p)
        for f in p:
            if f.kind == "kill_worker":
                assert f.point in STAGES, "workers are killed while they run a stage"
            assert 0.0 <= f.delay_s <= 3.0
    assert plan_faults(50, 1, {k: 0.0 for k in RATES}) == [[] for _ in range(50)]
    assert all(len(p) == 3 for p in plan_faults(20, 1, {k: 1.0 for k in RATES}))


def test_a_fault_fires_at_its_point_after_its_delay_or_late_once_passed() -> None:
    fault = Fault("kill_worker", "unlearn", delay_s=2.0)
    assert not due(fault, "queued", False, 99)
    assert not due(fault, "generating_targets", False, 99)
    assert not due(fault, "unlearning", False, 99), "enqueued, not yet claimed by a worker"
    assert not due(fault, "unlearning", True, 1.0)
    assert due(fault, "unlearning", True, 2.0)
    assert due(fault, "evaluating", False, 0.0), "passed the point: fire at once"
    assert not due(fault, "deployed", False, 99), "settled: nothing to fire at"
    fault.fired_at = 1.0
    assert not due(fault, "unlearning", True, 99), "fires once"
    flush = Fault("flush_redis", "queued", delay_s=0.5)
    assert due(flush, "received", False, 0.5) and not due(flush, "queued", False, 0.1)
    restart = Fault("restart_api", "deploy", delay_s=0.0)
    assert due(restart, "ready", False, 0.0) and not due(restart, "evaluating", True, 9)


def test_synthetic_requests_are_small_distinct_and_auto_deployed() -> None:
    bodies = [synthetic_request(i, 0, epochs=1) for i in range(30)]
    assert len({b["subject"] for b in bodies}) == 30
    assert len({b["data_subject_ref"] for b in bodies}) == 30
    assert synthetic_request(3, 0, 1) == synthetic_request(3, 0, 1)
    for body in bodies:
        assert body["options"]["deploy_policy"] == "auto" and body["options"]["review_gates"] == []
        assert body["options"]["acceptance"]["max_attempts"] == 1
        assert "pipeline" not in body["options"], "the API schema has no pipeline options"
        assert len(json.dumps(body)) < 2000


def _body(status: str, heartbeat: float | None = None, failure: str | None = None) -> dict:
    return {
        "status": status,
        "timings": {"heartbeat_at": _iso(heartbeat) if heartbeat else None},
        "failure": {"code": failure, "reason": "x"} if failure else None,
    }


def test_classify_counts_lost_stuck_duplicated() -> None:
    now = 1_000_000.0
    filed = [{"index": i, "request_id": f"fr_{i}", "ref": f"ref-{i}"} for i in range(8)]
    filed.append({"index": 8, "request_id": None, "ref": "ref-8"})  # never acknowledged, never listed
    final = {
        "fr_0": _body("deployed"),
        "fr_1": _body("superseded"),
        "fr_2": _body("ready"),
        "fr_3": _body("failed", failure="stage_lost"),
        "fr_4": None,  # 404: the service forgot it
        "fr_5": _body("unlearning", heartbeat=now - 5),  # active, still beating: lost, not stuck
        "fr_6": _body("queued"),  # active, no heartbeat at all: stuck
        "fr_7": _body("superseded"),
    }
    versions = [
        {"alias": "chat", "version": 1, "request_id": "fr_1"},
        {"alias": "chat", "version": 2, "request_id": "fr_0"},
        {"alias": "chat", "version": 3, "request_id": "fr_7"},
        {"alias": "chat", "version": 4, "request_id": "fr_7"},
    ]
    events = {"fr_0": 2, "fr_1": 1, "fr_7": 2}
    refs = Counter({"ref-0": 1, "ref-1": 1, "ref-2": 2, "ref-3": 1})
    requeues = {"fr_0": 2, "fr_5": 1}
    outcomes = classify(filed, final, versions, events, refs, now=now, stall_s=30, requeues=requeues)
    out = {o.index: o for o in outcomes}
    assert [out[i].category for i in range(9)] == [
        "deployed", "deployed", "parked", "failed", "lost", "lost", "lost", "deployed", "lost",
    ]  # fmt: skip
    assert [i for i in range(9) if out[i].stuck] == [6]
    assert out[3].failure == "stage_lost"
    assert out[0].duplicated == ["2 status.deployed audit events"]
    assert out[2].duplicated == ["filed 2 times"]
    assert out[7].duplicated == ["2 adapter versions", "2 status.deployed audit events"]
    assert not out[1].duplicated and out[1].versions == 1

    faults = [Fault("kill_worker", "reinforce", 0, fired_status="reinforcing", fired_at=1.0)]
    faults.append(Fault("flush_redis", "deploy", 0, skipped="settled"))
    summary = summarise(list(out.values()), ["ok", "ok", "refused", "down"], faults, True, True)
    assert (summary["lost"], summary["stuck"], summary["duplicated"]) == (4, 1, 3)
    assert (summary["deployed"], summary["parked"], summary["failed"]) == (3, 1, 1)
    assert summary["mis_served"] == 0 and summary["faults_skipped"] == 1
    assert summary["sweeper_requeues"] == 3
    assert summary["faults_by_point"] == {"kill_worker@reinforce": 1}
    assert targets_met(summary) == {
        "lost": False,
        "duplicated": False,
        "mis_served": True,
        "audit_chain_ok": True,
    }
    clean = summarise([Outcome(0, "fr_0", "deployed", "deployed")], ["ok"], [], False, True)
    assert clean["mis_served"] == 1, "a wrong served version after settling counts as mis-served"


def test_probe_judged_against_the_versions_deployed_during_the_call() -> None:
    versions = [
        {"alias": "chat", "version": 2, "created_at": _iso(200.0), "fingerprint": "fp_v2"},
        {"alias": "chat", "version": 1, "created_at": _iso(100.0), "fingerprint": "fp_v1"},
        {"alias": "other", "version": 1, "created_at": _iso(50.0), "fingerprint": "fp_other"},
    ]
    history = chat_history(versions)
    assert history[0] == (float("-inf"), "fp_base") and [fp for _, fp in history[1:]] == ["fp_v1", "fp_v2"]
    assert acceptable(history, 10, 20, grace_s=0) == {"fp_base"}
    assert acceptable(history, 150, 160, grace_s=0) == {"fp_v1"}
    assert acceptable(history, 190, 210, grace_s=0) == {"fp_v1", "fp_v2"}
    assert acceptable(history, 202, 203, grace_s=5) == {"fp_v1", "fp_v2"}, "a swap in flight"

    def probe(fp: str, t0: float, model: str = "chat") -> dict:
        return {"outcome": "answer", "model": model, "fingerprint": fp, "t0": t0, "t1": t0 + 1}

    assert judge_probe(probe("fp_v1", 150), history, 5) == "ok"
    assert judge_probe(probe("fp_base", 150), history, 5) == "mis_served", (
        "base answering on a deployed alias"
    )
    assert judge_probe(probe("fp_v1", 300), history, 5) == "mis_served", "an older version after the flip"
    assert judge_probe(probe("fp_other", 150), history, 5) == "mis_served"
    assert judge_probe(probe("fp_v1", 150, model="base"), history, 5) == "mis_served"
    assert judge_probe({"outcome": "refused", "t0": 1, "t1": 2}, history, 5) == "refused"
    assert judge_probe({"outcome": "down", "t0": 1, "t1": 2}, history, 5) == "down"
