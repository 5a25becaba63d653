"""`obliviate demo --serve` stopped by SIGTERM stops its worker and its embedded Redis too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.live import free_port


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(part) for part in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc (Linux)")
def test_sigterm_stops_the_demo_worker_and_embedded_redis(demo_model_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["OBLIVIATE_MODEL_CACHE"] = str(demo_model_dir.parent)  # the suite's built demo model
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--serve", "--data-dir", str(tmp_path / "demo"),
         "--port", str(free_port())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker: int | None = None
    redis: int | None = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (worker is None or redis is None):
            assert process.poll() is None, "the demo exited early"
            for child in _children(process.pid):
                line = _cmdline(child)
                if "service.cli worker" in line:
                    worker = child
                elif "redis-server" in line:
                    redis = child
            time.sleep(0.2)
        assert worker is not None and redis is not None, "the demo did not start its worker and Redis"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        for _ in range(100):
            if not _alive(worker) and not _alive(redis):
                break
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived the demo"
        assert not _alive(redis), "the embedded Redis outlived the demo"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for orphan in (worker, redis):  # on failure, do not leave them running
            if orphan is not None and _alive(orphan):
                os.kill(orphan, signal.SIGKILL)
