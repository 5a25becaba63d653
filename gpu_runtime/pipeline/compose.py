"""Composition of sequential requests: the served adapter is the rank-concatenation of the deployed
adapter and the new delta.

The delta of request k+1 is trained on the base weights with version k merged in (``W + s_k B_k A_k``).
LoRA targets linear layers only, so base + concatenation gives
``W + s_k B_k A_k + s_d B_d A_d`` = the sequentially unlearned model, exactly (up to float rounding).
We build the concatenation ourselves rather than with ``add_weighted_adapter("cat")`` so that the
scaling of each part is folded into A explicitly (new alpha = new rank, scaling 1), modules present
in only one adapter are zero-padded, and the result is a plain safetensors adapter directory.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import BadInput

_A = ".lora_A.weight"
_B = ".lora_B.weight"
_PREFIX = "base_model.model."


def _read(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise BadInput(f"not a safetensors PEFT adapter directory: {adapter_dir.name!r}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise BadInput("only LoRA adapters can be composed")
    if cfg.get("modules_to_save") or cfg.get("bias", "none") != "none" or cfg.get("use_dora"):
        raise BadInput("adapters with modules_to_save, biases or DoRA cannot be rank-concatenated")
    return cfg, load_file(str(weights))


def _scaling(cfg: dict[str, Any], module: str, r: int) -> float:
    alpha = float(cfg.get("lora_alpha", r))
    for pattern, a in (cfg.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = float(a)
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _modules(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    mods = {}
    for key in state:
        if key.endswith(_A):
            name = key[: -len(_A)]
            if name + _B not in state:
                raise BadInput("adapter has lora_A without lora_B")
            mods[name] = (state[key], state[name + _B])
        elif not key.endswith(_B):
            raise BadInput("adapter holds weights other than LoRA A/B matrices (embeddings?)")
    return mods


def concat_adapters(deployed: Path | None, delta: Path, out: Path) -> Path:
    """Write to ``out`` the adapter equal to ``deployed`` followed by ``delta`` (or a copy of delta)."""
    out.mkdir(parents=True, exist_ok=True)
    if deployed is None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(delta / name, out / name)
        return out
    cfg1, st1 = _read(Path(deployed))
    cfg2, st2 = _read(Path(delta))
    m1, m2 = _modules(st1), _modules(st2)
    r1 = {n: a.shape[0] for n, (a, _b) in m1.items()}
    r2 = {n: a.shape[0] for n, (a, _b) in m2.items()}
    rank1 = max(r1.values(), default=0)
    rank2 = max(r2.values(), default=0)
    total = rank1 + rank2
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(set(m1) | set(m2)):
        ref_a, ref_b = m1.get(name) or m2[name]
        fan_in, fan_out = ref_a.shape[1], ref_b.shape[0]
        parts_a, parts_b = [], []
        for mods, ranks, cfg, width in ((m1, r1, cfg1, rank1), (m2, r2, cfg2, rank2)):
            if name in mods:
                a, b = mods[name]
                s = _scaling(cfg, name.removeprefix(_PREFIX), ranks[name])
                a, b = a.float() * s, b.float()
            else:
                a, b = torch.zeros(0, fan_in), torch.zeros(fan_out, 0)
            pad = width - a.shape[0]  # zero rows/columns contribute nothing to B @ A
            parts_a += [a, torch.zeros(pad, fan_in)]
            parts_b += [b, torch.zeros(fan_out, pad)]
        tensors[name + _A] = torch.cat(parts_a, 0).contiguous()
        tensors[name + _B] = torch.cat(parts_b, 1).contiguous()
    cfg = dict(cfg2)
    # The base path is machine-specific; the manifest's hashes tie an adapter to its base.
    cfg["base_model_name_or_path"] = None
    cfg.update(
        r=total,
        lora_alpha=total,
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(n.removeprefix(_PREFIX) for n in set(m1) | set(m2)),
        lora_dropout=0.0,
    )
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def load_served(base_model_dir: Path | str, served_adapter: Path | str | None, options: Any = None) -> Any:
    """The served model: base weights + served adapter (unmerged, as an inference engine runs it)."""
    from .models import attach_adapter, load_base
    from .types import PipelineOptions

    model = load_base(base_model_dir, options or PipelineOptions())
    return attach_adapter(model, served_adapter) if served_adapter is not None else model
