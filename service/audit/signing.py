"""Ed25519 signing of certificates: the key is given by settings or generated into the data directory.

A certificate is ``{"certificate": {...}, "signature": base64(Ed25519(canonical JSON)), "key_id"}``;
canonical JSON is UTF-8, sorted keys, no spaces, so anyone holding the public key can check it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.settings import Settings

ALGORITHM = "Ed25519"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_raw).hexdigest()[:16]

    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def sign(self, payload: dict[str, Any]) -> str:
        return base64.b64encode(self.private_key.sign(canonical(payload))).decode("ascii")


def verify(public_key_raw_b64: str, payload: dict[str, Any], signature_b64: str) -> bool:
    """Check a certificate with the served public key (raw 32 bytes, base64)."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_raw_b64))
    try:
        key.verify(base64.b64decode(signature_b64), canonical(payload))
    except InvalidSignature:
        return False
    return True


def default_key_path(settings: Settings) -> Path:
    return settings.data_dir / "keys" / "certificate-ed25519.pem"


def load_signer(settings: Settings) -> Signer:
    """Load the configured key, or create one (mode 0600) on first start; racing processes agree."""
    path = settings.signing_key_path or default_key_path(settings)
    if not path.exists():
        if settings.signing_key_path is not None:
            raise FileNotFoundError(f"signing key not found: {path}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Write aside, then hard-link into place: atomic and fails if another process won the race.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return Signer(key)
