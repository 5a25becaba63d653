"""Serving benchmark: the batching multi-LoRA engine against a naive one-request-at-a-time loop.

Measures, on one model in one run:
  * tokens/s and p50/p99 request latency with 1 and with 8 adapters, 16 concurrent clients,
    for the engine and for a naive loop (``set_adapter`` then ``generate``, one request at a time);
  * mixed-adapter throughput (8 adapters in one batch) against base-only throughput;
  * hot-swap latency (load a new adapter version + flip the alias), idle and under load.

Usage:
    python bench/serving.py                                   # random "small" Llama, ~3 min on 2 cores
    python bench/serving.py --model DIR --device cuda --dtype bfloat16
    python bench/serving.py --random-shape llama-7b --device cuda --dtype bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from gpu_runtime.engine import GenerationRequest, InferenceEngine, adapter_hash
from gpu_runtime.engine.testing import build_random_adapter, build_random_llama

TOPICS = [
    "the history of the printing press",
    "how to bake bread at home",
    "why the sky is blue",
    "a short poem about trains",
    "the rules of chess",
    "what a forget request is",
    "the capital of France",
    "how vaccines work",
    "tips for learning a new language",
    "the life of Ada Lovelace",
    "how a compiler works",
    "a recipe for lentil soup",
    "the water cycle",
    "what LoRA adapters are",
    "a haiku about autumn",
    "how to write a good email",
]


@dataclass
class RunStats:
    name: str
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    latency_p50_s: float
    latency_p99_s: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _summarise(name: str, latencies: list[float], tokens: int, wall: float) -> RunStats:
    return RunStats(
        name=name,
        requests=len(latencies),
        completion_tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        latency_p50_s=round(_percentile(latencies, 50), 4),
        latency_p99_s=round(_percentile(latencies, 99), 4),
    )


async def _closed_loop(
    name: str,
    one_request: Any,
    clients: int,
    seconds: float,
    models: list[str | None],
    prompts: list[list[int]],
) -> RunStats:
    """``clients`` tasks each send a request, wait for it, send the next, until ``seconds`` pass."""
    latencies: list[float] = []
    tokens = 0
    start = time.perf_counter()
    deadline = start + seconds
    last_done = start

    async def client(k: int) -> None:
        nonlocal tokens, last_done
        i = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            n = await one_request(prompts[i % len(prompts)], models[k % len(models)])
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            tokens += n
            last_done = max(last_done, t1)
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return _summarise(name, latencies, tokens, last_done - start)


def _engine_request(engine: InferenceEngine, max_tokens: int) -> Any:
    async def run(prompt: list[int], model: str | None) -> int:
        req = GenerationRequest(prompt=prompt, model=model, max_tokens=max_tokens, ignore_eos=True)
        return (await engine.generate(req)).usage.completion_tokens

    return run


def _naive_request(model: PeftModel, pool: concurrent.futures.Executor, max_tokens: int, device: str) -> Any:
    """The baseline: one request at a time on a single worker, ``set_adapter`` then ``generate``."""

    def work(prompt: list[int], adapter: str | None) -> int:
        ids = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(
                        input_ids=ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
                    )
            else:
                model.set_adapter(adapter)
                out = model.generate(
                    input_ids=ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
                )
        return int(out.shape[1] - ids.shape[1])

    async def run(prompt: list[int], adapter: str | None) -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, work, prompt, adapter)

    return run


async def _swap_latencies(
    engine: InferenceEngine, dirs: list[Path], hashes: list[str], n: int, tag: str
) -> list[float]:
    """Time ``swap`` (load a fresh adapter version, then flip the alias, retiring the old one)."""
    out = []
    for i in range(n):
        k = i % len(dirs)
        t0 = time.perf_counter()
        await engine.aswap("chat", f"swap-{tag}-{i}", dirs[k], hashes[k])
        out.append(time.perf_counter() - t0)
    return out


async def _bench(args: argparse.Namespace, model_dir: Path, adapter_dirs: list[Path]) -> dict[str, Any]:
    hashes = [adapter_hash(d) for d in adapter_dirs]
    engine = InferenceEngine(
        model_dir,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.clients,
        max_queue=4 * args.clients,
        adapter_capacity=len(adapter_dirs) + 2,
        lora_backend=args.lora_backend,
    )
    results: dict[str, Any] = {}
    async with engine:
        for i, (d, h) in enumerate(zip(adapter_dirs, hashes, strict=True)):
            engine.load_adapter(f"ad{i}", d, h)
        prompts = [engine.render_chat([{"role": "user", "content": f"Tell me about {t}."}]) for t in TOPICS]
        one_adapter, eight = ["ad0"], [f"ad{i}" for i in range(8)]
        run = _engine_request(engine, args.max_tokens)
        await _closed_loop("warmup", run, args.clients, min(3.0, args.seconds), eight, prompts)

        runs = [
            await _closed_loop("engine base-only", run, args.clients, args.seconds, [None], prompts),
            await _closed_loop("engine 1 adapter", run, args.clients, args.seconds, one_adapter, prompts),
            await _closed_loop("engine 8 adapters (mixed)", run, args.clients, args.seconds, eight, prompts),
        ]

        # Hot-swap: idle, then while the 16 clients keep the batch full.
        engine.load_adapter("chat-initial", adapter_dirs[0], hashes[0])
        engine.set_alias("chat", "chat-initial")
        idle = await _swap_latencies(engine, adapter_dirs, hashes, args.swaps, "idle")
        load_task = asyncio.create_task(
            _closed_loop("load during swaps", run, args.clients, args.seconds / 2, eight, prompts)
        )
        await asyncio.sleep(1.0)
        busy = await _swap_latencies(engine, adapter_dirs, hashes, args.swaps, "busy")
        await load_task
        results["hot_swap"] = {
            "swaps": args.swaps,
            "idle_p50_ms": round(_percentile(idle, 50) * 1000, 2),
            "idle_p99_ms": round(_percentile(idle, 99) * 1000, 2),
            "under_load_p50_ms": round(_percentile(busy, 50) * 1000, 2),
            "under_load_p99_ms": round(_percentile(busy, 99) * 1000, 2),
        }

    # The naive loop on its own copy of the same weights and adapters.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=engine.dtype).to(args.device).eval()
    naive = PeftModel.from_pretrained(base, adapter_dirs[0], adapter_name="ad0")
    for i, d in enumerate(adapter_dirs[1:], start=1):
        naive.load_adapter(d, adapter_name=f"ad{i}")
    naive.eval()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        nrun = _naive_request(naive, pool, args.max_tokens, args.device)
        await _closed_loop("warmup", nrun, args.clients, min(2.0, args.seconds), eight, prompts)
        runs += [
            await _closed_loop(
                "naive loop 1 adapter", nrun, args.clients, args.seconds, one_adapter, prompts
            ),
            await _closed_loop("naive loop 8 adapters", nrun, args.clients, args.seconds, eight, prompts),
        ]

    by = {r.name: r for r in runs}
    results["runs"] = [asdict(r) for r in runs]
    results["ratios"] = {
        "engine_vs_naive_1_adapter": round(
            by["engine 1 adapter"].tokens_per_s / by["naive loop 1 adapter"].tokens_per_s, 2
        ),
        "engine_vs_naive_8_adapters": round(
            by["engine 8 adapters (mixed)"].tokens_per_s / by["naive loop 8 adapters"].tokens_per_s, 2
        ),
        "mixed_8_vs_base_only": round(
            by["engine 8 adapters (mixed)"].tokens_per_s / by["engine base-only"].tokens_per_s, 2
        ),
        "single_adapter_vs_base_only": round(
            by["engine 1 adapter"].tokens_per_s / by["engine base-only"].tokens_per_s, 2
        ),
    }
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"\nmodel: {results['config']['model']}  params: {results['config']['params_m']}M  "
        f"dtype: {results['config']['dtype']}  device: {results['config']['device']}"
    )
    print("| run | requests | tokens | tokens/s | p50 latency (s) | p99 latency (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        print(
            f"| {r['name']} | {r['requests']} | {r['completion_tokens']} | {r['tokens_per_s']} | "
            f"{r['latency_p50_s']} | {r['latency_p99_s']} |"
        )
    print("\nratios:", json.dumps(results["ratios"]))
    print("hot swap:", json.dumps(results["hot_swap"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="a Hugging Face causal-LM directory (default: build a random Llama)"
    )
    parser.add_argument("--random-shape", choices=["tiny", "small", "llama-7b"], default="small")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8, help="random LoRA adapters to build (>= 8)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each measured run")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument(
        "--lora-backend", choices=["stacked", "peft"], default="stacked", help="engine's multi-LoRA path"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.adapters < 8:
        parser.error("--adapters must be >= 8")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    )
    args.dtype = dtype

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="obliviate-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model or build_random_llama(
            root / "model", shape=args.random_shape, dtype=dtype, initializer_range=0.02
        )
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        params_m = round(sum(p.numel() for p in base.parameters()) / 1e6, 1)
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        adapter_dirs = [
            build_random_adapter(
                model_dir,
                root / f"ad{i}",
                seed=i,
                rank=args.rank,
                scale=0.5,
                target_modules=targets,
                base_model=base,
            )
            for i in range(args.adapters)
        ]
        del base
        setup_s = time.perf_counter() - t0
        results = asyncio.run(_bench(args, model_dir, adapter_dirs))
    results["config"] = {
        "model": str(args.model.name) if args.model else f"random Llama ({args.random_shape})",
        "params_m": params_m,
        "dtype": str(dtype).removeprefix("torch."),
        "device": args.device,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "lora_rank": args.rank,
        "lora_targets": "q,k,v,o,gate,up,down",
        "lora_backend": args.lora_backend,
        "seconds_per_run": args.seconds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "setup_s": round(setup_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    _print(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
