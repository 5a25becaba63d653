"""The encryption envelope for personal data at rest: AES-256-GCM under a per-request data key.

A sealed blob is ``MAGIC || nonce (12 bytes) || ciphertext || tag (16 bytes)``. The associated data
binds the blob to its request and its name inside the request (``input/spec.json``), so a blob
copied under another request or renamed inside one fails to open instead of being read as the other.
The key lives in the database (:mod:`service.artifacts.keys`); deleting it is the crypto-shredding.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"OBLVENC1"
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16


class EnvelopeError(ValueError):
    """The blob is not a sealed envelope, was altered, or belongs to another request or name."""


def new_key() -> bytes:
    """A fresh random data key (AES-256)."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _aad(request_id: str, name: str) -> bytes:
    return b"obliviate/artifact/v1\0" + request_id.encode("utf-8") + b"\0" + name.encode("utf-8")


def seal(key: bytes, request_id: str, name: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for ``request_id``'s artifact ``name``."""
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(request_id, name))


def open_sealed(key: bytes, request_id: str, name: str, blob: bytes) -> bytes:
    """Decrypt a blob made by :func:`seal` with the same key, request id and name."""
    if len(blob) < len(MAGIC) + NONCE_BYTES + _TAG_BYTES or not blob.startswith(MAGIC):
        raise EnvelopeError(f"{name}: not an encrypted artifact")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], _aad(request_id, name))
    except InvalidTag:
        raise EnvelopeError(
            f"{name}: authentication failed (altered, another request's, or another key)"
        ) from None


__all__ = ["KEY_BYTES", "MAGIC", "EnvelopeError", "new_key", "open_sealed", "seal"]
