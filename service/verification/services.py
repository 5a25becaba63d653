"""Run a verification: each prompt on the "before" and "after" models, leak flags, reference probabilities.

Answers are greedy (temperature 0) so a verification is reproducible; both models run concurrently
on the serving backend (the embedded engine batches them). Prompts and answers are returned to the caller and never logged.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from service.auth.keys import Principal, Role
from service.core.errors import BadRequest, ServiceError
from service.core.state import Resources
from service.forget import service as forget_service
from service.gateway.errors import map_engine_error
from service.gateway.names import ADAPTER_PREFIX, Target, resolve
from service.gateway.runtime import BASE_MODEL_NAME, get_backend
from service.serving import Params, ServingBackend
from service.verification import ratelimit
from service.verification.schemas import VerificationBody

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lowercase words separated by single spaces (punctuation and spacing differences do not matter)."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


@dataclass
class Case:
    prompt: str
    reference: str = ""
    anchors: list[str] = field(default_factory=list)
    source: str = "ad_hoc"  # or "probe"


async def _answer_and_score(
    backend: ServingBackend, target: Target, case: Case, max_tokens: int
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": case.prompt}]
    try:
        prompt = await backend.prepare_chat(messages)
        result = await backend.generate(
            prompt, target.engine_name, Params(max_tokens=max_tokens, temperature=0.0)
        )
        scores: list[float] | None = None
        if case.reference:
            scores = await backend.score(target.engine_name, messages, case.reference)
    except ServiceError:
        raise
    except Exception as exc:
        raise map_engine_error(exc, model=target.public, prompt_param="prompts") from None
    # The evaluation's leak definition (one module for evaluation, verification and the demo).
    from gpu_runtime.pipeline.leaks import leaks, mentions

    leaked_anchors = [a for a in case.anchors if mentions(result.text, a) and not mentions(case.prompt, a)]
    side: dict[str, Any] = {
        "answer": result.text,
        "finish_reason": result.finish_reason,
        "leaks": {
            "reference": bool(case.reference)
            and leaks(result.text, case.reference, case.prompt, case.anchors),
            "anchors": leaked_anchors,
        },
        "reference_logprob": None,
        "reference_probability": None,
        "reference_token_probability": None,
    }
    if scores:
        total = sum(scores)
        side["reference_logprob"] = total
        side["reference_probability"] = math.exp(total)
        # Geometric mean per token: comparable across references of different lengths.
        side["reference_token_probability"] = math.exp(total / len(scores))
    return side


def _leaked(side: dict[str, Any]) -> bool:
    return bool(side["leaks"]["reference"] or side["leaks"]["anchors"])


def _side_summary(sides: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(sides)
    probs = [s["reference_token_probability"] for s in sides if s["reference_token_probability"] is not None]
    return {
        "reference_leaks": sum(1 for s in sides if s["leaks"]["reference"]),
        "anchor_leaks": sum(1 for s in sides if s["leaks"]["anchors"]),
        "leak_rate": (sum(1 for s in sides if _leaked(s)) / n) if n else 0.0,
        "mean_reference_token_probability": (sum(probs) / len(probs)) if probs else None,
    }


async def verify(resources: Resources, principal: Principal, body: VerificationBody) -> dict[str, Any]:
    settings = resources.settings
    cases: list[Case] = []
    if body.request_id is not None:
        async with resources.sessionmaker() as session:
            row = await forget_service.get_for_tenant(session, principal.tenant, body.request_id)
            probes = list(row.probes or [])
        cases += [
            Case(str(p.get("prompt", "")), str(p.get("reference", "")), list(body.anchors), "probe")
            for p in probes
            if p.get("prompt")
        ]
    cases += [Case(p.prompt, p.reference, [*body.anchors, *p.anchors]) for p in body.prompts]
    if not cases:
        raise BadRequest(
            "Nothing to verify: give a request_id whose request has probes, and/or prompts", param="prompts"
        )
    if len(cases) > settings.verification_max_prompts:
        raise BadRequest(
            f"At most {settings.verification_max_prompts} prompts per verification, got {len(cases)}",
            param="prompts",
        )
    backend = get_backend(resources)
    before_name = body.before or BASE_MODEL_NAME
    after_name = body.after or (
        ADAPTER_PREFIX + body.request_id if body.request_id is not None else settings.served_alias
    )
    # Names are checked with the caller's rights: another tenant's adapter is a 404, base needs an
    # operator key as on /v1/chat/completions -- except as the "before" of one of the caller's own
    # requests, for its reviewers and admins (request-scoped: get_for_tenant above answered 404 for another tenant's request).
    scoped = body.request_id is not None and principal.role in (Role.REVIEWER, Role.ADMIN)
    before = await resolve(resources, principal, before_name, allow_base=scoped)
    after = await resolve(resources, principal, after_name)
    await ratelimit.spend(
        resources.arq, principal.tenant, len(cases), settings.verification_prompts_per_minute
    )
    started = time.perf_counter()
    befores = await asyncio.gather(*(_answer_and_score(backend, before, c, body.max_tokens) for c in cases))
    afters = await asyncio.gather(*(_answer_and_score(backend, after, c, body.max_tokens) for c in cases))
    results = [
        {
            "prompt": case.prompt,
            "source": case.source,
            "reference": case.reference or None,
            "anchors": case.anchors,
            "before": b,
            "after": a,
            "changed": normalize(b["answer"]) != normalize(a["answer"]),
        }
        for case, b, a in zip(cases, befores, afters, strict=True)
    ]
    before_summary, after_summary = _side_summary(befores), _side_summary(afters)
    leaks_after = after_summary["reference_leaks"] + after_summary["anchor_leaks"]
    return {
        "id": "ver_" + secrets.token_hex(10),
        "object": "verification",
        "request_id": body.request_id,
        "before_model": before.public,
        "after_model": after.public,
        "results": results,
        "summary": {
            "prompts": len(results),
            "changed": sum(1 for r in results if r["changed"]),
            "before": before_summary,
            "after": after_summary,
            "verdict": "no_leaks" if leaks_after == 0 else "leaks_found",
            "seconds": round(time.perf_counter() - started, 3),
        },
    }
