"""Initial schema: installation facts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from service.db.base import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_service_meta"),
    )


def downgrade() -> None:
    op.drop_table("service_meta")
