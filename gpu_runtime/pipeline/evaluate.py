"""Stage 5, evaluate: forget efficacy and utility of the unlearned model against its baseline.

Forget probes: greedy completions, leak rate of anchor terms (those not already in the prompt)
and of reference answers, ROUGE-L recall against the reference, and the probability of the
reference answer (geometric mean per token). Utility: the same on retain probes, perplexity on
retain text, and KL(baseline || unlearned) on general prompts. An optional LLM judge grades
forget completions on the paper's 0-3 familiarity rubric. Probes are derived from the corpus when
the request gives none.

Artifact: ``work_dir/evaluate/report.json``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .artifacts import Reporter, atomic_dir, hash_json, is_done, skipped_result
from .types import CancelFn, ForgetSpec, LLMOptions, Probe, ProgressFn, StageResult

log = logging.getLogger(__name__)
STAGE = "evaluate"
DIR = "evaluate"
GENERAL_PROMPTS = (
    "Tell me about the weather today.",
    "What is a good way to learn a new language?",
    "Write one sentence about a cat.",
    "How do I boil an egg?",
)


# ---------------------------------------------------------------- text metrics


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_recall(candidate: str, reference: str) -> float:
    """ROUGE-L recall on lower-cased words: LCS / reference length (1.0 for an empty reference)."""
    ref = _words(reference)
    if not ref:
        return 1.0
    return lcs_length(_words(candidate), ref) / len(ref)


def contains_term(text: str, term: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(term.lower()) + r"(?!\w)", text.lower()) is not None


# ---------------------------------------------------------------- model probes


def _prompt_text(tokenizer: Any, probe: Probe) -> str:
    from .models import chat_prompt

    return chat_prompt(tokenizer, probe.prompt) if probe.chat else probe.prompt


def _encode_prompt(tokenizer: Any, text: str) -> list[int]:
    from .models import special_prefix

    ids = tokenizer.encode(text, add_special_tokens=False)
    prefix = special_prefix(tokenizer)
    return ids if prefix and ids[: len(prefix)] == prefix else prefix + ids


@torch.no_grad()
def greedy_complete(
    model: Any, tokenizer: Any, probes: Sequence[Probe], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy completions, batched with left padding."""
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    outs: list[str] = []
    for b0 in range(0, len(probes), batch_size):
        prompts = [
            _encode_prompt(tokenizer, _prompt_text(tokenizer, p)) for p in probes[b0 : b0 + batch_size]
        ]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in gen[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outs


@torch.no_grad()
def answer_logprob(model: Any, tokenizer: Any, probe: Probe) -> tuple[float, int]:
    """Sum of log p(reference tokens | prompt) and the number of reference tokens."""
    from .translate import encode_piece

    dev = next(model.parameters()).device
    prompt = _encode_prompt(tokenizer, _prompt_text(tokenizer, probe))
    ref = encode_piece(tokenizer, (" " if not probe.chat else "") + probe.reference.strip())
    if not ref:
        return 0.0, 0
    ids = torch.tensor([prompt + ref], device=dev)
    lp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
    return float(lp.gather(-1, torch.tensor(ref, device=dev).unsqueeze(-1)).sum()), len(ref)


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], block_size: int) -> float | None:
    from .translate import plain_blocks

    nll, n = 0.0, 0
    dev = next(model.parameters()).device
    for block in plain_blocks(tokenizer, texts, block_size):
        if len(block) < 2:
            continue
        ids = torch.tensor([block], device=dev)
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll -= float(lp.gather(-1, ids[0, 1:].unsqueeze(-1)).sum())
        n += len(block) - 1
    return math.exp(nll / n) if n else None


@torch.no_grad()
def kl_to_baseline(model: Any, tokenizer: Any, prompts: Sequence[str]) -> float:
    """Mean per-position KL(baseline || model) over the prompts (chat-formatted)."""
    from .models import chat_prompt

    dev = next(model.parameters()).device
    total, n = 0.0, 0
    for p in prompts:
        ids = torch.tensor([_encode_prompt(tokenizer, chat_prompt(tokenizer, p))], device=dev)
        lq = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        with model.disable_adapter():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        total += float((lp.exp() * (lp - lq)).sum())
        n += ids.shape[1]
    return total / max(1, n)


# ---------------------------------------------------------------- probes from the corpus


def derive_probes(spec: ForgetSpec, terms: Sequence[str], limit: int = 50) -> list[Probe]:
    """Forget probes when the request has none: its QA pairs, then sentence prefixes ending at a term."""
    probes = [Probe(prompt=q.question, reference=q.answer, chat=True) for q in spec.qa_pairs]
    for doc in spec.documents:
        for sentence in re.split(r"(?<=[.!?])\s+", doc):
            for term in sorted(terms, key=len, reverse=True):
                m = re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", sentence)
                if m and len(sentence) - m.end() > 3:
                    probes.append(
                        Probe(prompt=sentence[: m.end()], reference=sentence[m.end() :].strip(), chat=False)
                    )
                    break
    return probes[:limit]


# ---------------------------------------------------------------- LLM judge

_JUDGE_SYSTEM = (
    "You grade how familiar a language model's completion is with a specific subject. Score 3: it contains "
    "details unique to the subject; 2: generic themes of the genre; 1: a lucky guess; 0: no familiarity. "
    'Answer with JSON only: {"score": 0|1|2|3, "reason": str}.'
)


def judge_completions(
    options: LLMOptions, items: Sequence[tuple[str, str, str]], client: Any = None
) -> tuple[list[int | None], list[str]]:
    """Grade (prompt, completion, reference) triples 0-3; malformed answers retried, then None."""
    errors: list[str] = []
    if client is None:
        import openai

        client = openai.OpenAI(
            base_url=options.base_url, api_key=options.api_key, timeout=options.timeout_s, max_retries=0
        )
    scores: list[int | None] = []
    for k, (prompt, completion, reference) in enumerate(items):
        score = None
        for attempt in range(options.max_retries + 1):
            try:
                resp = client.chat.completions.create(
                    model=options.model,
                    messages=[
                        {"role": "system", "content": _JUDGE_SYSTEM},
                        {
                            "role": "user",
                            "content": f"Subject facts: {reference}\nPrompt: {prompt}\nCompletion: {completion}",
                        },
                    ],
                    response_format={"type": "json_object"},
                    temperature=0,
                )
                content = resp.choices[0].message.content or ""
                m = re.search(r"\{.*\}", content, re.S)
                value = json.loads(m.group(0) if m else content).get("score")
                if isinstance(value, int) and 0 <= value <= 3:
                    score = value
                    break
                errors.append(f"item {k} attempt {attempt + 1}: score out of range")
            except Exception as exc:
                errors.append(f"item {k} attempt {attempt + 1}: {type(exc).__name__}")
        scores.append(score)
    return scores, errors


# ---------------------------------------------------------------- stage


def probe_metrics(
    model: Any, tokenizer: Any, probes: Sequence[Probe], terms: Sequence[str], max_new_tokens: int
) -> dict[str, Any]:
    completions = greedy_complete(model, tokenizer, probes, max_new_tokens)
    rows = []
    for p, c in zip(probes, completions, strict=True):
        lp, n = answer_logprob(model, tokenizer, p) if p.reference else (0.0, 0)
        leaked = [t for t in terms if contains_term(c, t) and not contains_term(p.prompt, t)]
        rouge = rouge_l_recall(c, p.reference) if p.reference else None
        rows.append(
            {
                "prompt": p.prompt,
                "completion": c,
                "rouge_l_recall": rouge,
                "answer_prob": math.exp(lp / n) if n else None,
                "leaked_terms": leaked,
                "reference_leak": bool(p.reference) and (rouge is not None and rouge >= 0.8),
            }
        )

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "n": len(rows),
        "rouge_l_recall": mean("rouge_l_recall"),
        "answer_prob": mean("answer_prob"),
        "anchor_leak_rate": sum(bool(r["leaked_terms"]) for r in rows) / len(rows) if rows else None,
        "reference_leak_rate": sum(r["reference_leak"] for r in rows) / len(rows) if rows else None,
        "rows": rows,
    }


def evaluate(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    llm_client: Any = None,
) -> StageResult:
    """Compare baseline and unlearned model on forget and retain probes; write the report."""
    from .anchors import load_anchors
    from .models import attach_adapter, load_baseline, load_tokenizer
    from .unlearn import retain_texts, unlearn_output

    rep = Reporter(STAGE, progress, should_cancel)
    work = Path(work_dir)
    out = work / DIR
    unlearn_dir, unlearn_hash = unlearn_output(work)
    anchors = load_anchors(work)
    terms = sorted({a.term for a in anchors.anchors} | {h.term for h in spec.hints})
    o = spec.options
    input_hash = hash_json(
        {
            "stage": STAGE,
            "v": 1,
            "unlearn": unlearn_hash,
            "terms": terms,
            "probes": [p.model_dump() for p in spec.probes],
            "retain": [spec.retain_texts, [p.model_dump() for p in spec.retain_probes]],
            "opts": [
                o.max_new_tokens,
                o.llm.model_dump(exclude={"api_key"}) if o.llm and o.llm.judge else None,
            ],
        }
    )
    if is_done(out, input_hash):
        rep(1.0, "already evaluated")
        return skipped_result(STAGE, out, input_hash)
    tokenizer = load_tokenizer(base_model_dir)
    forget_probes = list(spec.probes) or derive_probes(spec, terms)
    model = attach_adapter(load_baseline(base_model_dir, o, deployed_adapter), unlearn_dir / "delta")
    report: dict[str, Any] = {"terms": len(terms), "probes_derived": not spec.probes}
    sections = [("forget", forget_probes), ("retain", list(spec.retain_probes))]
    for k, (name, probes) in enumerate(sections):
        if not probes:
            continue
        rep.check()
        rep(0.1 + 0.35 * k, f"{name} probes ({len(probes)})")
        with model.disable_adapter():
            before = probe_metrics(model, tokenizer, probes, terms, o.max_new_tokens)
        rep.check()
        after = probe_metrics(model, tokenizer, probes, terms, o.max_new_tokens)
        report[name] = {"before": before, "after": after}
    rep.check()
    rtexts = retain_texts(spec, tokenizer)
    if rtexts:
        with model.disable_adapter():
            ppl_before = perplexity(model, tokenizer, rtexts, o.block_size)
        report["retain_perplexity"] = {
            "before": ppl_before,
            "after": perplexity(model, tokenizer, rtexts, o.block_size),
        }
    general = [p.prompt for p in spec.retain_probes if p.chat][:16] + list(GENERAL_PROMPTS)
    report["kl_general"] = kl_to_baseline(model, tokenizer, general)
    if o.llm is not None and o.llm.judge and "forget" in report:
        rep(0.9, "LLM judge")
        rows = report["forget"]["after"]["rows"]
        scores, errors = judge_completions(
            o.llm,
            [(r["prompt"], r["completion"], p.reference) for r, p in zip(rows, forget_probes, strict=True)],
            llm_client,
        )
        graded = [s for s in scores if s is not None]
        report["judge"] = {
            "scores": scores,
            "errors": errors,
            "mean": sum(graded) / len(graded) if graded else None,
            "familiarity_rate": sum(s >= 2 for s in graded) / len(graded) if graded else None,
        }
    summary = _summary(report)
    with atomic_dir(out, input_hash, summary) as tmp:
        (tmp / "report.json").write_text(
            json.dumps({"summary": summary, **report}, indent=2, ensure_ascii=False)
        )
    log.info("evaluation: %s", json.dumps(summary))
    rep(1.0, "evaluated")
    return StageResult(stage=STAGE, artifact=str(out), input_hash=input_hash, skipped=False, summary=summary)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (no probe text), safe to log and to put in the manifest."""
    s: dict[str, Any] = {}
    for name in ("forget", "retain"):
        if name in report:
            for when in ("before", "after"):
                for key in ("rouge_l_recall", "answer_prob", "anchor_leak_rate", "reference_leak_rate"):
                    s[f"{name}_{key}_{when}"] = report[name][when][key]
    if "retain_perplexity" in report:
        s["retain_perplexity_before"] = report["retain_perplexity"]["before"]
        s["retain_perplexity_after"] = report["retain_perplexity"]["after"]
    s["kl_general"] = report["kl_general"]
    if "judge" in report:
        s["judge_mean"] = report["judge"]["mean"]
        s["judge_familiarity_rate"] = report["judge"]["familiarity_rate"]
    return s
