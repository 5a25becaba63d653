"""Review sign-out on the server: a session epoch per API key (signing out ends its sessions).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from service.db.base import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_session_epochs",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_review_session_epochs"),
    )


def downgrade() -> None:
    op.drop_table("review_session_epochs")
