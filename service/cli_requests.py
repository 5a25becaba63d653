"""Operator and reviewer commands over HTTP, built on the SDK: ``obliviate requests ...``, ``obliviate verify``.

They talk to a running server (``--url``, ``$OBLIVIATE_BASE_URL``) with a key (``--api-key``,
``$OBLIVIATE_API_KEY``), so they work against any deployment, not just a local one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _client_options(fn: F) -> F:
    fn = click.option(
        "--api-key", envvar="OBLIVIATE_API_KEY", default=None, help="API key ($OBLIVIATE_API_KEY)."
    )(fn)
    fn = click.option(
        "--url",
        envvar="OBLIVIATE_BASE_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="Server URL ($OBLIVIATE_BASE_URL).",
    )(fn)
    return fn


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[Any]:
    from obliviate_client import Client, ObliviateError

    if not api_key:
        raise click.UsageError(
            "an API key is needed: --api-key or $OBLIVIATE_API_KEY (see `obliviate keys create`)"
        )
    try:
        with Client(url, api_key=api_key) as client:
            yield client
    except ObliviateError as exc:
        raise click.ClickException(str(exc)) from exc


def _friendly_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def read_corpus_file(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Documents and QA pairs from a .txt (one document) or .jsonl ({"text"} / {"question","answer"}) file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        if not text.strip():
            raise ValueError(f"{path}: the file is empty")
        return [{"text": text, "source": path.name}], []
    documents: list[dict[str, Any]] = []
    pairs: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(
                {"text": record["text"], "source": record.get("source") or f"{path.name}:{number}"}
            )
        elif (
            isinstance(record, dict)
            and isinstance(record.get("question"), str)
            and isinstance(record.get("answer"), str)
        ):
            pairs.append({"question": record["question"], "answer": record["answer"]})
        else:
            raise ValueError(
                f'{path}:{number}: expected {{"text": ...}} or {{"question": ..., "answer": ...}}'
            )
    return documents, pairs


def read_probes_file(path: Path) -> list[dict[str, str]]:
    probes: list[dict[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected {{"prompt": ..., "reference": ...}}')
        probes.append({"prompt": record["prompt"], "reference": str(record.get("reference", ""))})
    return probes


def _print_request(request: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, box=None)
    rows = [
        ("id", request.id),
        ("subject", request.subject),
        ("status", request.status),
        ("progress", f"{request.progress.overall * 100:.0f}%"),
        ("due", f"{request.due.due_at:%Y-%m-%d}" + (" (overdue)" if request.due.overdue else "")),
        (
            "corpus",
            f"{request.corpus.documents} documents, {request.corpus.bytes} bytes, sha256 {request.corpus.sha256[:12]}…",
        ),
    ]
    if request.failure:
        rows.append(("failure", f"{request.failure.code}: {request.failure.reason}"))
    if request.adapter and request.adapter.deployed_version:
        rows.append(("deployed", request.adapter.deployed_version))
    acceptance = request.acceptance
    if acceptance is not None and acceptance.verdict != "pending":
        line = f"{acceptance.verdict} after {acceptance.attempts} attempt(s)"
        if acceptance.failed:
            line += f": {acceptance.failed}"
        if acceptance.overridden:
            line += " (deployed by an admin's override)"
        rows.append(("acceptance", line))
    for key, value in rows:
        table.add_row(f"[bold]{key}", escape(str(value)))
    Console().print(table)


@click.group("requests")
def requests_group() -> None:
    """File and follow forget requests on a running server."""


@requests_group.command("submit")
@_client_options
@click.option("--subject", required=True, help="Who or what is to be forgotten (a label).")
@click.option(
    "--corpus",
    "corpus_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".txt or .jsonl; repeatable.",
)
@click.option("--hint", "hints", multiple=True, help="An entity hint (a term to forget); repeatable.")
@click.option(
    "--probes",
    "probes_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL of {"prompt","reference"}.',
)
@click.option(
    "--retain",
    "retain_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text to keep (one example per line).",
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    type=click.Choice(["anchor_review", "target_review", "evaluation_review"]),
    help="Human review gate to switch on; repeatable.",
)
@click.option("--auto-deploy", is_flag=True, help="Deploy automatically when evaluation passes.")
@click.option("--alpha", type=float, default=None, help="WHP's alpha (default 5).")
@click.option("--wait", "wait_after", is_flag=True, help="Then wait with a progress bar.")
@_friendly_errors
def submit(url: str, api_key: str | None, subject: str, corpus_files: tuple[Path, ...], hints: tuple[str, ...],
           probes_file: Path | None, retain_file: Path | None, gates: tuple[str, ...], auto_deploy: bool,
           alpha: float | None, wait_after: bool) -> None:  # fmt: skip
    """File a forget request."""
    documents: list[dict[str, Any]] = []
    pairs: list[dict[str, str]] = []
    for path in corpus_files:
        more_docs, more_pairs = read_corpus_file(path)
        documents += more_docs
        pairs += more_pairs
    probes = read_probes_file(probes_file) if probes_file else []
    retain = (
        [line for line in retain_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if retain_file
        else []
    )
    options: dict[str, Any] = {
        "review_gates": list(gates),
        "deploy_policy": "auto" if auto_deploy else "manual",
    }
    if alpha is not None:
        options["alpha"] = alpha
    with _client(url, api_key) as client:
        request = client.forget_requests.create(
            subject, corpus=documents, qa_pairs=pairs, hints=list(hints), probes=probes,
            retain_examples=retain, options=options,
        )  # fmt: skip
        click.echo(f"filed {request.id} ({request.status})")
        if wait_after:
            request = client.forget_requests.wait(request.id, until="gate", progress=True)
        _print_request(request)


@requests_group.command("get")
@_client_options
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON.")
def get_request(url: str, api_key: str | None, request_id: str, as_json: bool) -> None:
    """Show one request."""
    with _client(url, api_key) as client:
        request = client.forget_requests.get(request_id)
    if as_json:
        click.echo(request.model_dump_json(indent=2))
    else:
        _print_request(request)


@requests_group.command("list")
@_client_options
@click.option("--status", default=None, help="Comma-separated statuses.")
@click.option("--subject", default=None)
@click.option("--due", type=click.Choice(["overdue", "due_soon"]), default=None)
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Most rows to show."
)
def list_requests(
    url: str, api_key: str | None, status: str | None, subject: str | None, due: str | None, limit: int
) -> None:
    """List requests, newest first."""
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "subject", "status", "progress", "due")
    with _client(url, api_key) as client:
        for count, request in enumerate(
            client.forget_requests.list(status=status, subject=subject, due=due, limit=min(limit, 100))
        ):
            if count >= limit:
                break
            due_text = f"{request.due.due_at:%Y-%m-%d}" + (
                " overdue" if request.due.overdue else " soon" if request.due.due_soon else ""
            )
            table.add_row(
                request.id,
                request.subject,
                request.status,
                f"{request.progress.overall * 100:.0f}%",
                due_text,
            )
    Console().print(table)


@requests_group.command("wait")
@_client_options
@click.argument("request_id")
@click.option(
    "--until", type=click.Choice(["settled", "gate", "deployed"]), default="gate", show_default=True
)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def wait_request(url: str, api_key: str | None, request_id: str, until: str, timeout: float | None) -> None:
    """Wait with a progress bar until the request settles, reaches a gate, or is deployed."""
    with _client(url, api_key) as client:
        request = client.forget_requests.wait(request_id, until=until, timeout=timeout, progress=True)
    _print_request(request)
    if request.status == "failed":
        sys.exit(1)


@requests_group.command("cancel")
@_client_options
@click.argument("request_id")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
def cancel_request(url: str, api_key: str | None, request_id: str, reason: str) -> None:
    """Cancel a request (stops within one batch)."""
    with _client(url, api_key) as client:
        _print_request(client.forget_requests.cancel(request_id, reason))


@requests_group.command("approve")
@_client_options
@click.argument("request_id")
@click.option("--reject", is_flag=True, help="Reject instead of approving (needs --reason).")
@click.option("--reason", default="", help="Recorded in the audit trail.")
@click.option(
    "--gate", type=click.Choice(["anchor_review", "target_review", "evaluation_review"]), default=None
)
def approve_request(
    url: str, api_key: str | None, request_id: str, reject: bool, reason: str, gate: str | None
) -> None:
    """Approve (or reject) the review gate a request waits in."""
    if reject and not reason.strip():
        raise click.UsageError("--reject needs --reason")
    with _client(url, api_key) as client:
        if reject:
            request = client.forget_requests.reject(request_id, reason, gate=gate)
        else:
            request = client.forget_requests.approve(request_id, reason, gate=gate)
    _print_request(request)


@requests_group.command("deploy")
@_client_options
@click.argument("request_id")
@click.option("--alias", default=None, help="Alias to deploy to (default: the request's target alias).")
@click.option(
    "--override",
    is_flag=True,
    help="Deploy although the request failed the acceptance gate (admin keys; needs --reason).",
)
@click.option("--reason", default=None, help="Why the override is justified; audited and in the certificate.")
def deploy_request(
    url: str, api_key: str | None, request_id: str, alias: str | None, override: bool, reason: str | None
) -> None:
    """Deploy a ready request's adapter (hot swap)."""
    if override and not (reason or "").strip():
        raise click.UsageError("--override needs --reason")
    with _client(url, api_key) as client:
        result = client.deployments.deploy(request_id, alias=alias, override=override, reason=reason)
    deployed = result.get("deployed") or {}
    click.echo(f"deployed {request_id} as {result.get('alias')}@{result.get('version')}")
    if override:
        click.echo("acceptance gate overridden: recorded in the audit trail and the certificate")
    if deployed.get("fingerprint"):
        click.echo(f"fingerprint {deployed['fingerprint']}")


@click.command("verify")
@_client_options
@click.option("--request", "request_id", default=None, help="Run this request's probes.")
@click.option("--prompt", "prompts", multiple=True, help="An ad-hoc prompt; repeatable.")
@click.option(
    "--anchor", "anchors", multiple=True, help="A term whose appearance counts as a leak; repeatable."
)
@click.option("--before", "before_model", default=None, help="Model for 'before' (default: base).")
@click.option(
    "--after",
    "after_model",
    default=None,
    help="Model for 'after' (default: the request's adapter, else chat).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON.")
def verify(url: str, api_key: str | None, request_id: str | None, prompts: tuple[str, ...], anchors: tuple[str, ...],
           before_model: str | None, after_model: str | None, as_json: bool) -> None:  # fmt: skip
    """Show what the model said before and says after, side by side, with leak flags."""
    from rich.console import Console
    from rich.table import Table

    if not request_id and not prompts:
        raise click.UsageError("give --request ID and/or at least one --prompt")
    options: dict[str, Any] = {}
    if before_model:
        options["before"] = before_model
    if after_model:
        options["after"] = after_model
    with _client(url, api_key) as client:
        report = client.verifications.create(
            request_id=request_id, prompts=list(prompts), anchors=list(anchors), **options
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    table = Table(
        "prompt", f"before ({report['before_model']})", f"after ({report['after_model']})", show_lines=True
    )
    for row in report["results"]:
        cells = []
        for side in (row["before"], row["after"]):
            leaks = side["leaks"]
            flag = "[red]leaks[/]" if leaks["reference"] or leaks["anchors"] else "[green]no leak[/]"
            probability = side.get("reference_token_probability")
            extra = f" p(ref)={probability:.2f}" if probability is not None else ""
            cells.append(f"{side['answer']}\n{flag}{extra}")
        table.add_row(row["prompt"], *cells)
    Console().print(table)
    summary = report["summary"]
    click.echo(f"verdict: {summary['verdict']} ({summary['changed']}/{summary['prompts']} answers changed)")
