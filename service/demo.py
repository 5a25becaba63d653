"""``obliviate demo``: the whole product on its embedded defaults, end to end.

Builds the demo model if missing, starts the API and a worker, creates a key, asks the served model
about one fictional person (and another, as a control), files a real forget request for the first
through the SDK, follows it to deployment, then prints before/after answers side by side and where
the signed certificate is. Everything here is synthetic data from the demo world.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from service.settings import Settings

DEMO_TENANT = "demo"


@dataclass
class Question:
    prompt: str
    reference: str
    about: str  # "forget" or "keep"
    #: "original" (a question of the request's corpus), or held out of the request: "paraphrase",
    #: "inverted" (the fact is given, the person is asked for)
    kind: str = "original"


@dataclass
class DemoOutcome:
    request_id: str
    status: str
    forgotten_before: int
    forgotten_after: int
    kept_before: int
    kept_after: int
    total_forget: int
    total_keep: int
    certificate_path: Path | None
    seconds: float
    #: Forgotten-person questions that still leak after, by kind (original / paraphrase / inverted).
    leaks_after_by_kind: dict[str, int] | None = None
    #: Questions (by kind) whose fact the model stated before, and how many were asked.
    known_before_by_kind: dict[str, int] | None = None
    asked_by_kind: dict[str, int] | None = None
    gate_passed: bool | None = None


NOISY_LOGGERS = ("alembic", "httpx", "httpx2", "arq", "uvicorn", "transformers", "obliviate", "gpu_runtime")


def quiet_logging() -> None:
    """The demo prints its own story; library chatter (and the workers' INFO lines) would drown it."""
    os.environ.setdefault("OBLIVIATE_LOG_LEVEL", "WARNING")  # inherited by the worker processes
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    logging.getLogger().setLevel(logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _create_key(settings: Settings, role: str = "admin") -> str:
    from service.auth.keys import create_api_key
    from service.db import create_engine

    async def make() -> str:
        engine = create_engine(settings.resolved_database_url)
        try:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            async with async_sessionmaker(engine)() as session:
                _, key = await create_api_key(session, tenant=DEMO_TENANT, role=role, name="obliviate demo")
                await session.commit()
            return key
        finally:
            await engine.dispose()

    return asyncio.run(make())


@contextmanager
def running_service(settings: Settings) -> Iterator[str]:
    """Serve ``settings`` in this process (uvicorn in a thread) with its workers; yields the base URL."""
    import uvicorn

    from service.app import create_app
    from service.cli import prepared_service

    with prepared_service(settings.model_copy(update={"workers": max(1, settings.workers)})) as served:
        config = uvicorn.Config(create_app(served), host=served.host, port=served.port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="obliviate-demo-server", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 600
            while not server.started:
                if not thread.is_alive():
                    raise click.ClickException(f"the server did not start (is port {served.port} free?)")
                if time.monotonic() > deadline:
                    raise click.ClickException("the server did not start within 10 minutes")
                time.sleep(0.1)
            yield f"http://{served.host}:{served.port}"
        finally:
            from service.cli import unwinding

            unwinding.set()  # a SIGTERM that started this clean-up is not raised again (service/cli.py)
            server.should_exit = True
            thread.join(timeout=30)


def pick_people(world: Any, subject: str | None) -> tuple[Any, Any]:
    people = list(world.people)
    target = world.person(subject) if subject else people[0]
    control = next(p for p in people if p.name != target.name)
    return target, control


def request_material(world: Any, target: Any) -> dict[str, Any]:
    """What the demo's forget request contains: the person's documents, QA pairs and hints."""
    return {
        "documents": [d["text"] for d in world.documents() if d["subject"] == target.name],
        "qa_pairs": [{"question": qa.question, "answer": qa.answer} for qa in world.qa_for(target.name)],
        "hints": [
            {"term": target.name, "kind": "person"},
            {"term": target.first_name, "kind": "first_name"},
            {"term": target.last_name, "kind": "last_name"},
            {"term": target.birthplace, "kind": "place"},
            {"term": target.pet_name, "kind": "other"},
            {"term": target.work_title, "kind": "other"},
        ],
    }


def person_terms(person: Any) -> list[str]:
    """The terms whose mention states a person's facts (the leak definition's request terms)."""
    return [
        person.name,
        person.first_name,
        person.last_name,
        person.birthplace,
        person.pet_name,
        person.work_title,
    ]


def build_questions(world: Any, target: Any, control: Any, per_person: int | None = None) -> list[Question]:
    """Every fact of the person to forget, asked as in the corpus and in ways the request does not
    contain (a held-out paraphrase per question, inverted questions), and every fact of a control."""
    from gpu_runtime.pipeline.probes import evaluation_probes
    from gpu_runtime.pipeline.types import ForgetSpec

    material = request_material(world, target)
    held_out = evaluation_probes(ForgetSpec.model_validate(material), [])
    originals = world.qa_for(target.name)[:per_person] if per_person else world.qa_for(target.name)
    forget = [Question(qa.question, qa.answer, "forget") for qa in originals]
    paraphrased: dict[str, Question] = {}
    for q in held_out["paraphrase"]:
        paraphrased.setdefault(q.reference, Question(q.prompt, q.reference, "forget", "paraphrase"))
    forget += [paraphrased[qa.answer] for qa in originals if qa.answer in paraphrased]
    seen: set[str] = set()
    for q in held_out["inverted"]:
        # one inverted question per fact sentence: the first wording of each
        key = q.prompt.split(" ", 3)[-1]
        if key not in seen and "," not in q.prompt:
            seen.add(key)
            forget.append(Question(q.prompt, q.reference, "forget", "inverted"))
    keep = [Question(qa.question, qa.answer, "keep") for qa in world.qa_for(control.name)]
    return forget + keep


def answered(answer: str, question: Question, person: Any) -> bool:
    """Whether ``answer`` still states the fact: the evaluation's leak definition (``leaks.py``)."""
    from gpu_runtime.pipeline.leaks import leaks

    return leaks(answer, question.reference, question.prompt, person_terms(person))


def ask_all(base_url: str, api_key: str, questions: list[Question], model: str) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=3, timeout=120)
    answers = []
    for question in questions:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question.prompt}], max_tokens=48, temperature=0
        )
        answers.append((completion.choices[0].message.content or "").strip())
    return answers


def _gate_lines(metrics: dict[str, Any]) -> list[str]:
    """The acceptance gate's verdict in a few lines (rates per probe kind, failing checks)."""
    gate = metrics.get("gate") or {}
    kinds = ("probe", "original", "paraphrase", "inverted", "completion")
    rates = ", ".join(
        f"{k} {metrics[f'leaks_after_{k}']}/{metrics[f'n_{k}']}" for k in kinds if f"n_{k}" in metrics
    )
    lines = [f"   leaks after, by probe kind: {rates or 'n/a'}"]
    if "broken_rate_after" in metrics:
        lines.append(f"   broken answers after: {metrics['broken_rate_after']:.0%}")
    if "retain_rouge_after" in metrics:
        lines.append(
            f"   retain ROUGE-L: {metrics.get('retain_rouge_before', 0):.2f} before, {metrics['retain_rouge_after']:.2f} after"
        )
    attempts = gate.get("attempts") or []
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    lines.append(f"   acceptance gate: {verdict} after {len(attempts) or 1} attempt(s)")
    for failure in gate.get("failures") or []:
        lines.append(
            f"     - {failure.get('check')}: {failure.get('value')} (threshold {failure.get('threshold')})"
        )
    return lines


def run_demo(
    settings: Settings,
    *,
    subject: str | None = None,
    review: bool = False,
    per_person: int | None = None,
    echo: Callable[[str], None] = click.echo,
    keep_serving: bool = False,
    wait_timeout: float = 1800.0,
    max_attempts: int | None = None,
) -> DemoOutcome:
    """Run the demo on ``settings`` (whose base_model is the demo model); returns what it measured."""
    from obliviate_client import Client
    from rich.console import Console
    from rich.table import Table

    from gpu_runtime.demo.world import build_world

    started = time.perf_counter()
    world = build_world()
    target, control = pick_people(world, subject)
    questions = build_questions(world, target, control, per_person)
    console = Console()

    with running_service(settings) as base_url:
        key = _create_key(settings)
        echo(
            f"service up at {base_url} (API docs {base_url}/docs); demo key created for tenant {DEMO_TENANT!r}"
        )
        n_held = sum(q.kind != "original" for q in questions)
        echo(
            f"\n1. Asking the served model about {target.name} (to forget) and {control.name} (to keep): "
            f"{len(questions)} questions, {n_held} of them worded in ways the request will not contain…"
        )
        before = ask_all(base_url, key, questions, "chat")

        material = request_material(world, target)
        probes = [
            {"prompt": q.prompt, "reference": q.reference}
            for q in questions
            if q.about == "forget" and q.kind == "original"
        ]
        retain = [qa.answer for qa in world.qa_pairs() if qa.subject not in ("", target.name)][:60]
        options: dict[str, Any] = {
            "deploy_policy": "auto",
            "review_gates": ["anchor_review"] if review else [],
        }
        if max_attempts is not None:  # the gate's ladder: evaluations before the evaluation review
            options["acceptance"] = {"max_attempts": max_attempts}
        with Client(base_url, api_key=key, timeout=60) as sdk:
            request = sdk.forget_requests.create(
                target.name, corpus=material["documents"], qa_pairs=material["qa_pairs"],
                hints=material["hints"], probes=probes, retain_examples=retain, options=options,
                data_subject_ref="demo-subject-1", legal_basis="GDPR Art. 17 (demo)",
            )  # fmt: skip
            echo(
                f"\n2. Filed forget request {request.id} for {target.name}; following it through the pipeline…"
            )
            if review:
                echo(
                    f"   The anchor review gate is on: open {base_url}/review with this key to review it:\n   {key}"
                )
            request = sdk.forget_requests.wait(request.id, until="gate", timeout=wait_timeout, progress=True)
            if request.status == "ready":  # passed: the auto-deploy policy deploys it within a second
                request = sdk.forget_requests.wait(request.id, until="deployed", timeout=120)
            echo("   the evaluation, and the acceptance gate's verdict (fail closed):")
            for line in _gate_lines(request.metrics):
                echo(line)
            deployed = request.status == "deployed"
            if deployed:
                model = "chat"
                echo(f"   deployed as {request.adapter.deployed_version if request.adapter else '?'}")
            elif request.status == "awaiting_evaluation_review":
                model = f"adapter:{request.id}"
                echo(
                    "   NOT deployed: the request waits at the evaluation review, where a reviewer sees the "
                    f"residual leaks (UI: {base_url}/review). The served model is unchanged (fail closed);"
                    f" reviewers can question the candidate as model {model!r}, as below."
                )
            else:
                reason = f": {request.failure.code}: {request.failure.reason}" if request.failure else ""
                raise click.ClickException(f"the request ended {request.status}{reason}")

            if deployed:
                echo(f"\n3. Asking the same questions again ({model})…")
                deadline = time.monotonic() + 30
                after = ask_all(base_url, key, questions, model)
                while after == before and time.monotonic() < deadline:  # the alias flips within a second
                    time.sleep(0.5)
                    after = ask_all(base_url, key, questions, model)
            else:
                echo(
                    f"\n3. Asking the same questions of the candidate the gate stopped ({model}, not served)…"
                )
                after = ask_all(base_url, key, questions, model)

            cert_path: Path | None = None
            if deployed:
                certificate = sdk.forget_requests.certificate(request.id)  # signature checked locally
                cert_dir = settings.data_dir / "certificates"
                cert_dir.mkdir(parents=True, exist_ok=True)
                cert_path = cert_dir / f"{request.id}.json"
                cert_path.write_text(
                    json.dumps(certificate.model_dump(), indent=2, default=str), encoding="utf-8"
                )

        after_label = "after (chat)" if deployed else "candidate (not served)"
        table = Table("about", "asked as", "question", "before", after_label, show_lines=True)
        counts = {"fb": 0, "fa": 0, "kb": 0, "ka": 0}
        by_kind: dict[str, int] = {}
        known_before: dict[str, int] = {}
        asked: dict[str, int] = {}
        for question, old, new in zip(questions, before, after, strict=True):
            person = target if question.about == "forget" else control
            was, now = answered(old, question, person), answered(new, question, person)
            prefix = "f" if question.about == "forget" else "k"
            counts[prefix + "b"] += was
            counts[prefix + "a"] += now
            if question.about == "forget":
                by_kind[question.kind] = by_kind.get(question.kind, 0) + now
                known_before[question.kind] = known_before.get(question.kind, 0) + was
                asked[question.kind] = asked.get(question.kind, 0) + 1
            mark = lambda ok: "[green]✓ knows[/]" if ok else "[red]✗ doesn't[/]"  # noqa: E731
            table.add_row(
                f"{question.about}: {person.name}",
                question.kind if question.kind == "original" else f"{question.kind} (not in request)",
                question.prompt,
                f"{old}\n{mark(was)}",
                f"{new}\n{mark(now)}",
            )
        console.print(table)
        n_forget = sum(q.about == "forget" for q in questions)
        n_keep = len(questions) - n_forget
        echo(
            f"\n{target.name}: the model stated {counts['fb']}/{n_forget} facts before and {counts['fa']}/{n_forget} after"
            f" ({', '.join(f'{k}: {v} leaked' for k, v in by_kind.items())})."
            f"\n{control.name} (not forgotten): {counts['kb']}/{n_keep} before, {counts['ka']}/{n_keep} after."
        )
        if cert_path is not None:
            echo(f"Signed certificate (Ed25519, verified; it states the residual rates): {cert_path}")
        echo(f"Audit trail: {base_url}/v1/forget-requests/{request.id}/audit")
        if keep_serving:
            echo(f"\nStill serving at {base_url}; talk to it with the openai client (base_url={base_url}/v1,"
                 f" api_key={key}, model='chat'). Ctrl-C to stop.")  # fmt: skip
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return DemoOutcome(
        request_id=request.id,
        status=request.status,
        forgotten_before=counts["fb"],
        forgotten_after=counts["fa"],
        kept_before=counts["kb"],
        kept_after=counts["ka"],
        total_forget=n_forget,
        total_keep=n_keep,
        certificate_path=cert_path,
        seconds=time.perf_counter() - started,
        leaks_after_by_kind=by_kind,
        known_before_by_kind=known_before,
        asked_by_kind=asked,
        gate_passed=bool((request.metrics.get("gate") or {}).get("passed")),
    )
