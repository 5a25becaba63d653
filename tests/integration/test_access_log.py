"""Personal data in query strings (``?subject=``) never reaches the access log (real uvicorn)."""

from __future__ import annotations

import httpx

from service.core.access_log import redact_path
from service.settings import Settings
from tests.support.forget import auth, make_key
from tests.support.live import live_server
from tests.support.logs import captured_logs


async def test_subject_query_is_redacted_in_the_access_log(settings: Settings) -> None:
    async with (
        live_server(settings, log_level="info", access_log=True, log_config=None) as live,
        httpx.AsyncClient(base_url=live.url, timeout=10) as client,
    ):
        with captured_logs("uvicorn.access", "") as logs:
            key = await make_key(live)
            response = await client.get(
                "/v1/forget-requests",
                params={"subject": "Zebulon Quillfeather", "limit": 5},
                headers=auth(key),
            )
            assert response.status_code == 200, response.text
    access = [r.getMessage() for r in logs.records if r.name == "uvicorn.access"]
    assert any("/v1/forget-requests?subject=REDACTED&limit=5" in line for line in access), access
    # (The test's own HTTP client logs the URL it sends; only the server's records count.)
    server = [r for r in logs.records if not r.name.startswith(("httpx", "httpcore"))]
    assert server and not [r.getMessage() for r in server if "Quillfeather" in r.getMessage()]


def test_redact_path_keeps_safe_parameters_only() -> None:
    assert redact_path("/v1/x") == "/v1/x"
    assert redact_path("/v1/x?status=queued&subject=Jane%20Doe") == "/v1/x?status=queued&subject=REDACTED"
    assert redact_path("/v1/x?email=a@b.c&cursor=abc") == "/v1/x?email=REDACTED&cursor=abc"
