"""Review gates, their tasks and reviewers' assignments (answers) as tables.

A *gate* row is opened when a request enters ``awaiting_*_review``; its *tasks* hold the input shown
to reviewers (personal data: cleared when the request's corpus is purged) and, once resolved, the
consensus. An *assignment* is one reviewer's claim on a task, with a time limit, and their answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime, utcnow


class ReviewGate(Base):
    __tablename__ = "review_gates"
    __table_args__ = (
        UniqueConstraint("request_id", "gate", name="uq_review_gates_request_id_gate"),
        Index("ix_review_gates_tenant_status", "tenant", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(40), ForeignKey("forget_requests.id", ondelete="CASCADE"))
    gate: Mapped[str] = mapped_column(String(32))
    #: open → resolved (its tasks decided it) | closed (the request left the gate another way)
    status: Mapped[str] = mapped_column(String(16), default="open")
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: When the tasks' inputs were deleted (after the request's corpus was purged).
    inputs_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReviewTask(Base):
    __tablename__ = "review_tasks"
    __table_args__ = (
        Index("ix_review_tasks_tenant_status", "tenant", "status"),
        Index("ix_review_tasks_gate_id", "gate_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(40), ForeignKey("forget_requests.id", ondelete="CASCADE"))
    gate_id: Mapped[str] = mapped_column(String(40), ForeignKey("review_gates.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # anchor | target | evaluation
    position: Mapped[int] = mapped_column(Integer, default=0)
    #: What the reviewer sees (passages, completions): personal data, set to {} at the purge.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: A control task has a known answer (``expected``) and scores reviewers; it never decides a gate.
    control: Mapped[bool] = mapped_column(Boolean, default=False)
    expected: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Answers needed (the gate's overlap; one more after a tie, up to overlap + 2).
    required: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | resolved
    resolution: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReviewAssignment(Base):
    __tablename__ = "review_assignments"
    __table_args__ = (
        Index("ix_review_assignments_task_id", "task_id"),
        Index("ix_review_assignments_reviewer_status", "reviewer", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(40), ForeignKey("review_tasks.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(64))
    #: ``key:<api key id>`` for a signed-in reviewer, ``external:<worker>`` for imported answers.
    reviewer: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(
        String(16), default="active"
    )  # active | answered | expired | released
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: For control tasks: whether the answer matched the known one.
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class ReviewSessionEpoch(Base):
    """Sign-out on the server: a session cookie is valid only while it carries its key's current epoch.

    Signing out bumps the epoch, so a copied or stolen cookie stops working at once (the cookie is
    signed and stateless otherwise; clearing it in the browser alone ends nothing).
    """

    __tablename__ = "review_session_epochs"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
