"""Create, hash and look up API keys.

Keys are 256-bit random tokens, so one SHA-256 is enough to store them (no slow KDF is needed for a
secret that cannot be guessed); the database never holds the key itself.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.models import ApiKey
from service.db.base import utcnow

KEY_PREFIX = "obl_"


class Role(StrEnum):
    SUBMITTER = "submitter"
    REVIEWER = "reviewer"
    ADMIN = "admin"
    # Runs the service for every tenant: the only role that may query the unmodified base model (it still
    # knows every tenant's forgotten subjects) and manage global aliases.
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant every object is scoped to, the role, and the key's id (for audit)."""

    tenant: str
    role: Role
    key_id: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def validate_tenant(tenant: str) -> str:
    tenant = tenant.strip()
    if not tenant or len(tenant) > 64 or not all(c.isalnum() or c in "-_." for c in tenant):
        raise ValueError("tenant must be 1-64 characters of letters, digits, '-', '_' or '.'")
    return tenant


async def create_api_key(
    session: AsyncSession, *, tenant: str, role: Role | str, name: str = ""
) -> tuple[ApiKey, str]:
    """Store a new key for ``tenant``/``role``; returns the row and the key (shown once, never stored)."""
    key = new_key()
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        tenant=validate_tenant(tenant),
        role=Role(role).value,
        key_hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 6],
        name=name[:200],
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row, key


async def lookup(session: AsyncSession, key: str) -> Principal | None:
    """The principal of an active key, or None."""
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.tenant, ApiKey.role).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    return Principal(tenant=row.tenant, role=Role(row.role), key_id=row.id)


async def revoke(session: AsyncSession, key_id: str) -> bool:
    row = await session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
