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
            server.should_exit = True
            thread.join(timeout=30)


def pick_people(world: Any, subject: str | None) -> tuple[Any, Any]:
    people = list(world.people)
    target = world.person(subject) if subject else people[0]
    control = next(p for p in people if p.name != target.name)
    return target, control


def build_questions(world: Any, target: Any, control: Any, per_person: int) -> list[Question]:
    forget = [Question(qa.question, qa.answer, "forget") for qa in world.qa_for(target.name)[:per_person]]
    keep = [
        Question(qa.question, qa.answer, "keep")
        for qa in world.qa_for(control.name)[: max(2, per_person // 2)]
    ]
    return forget + keep


def _key_fact(reference: str, subject_name: str) -> str:
    """The part of a reference answer that carries the fact (the answer minus the subject's name)."""
    fact = reference.replace(subject_name, "").strip(" .'s")
    return fact or reference


def answered(answer: str, reference: str, subject_name: str) -> bool:
    """Whether an answer still states the fact (normalised containment of the fact's words)."""
    words = [w for w in _key_fact(reference, subject_name).lower().replace(".", "").split() if len(w) > 2]
    text = answer.lower()
    return bool(words) and all(w in text for w in words)


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


def run_demo(
    settings: Settings,
    *,
    subject: str | None = None,
    review: bool = False,
    per_person: int = 6,
    echo: Callable[[str], None] = click.echo,
    keep_serving: bool = False,
    wait_timeout: float = 1800.0,
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
        echo(f"\n1. Asking the served model about {target.name} (to forget) and {control.name} (to keep)…")
        before = ask_all(base_url, key, questions, "chat")

        documents = [d["text"] for d in world.documents() if d["subject"] == target.name]
        pairs = [{"question": qa.question, "answer": qa.answer} for qa in world.qa_for(target.name)]
        hints = [
            {"term": target.name, "kind": "person"},
            {"term": target.first_name, "kind": "first_name"},
            {"term": target.last_name, "kind": "last_name"},
            {"term": target.birthplace, "kind": "place"},
            {"term": target.pet_name, "kind": "other"},
            {"term": target.work_title, "kind": "other"},
        ]
        probes = [{"prompt": q.prompt, "reference": q.reference} for q in questions if q.about == "forget"]
        retain = [qa.answer for qa in world.qa_pairs() if qa.subject not in ("", target.name)][:60]
        options: dict[str, Any] = {
            "deploy_policy": "auto",
            "review_gates": ["anchor_review"] if review else [],
        }
        with Client(base_url, api_key=key, timeout=60) as sdk:
            request = sdk.forget_requests.create(
                target.name, corpus=documents, qa_pairs=pairs, hints=hints, probes=probes,
                retain_examples=retain, options=options, data_subject_ref="demo-subject-1",
                legal_basis="GDPR Art. 17 (demo)",
            )  # fmt: skip
            echo(
                f"\n2. Filed forget request {request.id} for {target.name}; following it through the pipeline…"
            )
            if review:
                echo(
                    f"   The anchor review gate is on: open {base_url}/review with this key to review it:\n   {key}"
                )
            request = sdk.forget_requests.wait(
                request.id, until="deployed", timeout=wait_timeout, progress=True
            )
            if request.status != "deployed":
                reason = f": {request.failure.code}: {request.failure.reason}" if request.failure else ""
                raise click.ClickException(f"the request ended {request.status}{reason}")
            echo(f"   deployed as {request.adapter.deployed_version if request.adapter else '?'}")

            echo("\n3. Asking the same questions again…")
            deadline = time.monotonic() + 30
            after = ask_all(base_url, key, questions, "chat")
            while after == before and time.monotonic() < deadline:  # the alias flips within a second
                time.sleep(0.5)
                after = ask_all(base_url, key, questions, "chat")

            certificate = sdk.forget_requests.certificate(request.id)  # signature checked locally
            cert_dir = settings.data_dir / "certificates"
            cert_dir.mkdir(parents=True, exist_ok=True)
            cert_path = cert_dir / f"{request.id}.json"
            cert_path.write_text(
                json.dumps(certificate.model_dump(), indent=2, default=str), encoding="utf-8"
            )

        table = Table("about", "question", "before", "after", show_lines=True)
        counts = {"fb": 0, "fa": 0, "kb": 0, "ka": 0}
        for question, old, new in zip(questions, before, after, strict=True):
            person = target if question.about == "forget" else control
            was, now = (
                answered(old, question.reference, person.name),
                answered(new, question.reference, person.name),
            )
            prefix = "f" if question.about == "forget" else "k"
            counts[prefix + "b"] += was
            counts[prefix + "a"] += now
            mark = lambda ok: "[green]✓ knows[/]" if ok else "[red]✗ doesn't[/]"  # noqa: E731
            table.add_row(
                f"{'forget' if question.about == 'forget' else 'keep'}: {person.name}",
                question.prompt,
                f"{old}\n{mark(was)}",
                f"{new}\n{mark(now)}",
            )
        console.print(table)
        n_forget = sum(q.about == "forget" for q in questions)
        n_keep = len(questions) - n_forget
        echo(
            f"\n{target.name}: the model stated {counts['fb']}/{n_forget} facts before and {counts['fa']}/{n_forget} after."
            f"\n{control.name} (not forgotten): {counts['kb']}/{n_keep} before, {counts['ka']}/{n_keep} after."
        )
        echo(f"Signed certificate (Ed25519, verified): {cert_path}")
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
    )
