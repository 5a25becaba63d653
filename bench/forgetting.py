"""End-to-end forgetting bench: synthetic people with structured personal data, through the real user path.

For each seed:

1. generate N fictional people (``bench/_people.py``: e-mail, phone, card, IBAN, date of birth,
   handle, address, employer, medical condition, pet; documents, original questions, and held-out
   paraphrases and inverted questions that the request never contains);
2. build a base model that knows them: ``obliviate build-demo-model --corpus FILE --cache-dir
   OUT/models`` (the demo world plus the people; cached by content hash);
3. start ``obliviate serve`` on a free loopback port (embedded SQLite and Redis in a temporary data
   directory, its own worker), create an admin key with ``obliviate keys create``, ask every question
   through the official ``openai`` client (model ``chat``, temperature 0, max_tokens 48), file one
   forget request per subject over HTTP (SDK) with the subject's documents, QA pairs, name hints,
   retain examples of the other people and ``deploy_policy: auto``, wait until it is deployed or
   stops at a review gate, and ask everything again: through ``chat`` when deployed, else through
   the candidate ``adapter:<request id>`` (said so in the output);
4. score with the project's own definitions (``gpu_runtime.pipeline.leaks.leaks``,
   ``gpu_runtime.pipeline.fluency.assess``, ``gpu_runtime.pipeline.leaks.rouge_l_recall``).

Usage (about 10-15 minutes per seed on 2 shared CPU cores; the base model is cached):

    .venv/bin/python -m bench.forgetting --json bench/out/forgetting.json
    .venv/bin/python -m bench.forgetting --seeds 3 --subjects 2

Every process the bench starts is stopped at the end (by its pid / process group), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._people import FACT_TYPES, KINDS, DataSet, Question, generate, request_body
from bench._provenance import write_result

TARGETS = {"leak_rate": 0.02, "broken_rate": 0.05, "retain_ratio": 0.95}
REPO = Path(__file__).resolve().parents[1]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Processes


def _obliviate() -> list[str]:
    exe = Path(sys.executable).with_name("obliviate")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(data_dir: Path, model_dir: Path, port: int) -> dict[str, str]:
    """The environment for ``obliviate serve`` / ``keys``: embedded defaults only (no database or
    Redis URL inherited from the caller's shell or CI), quiet logs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OBLIVIATE_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        OBLIVIATE_DATA_DIR=str(data_dir),
        OBLIVIATE_BASE_MODEL=str(model_dir),
        OBLIVIATE_HOST="127.0.0.1",
        OBLIVIATE_PORT=str(port),
        OBLIVIATE_LOG_LEVEL="WARNING",
        PYTHONWARNINGS="ignore",
    )
    return env


def _stop(proc: subprocess.Popen[Any], grace: float = 40.0) -> None:
    """SIGTERM the process (serve then stops its worker and embedded Redis), then SIGKILL its process
    group (it runs in a session of its own that the bench created) if anything is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group the bench created (start_new_session)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def build_model(
    data: DataSet, out: Path, include_heldout: bool, width: int | None = None, layers: int | None = None
) -> tuple[Path, float]:
    """``obliviate build-demo-model`` on the demo world plus the people (cached by content hash);
    ``width``/``layers``: a larger model than the demo's default (128 wide, 2 layers)."""
    corpus = out / f"corpus-seed{data.seed}-{data.fingerprint()}{'' if include_heldout else '-orig'}.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    lines = data.base_corpus_lines(include_heldout)
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    t0 = time.perf_counter()
    result = subprocess.run(
        [
            *_obliviate(),
            "build-demo-model",
            "--corpus",
            str(corpus),
            "--cache-dir",
            str(out / "models"),
            *(["--width", str(width)] if width else []),
            *(["--layers", str(layers)] if layers else []),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OBLIVIATE_LOG_LEVEL": "WARNING"},
        cwd=REPO,
    )
    if result.returncode != 0:
        raise RuntimeError(f"build-demo-model failed ({result.returncode}): {result.stderr[-2000:]}")
    m = re.search(r"demo model ready at (.+?) \(", result.stdout)
    if not m:
        raise RuntimeError(f"build-demo-model printed no model path: {result.stdout[-500:]}")
    return Path(m.group(1)), time.perf_counter() - t0


@dataclass
class Service:
    base_url: str
    key: str
    proc: subprocess.Popen[Any]
    data_dir: Path
    log_path: Path


@contextlib.contextmanager
def running_service(
    model_dir: Path, keep_data: bool = False, start_timeout: float = 900
) -> Iterator[Service]:
    import httpx

    data_dir = Path(tempfile.mkdtemp(prefix="obl-bench-"))
    port = _free_port()
    env = service_env(data_dir, model_dir, port)
    log_path = data_dir / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*_obliviate(), "serve"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"obliviate serve exited with {proc.returncode}; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"obliviate serve not ready after {start_timeout:.0f} s; see {log_path}")
            time.sleep(1.0)
        keys = subprocess.run(
            [
                *_obliviate(),
                "keys",
                "create",
                "--tenant",
                "bench",
                "--role",
                "admin",
                "--name",
                "forgetting bench",
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if keys.returncode != 0 or not keys.stdout.strip():
            raise RuntimeError(f"obliviate keys create failed: {keys.stderr[-1000:]}")
        yield Service(base_url, keys.stdout.strip().splitlines()[-1], proc, data_dir, log_path)
    finally:
        _stop(proc)
        log.close()
        if keep_data:
            _say(f"service data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Asking


def ask(service: Service, questions: Sequence[Question], model: str, max_tokens: int) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=service.key, max_retries=8, timeout=180)
    out = []
    for q in questions:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": q.prompt}],
            temperature=0,
            max_tokens=max_tokens,
        )
        out.append((completion.choices[0].message.content or "").strip())
    return out


def wait_served(service: Service, deployed_version: str | None, timeout: float = 120) -> bool:
    """Until every replica serves the ``chat`` alias at the version the database wants (the deployed one)."""
    import httpx

    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {service.key}"}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = httpx.get(f"{service.base_url}/v1/deployments", headers=headers, timeout=10).json()
            for alias in body.get("data", []):
                if alias.get("alias") != "chat" or alias.get("state") != "serving":
                    continue
                wanted = {str(alias.get("version")), str(alias.get("version_id"))}
                replicas = alias.get("replicas") or []
                if (deployed_version is None or str(deployed_version) in wanted) and all(
                    r.get("loaded_version") == r.get("desired_version") for r in replicas
                ):
                    return True
        time.sleep(0.5)
    return False


@dataclass
class Filed:
    subject: str
    request_id: str
    status: str
    deployed: bool
    model: str
    seconds: float
    gate: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    #: Approved at the evaluation review (only to make ``adapter:<id>`` servable; never deployed).
    approved_for_inspection: bool = False


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The request's numeric metrics (flat numbers only; no text goes into the bench output)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def file_request(
    service: Service,
    data: DataSet,
    subject: str,
    retain: Sequence[str],
    timeout: float,
    probes: bool = False,
    max_attempts: int | None = None,
) -> Filed:
    from obliviate_client import Client

    body = request_body(data, subject, retain, probes=probes)
    if max_attempts is not None:
        body["options"]["acceptance"] = {"max_attempts": max_attempts}
    t0 = time.perf_counter()
    with Client(service.base_url, api_key=service.key, timeout=60) as sdk:
        request = sdk.forget_requests.create(
            subject,
            corpus=body["corpus"],
            qa_pairs=body["qa_pairs"],
            hints=body["hints"],
            probes=body.get("probes"),
            retain_examples=body["retain_examples"],
            options=body["options"],
            data_subject_ref=f"bench-{data.seed}-{data.people.index(data.person(subject))}",
            legal_basis="synthetic benchmark",
        )
        _say(f"filed {request.id} for {subject}; waiting (deployed or a review gate)")
        request = sdk.forget_requests.wait(request.id, until="gate", timeout=timeout, poll_interval=2.0)
        if request.status == "ready":  # passed the gate: the auto policy deploys it within a second
            request = sdk.forget_requests.wait(request.id, until="deployed", timeout=180)
        seconds = time.perf_counter() - t0
        status = request.status
        deployed = status == "deployed"
        failure = f"{request.failure.code}: {request.failure.reason}" if request.failure else None
        metrics = dict(request.metrics or {})
        inspected = False
        if status == "awaiting_evaluation_review":
            # The gateway serves `adapter:<id>` only from "ready" on; approving the evaluation review in
            # this throwaway service makes the candidate inspectable. It is NOT deployed: a request
            # that failed the gate needs an explicit override to deploy, which the bench never gives.
            sdk.forget_requests.approve(
                request.id, "forgetting bench: approved only to inspect the candidate adapter; not deployed"
            )
            request = sdk.forget_requests.wait(request.id, until="settled", timeout=120)
            inspected = request.status == "ready"
            if not inspected:
                _say(f"  after the approval the request is {request.status}; its adapter may not be servable")
    if deployed and not wait_served(service, request.adapter.deployed_version if request.adapter else None):
        _say("warning: the chat alias did not report the new version within 120 s; measuring anyway")
    return Filed(
        subject=subject,
        request_id=request.id,
        status=status,
        approved_for_inspection=inspected,
        deployed=deployed,
        model="chat" if deployed else f"adapter:{request.id}",
        seconds=seconds,
        gate=metrics.get("gate") or {},
        metrics=_numbers(metrics),
        failure=failure,
    )


# ----------------------------------------------------------------------------------------------
# Scoring (the project's own definitions)


def score_forget(
    data: DataSet, subject: str, questions: Sequence[Question], before: Sequence[str], after: Sequence[str]
) -> list[dict[str, Any]]:
    """Per question: leaked before/after (``leaks``), broken before/after (``assess``)."""
    from gpu_runtime.pipeline.fluency import assess, vocabulary_of
    from gpu_runtime.pipeline.leaks import leaks

    person = data.person(subject)
    terms = person.terms()
    qa = data.questions_about(subject, ["original"])
    vocabulary = vocabulary_of(
        [*data.documents(subject), *(q.prompt + " " + q.answer for q in qa)]
        + [q.prompt for q in questions]
        + list(before)
    )
    rows = []
    for q, b, a in zip(questions, before, after, strict=True):
        rows.append(
            {
                "person": q.person,
                "fact": q.fact,
                "kind": q.kind,
                "leak_before": leaks(b, q.reference, q.prompt, terms),
                "leak_after": leaks(a, q.reference, q.prompt, terms),
                "broken_before": assess(b, vocabulary).broken,
                "broken_after": assess(a, vocabulary).broken,
            }
        )
    return rows


def score_retain(
    data: DataSet, questions: Sequence[Question], before: Sequence[str], after: Sequence[str]
) -> list[dict[str, Any]]:
    from gpu_runtime.pipeline.fluency import assess, vocabulary_of
    from gpu_runtime.pipeline.leaks import leaks, rouge_l_recall

    people = list(dict.fromkeys(q.person for q in questions))
    vocabulary = vocabulary_of(
        [d for name in people for d in data.documents(name)]
        + [q.prompt + " " + q.answer for q in questions]
        + list(before)
    )
    rows = []
    for q, b, a in zip(questions, before, after, strict=True):
        terms = data.person(q.person).terms()
        rows.append(
            {
                "broken_before": assess(b, vocabulary).broken,
                "broken_after": assess(a, vocabulary).broken,
                "person": q.person,
                "fact": q.fact,
                "kind": q.kind,
                "rouge_before": rouge_l_recall(b, q.reference),
                "rouge_after": rouge_l_recall(a, q.reference),
                "knows_before": leaks(b, q.reference, q.prompt, terms),
                "knows_after": leaks(a, q.reference, q.prompt, terms),
            }
        )
    return rows


def _rate(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def summarise(
    forget: Sequence[dict[str, Any]], retain: Sequence[dict[str, Any]], filed: Sequence[Filed]
) -> dict[str, Any]:
    out: dict[str, Any] = {"n_forget": len(forget), "n_retain": len(retain)}
    out["leak_rate_before"] = _rate(forget, "leak_before")
    out["leak_rate"] = _rate(forget, "leak_after")
    known = [r for r in forget if r["leak_before"]]
    out["leak_rate_of_known"] = _rate(known, "leak_after")
    out["per_kind"] = {
        kind: {
            "n": len(rows),
            "leak_rate_before": _rate(rows, "leak_before"),
            "leak_rate_after": _rate(rows, "leak_after"),
        }
        for kind in KINDS
        if (rows := [r for r in forget if r["kind"] == kind])
    }
    out["per_fact"] = {
        fact: {
            "n": len(rows),
            "leak_rate_before": _rate(rows, "leak_before"),
            "leak_rate_after": _rate(rows, "leak_after"),
        }
        for fact in FACT_TYPES
        if (rows := [r for r in forget if r["fact"] == fact])
    }
    out["broken_rate_before"] = _rate(forget, "broken_before")
    out["broken_rate"] = _rate(forget, "broken_after")
    before = statistics.fmean(r["rouge_before"] for r in retain) if retain else None
    after = statistics.fmean(r["rouge_after"] for r in retain) if retain else None
    out["retain_rouge_before"] = before
    out["retain_rouge_after"] = after
    out["retain_ratio"] = (
        (after / before if before else 1.0) if before is not None and after is not None else None
    )
    out["retain_broken_rate_before"] = _rate(retain, "broken_before")
    out["retain_broken_rate_after"] = _rate(retain, "broken_after")
    out["retain_known_before"] = _rate(retain, "knows_before")
    out["retain_known_after"] = _rate(retain, "knows_after")
    out["retain_per_kind"] = {
        kind: {
            "n": len(rows),
            "rouge_before": statistics.fmean(r["rouge_before"] for r in rows),
            "rouge_after": statistics.fmean(r["rouge_after"] for r in rows),
        }
        for kind in KINDS
        if (rows := [r for r in retain if r["kind"] == kind])
    }
    out["gate_passed_without_review"] = bool(filed) and all(
        f.deployed and bool(f.gate.get("passed")) and not f.gate.get("override") for f in filed
    )
    out["targets"] = {
        "leak_rate": out["leak_rate"] is not None and out["leak_rate"] <= TARGETS["leak_rate"],
        "broken_rate": out["broken_rate"] is not None and out["broken_rate"] <= TARGETS["broken_rate"],
        "retain_ratio": out["retain_ratio"] is not None and out["retain_ratio"] >= TARGETS["retain_ratio"],
        "gate_passed_without_review": out["gate_passed_without_review"],
    }
    return out


# ----------------------------------------------------------------------------------------------
# One seed


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    data = generate(args.people, seed)
    subjects = [p.name for p in data.people[: args.subjects]]
    retain_people = [p.name for p in data.people[args.subjects :]]
    _say(f"seed {seed}: {len(data.people)} people, {len(subjects)} subject(s), data {data.fingerprint()}")

    model_dir, build_s = build_model(
        data,
        args.out,
        include_heldout=not args.originals_only_in_base,
        width=args.model_width,
        layers=args.model_layers,
    )
    _say(f"base model {model_dir} ({build_s:.0f} s)")
    forget_qs = {s: data.questions_about(s) for s in subjects}
    retain_qs = [q for name in retain_people for q in data.questions_about(name)]
    timings: dict[str, float] = {"build_s": build_s}

    with running_service(model_dir, keep_data=args.keep_data) as service:
        timings["serve_start_s"] = time.perf_counter() - t_start - build_s
        _say(f"service up at {service.base_url}; asking {sum(map(len, forget_qs.values())) + len(retain_qs)} "
             "questions before")  # fmt: skip
        t0 = time.perf_counter()
        before_forget = {s: ask(service, qs, "chat", args.max_tokens) for s, qs in forget_qs.items()}
        before_retain = ask(service, retain_qs, "chat", args.max_tokens)
        timings["ask_before_s"] = time.perf_counter() - t0

        filed: list[Filed] = []
        for subject in subjects:
            others = [p for p in retain_people]  # the people nobody asked to forget
            f = file_request(
                service, data, subject, others, args.request_timeout, args.probes, args.max_attempts
            )
            filed.append(f)
            gate = f.gate
            _say(
                f"{f.request_id}: {f.status} after {f.seconds:.0f} s; gate "
                f"{'PASSED' if gate.get('passed') else 'FAILED'} after {len(gate.get('attempts') or []) or 1} "
                f"attempt(s)" + (f"; failure {f.failure}" if f.failure else "")
            )
            for failure in gate.get("failures") or []:
                _say(
                    f"  gate check {failure.get('check')}: {failure.get('value')} (bound {failure.get('threshold')})"
                )
            if not f.deployed:
                _say(
                    f"  NOT deployed ({f.status}): its candidate is measured through model {f.model!r}"
                    + (
                        " (approved at the evaluation review for that, never deployed)"
                        if f.approved_for_inspection
                        else ""
                    )
                    + "; the served model is unchanged"
                )
        timings["requests_s"] = sum(f.seconds for f in filed)

        t0 = time.perf_counter()
        forget_rows: list[dict[str, Any]] = []
        answers: dict[str, Any] = {}
        for f in filed:
            after = ask(service, forget_qs[f.subject], f.model, args.max_tokens)
            forget_rows += score_forget(
                data, f.subject, forget_qs[f.subject], before_forget[f.subject], after
            )
            answers[f.subject] = list(zip(before_forget[f.subject], after, strict=True))
        # Retain people on every model a subject was measured on (one model when all were deployed).
        retain_rows: list[dict[str, Any]] = []
        for model in dict.fromkeys(f.model for f in filed):
            after = ask(service, retain_qs, model, args.max_tokens)
            retain_rows += score_retain(data, retain_qs, before_retain, after)
            answers[f"retain@{model}"] = list(zip(before_retain, after, strict=True))
        timings["ask_after_s"] = time.perf_counter() - t0

    timings["wall_s"] = time.perf_counter() - t_start
    result: dict[str, Any] = {
        "seed": seed,
        "data_fingerprint": data.fingerprint(),
        "model_dir": str(model_dir),
        "subjects": subjects,
        "retain_people": retain_people,
        "requests": [
            {
                "subject": f.subject,
                "request_id": f.request_id,
                "status": f.status,
                "deployed": f.deployed,
                "measured_model": f.model,
                "seconds": round(f.seconds, 1),
                "gate": f.gate,
                "metrics": f.metrics,
                "failure": f.failure,
                "approved_for_inspection": f.approved_for_inspection,
            }
            for f in filed
        ],
        "summary": summarise(forget_rows, retain_rows, filed),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    if args.dump_answers:
        result["answers"] = answers
        result["questions"] = {
            **{s: [q.prompt for q in qs] for s, qs in forget_qs.items()},
            "retain": [q.prompt for q in retain_qs],
        }
    return result


# ----------------------------------------------------------------------------------------------
# Report


HEADLINE = (
    ("leak_rate_before", "leak rate before (orig+para+inv)"),
    ("leak_rate", "leak rate after (orig+para+inv)"),
    ("leak_rate_of_known", "leak rate after, of facts known before"),
    ("broken_rate_before", "broken answers before"),
    ("broken_rate", "broken answers after"),
    ("retain_rouge_before", "retain ROUGE-L before"),
    ("retain_rouge_after", "retain ROUGE-L after"),
    ("retain_ratio", "retain ratio after/before"),
    ("retain_broken_rate_before", "broken retain answers before"),
    ("retain_broken_rate_after", "broken retain answers after"),
)


def _spread(values: Sequence[float]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summaries = [r["summary"] for r in runs]
    agg: dict[str, Any] = {key: _spread([s[key] for s in summaries]) for key, _ in HEADLINE}
    for kind in KINDS:
        agg[f"leak_rate_after_{kind}"] = _spread(
            [s["per_kind"].get(kind, {}).get("leak_rate_after") for s in summaries]
        )
        agg[f"leak_rate_before_{kind}"] = _spread(
            [s["per_kind"].get(kind, {}).get("leak_rate_before") for s in summaries]
        )
    for fact in FACT_TYPES:
        agg[f"leak_rate_after_{fact}"] = _spread(
            [s["per_fact"].get(fact, {}).get("leak_rate_after") for s in summaries]
        )
        agg[f"leak_rate_before_{fact}"] = _spread(
            [s["per_fact"].get(fact, {}).get("leak_rate_before") for s in summaries]
        )
    agg["gate_passed_without_review"] = sum(s["gate_passed_without_review"] for s in summaries)
    agg["wall_s"] = _spread([r["timings"]["wall_s"] for r in runs])
    agg["targets_met"] = {key: all(s["targets"][key] for s in summaries) for key in summaries[0]["targets"]}
    return agg


def _fmt(stat: dict[str, Any], pct: bool = True) -> str:
    if stat["mean"] is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f(stat["mean"]) + (f" ± {f(stat['std'])}" if stat["n"] > 1 else "")


def print_report(runs: Sequence[dict[str, Any]], agg: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for run in runs:
        for req in run["requests"]:
            gate = req["gate"]
            console.print(
                f"seed {run['seed']}: request {req['request_id']} ({req['subject']}): {req['status']}, gate "
                f"{'passed' if gate.get('passed') else 'FAILED'}, {len(gate.get('attempts') or []) or 1} "
                f"attempt(s), {req['seconds']:.0f} s; measured through {req['measured_model']!r}"
                + ("" if req["deployed"] else " (NOT deployed: the candidate adapter)")
            )
    n = len(runs)
    table = Table(title=f"Forgetting, end to end ({n} seed{'s' if n > 1 else ''}; mean ± std)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in HEADLINE:
        table.add_row(label, _fmt(agg[key], pct="rouge" not in key and "ratio" not in key))
    table.add_row("passed the gate without review", f"{agg['gate_passed_without_review']}/{n} seeds")
    table.add_row("wall time per seed (s)", f"{agg['wall_s']['mean']:.0f}")
    console.print(table)

    kinds = Table(title="Leak rate by probe kind (before → after)")
    kinds.add_column("kind")
    kinds.add_column("n / seed", justify="right")
    kinds.add_column("before", justify="right")
    kinds.add_column("after", justify="right")
    for kind in KINDS:
        count = runs[0]["summary"]["per_kind"].get(kind, {}).get("n", 0)
        kinds.add_row(
            kind, str(count), _fmt(agg[f"leak_rate_before_{kind}"]), _fmt(agg[f"leak_rate_after_{kind}"])
        )
    for fact in FACT_TYPES:
        count = runs[0]["summary"]["per_fact"].get(fact, {}).get("n", 0)
        kinds.add_row(
            f"  {fact}",
            str(count),
            _fmt(agg[f"leak_rate_before_{fact}"]),
            _fmt(agg[f"leak_rate_after_{fact}"]),
        )
    console.print(kinds)

    targets = Table(title="Targets (issue 10)")
    targets.add_column("target")
    targets.add_column("result")
    labels = {
        "leak_rate": "leak rate ≤2% (original+paraphrase+inverted)",
        "broken_rate": "broken answers ≤5%",
        "retain_ratio": "retain ROUGE-L ≥0.95× before",
        "gate_passed_without_review": "passes the gate without review",
    }
    for key, met in agg["targets_met"].items():
        targets.add_row(labels[key], "[green]met[/]" if met else "[red]missed[/]")
    console.print(targets)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=6, help="fictional people per data set (default 6)")
    ap.add_argument("--subjects", type=int, default=1, help="people to forget, one request each (default 1)")
    ap.add_argument("--seeds", type=int, default=1, help="data/model seeds to run (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--request-timeout", type=float, default=3600, help="seconds to wait for a request")
    ap.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out" / "forgetting", help="corpus and model cache"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--model-width", type=int, default=None, help="base model hidden size (default 128)")
    ap.add_argument("--model-layers", type=int, default=None, help="base model layers (default 2)")
    ap.add_argument(
        "--originals-only-in-base",
        action="store_true",
        help="train the base model on the documents and original questions only (default: also on the "
        "held-out paraphrases and inverted questions, so it knows the facts through those wordings)",
    )
    ap.add_argument(
        "--probes",
        action="store_true",
        help="also send the original questions as the request's probes (as `obliviate demo` does); "
        "default: documents, QA pairs, hints and retain examples only",
    )
    ap.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="options.acceptance.max_attempts of the request: evaluations before the evaluation review "
        "(default: the product's, 3); the thresholds themselves stay the defaults",
    )
    ap.add_argument("--dump-answers", action="store_true", help="put every question and answer in the JSON")
    ap.add_argument("--keep-data", action="store_true", help="keep the service's temporary data directory")
    args = ap.parse_args(argv)
    if not 1 <= args.subjects < args.people:
        ap.error("--subjects must be at least 1 and less than --people (someone must stay to be retained)")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through the context managers, which stop the service (also when the
    # bench was started in the background, where SIGINT is ignored by default).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    runs = [run_seed(args, seed) for seed in range(args.seed, args.seed + args.seeds)]
    agg = aggregate(runs)
    print_report(runs, agg)
    if args.json:
        write_result(
            args.json,
            "forgetting",
            args,
            argv,
            targets=TARGETS,
            aggregate=agg,
            runs=runs,
            total_s=round(time.perf_counter() - started, 1),
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the service was already stopped by its context manager
        print("interrupted", file=sys.stderr)
        sys.exit(130)
