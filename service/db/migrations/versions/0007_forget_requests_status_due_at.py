"""Index forget requests by (status, due_at) in place of status alone: the /metrics counts by status,
overdue and due soon then read the index without visiting the rows (issue 13's scrape target).

The new index serves every lookup by status the old one did (status is its first column).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_forget_requests_status_due_at", "forget_requests", ["status", "due_at"])
    op.drop_index("ix_forget_requests_status", table_name="forget_requests")


def downgrade() -> None:
    op.create_index("ix_forget_requests_status", "forget_requests", ["status"])
    op.drop_index("ix_forget_requests_status_due_at", table_name="forget_requests")
