"""Tables of the deployments domain: adapter versions (immutable), served aliases, alias history.

The database holds the *desired* state: which version each alias serves. Every replica converges its
in-process engine onto it (see ``reconcile.py``); ``generation`` makes a change cheap to detect.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime, utcnow


class AdapterVersion(Base):
    """One deployable adapter, never modified once written; its files are never deleted while referenced."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("alias", "version", name="uq_adapter_versions_alias_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64))
    # 1, 2, 3 ... per alias; version 0 is the base model and has no row.
    version: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("forget_requests.id", ondelete="SET NULL"), nullable=True, index=True
    )
    tenant: Mapped[str] = mapped_column(String(64))
    # The version this one was composed on (None: composed on the base model).
    parent_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("adapter_versions.id"), nullable=True
    )
    # Content-addressed copy in the data directory (shared storage for several replicas).
    path: Mapped[str] = mapped_column(String(1024))
    # Engine content hash: sha256 over adapter_model.safetensors then adapter_config.json.
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ServedAlias(Base):
    """What an alias serves now; ``generation`` increases on every change so replicas notice cheaply."""

    __tablename__ = "served_aliases"

    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("adapter_versions.id"), nullable=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AliasEvent(Base):
    """Append-only history of alias flips (deploys and rollbacks)."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))  # deploy | rollback
    from_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    to_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    generation: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
