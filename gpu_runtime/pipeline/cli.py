"""``obliviate unlearn``: run the whole pipeline on local files, with a progress bar.

Registered by the main CLI (``from gpu_runtime.pipeline.cli import unlearn``); torch is imported
only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .errors import BadInput, Cancelled
from .types import STAGES, EntityHint, ForgetSpec, PipelineOptions, Probe, QAPair


def read_corpus(path: Path) -> tuple[list[str], list[QAPair]]:
    """A .txt file (one document) or JSONL of {"text"} and/or {"question", "answer"} lines."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in (".jsonl", ".json"):
        return [raw], []
    docs: list[str] = []
    qa: list[QAPair] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise BadInput(f"{path.name} line {n}: not JSON") from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            docs.append(obj["text"])
        elif isinstance(obj, dict) and "question" in obj and "answer" in obj:
            qa.append(QAPair(question=str(obj["question"]), answer=str(obj["answer"])))
        else:
            raise BadInput(f'{path.name} line {n}: expected {{"text"}} or {{"question", "answer"}}')
    return docs, qa


def read_probes(path: Path) -> list[Probe]:
    probes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
                probes.append(
                    Probe(
                        prompt=obj.get("prompt") or obj["question"],
                        reference=obj.get("reference") or obj.get("answer", ""),
                        chat=obj.get("chat", True),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise BadInput(f'{path.name} line {n}: expected {{"prompt", "reference"}}') from None
    return probes


def parse_hint(text: str) -> EntityHint:
    """``term``, ``term:kind`` or ``term:kind:translation1|translation2``."""
    parts = text.split(":")
    kind = parts[1] if len(parts) > 1 and parts[1] else "other"
    translations = [t for t in parts[2].split("|") if t] if len(parts) > 2 else []
    return EntityHint(term=parts[0], kind=kind, translations=translations)  # type: ignore[arg-type]


@click.command("unlearn")
@click.option(
    "--base-model",
    "base_model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Hugging Face causal-LM directory.",
)
@click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Forget corpus: .txt or JSONL.",
)
@click.option(
    "--hints", "hints", multiple=True, help="Entity hint: term[:kind[:translation|...]]; repeatable."
)
@click.option(
    "--probes", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL of forget probes."
)
@click.option(
    "--retain",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Retain text: .txt or JSONL.",
)
@click.option(
    "--retain-probes",
    "retain_probes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL of retain probes.",
)
@click.option(
    "--deployed-adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Adapter now served; the new one composes with it.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Work directory (re-runs resume).",
)
@click.option("--options", "options_json", help="PipelineOptions as JSON, e.g. '{\"alpha\": 2.5}'.")
def unlearn(
    base_model: Path,
    corpus: Path,
    hints: tuple[str, ...],
    probes: Path | None,
    retain: Path | None,
    retain_probes: Path | None,
    deployed_adapter: Path | None,
    out: Path,
    options_json: str | None,
) -> None:
    """Unlearn a corpus from a model: writes the adapter, manifest and evaluation report to OUT."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .run import run_pipeline

    try:
        docs, qa = read_corpus(corpus)
        rdocs, rqa = read_corpus(retain) if retain else ([], [])
        spec = ForgetSpec(
            documents=docs,
            qa_pairs=qa,
            hints=[parse_hint(h) for h in hints],
            probes=read_probes(probes) if probes else [],
            retain_texts=rdocs,
            retain_probes=(read_probes(retain_probes) if retain_probes else [])
            + [Probe(prompt=q.question, reference=q.answer) for q in rqa],
            options=PipelineOptions.model_validate_json(options_json) if options_json else PipelineOptions(),
        )
    except (BadInput, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        TextColumn("{task.fields[msg]}"),
        TimeElapsedColumn(),
    ) as bar:
        tasks: dict[str, Any] = {s: bar.add_task(s, total=1.0, msg="") for s in STAGES}

        def progress(stage: str, fraction: float, message: str) -> None:
            bar.update(tasks[stage], completed=fraction, msg=message)

        try:
            result = run_pipeline(base_model, spec, out, progress=progress, deployed_adapter=deployed_adapter)
        except BadInput as exc:
            raise click.ClickException(str(exc)) from exc
        except Cancelled as exc:
            raise click.ClickException("cancelled") from exc
    click.echo(f"served adapter: {result.served_adapter_dir}")
    click.echo(json.dumps(result.metrics, indent=2))
