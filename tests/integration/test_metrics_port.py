"""``OBLIVIATE_METRICS_PORT``: ``/metrics`` on a port of its own, real HTTP to it, the main port's 404,
the settings' validation, and ``obliviate serve`` stopping both ports on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service.settings import Settings
from tests.support.forget import app_client, auth, make_key, submit

pytestmark = pytest.mark.timeout(120)

TOKEN = "metrics-port-token-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 8100, "metrics_port": 8100}, r"must differ from OBLIVIATE_PORT \(8100\)"),
        ({"metrics_port": 0}, "greater than or equal to 1"),
        ({"metrics_port": 65536}, "less than or equal to 65535"),
        ({"metrics_port": 9100, "metrics_enabled": False}, "OBLIVIATE_METRICS_ENABLED is false"),
    ],
)
def test_metrics_port_is_validated(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(engine="none", **values)


def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBLIVIATE_METRICS_PORT", "9464")
    assert Settings(engine="none").metrics_port == 9464
    monkeypatch.setenv("OBLIVIATE_METRICS_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="metrics_port"):
        Settings(engine="none")


async def test_metrics_on_their_own_port(settings: Settings) -> None:
    port = free_port()
    own = settings.model_copy(
        update={
            "engine": "none",
            "metrics_port": port,
            "metrics_bearer_token": TOKEN,
            "metrics_cache_s": 0,
            "sweep_interval_s": 3600,
            "relay_interval_s": 3600,
        }
    )
    async with app_client(own) as client:
        key = await make_key(client)
        await submit(client, key, subject="Port Subject")
        # The main port no longer serves it, whatever the credentials.
        moved = await client.get("/metrics", headers=auth(TOKEN))
        assert moved.status_code == 404 and "OBLIVIATE_METRICS_PORT" in moved.text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as scraper:
            # Same access rules as on the main port.
            assert (await scraper.get("/metrics")).status_code == 401
            submitter = await scraper.get("/metrics", headers=auth(key))
            assert submitter.status_code == 403
            ok = await scraper.get("/metrics", headers=auth(TOKEN))
            assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
            families = {family.name: family for family in text_string_to_metric_families(ok.text)}
            # The same collectors: the app's state gauges and the process-wide HTTP metrics, which
            # count the API's requests (not the scrapes).
            queued = [
                s for s in families["obliviate_forget_requests"].samples if s.labels["status"] == "queued"
            ]
            assert [s.value for s in queued] == [1.0]
            assert any(
                s.labels.get("path") == "/v1/forget-requests"
                for s in families["obliviate_http_requests"].samples
            )
            # Nothing else is served there.
            assert (await scraper.get("/v1/forget-requests", headers=auth(key))).status_code == 404
            assert (await scraper.get("/docs/openapi.json")).status_code == 404
    assert refused(port)  # closed with the app


def test_metrics_port_in_use_is_named() -> None:
    """The start-up hook binds with this: a busy port fails the start with the setting's name.

    (Through ``app.lifespan()`` a failing start-up hook leaves the test hanging in the other hooks'
    clean-up under pytest, as test_metrics.py notes for another case; the hook itself is covered by
    the tests above and below.)
    """
    from service.observability.port import bind

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port} \(OBLIVIATE_METRICS_PORT\)"):
            bind("127.0.0.1", port)


def test_serve_stops_the_metrics_port_on_sigterm(tmp_path: Path) -> None:
    api, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OBLIVIATE_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(
        OBLIVIATE_DATA_DIR=str(tmp_path / "data"),
        OBLIVIATE_ENGINE="none",
        OBLIVIATE_PORT=str(api),
        OBLIVIATE_METRICS_PORT=str(metrics),
        OBLIVIATE_METRICS_PUBLIC="true",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--workers", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=2)
                if scraped.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[0].decode()
            assert time.monotonic() < deadline, "the metrics port did not open"
            time.sleep(0.2)
        assert "obliviate_forget_requests" in scraped.text
        assert httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=5).status_code == 404
        assert httpx.get(f"http://127.0.0.1:{api}/health/live", timeout=5).status_code == 200
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode in (0, 128 + signal.SIGTERM), output
    assert refused(api) and refused(metrics)
    assert "Traceback" not in output, output
