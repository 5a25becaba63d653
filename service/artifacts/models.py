"""The artifacts domain's one table: per-request data keys (deleting a row is the crypto-shredding)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime, utcnow


class DataKey(Base):
    """The AES-256-GCM key that seals one request's personal data in the object store.

    No foreign key to ``forget_requests``: the key is written before the request row (the corpus is
    stored first, see the intake), and a key without a request is an orphan the purge removes.
    """

    __tablename__ = "data_keys"

    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
