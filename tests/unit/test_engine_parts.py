"""Unit tests of the engine's torch-free parts: text assembly, registry, request validation, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpu_runtime.engine import (
    AdapterCapacityError,
    AdapterConflict,
    AdapterFormatError,
    AdapterHashMismatch,
    AdapterInUse,
    AdapterNotFound,
    GenerationRequest,
    InvalidRequest,
    UnknownModel,
    adapter_hash,
)
from gpu_runtime.engine.adapters import read_adapter
from gpu_runtime.engine.registry import BASE_ADAPTER, AdapterRegistry
from gpu_runtime.engine.sampling import RowSampling, choose_tokens
from gpu_runtime.engine.text import TextAssembler


class ByteDecoder:
    """Token id = one UTF-8 byte; decoding a partial character gives U+FFFD like byte-level BPE."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def _feed(text: str, stop: list[str]) -> tuple[list[str], TextAssembler]:
    asm = TextAssembler(ByteDecoder(), stop)
    deltas = []
    for b in text.encode():
        deltas.append(asm.add(b))
        if asm.stopped:
            break
    deltas.append(asm.flush())
    return deltas, asm


def test_text_deltas_concatenate_and_hold_partial_characters() -> None:
    deltas, asm = _feed("naïve 東京 🙂!", [])
    assert "".join(deltas) == "naïve 東京 🙂!" == asm.text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_sequence_trimmed_and_never_streamed() -> None:
    deltas, asm = _feed("hello world. END more text", ["END", "zzz"])
    assert asm.stopped
    assert asm.text == "hello world. "
    assert "".join(deltas) == "hello world. "
    assert not any("E" in d for d in deltas)


def test_stop_prefix_released_when_it_does_not_complete() -> None:
    deltas, asm = _feed("a EN b", ["END"])
    assert not asm.stopped
    assert "".join(deltas) == "a EN b"


def test_registry_aliases_refcounts_and_retire() -> None:
    reg = AdapterRegistry(capacity=3, base_name="base")
    for i in range(2):
        name, victims = reg.make_room(f"v{i}")
        assert victims == []
        reg.add(f"v{i}", name, f"h{i}", Path("."))
    assert reg.resolve(None) is None and reg.resolve("base") is None
    assert reg.set_alias("chat", "v0") is None
    lease = reg.acquire("chat")
    assert lease.adapter_id == "v0"
    assert reg.set_alias("chat", "v1") == "v0"  # flip while v0 serves a request
    assert reg.acquire("chat").adapter_id == "v1"
    assert reg.retire("v0") is None  # in flight: deferred
    with pytest.raises(UnknownModel):
        reg.acquire("v0")  # retiring: no new requests
    reg.release(lease)
    assert reg.take_doomed() == [lease.name]
    assert [i.adapter_id for i in reg.infos()] == ["v1"]
    with pytest.raises(AdapterInUse):
        reg.retire("v1")  # aliased
    with pytest.raises(UnknownModel):
        reg.acquire("nope")
    with pytest.raises(AdapterConflict):
        reg.lookup("v1", "other-hash")
    assert reg.acquire(None).name == BASE_ADAPTER


def test_registry_lru_eviction_skips_aliased_and_busy() -> None:
    reg = AdapterRegistry(capacity=3, base_name="base")
    for i in range(3):
        name, _ = reg.make_room(f"v{i}")
        reg.add(f"v{i}", name, "h", Path("."))
    reg.set_alias("chat", "v0")  # v0: aliased
    busy = reg.acquire("v1")  # v1: in use
    _, victims = reg.make_room("v3")
    assert len(victims) == 1
    assert {i.adapter_id for i in reg.infos()} == {"v0", "v1"}  # v2 (idle) evicted
    reg.add("v3", "x3", "h", Path("."))
    reg.acquire("v3")
    with pytest.raises(AdapterCapacityError):
        reg.make_room("v4")
    reg.release(busy)
    _, victims = reg.make_room("v4")
    assert victims == [busy.name]


def test_request_validation() -> None:
    with pytest.raises(InvalidRequest, match="temperature"):
        GenerationRequest(prompt="x", temperature=-1)
    with pytest.raises(InvalidRequest, match="top_p"):
        GenerationRequest(prompt="x", top_p=0)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        GenerationRequest(prompt="x", max_tokens=0)
    with pytest.raises(InvalidRequest, match="prompt"):
        GenerationRequest(prompt=[])
    assert GenerationRequest(prompt="x", stop="END").stop == ["END"]  # type: ignore[arg-type]


def test_sampling_seeded_and_top_p() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def rows(seed: int, top_p: float = 1.0) -> list[RowSampling]:
        return [RowSampling(1.0, top_p, torch.Generator().manual_seed(seed), 3) for _ in range(3)]

    draws_a = [choose_tokens(logits, rows(7)).token_ids for _ in range(2)]
    assert draws_a[0] == draws_a[1]
    tiny_p = choose_tokens(logits, rows(7, top_p=1e-6))
    assert tiny_p.token_ids == torch.argmax(logits, dim=-1).tolist()  # top_p→0 keeps only the best
    assert all(tops[0][0] == t for tops, t in zip(tiny_p.top, tiny_p.token_ids, strict=True))
    assert all(lp <= 0 for lp in tiny_p.logprobs)


def _fake_adapter(d: Path) -> Path:
    d.mkdir()
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]})
    )
    (d / "adapter_model.safetensors").write_bytes(b"not really safetensors")
    return d


def test_adapter_hash_and_format_checks(tmp_path: Path) -> None:
    d = _fake_adapter(tmp_path / "a")
    h = adapter_hash(d)
    assert len(h) == 64 and adapter_hash(d) == h
    with pytest.raises(AdapterHashMismatch):
        read_adapter(d, adapter_id="a", expected_hash="sha256:" + "0" * 64)
    with pytest.raises(AdapterFormatError, match="unreadable"):
        read_adapter(d, adapter_id="a", expected_hash=f"SHA256:{h.upper()}")  # hash ok, weights bogus
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    )
    assert adapter_hash(d) != h  # the config is part of the content hash
    (d / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterFormatError, match="pickle"):
        adapter_hash(d)
    with pytest.raises(AdapterNotFound):
        adapter_hash(tmp_path / "missing")
