"""Deployments: immutable adapter versions, served aliases and their history.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from service.db.base import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.String(40), nullable=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_adapter_versions"),
        sa.UniqueConstraint("alias", "version", name="uq_adapter_versions_alias_version"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["forget_requests.id"],
            name="fk_adapter_versions_request_id_forget_requests",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["adapter_versions.id"], name="fk_adapter_versions_parent_id_adapter_versions"
        ),
    )
    op.create_index("ix_adapter_versions_request_id", "adapter_versions", ["request_id"])

    op.create_table(
        "served_aliases",
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", sa.String(40), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("alias", name="pk_served_aliases"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["adapter_versions.id"], name="fk_served_aliases_version_id_adapter_versions"
        ),
    )

    op.create_table(
        "alias_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version_id", sa.String(40), nullable=True),
        sa.Column("to_version_id", sa.String(40), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alias_events"),
    )
    op.create_index("ix_alias_events_alias", "alias_events", ["alias"])


def downgrade() -> None:
    for table in ("alias_events", "served_aliases", "adapter_versions"):
        op.drop_table(table)
