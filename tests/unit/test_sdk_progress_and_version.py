"""SDK waits (a live bar on a terminal, one line per status change elsewhere), its version against the
server's API version, and the event stream parsed by httpx-sse."""

from __future__ import annotations

import io
import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

import httpx
import obliviate_client
import pytest
from httpx_sse import ServerSentEvent
from obliviate_client import APIVersionWarning, AsyncClient, Client
from obliviate_client._progress import RichBar, StageLines, TextBar, progress_view
from obliviate_client._resources import parse_event

from service import API_VERSION, API_VERSION_HEADER

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ["queued"] * 6 + ["reinforcing"] * 12 + ["mining_anchors"] * 9 + ["ready"]


def _request(status: str, overall: float = 0.5) -> dict[str, Any]:
    return {
        "id": "fr_1",
        "url": "/v1/forget-requests/fr_1",
        "subject": "Jane Roe",
        "status": status,
        "progress": {"overall": overall, "eta_s": 12.0},
        "due": {"due_at": "2030-01-01T00:00:00+00:00", "overdue": False, "due_soon": False},
        "corpus": {"sha256": "0" * 64, "bytes": 10, "documents": 1, "hints": 0, "probes": 0},
    }


class _Polls:
    """A server whose request moves through ``STATUSES``, one status per poll."""

    def __init__(self, version: str = API_VERSION) -> None:
        self.polls = 0
        self.version = version

    def __call__(self, request: httpx.Request) -> httpx.Response:
        headers = {API_VERSION_HEADER: self.version}
        if request.url.path == "/health/live":
            return httpx.Response(200, json={"status": "ok", "api_version": self.version}, headers=headers)
        status = STATUSES[min(self.polls, len(STATUSES) - 1)]
        self.polls += 1
        return httpx.Response(200, json=_request(status, self.polls / len(STATUSES)), headers=headers)


def _client(handler: Any) -> Client:
    return Client(
        "http://obliviate.test", api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_waiting_into_a_log_writes_one_line_per_status_change() -> None:
    log = io.StringIO()  # not a terminal: a file, a pipe, CI
    with _client(_Polls()) as client:
        done = client.forget_requests.wait("fr_1", poll_interval=0, progress=log)
    assert done.status == "ready"
    lines = log.getvalue().splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == [
        "queued",
        "reinforcing",
        "mining_anchors",
        "ready",
    ]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines[0].startswith("fr_1: queued (") and "ETA 12 s" in lines[0]


async def test_the_async_twin_writes_the_same_lines() -> None:
    log = io.StringIO()
    handler = _Polls()
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncClient("http://obliviate.test", api_key="k", http_client=http) as client:
        await client.forget_requests.wait("fr_1", poll_interval=0, progress=log)
    assert len(log.getvalue().splitlines()) == 4 and handler.polls == len(STATUSES)
    await http.aclose()


def test_waiting_on_a_terminal_draws_a_live_bar() -> None:
    terminal = _Terminal()
    view = progress_view(terminal)
    assert isinstance(view, RichBar)  # rich is installed with the service
    with _client(_Polls()) as client:
        client.forget_requests.wait("fr_1", poll_interval=0, progress=terminal)
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn and "fr_1" in drawn and "ready" in drawn  # redrawn in place


def test_without_rich_a_terminal_gets_the_plain_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # importing it now raises ImportError
    terminal = _Terminal()
    view = progress_view(terminal)
    assert isinstance(view, TextBar)
    with _client(_Polls()) as client:
        client.forget_requests.wait("fr_1", poll_interval=0, progress=terminal)
    assert terminal.getvalue().count("\r") == len(STATUSES) and terminal.getvalue().endswith("\n")


def test_progress_views_by_stream() -> None:
    assert progress_view(False) is None
    assert isinstance(progress_view(io.StringIO()), StageLines)


def test_the_sdk_version_is_the_api_version_the_server_speaks() -> None:
    assert obliviate_client.__version__ == API_VERSION
    sdk = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())
    assert sdk["project"]["version"] == API_VERSION
    assert "httpx-sse" in " ".join(sdk["project"]["dependencies"])


def test_a_server_of_another_api_version_warns_once_per_client() -> None:
    with _client(_Polls(version="9.0.0")) as client, pytest.warns(APIVersionWarning) as caught:
        client.forget_requests.get("fr_1")
        client.forget_requests.get("fr_1")
        version = client.server_version()
    assert len(caught) == 1 and "9.0.0" in str(caught[0].message)
    assert version.api_version == "9.0.0" and version.compatible is False
    assert client.server_api_version == "9.0.0"


def test_a_server_of_the_same_api_version_is_quiet() -> None:
    with _client(_Polls(version=API_VERSION[:-1] + "7")) as client, warnings.catch_warnings():
        warnings.simplefilter("error")  # a patch release apart still speaks the same API
        client.forget_requests.get("fr_1")
        version = client.server_version()
    assert version.compatible and version.client_version == obliviate_client.__version__


def test_keepalives_and_the_retry_preamble_are_not_events() -> None:
    assert parse_event(ServerSentEvent(retry=2000)) is None
    assert parse_event(ServerSentEvent(event="message", data="")) is None
    event = parse_event(ServerSentEvent(event="status", data=json.dumps({"status": "queued"}), id="7"))
    assert event is not None and event.type == "status" and event.id == "7"
    assert event.data == {"status": "queued"}


def test_a_response_that_is_not_an_event_stream_fails_at_once() -> None:
    calls = 0

    def html(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, text="<html>proxy</html>", headers={"content-type": "text/html"})

    with _client(html) as client, pytest.raises(obliviate_client.ObliviateError, match="event stream"):
        list(client.forget_requests.events("fr_1"))
    assert calls == 1  # not retried as a dropped connection
