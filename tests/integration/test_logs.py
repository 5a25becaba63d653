"""Logs that read well: JSON lines with the forget request id (HTTP requests, stage jobs and their
threads), no migration chatter at the default level, a clear error for a bad setting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar import get
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from service import API_VERSION, API_VERSION_HEADER
from service.app import create_app
from service.cli import main
from service.core import logs
from service.settings import Settings
from tests.support.forget import app_client, drive, fake_stage_runner, make_key, submit


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer (restored afterwards)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("alembic").level)
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], level, alembic = saved
        root.setLevel(level)
        logging.getLogger("alembic").setLevel(alembic)


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one object


@get("/test-logs/{request_id:str}", sync_to_thread=False)
def _logs_something(request_id: FromPath[str]) -> dict[str, str]:
    logging.getLogger("obliviate.test").info("handling %s", "it")
    return {"ok": request_id}


@get("/test-logs/{request_id:str}/boom", sync_to_thread=False)
def _fails(request_id: FromPath[str]) -> None:
    raise RuntimeError("boom")


async def test_every_line_of_an_http_request_carries_its_request_id(
    settings: Settings, json_lines: io.StringIO
) -> None:
    app = create_app(settings, extra_route_handlers=[_logs_something, _fails])
    async with AsyncTestClient(app) as client:
        ok = await client.get("/test-logs/fr_one")
        assert ok.status_code == 200
        assert ok.headers[API_VERSION_HEADER] == API_VERSION
        boom = await client.get("/test-logs/fr_two/boom")
        assert boom.status_code == 500
        logging.getLogger("obliviate.test").info("outside any request")
    records = _records(json_lines)
    handled = [r for r in records if r["message"] == "handling it"]
    assert handled and handled[0]["request_id"] == "fr_one"
    assert {"ts", "level", "logger", "pid"} <= set(handled[0])
    # The error line is written by the exception handler, outside the route's middleware: still tagged.
    errors = [r for r in records if r["logger"] == "obliviate.errors"]
    assert errors and all(r["request_id"] == "fr_two" for r in errors), errors
    outside = [r for r in records if r["message"] == "outside any request"]
    assert outside and outside[0]["request_id"] is None


def _logging_runner(inp: Any) -> Any:
    logging.getLogger("obliviate.test").info("stage %s running", inp.stage)
    return fake_stage_runner(inp)


async def test_stage_jobs_and_their_threads_log_with_the_request_id(
    settings: Settings, json_lines: io.StringIO
) -> None:
    settings = settings.model_copy(update={"heartbeat_interval_s": 0.2, "relay_interval_s": 3600})
    async with app_client(settings) as client:
        key = await make_key(client)
        created = await submit(client, key)
        state = await drive(client, settings, created["id"], stage_runner=_logging_runner)
        assert state["status"] == "ready"
    lines = [r for r in _records(json_lines) if r["logger"] == "obliviate.test"]
    assert len(lines) == 5, lines  # one per stage, logged from the stage's executor thread
    assert {r["request_id"] for r in lines} == {created["id"]}


def _cli(tmp_path: Path, *args: str, **env: str) -> Any:
    base = {"OBLIVIATE_DATABASE_URL": "", "DATABASE_URL": "", "OBLIVIATE_LOG_LEVEL": "INFO"}
    return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)


@pytest.mark.usefixtures("json_lines")  # restores the root logger the command configures
def test_migrate_prints_no_migration_chatter_at_the_default_level(tmp_path: Path) -> None:
    quiet = _cli(tmp_path, "migrate", "--data-dir", str(tmp_path / "a"), OBLIVIATE_LOG_FORMAT="json")
    assert quiet.exit_code == 0, quiet.output
    assert "alembic" not in quiet.stderr and "Running upgrade" not in quiet.stderr
    # At DEBUG they are there (the check above can fail), as JSON lines.
    verbose = _cli(
        tmp_path,
        "migrate",
        "--data-dir",
        str(tmp_path / "b"),
        OBLIVIATE_LOG_FORMAT="json",
        OBLIVIATE_LOG_LEVEL="debug",
    )
    assert verbose.exit_code == 0, verbose.output
    chatter = [json.loads(line) for line in verbose.stderr.splitlines() if '"alembic' in line]
    assert chatter and all(r["level"] in ("INFO", "DEBUG") for r in chatter)


@pytest.mark.usefixtures("json_lines")
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OBLIVIATE_LOG_FORMAT": "xml"}, "OBLIVIATE_LOG_FORMAT must be 'text' or 'json', not 'xml'"),
        ({"OBLIVIATE_LOG_LEVEL": "loud"}, "OBLIVIATE_LOG_LEVEL must be one of DEBUG"),
    ],
)
def test_a_bad_log_setting_is_a_clear_usage_error(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = _cli(tmp_path, "migrate", "--data-dir", str(tmp_path / "c"), **env)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_log_settings_are_validated_and_reach_worker_processes(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from service.settings import settings_env

    settings = Settings(data_dir=tmp_path, log_level="warning", log_format="JSON")
    assert (settings.log_level, settings.log_format) == ("WARNING", "json")
    env = settings_env(settings, base={})
    assert env["OBLIVIATE_LOG_LEVEL"] == "WARNING" and env["OBLIVIATE_LOG_FORMAT"] == "json"
    with pytest.raises(ValidationError, match="OBLIVIATE_LOG_FORMAT must be"):
        Settings(data_dir=tmp_path, log_format="yaml")
