"""Composition of sequential requests: the served adapter is the rank-concatenation of the deployed
adapter and the new delta, re-compressed by an SVD once its rank passes a cap.

The delta of request k+1 is trained on the base weights with version k merged in (``W + s_k B_k A_k``).
LoRA targets linear layers only, so base + concatenation gives
``W + s_k B_k A_k + s_d B_d A_d`` = the sequentially unlearned model, exactly (up to float rounding).
We build the concatenation ourselves rather than with ``add_weighted_adapter("cat")`` so that the
scaling of each part is folded into A explicitly (new alpha = new rank, scaling 1), modules present
in only one adapter are zero-padded, and the result is a plain safetensors adapter directory.

Concatenation grows the rank with every deployment, and serving engines bound it (vLLM's
``--max-lora-rank`` takes one of :data:`VLLM_MAX_LORA_RANKS` and refuses a larger adapter). Past
``max_rank`` (``PipelineOptions.max_composed_rank``) the summed delta of each layer is replaced by its
best rank-``max_rank`` approximation (truncated SVD, computed from QR factors of B and A, never from the
full matrix) and the relative Frobenius error of each layer is reported. Exact when a layer's summed
delta has rank at most the cap. What that costs earlier requests shows in the evaluation, which runs
on the served adapter (``served_delta``) and re-checks their probes (``earlier_leaks_after``).
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
#: The values vLLM accepts for ``--max-lora-rank`` (``MaxLoRARanks`` in vllm/config/lora.py); vLLM
#: refuses to load an adapter whose rank is larger than the flag.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_COMPOSED_RANK = 64
#: Written into a re-compressed served adapter: the per-module reconstruction errors.
COMPOSITION_FILE = "composition.json"

Modules = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [r, in], B [out, r])


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


def _modules(state: dict[str, torch.Tensor]) -> Modules:
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


def _scaled(adapter_dir: Path) -> tuple[dict[str, Any], Modules]:
    """The adapter's modules in float32 with each module's scaling folded into A (B @ A = the delta)."""
    cfg, state = _read(Path(adapter_dir))
    out = {}
    for name, (a, b) in _modules(state).items():
        s = _scaling(cfg, name.removeprefix(_PREFIX), a.shape[0])
        out[name] = (a.float() * s, b.float())
    return cfg, out


def _stack(parts: list[Modules]) -> tuple[Modules, int]:
    """Rank-concatenation of ``parts``: each part padded with zeros to its widest module."""
    widths = [max((a.shape[0] for a, _b in p.values()), default=0) for p in parts]
    stacked: Modules = {}
    for name in sorted(set().union(*parts)):
        ref_a, ref_b = next(p[name] for p in parts if name in p)
        fan_in, fan_out = ref_a.shape[1], ref_b.shape[0]
        parts_a, parts_b = [], []
        for part, width in zip(parts, widths, strict=True):
            a, b = part.get(name, (torch.zeros(0, fan_in), torch.zeros(fan_out, 0)))
            pad = width - a.shape[0]  # zero rows/columns contribute nothing to B @ A
            parts_a += [a, torch.zeros(pad, fan_in)]
            parts_b += [b, torch.zeros(fan_out, pad)]
        stacked[name] = (torch.cat(parts_a, 0).contiguous(), torch.cat(parts_b, 1).contiguous())
    return stacked, sum(widths)


def truncate(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` factors of ``b @ a`` (Eckart-Young) and their relative Frobenius error.

    ``b @ a = Qb (Rb Ra^T) Qa^T`` with thin QR factors, so only the small core is decomposed. The
    singular values are split evenly between the new B and A (neither factor dwarfs the other in
    half precision); columns beyond the delta's own rank are zero.
    """
    fan_out, fan_in = b.shape[0], a.shape[1]
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    k = min(rank, s.numel())
    total = float(s.square().sum())
    error = math.sqrt(float(s[k:].square().sum()) / total) if total > 0 else 0.0
    root = s[:k].sqrt()
    new_b = torch.zeros(fan_out, rank, dtype=torch.float64)
    new_a = torch.zeros(rank, fan_in, dtype=torch.float64)
    new_b[:, :k] = (qb @ u[:, :k]) * root
    new_a[:k] = root[:, None] * (vh[:k] @ qa.T)
    return new_a.float().contiguous(), new_b.float().contiguous(), error


def _write(out: Path, template: dict[str, Any], modules: Modules, rank: int) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in modules.items():
        tensors[name + _A] = a
        tensors[name + _B] = b
    cfg = dict(template)
    # The base path is machine-specific; the manifest's hashes tie an adapter to its base.
    cfg["base_model_name_or_path"] = None
    cfg.update(
        r=rank,
        lora_alpha=rank,  # scaling 1: every part's scaling is folded into A
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(n.removeprefix(_PREFIX) for n in modules),
        lora_dropout=0.0,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def _copy(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(src / name, out / name)


def concat_adapters(
    deployed: Path | None,
    delta: Path,
    out: Path,
    *,
    max_rank: int | None = None,
    served_delta: Path | None = None,
) -> dict[str, Any]:
    """Write to ``out`` the adapter equal to ``deployed`` followed by ``delta`` (or a copy of delta).

    With ``max_rank``, a result of larger rank is re-compressed to exactly ``max_rank`` (see
    :func:`truncate`; per-module errors in ``out/composition.json``). ``served_delta``, if given and
    the result was re-compressed, receives the served adapter minus ``deployed``: on a model with
    ``deployed`` merged (what the pipeline trains and evaluates on) it gives exactly the served model.

    Returns the composition report (numbers only): ``rank``, ``rank_concatenated``, ``max_rank``,
    ``recompressed`` and the relative Frobenius reconstruction error per module, max and mean.
    """
    if max_rank is not None and max_rank < 1:
        raise BadInput(f"max_rank must be at least 1, got {max_rank}")
    template, delta_mods = _scaled(Path(delta))
    parts = [delta_mods] if deployed is None else [_scaled(Path(deployed))[1], delta_mods]
    stacked, concatenated = _stack(parts)
    report: dict[str, Any] = {
        "rank_concatenated": concatenated,
        "max_rank": max_rank,
        "recompressed": False,
        "modules": len(stacked),
        "reconstruction_error_max": 0.0,
        "reconstruction_error_mean": 0.0,
    }
    if max_rank is not None and concatenated > max_rank:
        errors: dict[str, float] = {}
        compressed: Modules = {}
        for name, (a, b) in stacked.items():
            new_a, new_b, errors[name] = truncate(a, b, max_rank)
            compressed[name] = (new_a, new_b)
        _write(out, template, compressed, max_rank)
        values = list(errors.values()) or [0.0]
        report.update(
            recompressed=True,
            reconstruction_error_max=max(values),
            reconstruction_error_mean=sum(values) / len(values),
        )
        (out / COMPOSITION_FILE).write_text(
            json.dumps({**report, "rank": max_rank, "reconstruction_error": errors}, indent=2)
        )
        report["rank"] = max_rank
        stacked = compressed
    elif deployed is None:
        _copy(Path(delta), out)
        report["rank"] = concatenated
    else:
        _write(out, template, stacked, concatenated)
        report["rank"] = concatenated
    if served_delta is not None and report["recompressed"]:
        # Without re-compression the served adapter minus the deployed one is the delta itself.
        if deployed is None:
            _copy(out, served_delta)
        else:
            minus = {n: (a, -b) for n, (a, b) in _scaled(Path(deployed))[1].items()}
            difference, width = _stack([stacked, minus])
            _write(served_delta, template, difference, width)
    return report


def served_delta_dir(unlearn_dir: Path | str) -> Path:
    """What the evaluation attaches to the baseline (deployed merged): the served adapter's difference
    when the unlearn stage wrote one, else this request's delta (older artifacts)."""
    unlearn_dir = Path(unlearn_dir)
    served = unlearn_dir / "served_delta"
    return served if served.is_dir() else unlearn_dir / "delta"


def load_served(base_model_dir: Path | str, served_adapter: Path | str | None, options: Any = None) -> Any:
    """The served model: base weights + served adapter (unmerged, as an inference engine runs it)."""
    from .models import attach_adapter, load_base
    from .types import PipelineOptions

    model = load_base(base_model_dir, options or PipelineOptions())
    return attach_adapter(model, served_adapter) if served_adapter is not None else model
