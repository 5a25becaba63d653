"""Ablation of the unlearning objective on the forgetting bench's people, without the service.

Runs the pipeline (``gpu_runtime.pipeline.run.run_pipeline``) directly on one subject of the bench's
synthetic data set (``bench/_people.py``: the same base model, documents, QA pairs, hints and retain
examples as ``bench/forgetting.py`` files through HTTP), once per option set given, and prints per
option set: the evaluation's own numbers (leak rates per kind, broken rate, agreement with the
baseline on questions about other people), the acceptance gate's verdict, and the bench's held-out
questions asked of the unlearned model directly (30 about the subject, 150 about the 5 others:
leaks and retain ROUGE-L). Faster than the HTTP bench (no service, one attempt, no ladder) and
meant for comparing settings side by side in one run.

    python -m bench.forgetting_ablation --seed 0 '{}' '{"contrast_weight": 5}' '{"answer_target": "alternative"}'
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._people import generate, request_body
from bench.forgetting import build_model


def run_one(
    data: Any, model_dir: Path, options: dict[str, Any], work: Path, reuse: bool = False
) -> dict[str, Any]:
    from gpu_runtime.pipeline.evaluate import greedy_complete
    from gpu_runtime.pipeline.gate import decide
    from gpu_runtime.pipeline.leaks import leaks, rouge_l_recall
    from gpu_runtime.pipeline.models import attach_adapter, load_baseline, load_tokenizer
    from gpu_runtime.pipeline.run import run_pipeline
    from gpu_runtime.pipeline.types import ForgetSpec, PipelineOptions, Probe

    subject = data.people[0]
    others = [p.name for p in data.people[1:]]
    body = request_body(data, subject.name, others)
    o = PipelineOptions(**options)
    spec = ForgetSpec(
        documents=body["corpus"],
        qa_pairs=body["qa_pairs"],
        hints=body["hints"],
        retain_texts=body["retain_examples"],
        options=o,
    )
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    run_pipeline(model_dir, spec, work)
    seconds = time.perf_counter() - t0
    summary = json.loads((work / "evaluate" / "report.json").read_text())["summary"]
    verdict = decide(summary)
    tok = load_tokenizer(model_dir)
    model = attach_adapter(load_baseline(model_dir, o, None), work / "unlearn" / "delta")

    def ask(questions: Sequence[Any], adapter: bool) -> list[str]:
        probes = [Probe(prompt=q.prompt, reference=q.answer, chat=True) for q in questions]
        if adapter:
            return greedy_complete(model, tok, probes, 48)
        with model.disable_adapter():
            return greedy_complete(model, tok, probes, 48)

    forget_q = data.questions_about(subject.name)
    retain_q = [q for name in others for q in data.questions_about(name)]
    forget_a = ask(forget_q, True)
    leaked = [
        leaks(a, q.reference, q.prompt, subject.terms()) for a, q in zip(forget_a, forget_q, strict=True)
    ]
    before = [rouge_l_recall(a, q.answer) for a, q in zip(ask(retain_q, False), retain_q, strict=True)]
    after = [rouge_l_recall(a, q.answer) for a, q in zip(ask(retain_q, True), retain_q, strict=True)]
    return {
        "options": options,
        "seconds": round(seconds, 1),
        "leak_rate_original": summary.get("leak_rate_after_original"),
        "leak_rate_paraphrase": summary.get("leak_rate_after_paraphrase"),
        "leak_rate_inverted": summary.get("leak_rate_after_inverted"),
        "leak_rate_completion": summary.get("leak_rate_after_completion"),
        "broken_rate": summary.get("broken_rate_after"),
        "contrast_agreement": summary.get("contrast_agreement_after"),
        "kl_general": summary.get("kl_general"),
        "gate_passed": verdict.passed,
        "gate_failures": [f.check for f in verdict.failures],
        "bench_subject_leaks": f"{sum(leaked)}/{len(leaked)}",
        "bench_retain_rouge_before": statistics.fmean(before),
        "bench_retain_rouge_after": statistics.fmean(after),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("options", nargs="*", default=["{}"], help="JSON pipeline option sets to compare")
    ap.add_argument("--seed", type=int, default=0, help="data/model seed (bench/_people.py)")
    ap.add_argument("--people", type=int, default=6)
    ap.add_argument("--model-width", type=int, default=None, help="base model hidden size (default 128)")
    ap.add_argument("--model-layers", type=int, default=None, help="base model layers (default 2)")
    ap.add_argument("--out", default="bench/out", help="where the base model is cached")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep each run's pipeline directory (run-<i>) under this folder",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: start from the kept directories; a stage whose input hash is unchanged is "
        "not run again. The hashes cover the inputs and each stage's version number, not its code: "
        "bump the stage's version (e.g. evaluate's) to re-run it after a change",
    )
    args = ap.parse_args(argv)
    data = generate(args.people, args.seed)
    model_dir, _ = build_model(data, Path(args.out), True, args.model_width, args.model_layers)
    rows = []
    with tempfile.TemporaryDirectory(prefix="obliviate-ablation-") as tmp:
        root = args.keep or Path(tmp)
        for i, raw in enumerate(args.options):
            row = run_one(
                data, model_dir, json.loads(raw), root / f"run-{i}", args.reuse and args.keep is not None
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
