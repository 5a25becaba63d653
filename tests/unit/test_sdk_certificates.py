"""SDK certificate checks: pinning the signer, small-order keys, and both verification backends.

Keys and signatures are made with ``cryptography`` (the service's own signer library); the SDK's
pure-Python path and its ``cryptography`` path must agree.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from obliviate_client import SignatureError, _ed25519
from obliviate_client._models import Certificate, PublicKey
from obliviate_client._resources import key_id_of, verify_certificate

PAYLOAD: dict[str, Any] = {
    "type": "obliviate.forget-certificate/v1",
    "request_id": "fr_1",
    "deployed_version": "v1",
}


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _signed(key: Ed25519PrivateKey, payload: dict[str, Any] = PAYLOAD) -> tuple[Certificate, PublicKey]:
    message = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raw = _raw(key)
    cert = Certificate(
        certificate=dict(payload),
        signature=base64.b64encode(key.sign(message)).decode(),
        algorithm="Ed25519",
        key_id=key_id_of(raw),
    )
    served = PublicKey(algorithm="Ed25519", key_id=key_id_of(raw), public_key=base64.b64encode(raw).decode())
    return cert, served


def test_both_backends_agree_on_valid_and_altered_signatures() -> None:
    key = Ed25519PrivateKey.generate()
    message = b"certified"
    signature = key.sign(message)
    for check in (_ed25519.verify, _ed25519.verify_pure):
        assert check(_raw(key), message, signature)
        assert not check(_raw(key), message + b"!", signature)
        assert not check(_raw(key), message, signature[:-1] + bytes([signature[-1] ^ 1]))


def test_small_order_public_keys_are_rejected() -> None:
    # The neutral element as "public key" with R = neutral and S = 0 satisfies the verification
    # equation for any message: a server could hand out this "key" and forge every certificate.
    neutral = (1).to_bytes(32, "little")
    forged = neutral + bytes(32)
    for message in (b"anything", b"else"):
        assert not _ed25519.verify_pure(neutral, message, forged)
        assert not _ed25519.verify(neutral, message, forged)
    assert _ed25519.weak_key(neutral)
    cert = Certificate(
        certificate=dict(PAYLOAD),
        signature=base64.b64encode(forged).decode(),
        algorithm="Ed25519",
        key_id=key_id_of(neutral),
    )
    served = PublicKey(
        algorithm="Ed25519", key_id=key_id_of(neutral), public_key=base64.b64encode(neutral).decode()
    )
    with pytest.raises(SignatureError, match="small order"):
        verify_certificate(cert, served)


def test_pinned_key_or_key_id_rejects_a_server_that_swapped_its_key() -> None:
    ours, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good, served_good = _signed(ours)
    forged, served_forged = _signed(attacker, {**PAYLOAD, "deployed_version": "v9"})
    # Without a pin, a server that serves the attacker's key makes the forged certificate verify.
    assert verify_certificate(forged, served_forged) is forged
    pem = ours.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for pin in (_raw(ours), base64.b64encode(_raw(ours)).decode(), pem.decode(), pem):
        assert verify_certificate(good, None, pinned_key=pin) is good
        with pytest.raises(SignatureError):
            verify_certificate(forged, served_forged, pinned_key=pin)
    ours_id = key_id_of(_raw(ours))
    assert verify_certificate(good, served_good, pinned_key_id=ours_id) is good
    with pytest.raises(SignatureError, match="pinned key"):
        verify_certificate(forged, served_forged, pinned_key_id=ours_id)
    # A server that claims our key id for the attacker's key is caught: the id is computed.
    lying = PublicKey(algorithm="Ed25519", key_id=ours_id, public_key=served_forged.public_key)
    with pytest.raises(SignatureError):
        verify_certificate(forged.model_copy(update={"key_id": ours_id}), lying, pinned_key_id=ours_id)
