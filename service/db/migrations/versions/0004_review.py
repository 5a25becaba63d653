"""Human review: gates, tasks and assignments.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from service.db.base import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_gates",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("gate", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deadline_at", UTCDateTime(), nullable=False),
        sa.Column("escalated_at", UTCDateTime(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("inputs_purged_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_gates"),
        sa.UniqueConstraint("request_id", "gate", name="uq_review_gates_request_id_gate"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["forget_requests.id"],
            name="fk_review_gates_request_id_forget_requests",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_review_gates_tenant_status", "review_gates", ["tenant", "status"])

    op.create_table(
        "review_tasks",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("gate_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("expected", sa.JSON(), nullable=True),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resolution", sa.JSON(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_tasks"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["forget_requests.id"],
            name="fk_review_tasks_request_id_forget_requests",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["gate_id"], ["review_gates.id"], name="fk_review_tasks_gate_id_review_gates", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_review_tasks_tenant_status", "review_tasks", ["tenant", "status"])
    op.create_index("ix_review_tasks_gate_id", "review_tasks", ["gate_id"])

    op.create_table(
        "review_assignments",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_assignments"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["review_tasks.id"],
            name="fk_review_assignments_task_id_review_tasks",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_review_assignments_task_id", "review_assignments", ["task_id"])
    op.create_index("ix_review_assignments_reviewer_status", "review_assignments", ["reviewer", "status"])


def downgrade() -> None:
    for table in ("review_assignments", "review_tasks", "review_gates"):
        op.drop_table(table)
