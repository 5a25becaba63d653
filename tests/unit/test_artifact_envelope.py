"""The encryption envelope of personal data at rest: AES-256-GCM, bound to the request and the name."""

from __future__ import annotations

import pytest

from service.artifacts.envelope import MAGIC, EnvelopeError, new_key, open_sealed, seal

PLAIN = b'{"documents": ["Zebulon Quillfeather went to Hogwarts."]}'


def test_round_trip_and_no_plaintext_in_the_blob() -> None:
    key = new_key()
    blob = seal(key, "fr_1", "input/spec.json", PLAIN)
    assert blob.startswith(MAGIC) and b"Quillfeather" not in blob
    assert open_sealed(key, "fr_1", "input/spec.json", blob) == PLAIN
    # A fresh nonce every time: equal plaintexts do not give equal blobs.
    assert seal(key, "fr_1", "input/spec.json", PLAIN) != blob


@pytest.mark.parametrize("position", [len(MAGIC), len(MAGIC) + 12, -1])
def test_a_changed_byte_is_refused(position: int) -> None:
    key = new_key()
    blob = bytearray(seal(key, "fr_1", "input/spec.json", PLAIN))
    blob[position] ^= 0x01
    with pytest.raises(EnvelopeError, match="authentication failed"):
        open_sealed(key, "fr_1", "input/spec.json", bytes(blob))


def test_another_request_id_as_associated_data_is_refused() -> None:
    key = new_key()
    blob = seal(key, "fr_1", "input/spec.json", PLAIN)
    with pytest.raises(EnvelopeError):
        open_sealed(key, "fr_2", "input/spec.json", blob)


def test_another_name_or_key_is_refused() -> None:
    key = new_key()
    blob = seal(key, "fr_1", "input/spec.json", PLAIN)
    with pytest.raises(EnvelopeError):
        open_sealed(key, "fr_1", "work/anchors.json", blob)
    with pytest.raises(EnvelopeError):
        open_sealed(new_key(), "fr_1", "input/spec.json", blob)


@pytest.mark.parametrize("blob", [b"", PLAIN, MAGIC + b"short"])
def test_not_an_envelope(blob: bytes) -> None:
    with pytest.raises(EnvelopeError, match="not an encrypted artifact"):
        open_sealed(new_key(), "fr_1", "input/spec.json", blob)


def test_a_truncated_blob_is_refused() -> None:
    key = new_key()
    blob = seal(key, "fr_1", "input/spec.json", PLAIN)
    with pytest.raises(EnvelopeError):
        open_sealed(key, "fr_1", "input/spec.json", blob[:-1])
