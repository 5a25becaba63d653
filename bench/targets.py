"""Target generation (WHP equation (1)): our batched, single-base-copy implementation against a
straightforward reference (two full model copies, one block and one position at a time, as the
paper's data-preparation script does), on the same inputs, in one run.

Each variant runs in its own fresh process so its peak memory (peak RSS above the process's size
after imports) is its own. Ours reads the base model and the reinforcement LoRA; the reference reads
the base model and the reinforced model as a second full checkpoint (the LoRA merged into a copy of
the weights, as a separately fine-tuned model would be). Both translate the same blocks; their labels
are compared position by position (merging changes float rounding, so a rare near-tie may differ).

    python bench/targets.py                      # random Llama "small" shape, demo tokenizer
    python bench/targets.py --shape demo --docs 64 --json bench/out/targets.json
    python bench/targets.py --model DIR          # any Hugging Face causal-LM directory

Prints a table; ``--json OUT`` writes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, intermediate: big enough that weights, not activations, dominate memory
    "demo": {},
    "small": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "intermediate_size": 1536,
    },
    "medium": {
        "hidden_size": 1024,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "intermediate_size": 2816,
    },
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prepare(
    work: Path, shape: str, model_dir: Path | None, docs: int, block_size: int, seed: int
) -> dict[str, Any]:
    """Save the model, a random reinforcement LoRA and the translated blocks both variants read."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_runtime.demo.build import build_demo_model
    from gpu_runtime.demo.world import build_world
    from gpu_runtime.pipeline.anchors import build_anchors
    from gpu_runtime.pipeline.translate import translate_corpus
    from gpu_runtime.pipeline.types import EntityHint

    torch.manual_seed(seed)
    source = model_dir or build_demo_model()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if model_dir is None and SHAPES[shape]:
        from transformers import LlamaConfig, LlamaForCausalLM

        base_cfg = AutoModelForCausalLM.from_pretrained(source).config
        cfg = LlamaConfig(
            vocab_size=base_cfg.vocab_size,
            max_position_embeddings=max(block_size, 512),
            num_key_value_heads=SHAPES[shape]["num_attention_heads"],
            bos_token_id=base_cfg.bos_token_id,
            eos_token_id=base_cfg.eos_token_id,
            pad_token_id=base_cfg.pad_token_id,
            **SHAPES[shape],
        )
        model = LlamaForCausalLM(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(source)
    model_path = work / "model"
    model.save_pretrained(model_path, safe_serialization=True)
    tokenizer.save_pretrained(model_path)

    # A reinforcement adapter with non-zero B, so the reinforced logits really differ.
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    adapter_path = work / "reinforce"
    peft_model.save_pretrained(adapter_path, safe_serialization=True)
    # The reference, like the paper's script, reads the reinforced model as its own full checkpoint.
    peft_model.merge_and_unload().save_pretrained(work / "reinforced-full", safe_serialization=True)

    # Long documents (as real forget corpora are): the demo world's prose, joined and split into
    # ``docs`` documents, so blocks are full-size rather than one short paragraph each.
    world = build_world()
    paragraphs = [d["text"] for d in world.documents()]
    per_doc = max(1, len(paragraphs) // docs)
    texts = [" ".join(paragraphs[i : i + per_doc]) for i in range(0, per_doc * docs, per_doc)]
    people = world.people
    hints = [EntityHint(term=p.name, kind="person") for p in people] + [
        EntityHint(term=p.birthplace, kind="place") for p in people
    ]
    anchors = build_anchors([(h, "hint", None) for h in hints], texts, 2, seed)
    blocks = translate_corpus(tokenizer, texts, anchors, block_size)
    (work / "blocks.json").write_text(
        json.dumps(
            [
                {
                    "doc": b.doc,
                    "index": b.index,
                    "original_ids": list(b.original_ids),
                    "translated_ids": list(b.translated_ids),
                    "mapping": list(b.mapping),
                    "masked": list(b.masked),
                    "used_first_tokens": [list(x) for x in b.used_first_tokens],
                    "translation_index": b.translation_index,
                }
                for b in blocks
            ]
        )
    )
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": n_params,
        "blocks": len(blocks),
        "tokens": sum(len(b.original_ids) for b in blocks),
        "anchors": len(anchors),
    }


def run_variant(work: Path, variant: str, batch_size: int, alpha: float, threads: int) -> dict[str, Any]:
    """One variant in this (fresh) process: load, generate, report time, peak memory and labels."""
    import torch

    torch.set_num_threads(threads)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gpu_runtime.pipeline.targets import compute_targets, generate_targets_reference
    from gpu_runtime.pipeline.translate import TranslatedBlock

    blocks = [
        TranslatedBlock(
            doc=b["doc"],
            index=b["index"],
            original_ids=b["original_ids"],
            translated_ids=b["translated_ids"],
            mapping=b["mapping"],
            masked=b["masked"],
            used_first_tokens=[tuple(x) for x in b["used_first_tokens"]],
            translation_index=b["translation_index"],
        )
        for b in json.loads((work / "blocks.json").read_text())
    ]
    rss_after_imports = _peak_rss_mb()
    started = time.perf_counter()
    if variant == "ours":
        base = AutoModelForCausalLM.from_pretrained(work / "model").eval()
        model = PeftModel.from_pretrained(base, work / "reinforce").eval()
        pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
        loaded = time.perf_counter()
        targets = compute_targets(model, blocks, alpha=alpha, batch_size=batch_size, pad_id=pad_id)
    else:
        baseline = AutoModelForCausalLM.from_pretrained(work / "model").eval()
        reinforced = AutoModelForCausalLM.from_pretrained(work / "reinforced-full").eval()
        loaded = time.perf_counter()
        targets = generate_targets_reference(baseline, reinforced, blocks, alpha=alpha)
    finished = time.perf_counter()
    tokens = sum(len(b.original_ids) for b in blocks)
    return {
        "variant": variant,
        "load_s": round(loaded - started, 3),
        "generate_s": round(finished - loaded, 3),
        "tokens_per_s": round(tokens / (finished - loaded), 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_above_imports_mb": round(_peak_rss_mb() - rss_after_imports, 1),
        "labels": [t.labels for t in targets],
    }


def _spawn(work: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--_variant", variant, "--_work", str(work),
        "--batch-size", str(args.batch_size), "--alpha", str(args.alpha), "--threads", str(args.threads),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def compare(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    total = agree = 0
    for a, b in zip(ours["labels"], reference["labels"], strict=True):
        for x, y in zip(a, b, strict=True):
            total += 1
            agree += x == y
    return {"positions": total, "agreeing": agree, "identical": agree == total}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="A Hugging Face causal-LM directory.")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="small", help="Random Llama shape (no --model)."
    )
    parser.add_argument(
        "--docs", type=int, default=4, help="Long documents made from the demo world's prose."
    )
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--_variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._variant:
        print(json.dumps(run_variant(args._work, args._variant, args.batch_size, args.alpha, args.threads)))
        return

    with tempfile.TemporaryDirectory(prefix="obliviate-bench-targets-") as tmp:
        work = Path(tmp)
        setup = prepare(work, args.shape, args.model, args.docs, args.block_size, args.seed)
        reference = _spawn(work, "reference", args)
        ours = _spawn(work, "ours", args)
    check = compare(ours, reference)
    speedup = ours["tokens_per_s"] / reference["tokens_per_s"]
    memory = ours["peak_rss_above_imports_mb"] / max(reference["peak_rss_above_imports_mb"], 1e-9)
    name = args.model or ("the demo model" if not SHAPES[args.shape] else f"random Llama {args.shape}")
    print(f"model: {name} ({setup['parameters'] / 1e6:.1f}M parameters), "
          f"{setup['blocks']} blocks, {setup['tokens']} tokens, {setup['anchors']} anchors, threads={args.threads}")  # fmt: skip
    print(f"{'variant':<28}{'tokens/s':>10}{'generate s':>12}{'load s':>9}{'peak MB*':>10}")
    for row, name in ((reference, "reference (2 copies, 1x1)"), (ours, "ours (1 copy, batched)")):
        print(
            f"{name:<28}{row['tokens_per_s']:>10.1f}{row['generate_s']:>12.2f}{row['load_s']:>9.2f}"
            f"{row['peak_rss_above_imports_mb']:>10.1f}"
        )
    print(
        f"speed-up {speedup:.1f}x, peak memory {memory:.2f}x of the reference (*above the process after imports)"
    )
    print(
        f"labels: {check['agreeing']}/{check['positions']} positions agree; identical: {check['identical']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "command": " ".join(sys.argv),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, threads={args.threads}",
            "setup": setup,
            "reference": {k: v for k, v in reference.items() if k != "labels"},
            "ours": {k: v for k, v in ours.items() if k != "labels"},
            "speedup": round(speedup, 2),
            "memory_ratio": round(memory, 3),
            "labels": check,
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
