"""Rank cap of composed adapters: concatenation, then an SVD re-compression past ``max_rank``.

Random LoRA adapters are written as PEFT safetensors directories; the summed delta of every module
(``scaling * B @ A`` of each part) is compared with the re-compressed adapter's ``B @ A``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpu_runtime.pipeline.compose import (
    COMPOSITION_FILE,
    VLLM_MAX_LORA_RANKS,
    concat_adapters,
    load_served,
    served_delta_dir,
    truncate,
)
from gpu_runtime.pipeline.errors import BadInput
from gpu_runtime.pipeline.types import PipelineOptions

PREFIX = "base_model.model.model.layers.0."
# Wider than the concatenated rank (80), so a cap of 64 really truncates.
SHAPES = {"self_attn.q_proj": (96, 128), "self_attn.v_proj": (88, 128), "mlp.down_proj": (128, 160)}


def write_adapter(
    path: Path,
    rank: int,
    alpha: float,
    seed: int,
    *,
    shapes: dict[str, tuple[int, int]] = SHAPES,
    rslora: bool = False,
    row_space: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A PEFT LoRA adapter directory with random A and B (``row_space`` fixes each module's A)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (fan_out, fan_in) in shapes.items():
        a = row_space[module] if row_space else torch.randn(rank, fan_in, generator=gen) / math.sqrt(fan_in)
        tensors[PREFIX + module + ".lora_A.weight"] = a.contiguous()
        tensors[PREFIX + module + ".lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.1
    path.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "bias": "none",
        "target_modules": sorted(m.split(".")[-1] for m in shapes),
        "base_model_name_or_path": "/somewhere/base",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def deltas(path: Path) -> dict[str, torch.Tensor]:
    """Each module's ``scaling * B @ A`` in float64, as PEFT applies it."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    state = load_file(str(path / "adapter_model.safetensors"))
    out = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            name = key.removesuffix(".lora_A.weight")
            b = state[name + ".lora_B.weight"]
            r = a.shape[0]
            scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
            out[name] = scale * b.double() @ a.double()
    return out


def summed(*paths: Path) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        for name, d in deltas(path).items():
            total[name] = total.get(name, 0) + d
    return total


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_recompression_reproduces_the_summed_delta_within_the_reported_error(tmp_path: Path) -> None:
    v1 = write_adapter(tmp_path / "v1", rank=40, alpha=16, seed=1, rslora=True)
    delta = write_adapter(tmp_path / "delta", rank=40, alpha=80, seed=2)
    report = concat_adapters(v1, delta, tmp_path / "served", max_rank=64)

    assert report["recompressed"] and report["rank_concatenated"] == 80 and report["rank"] == 64
    cfg = json.loads((tmp_path / "served/adapter_config.json").read_text())
    assert cfg["r"] == 64 and cfg["lora_alpha"] == 64 and not cfg["use_rslora"]
    assert cfg["base_model_name_or_path"] is None
    state = load_file(str(tmp_path / "served/adapter_model.safetensors"))
    assert all(t.shape[0 if k.endswith("lora_A.weight") else 1] == 64 for k, t in state.items())

    per_module = json.loads((tmp_path / "served" / COMPOSITION_FILE).read_text())["reconstruction_error"]
    truth, served = summed(v1, delta), deltas(tmp_path / "served")
    assert set(per_module) == set(truth) == set(served)
    for name, want in truth.items():
        error = relative(served[name], want)
        assert error == pytest.approx(per_module[name], abs=1e-5), name
        # Eckart-Young: nothing of rank 64 is closer than the truncated SVD.
        s = torch.linalg.svdvals(want)
        assert error == pytest.approx(float(s[64:].norm() / s.norm()), abs=1e-5), name
        assert 0.01 < error < 1  # lossy: the summed delta has rank 80
    assert report["reconstruction_error_max"] == pytest.approx(max(per_module.values()))
    assert report["reconstruction_error_mean"] == pytest.approx(sum(per_module.values()) / len(per_module))


def test_recompression_is_exact_when_the_true_rank_fits_the_cap(tmp_path: Path) -> None:
    # The delta moves the same row space as v1: the summed delta has rank 40 in every module.
    gen = torch.Generator().manual_seed(3)
    rows = {
        m: torch.randn(40, fan_in, generator=gen) / math.sqrt(fan_in) for m, (_o, fan_in) in SHAPES.items()
    }
    v1 = write_adapter(tmp_path / "v1", rank=40, alpha=40, seed=4, row_space=rows)
    delta = write_adapter(tmp_path / "delta", rank=40, alpha=20, seed=5, row_space=rows)
    report = concat_adapters(v1, delta, tmp_path / "served", max_rank=64)

    assert report["recompressed"] and report["rank"] == 64
    assert report["reconstruction_error_max"] < 1e-6
    truth, served = summed(v1, delta), deltas(tmp_path / "served")
    assert max(relative(served[n], truth[n]) for n in truth) < 1e-5


def test_under_the_cap_the_concatenation_is_kept(tmp_path: Path) -> None:
    v1 = write_adapter(tmp_path / "v1", rank=8, alpha=16, seed=6)
    delta = write_adapter(tmp_path / "delta", rank=8, alpha=16, seed=7)
    report = concat_adapters(v1, delta, tmp_path / "served", max_rank=64, served_delta=tmp_path / "sd")

    assert not report["recompressed"] and report["rank"] == 16 and report["reconstruction_error_max"] == 0.0
    assert json.loads((tmp_path / "served/adapter_config.json").read_text())["r"] == 16
    assert not (tmp_path / "served" / COMPOSITION_FILE).exists() and not (tmp_path / "sd").exists()
    truth, served = summed(v1, delta), deltas(tmp_path / "served")
    assert max(relative(served[n], truth[n]) for n in truth) < 1e-6
    # A first request is copied as it is.
    first = concat_adapters(None, delta, tmp_path / "first", max_rank=64)
    assert first["rank"] == 8 and not first["recompressed"]
    assert (tmp_path / "first/adapter_model.safetensors").read_bytes() == (
        delta / "adapter_model.safetensors"
    ).read_bytes()


def test_served_delta_on_the_merged_deployed_adapter_gives_the_served_model(tmp_path: Path) -> None:
    only_delta = {**SHAPES, "mlp.up_proj": (160, 128)}  # a module the deployed adapter lacks
    v1 = write_adapter(tmp_path / "v1", rank=40, alpha=16, seed=8)
    delta = write_adapter(tmp_path / "delta", rank=40, alpha=16, seed=9, shapes=only_delta)
    unlearn = tmp_path / "unlearn"
    assert served_delta_dir(unlearn) == unlearn / "delta"
    concat_adapters(v1, delta, unlearn / "served", max_rank=32, served_delta=unlearn / "served_delta")
    assert served_delta_dir(unlearn) == unlearn / "served_delta"

    deployed, served, difference = deltas(v1), deltas(unlearn / "served"), deltas(unlearn / "served_delta")
    assert set(served) == set(difference) == set(summed(v1, delta))
    for name, want in served.items():
        got = difference[name] + deployed.get(name, 0)
        assert relative(got, want) < 1e-6, name


def test_a_single_delta_above_the_cap_is_recompressed_too(tmp_path: Path) -> None:
    delta = write_adapter(tmp_path / "delta", rank=40, alpha=16, seed=10)
    report = concat_adapters(None, delta, tmp_path / "served", max_rank=16, served_delta=tmp_path / "sd")
    assert report["recompressed"] and report["rank"] == 16 and report["reconstruction_error_max"] > 0
    assert deltas(tmp_path / "sd").keys() == deltas(tmp_path / "served").keys()


def test_truncate_pads_when_the_delta_is_narrower_than_the_cap() -> None:
    a, b = torch.randn(80, 6), torch.randn(5, 80)  # rank at most 5
    new_a, new_b, error = truncate(a, b, 64)
    assert new_a.shape == (64, 6) and new_b.shape == (5, 64) and error == 0.0
    assert torch.allclose(new_b @ new_a, b @ a, atol=1e-4)
    zero_a, zero_b, zero_error = truncate(torch.zeros(8, 4), torch.zeros(3, 8), 2)
    assert zero_error == 0.0 and not zero_a.any() and not zero_b.any()


def test_the_cap_is_validated() -> None:
    with pytest.raises(BadInput, match="max_rank"):
        concat_adapters(None, Path("unused"), Path("unused"), max_rank=0)
    assert PipelineOptions().max_composed_rank == 64
    assert set(PipelineOptions.model_fields["max_composed_rank"].annotation.__args__) <= set(
        VLLM_MAX_LORA_RANKS
    )
    with pytest.raises(ValueError, match="max_composed_rank"):
        PipelineOptions(max_composed_rank=48)


def test_peft_serves_the_recompressed_adapter(tmp_path: Path) -> None:
    """On a tiny Llama (hidden size 32) every summed delta has rank <= 32: a cap of 64 is exact, so
    PEFT's logits with the re-compressed adapter equal those of the sequentially unlearned model."""
    from peft import LoraConfig, get_peft_model

    from gpu_runtime.pipeline.models import load_baseline
    from gpu_runtime.pipeline.testing import save_tiny_model_dir

    model_dir = save_tiny_model_dir(tmp_path / "model")
    opts = PipelineOptions()
    targets = ["q_proj", "v_proj", "down_proj"]
    base = load_baseline(model_dir, opts)
    v1 = get_peft_model(
        base, LoraConfig(r=40, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    )
    v1.save_pretrained(tmp_path / "v1")
    merged = load_baseline(model_dir, opts, tmp_path / "v1")
    cfg = LoraConfig(r=40, lora_alpha=8, use_rslora=True, target_modules=targets, init_lora_weights=False)
    delta = get_peft_model(merged, cfg)
    delta.save_pretrained(tmp_path / "delta")
    ids = torch.tensor([[0, 11, 40, 41, 80, 99]])
    with torch.no_grad():
        sequential = delta(input_ids=ids).logits
    report = concat_adapters(tmp_path / "v1", tmp_path / "delta", tmp_path / "v2", max_rank=64)
    assert report["recompressed"] and report["reconstruction_error_max"] < 1e-5
    with torch.no_grad():
        served = load_served(model_dir, tmp_path / "v2")(input_ids=ids).logits
    assert torch.allclose(served, sequential, atol=1e-4)
    # A cap below the true rank changes the model, and the report says by how much.
    lossy = concat_adapters(tmp_path / "v1", tmp_path / "delta", tmp_path / "v3", max_rank=8)
    assert lossy["rank"] == 8 and lossy["reconstruction_error_mean"] > 0.05


@pytest.mark.slow
def test_the_pipeline_serves_and_evaluates_the_recompressed_adapter(tmp_path: Path) -> None:
    """Two requests at rank 8 under a cap of 8: the second served adapter is re-compressed, the
    manifest reports it, and the evaluation (earlier request's probes included) ran on exactly it."""
    from peft import PeftModel

    from gpu_runtime.pipeline.models import load_baseline
    from gpu_runtime.pipeline.run import run_pipeline
    from gpu_runtime.pipeline.testing import SENTENCES, save_tiny_model_dir
    from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, Probe

    model_dir = save_tiny_model_dir(tmp_path / "model")
    opts = PipelineOptions(
        reinforce_epochs=1, unlearn_epochs=1, block_size=16, max_new_tokens=4, general_samples=2,
        lora_rank=8, max_composed_rank=8,
    )  # fmt: skip
    harry = [EntityHint(term="Harry", kind="first_name")]
    first = run_pipeline(
        model_dir, ForgetSpec(documents=SENTENCES[:3], hints=harry, options=opts), tmp_path / "r1"
    )
    second_spec = ForgetSpec(
        documents=[SENTENCES[3]],
        hints=[EntityHint(term="Alice", kind="first_name")],
        earlier_probes=[Probe(prompt="Who is Harry?", reference="Harry is a wizard at Hogwarts.")],
        earlier_terms=["Harry"],
        options=opts,
    )
    second = run_pipeline(model_dir, second_spec, tmp_path / "r2", deployed_adapter=first.served_adapter_dir)

    first_manifest = json.loads((tmp_path / "r1/unlearn/manifest.json").read_text())
    assert not first_manifest["metrics"]["composition"]["recompressed"]
    manifest = json.loads((tmp_path / "r2/unlearn/manifest.json").read_text())
    composition = manifest["metrics"]["composition"]
    assert composition["recompressed"] and composition["rank_concatenated"] == 16 and composition["rank"] == 8
    assert 0 <= composition["reconstruction_error_mean"] <= composition["reconstruction_error_max"] < 1
    served = Path(second.served_adapter_dir)
    assert json.loads((served / "adapter_config.json").read_text())["r"] == 8
    assert "earlier_leaks_after" in second.metrics and second.metrics["earlier_n"] == 1
    # What the evaluation attached (deployed merged + served_delta) is the served model.
    assert served_delta_dir(tmp_path / "r2/unlearn") == tmp_path / "r2/unlearn/served_delta"
    ids = torch.tensor([[0, 11, 40, 41, 80, 99]])
    with torch.no_grad():
        evaluated = PeftModel.from_pretrained(
            load_baseline(model_dir, opts, first.served_adapter_dir), tmp_path / "r2/unlearn/served_delta"
        )(input_ids=ids).logits
        serving = load_served(model_dir, served)(input_ids=ids).logits
    assert torch.allclose(evaluated, serving, atol=1e-4)
