"""The review UI's signed session cookie and CSRF check."""

from __future__ import annotations

import stat
import time
from pathlib import Path

from service.auth.keys import Principal, Role
from service.review.session import csrf_ok, decode_session, load_secret, new_session, sign, unsign

PRINCIPAL = Principal(tenant="acme", role=Role.REVIEWER, key_id="key_0123")


def test_secret_is_created_once_private(tmp_path: Path) -> None:
    first = load_secret(tmp_path)
    assert len(first) == 32 and load_secret(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / "review-session.key").stat().st_mode)
    assert mode == 0o600


def test_session_round_trip_and_tampering(tmp_path: Path) -> None:
    secret = load_secret(tmp_path)
    session = new_session(PRINCIPAL, ttl_s=60)
    token = session.encode(secret)
    decoded = decode_session(secret, token)
    assert decoded is not None and decoded.principal == PRINCIPAL and decoded.csrf == session.csrf
    body, _, mac = token.partition(".")
    forged = sign(b"another secret of thirty-two bytes!", unsign(secret, token) or {})
    assert decode_session(secret, forged) is None
    assert decode_session(secret, body + "." + mac[:-2] + "AA") is None
    assert decode_session(secret, "garbage") is None and decode_session(secret, None) is None
    admin = {**(unsign(secret, token) or {}), "r": "admin"}  # changing the role breaks the signature
    assert (
        decode_session(secret, body.replace(body, sign(b"x" * 32, admin).split(".")[0]) + "." + mac) is None
    )


def test_expired_session_is_refused(tmp_path: Path) -> None:
    secret = load_secret(tmp_path)
    old = new_session(PRINCIPAL, ttl_s=-1)
    assert old.expires < time.time()
    assert decode_session(secret, old.encode(secret)) is None


def test_csrf_comparison() -> None:
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd") and not csrf_ok("abc", None) and not csrf_ok("", "")
