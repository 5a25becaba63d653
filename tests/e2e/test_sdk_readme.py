"""Every Python example in the SDK's README runs, unchanged, against a live server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.serving import start_gateway

README = Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


@pytest.fixture
def live_server(tmp_path: Path, clean_redis: str) -> Any:
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", redis_url=clean_redis, engine="none", workers=0)
    gateway = start_gateway(settings)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index: int, live_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBLIVIATE_BASE_URL", live_server.url)
    monkeypatch.setenv("OBLIVIATE_API_KEY", live_server.key("acme", "admin"))
    code = python_blocks()[index]
    exec(compile(code, f"{README.name}[{index}]", "exec"), {"__name__": "__readme__"})
