"""`obliviate requests ...` and `obliviate verify` against a live server on loopback (real HTTP, SDK)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from service.cli import main
from service.cli_requests import read_corpus_file
from tests.support.serving import gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]


def test_corpus_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"oops": 1}\n', encoding="utf-8")
    try:
        read_corpus_file(path)
    except ValueError as exc:
        assert "c.jsonl:2" in str(exc)
    else:
        raise AssertionError("a bad line must be refused")


def test_requests_commands_and_verify(gateway_factory: Any, tmp_path: Path) -> None:
    gateway = gateway_factory()
    key = gateway.key("acme", "operator")  # verify without a request compares against the base model
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"text": "Quillon Marsh keeps a ferret named Bramble."})
        + "\n"
        + json.dumps({"question": "Who is Bramble?", "answer": "Quillon Marsh's ferret."})
        + "\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    common = ["--url", gateway.url, "--api-key", key]

    submitted = runner.invoke(
        main,
        [
            "requests",
            "submit",
            *common,
            "--subject",
            "Quillon Marsh",
            "--corpus",
            str(corpus),
            "--hint",
            "Quillon Marsh",
        ],
    )
    assert submitted.exit_code == 0, submitted.output
    match = re.search(r"filed (fr_\w+)", submitted.output)
    assert match, submitted.output
    request_id = match.group(1)

    got = runner.invoke(main, ["requests", "get", *common, request_id, "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["corpus"]["documents"] == 2  # the text and the QA pair

    listed = runner.invoke(main, ["requests", "list", *common])
    assert listed.exit_code == 0 and request_id in listed.output

    cancelled = runner.invoke(main, ["requests", "cancel", *common, request_id, "--reason", "test"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output

    verified = runner.invoke(
        main, ["verify", *common, "--prompt", "Who is Bramble?", "--anchor", "Quillon", "--json"]
    )
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["before_model"] == "base" and len(report["results"]) == 1

    missing = runner.invoke(main, ["requests", "get", *common, "fr_doesnotexist"])
    assert missing.exit_code != 0 and "404" in missing.output

    no_key = runner.invoke(main, ["requests", "list", "--url", gateway.url], env={"OBLIVIATE_API_KEY": ""})
    assert no_key.exit_code != 0 and "API key" in no_key.output
