"""The forget-request lifecycle: states, allowed transitions, stages, gates and progress weights.

::

    received → queued → reinforcing → mining_anchors → [awaiting_anchor_review] → generating_targets
     → [awaiting_target_review] → unlearning → evaluating → [awaiting_evaluation_review] → ready → deployed
    (any non-terminal) → failed | cancelled ;  deployed → superseded | rolled_back
    evaluating → unlearning (the acceptance gate's escalation ladder: the worker retrains harder)

A status named after a stage means "this stage is enqueued or running"; ``queued`` is the same for
the first stage. Bracketed states are review gates, entered only when the request has that gate on (and the
evaluation review also when the acceptance gate still fails after the last escalation).
Every change goes through :data:`ALLOWED`, so the server enforces the order (no deploy before
evaluation, no skipping a gate).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from service import jobs


class Status(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    REINFORCING = "reinforcing"
    MINING_ANCHORS = "mining_anchors"
    AWAITING_ANCHOR_REVIEW = "awaiting_anchor_review"
    GENERATING_TARGETS = "generating_targets"
    AWAITING_TARGET_REVIEW = "awaiting_target_review"
    UNLEARNING = "unlearning"
    EVALUATING = "evaluating"
    AWAITING_EVALUATION_REVIEW = "awaiting_evaluation_review"
    READY = "ready"
    DEPLOYED = "deployed"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Gate(StrEnum):
    ANCHOR_REVIEW = "anchor_review"
    TARGET_REVIEW = "target_review"
    EVALUATION_REVIEW = "evaluation_review"


S = Status

#: The status a stage has while it is enqueued or running.
STAGE_STATUS: Final[dict[str, Status]] = {
    jobs.REINFORCE: S.REINFORCING,
    jobs.MINE_ANCHORS: S.MINING_ANCHORS,
    jobs.GENERATE_TARGETS: S.GENERATING_TARGETS,
    jobs.UNLEARN: S.UNLEARNING,
    jobs.EVALUATE: S.EVALUATING,
}
STATUS_STAGE: Final[dict[Status, str]] = {status: stage for stage, status in STAGE_STATUS.items()}

#: The gate that may follow a stage, and the state it waits in.
GATE_AFTER: Final[dict[str, Gate]] = {
    jobs.MINE_ANCHORS: Gate.ANCHOR_REVIEW,
    jobs.GENERATE_TARGETS: Gate.TARGET_REVIEW,
    jobs.EVALUATE: Gate.EVALUATION_REVIEW,
}
GATE_STATUS: Final[dict[Gate, Status]] = {
    Gate.ANCHOR_REVIEW: S.AWAITING_ANCHOR_REVIEW,
    Gate.TARGET_REVIEW: S.AWAITING_TARGET_REVIEW,
    Gate.EVALUATION_REVIEW: S.AWAITING_EVALUATION_REVIEW,
}
STATUS_GATE: Final[dict[Status, Gate]] = {status: gate for gate, status in GATE_STATUS.items()}

#: The stage after each stage (None: the pipeline is done and the request becomes ready).
NEXT_STAGE: Final[dict[str, str | None]] = {
    jobs.REINFORCE: jobs.MINE_ANCHORS,
    jobs.MINE_ANCHORS: jobs.GENERATE_TARGETS,
    jobs.GENERATE_TARGETS: jobs.UNLEARN,
    jobs.UNLEARN: jobs.EVALUATE,
    jobs.EVALUATE: None,
}

#: Share of the whole pipeline's time each stage takes (rough, measured on the demo model).
STAGE_WEIGHTS: Final[dict[str, float]] = {
    jobs.REINFORCE: 0.25,
    jobs.MINE_ANCHORS: 0.10,
    jobs.GENERATE_TARGETS: 0.15,
    jobs.UNLEARN: 0.30,
    jobs.EVALUATE: 0.20,
}

TERMINAL: Final[frozenset[Status]] = frozenset({S.FAILED, S.CANCELLED, S.SUPERSEDED, S.ROLLED_BACK})
#: States where the request sits still (no job), waiting for a human or a deploy.
WAITING: Final[frozenset[Status]] = frozenset({*GATE_STATUS.values(), S.READY, S.DEPLOYED})
#: States where a job must exist: the sweeper watches these.
ACTIVE: Final[frozenset[Status]] = frozenset({S.RECEIVED, S.QUEUED, *STAGE_STATUS.values()})
#: States that can still be cancelled or failed.
CANCELLABLE: Final[frozenset[Status]] = frozenset(set(Status) - TERMINAL - {S.DEPLOYED})


def _allowed() -> dict[Status, frozenset[Status]]:
    table: dict[Status, set[Status]] = {status: set() for status in Status}
    table[S.RECEIVED].add(S.QUEUED)
    table[S.QUEUED].add(S.REINFORCING)
    for stage, status in STAGE_STATUS.items():
        following = NEXT_STAGE[stage]
        after = STAGE_STATUS[following] if following else S.READY
        table[status].add(after)
        gate = GATE_AFTER.get(stage)
        if gate is not None:
            table[status].add(GATE_STATUS[gate])
            table[GATE_STATUS[gate]].add(after)
    # A failed acceptance gate retrains at the next escalation level; after the last level the
    # request waits at the evaluation review (entered then even when that gate is off).
    table[S.EVALUATING].add(S.UNLEARNING)
    table[S.DEPLOYED] |= {S.SUPERSEDED, S.ROLLED_BACK}
    table[S.READY].add(S.DEPLOYED)
    for status in CANCELLABLE:
        table[status] |= {S.FAILED, S.CANCELLED}
    return {status: frozenset(targets) for status, targets in table.items()}


#: ``ALLOWED[a]`` is every state ``a`` may move to.
ALLOWED: Final[dict[Status, frozenset[Status]]] = _allowed()


def can_move(current: str, target: str) -> bool:
    return Status(target) in ALLOWED[Status(current)]


def after_stage(stage: str, gates: list[str]) -> tuple[Status, str | None]:
    """Where a request goes when ``stage`` finishes: (new status, job to enqueue or None)."""
    gate = GATE_AFTER.get(stage)
    if gate is not None and gate.value in gates:
        return GATE_STATUS[gate], None
    return after_gate(stage)


def after_gate(stage: str) -> tuple[Status, str | None]:
    """Where a request goes once the gate after ``stage`` is approved (or was off)."""
    following = NEXT_STAGE[stage]
    if following is None:
        return S.READY, None
    return STAGE_STATUS[following], following


def stage_of_gate(gate: Gate) -> str:
    return next(stage for stage, g in GATE_AFTER.items() if g == gate)


def overall_progress(stages: dict[str, dict[str, object]]) -> float:
    """Weighted completion of the pipeline from per-stage fractions."""
    total = 0.0
    for stage, weight in STAGE_WEIGHTS.items():
        info = stages.get(stage) or {}
        if info.get("state") == "done":
            total += weight
        else:
            fraction = info.get("progress")
            total += weight * (float(fraction) if isinstance(fraction, int | float) else 0.0)
    return round(min(1.0, total), 4)
