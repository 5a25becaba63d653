"""The review UI's sign-in: an HMAC-signed session cookie and CSRF tokens.

A reviewer signs in with an API key once; the cookie then carries the key's *id* (never the key),
tenant, role, expiry and a CSRF token, signed with HMAC-SHA256 under a secret kept in the data
directory (created on first start, mode 0600). Every request re-checks that the key is still active,
so revoking a key ends its sessions, and that the cookie carries the key's current sign-out epoch, so
signing out ends the session on the server too (a copied cookie stops working). The cookie is HttpOnly, SameSite=Strict and Secure; form posts
carry the CSRF token, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from service.auth.keys import Principal, Role

COOKIE = "obliviate_review"
#: Before sign-in, the login form's CSRF token rides in its own short-lived cookie (double submit).
LOGIN_COOKIE = "obliviate_review_login"
SECRET_FILE = "review-session.key"


def load_secret(data_dir: Path) -> bytes:
    """The signing secret: read from the data directory, or created there (0600) on first use."""
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    try:
        # Another process may have won the race: keep the first secret, so both sign alike.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, payload: dict[str, object]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(secret: bytes, token: str) -> dict[str, object] | None:
    """The payload if the signature is valid, else None."""
    body, _, mac = token.partition(".")
    if not body or not mac:
        return None
    expected = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        value = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class ReviewSession:
    principal: Principal
    csrf: str
    expires: float
    #: The key's sign-out epoch when the session began; signing out bumps it (server side).
    epoch: int = 0

    def encode(self, secret: bytes) -> str:
        return sign(
            secret,
            {
                "k": self.principal.key_id,
                "t": self.principal.tenant,
                "r": self.principal.role.value,
                "c": self.csrf,
                "e": int(self.expires),
                "n": self.epoch,
            },
        )


def new_session(principal: Principal, ttl_s: float, epoch: int = 0) -> ReviewSession:
    return ReviewSession(
        principal=principal, csrf=secrets.token_urlsafe(24), expires=time.time() + ttl_s, epoch=epoch
    )


def decode_session(secret: bytes, token: str | None) -> ReviewSession | None:
    """A valid, unexpired session from the cookie (the key's liveness is checked by the caller)."""
    if not token:
        return None
    data = unsign(secret, token)
    if data is None:
        return None
    try:
        expires = float(data["e"])  # type: ignore[arg-type]
        principal = Principal(tenant=str(data["t"]), role=Role(str(data["r"])), key_id=str(data["k"]))
        csrf = str(data["c"])
        epoch = int(data.get("n", 0))  # type: ignore[call-overload]
    except (KeyError, ValueError, TypeError):
        return None
    if expires < time.time():
        return None
    return ReviewSession(principal=principal, csrf=csrf, expires=expires, epoch=epoch)


def csrf_ok(expected: str, given: object) -> bool:
    return (
        isinstance(given, str) and bool(expected) and hmac.compare_digest(expected.encode(), given.encode())
    )
