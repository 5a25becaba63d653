"""The embedded Redis: where its socket lives, and which sockets it trusts (real sockets, no server)."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from service.queue.embedded import EmbeddedRedis, EmbeddedRedisError, socket_path_for


def _long_dir(base: Path) -> Path:
    path = base / ("d" * 60) / ("e" * 60)
    path.mkdir(parents=True)
    return path


def test_long_data_dir_gets_a_private_random_socket_folder(tmp_path: Path) -> None:
    data_dir = _long_dir(tmp_path)
    first = socket_path_for(data_dir)
    try:
        assert len(str(first)) <= 100
        folder = first.parent
        mode = folder.stat().st_mode
        assert stat.S_IMODE(mode) == 0o700 and folder.stat().st_uid == os.getuid()
        # Random, not derived from the data directory (a predictable name in /tmp could be taken first).
        assert folder.name.startswith("obliviate-redis-") and len(folder.name) > len("obliviate-redis-") + 4
        # Other processes on the same data directory find the same socket.
        assert socket_path_for(data_dir) == first
        other = _long_dir(tmp_path / "other")
        assert socket_path_for(other).parent != folder
    finally:
        for d in (data_dir, tmp_path / "other" / ("d" * 60) / ("e" * 60)):
            pointer = d / "redis.sockdir"
            if pointer.exists():
                os.rmdir(pointer.read_text().strip())


def test_a_recorded_folder_that_is_not_private_is_not_used(tmp_path: Path) -> None:
    data_dir = _long_dir(tmp_path)
    shared = Path(tempfile.mkdtemp(prefix="shared-"))
    try:
        shared.chmod(0o777)
        (data_dir / "redis.sockdir").write_text(str(shared))
        with pytest.raises(EmbeddedRedisError):
            socket_path_for(data_dir)  # the pointer is there (first wins) but names a shared folder
    finally:
        os.rmdir(shared)


def _fake_pong_server(path: Path) -> tuple[socket.socket, threading.Thread]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(b"+PONG\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.skipif(os.getuid() != 0, reason="making a socket owned by another user needs root")
def test_a_socket_of_another_user_is_not_trusted_even_if_it_answers_pong(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sock_path = data_dir / "redis.sock"
    server, _ = _fake_pong_server(sock_path)
    try:
        os.chown(sock_path, 65534, 65534)  # nobody's socket
        with pytest.raises(EmbeddedRedisError, match="not a socket owned by this user"):
            EmbeddedRedis(data_dir).start(timeout=2)
    finally:
        server.close()


def test_a_non_socket_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "redis.sock").symlink_to("/dev/null")
    with pytest.raises(EmbeddedRedisError):
        EmbeddedRedis(data_dir).start(timeout=2)
