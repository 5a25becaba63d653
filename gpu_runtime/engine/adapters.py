"""LoRA adapter files: content hash, safe reading (safetensors only) and attaching to / detaching from the model.

Files are read once into memory; the hash is computed over exactly the bytes that get loaded, so a
file swapped on disk between "check" and "load" cannot slip through.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PeftModelForCausalLM, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors_bytes

from gpu_runtime.engine.errors import AdapterFormatError, AdapterHashMismatch, AdapterNotFound

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
# Pickle-based weight files: loading them can run arbitrary code, so a directory holding one is refused
# outright rather than silently ignored (the uploader may believe it is what gets served).
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _read_bytes(path: Path) -> tuple[bytes, bytes]:
    if not path.is_dir():
        raise AdapterNotFound(f"adapter directory not found: {path}")
    pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickled:
        raise AdapterFormatError(
            f"adapter directory {path.name!r} holds pickle weight files {pickled}; only {WEIGHTS_NAME} is accepted"
        )
    weights, config = path / WEIGHTS_NAME, path / CONFIG_NAME
    for f in (weights, config):
        if not f.is_file():
            raise AdapterFormatError(f"adapter directory {path.name!r} lacks {f.name}")
    return weights.read_bytes(), config.read_bytes()


def _digest(weights: bytes, config: bytes) -> str:
    h = hashlib.sha256()
    h.update(weights)
    h.update(config)
    return h.hexdigest()


def adapter_hash(path: str | Path) -> str:
    """Content hash of a PEFT adapter directory: hex sha256 of adapter_model.safetensors then adapter_config.json."""
    return _digest(*_read_bytes(Path(path)))


def normalize_hash(value: str) -> str:
    """Accept ``"sha256:<hex>"`` or ``"<hex>"`` in any case; return the bare lowercase hex digest."""
    v = value.strip().lower()
    return v.removeprefix("sha256:")


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """An adapter read into memory and validated, ready to attach."""

    path: Path
    sha256: str
    config: LoraConfig
    tensors: dict[str, torch.Tensor]

    def to(self, *, dtype: torch.dtype, device: torch.device) -> AdapterFiles:
        """A copy with tensors cast and moved (done before taking the model lock, to keep the stall short)."""
        moved = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        return AdapterFiles(path=self.path, sha256=self.sha256, config=self.config, tensors=moved)


def read_adapter(path: str | Path, *, adapter_id: str, expected_hash: str | None = None) -> AdapterFiles:
    """Read and validate a PEFT LoRA adapter directory; check its hash when ``expected_hash`` is given."""
    p = Path(path)
    weights, config_bytes = _read_bytes(p)
    sha = _digest(weights, config_bytes)
    if expected_hash is not None and normalize_hash(expected_hash) != sha:
        raise AdapterHashMismatch(adapter_id, expected_hash, sha)
    try:
        raw: dict[str, Any] = json.loads(config_bytes)
    except ValueError as exc:
        raise AdapterFormatError(f"{CONFIG_NAME} of {adapter_id!r} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or str(raw.get("peft_type", "")).upper() != "LORA":
        raise AdapterFormatError(
            f"adapter {adapter_id!r}: only LoRA adapters are served (peft_type={raw.get('peft_type')!r})"
        )
    try:
        config = PeftConfig.from_peft_type(**raw)
    except (TypeError, ValueError) as exc:
        raise AdapterFormatError(f"adapter {adapter_id!r}: invalid LoRA config: {exc}") from exc
    if not isinstance(config, LoraConfig):
        raise AdapterFormatError(f"adapter {adapter_id!r}: config is not a LoraConfig")
    if config.use_dora:
        # peft cannot mix DoRA adapters in one batch (adapter_names); refuse early with a clear message.
        raise AdapterFormatError(f"adapter {adapter_id!r}: DoRA adapters are not supported for mixed batches")
    try:
        tensors = load_safetensors_bytes(weights)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterFormatError(f"adapter {adapter_id!r}: unreadable {WEIGHTS_NAME}: {exc}") from exc
    if not tensors:
        raise AdapterFormatError(f"adapter {adapter_id!r}: {WEIGHTS_NAME} holds no tensors")
    config.inference_mode = True
    return AdapterFiles(path=p, sha256=sha, config=config, tensors=tensors)


def attach_adapter(model: torch.nn.Module, name: str, files: AdapterFiles) -> PeftModel:
    """Add ``files`` (already cast to the model's dtype and device) to ``model`` as peft adapter ``name``.

    Wraps a plain model on first use; returns the PeftModel. The caller must hold the model lock.
    """
    tensors = files.tensors
    # Meta-device init then assign skips a pointless random initialisation of the LoRA weights.
    if isinstance(model, PeftModel):
        peft_model = model
        peft_model.add_adapter(name, files.config, low_cpu_mem_usage=True, autocast_adapter_dtype=False)
    else:
        peft_model = PeftModelForCausalLM(
            model, files.config, adapter_name=name, autocast_adapter_dtype=False, low_cpu_mem_usage=True
        )
    try:
        result = set_peft_model_state_dict(peft_model, tensors, adapter_name=name, low_cpu_mem_usage=True)
        missing = [k for k in result.missing_keys if ".lora_" in k and f".{name}." in k]
        if missing or result.unexpected_keys:
            raise AdapterFormatError(
                f"adapter does not fit the base model: {len(missing)} missing and "
                f"{len(result.unexpected_keys)} unexpected tensors (e.g. {(missing or result.unexpected_keys)[0]})"
            )
        still_meta = [n for n, p in peft_model.named_parameters() if f".{name}." in n and p.is_meta]
        if still_meta:
            raise AdapterFormatError(f"adapter does not fit the base model: no weights for {still_meta[0]}")
    except Exception:
        detach_adapter(peft_model, name)
        raise
    peft_model.eval()
    return peft_model


def detach_adapter(model: torch.nn.Module, name: str) -> None:
    """Remove adapter ``name`` from the model (caller holds the model lock)."""
    if isinstance(model, PeftModel) and name in model.peft_config:
        others = [n for n in model.peft_config if n != name]
        if others and name in model.active_adapters:
            # Rows always name their adapter, so which one is "active" does not matter; moving it off
            # the doomed adapter first just avoids peft warning about deleting the active one.
            model.set_adapter(others[0], inference_mode=True)
        model.delete_adapter(name)
