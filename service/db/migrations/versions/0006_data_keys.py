"""Per-request data keys for personal data in the object store (deleted by the purge: crypto-shredding).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from service.db.base import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("key", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_data_keys"),
    )


def downgrade() -> None:
    op.drop_table("data_keys")
