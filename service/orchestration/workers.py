"""Worker liveness and the supervisor of the workers ``serve`` starts itself.

Liveness: every arq worker writes its own health-check key (``WORKER_HEALTH_PREFIX`` + its id) every
``worker_health_interval_s`` with a time-to-live slightly longer than that, so a worker killed with
``kill -9`` disappears from Redis within one interval; a worker that stops cleanly deletes its key.
``live_workers`` lists those keys; readiness and the sweeper use it.

Supervision: ``WorkerSupervisor`` watches the worker processes from a thread and starts a new one when
one exits, with exponential back-off (reset once a process has stayed up for a while), so an
out-of-memory kill or a crash does not leave the queue without a worker.

``COUNTERS`` are in-process numbers (restarts, exits, live workers seen, requests flagged as waiting
without a worker) for a ``/metrics`` endpoint to export.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from service import jobs

logger = logging.getLogger("obliviate.workers")

WORKER_HEALTH_PREFIX = jobs.WORKER_HEALTH_PREFIX


@dataclass
class WorkerCounters:
    """Process-wide counters of the embedded workers and of liveness checks (for /metrics)."""

    started: int = 0
    restarts: int = 0
    exits: int = 0
    running: int = 0
    live_seen: int = 0
    waiting_without_worker: int = 0
    flagged_requests: int = 0
    last_exit_code: int | None = None

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)


COUNTERS = WorkerCounters()


async def live_workers(redis: Any) -> list[str]:
    """Ids of the workers whose health-check key is present (each expires soon after its worker dies)."""
    ids: list[str] = []
    async for key in redis.scan_iter(match=f"{WORKER_HEALTH_PREFIX}*", count=100):
        name = key.decode() if isinstance(key, bytes) else str(key)
        ids.append(name[len(WORKER_HEALTH_PREFIX) :])
    COUNTERS.live_seen = len(ids)
    return sorted(ids)


Spawn = Callable[[], "subprocess.Popen[bytes]"]


class WorkerSupervisor:
    """Keep ``count`` worker processes running; restart exited ones with exponential back-off."""

    def __init__(
        self,
        spawn: Spawn,
        count: int,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        stable_after_s: float = 60.0,
        poll_s: float = 0.5,
        counters: WorkerCounters = COUNTERS,
    ) -> None:
        self._spawn = spawn
        self._count = count
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._stable_after = stable_after_s
        self._poll = poll_s
        self.counters = counters
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # One slot per worker: its process (None while waiting to restart), start time, back-off.
        self._slots: list[dict[str, Any]] = []

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [slot["process"] for slot in self._slots if slot["process"] is not None]

    def start(self) -> WorkerSupervisor:
        with self._lock:
            for _ in range(self._count):
                self._slots.append(
                    {"process": self._launch(), "started": time.monotonic(), "delay": 0.0, "due": 0.0}
                )
        if self._count:
            self._thread = threading.Thread(
                target=self._watch, name="obliviate-worker-supervisor", daemon=True
            )
            self._thread.start()
        return self

    def _launch(self) -> subprocess.Popen[bytes]:
        process = self._spawn()
        self.counters.started += 1
        self.counters.running += 1
        return process

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll):
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self._slots:
                    self._check(slot)

    def _check(self, slot: dict[str, Any]) -> None:
        now = time.monotonic()
        process: subprocess.Popen[bytes] | None = slot["process"]
        if process is not None:
            code = process.poll()
            if code is None:
                if slot["delay"] and now - slot["started"] >= self._stable_after:
                    slot["delay"] = 0.0  # it stayed up: the next crash restarts at once again
                return
            self.counters.exits += 1
            self.counters.running -= 1
            self.counters.last_exit_code = code
            slot["process"] = None
            slot["delay"] = min(self._max, slot["delay"] * 2) if slot["delay"] else self._initial
            slot["due"] = now + slot["delay"]
            logger.warning(
                "worker pid %s exited with code %s; restarting in %.1f s", process.pid, code, slot["delay"]
            )
            return
        if now >= slot["due"]:
            try:
                slot["process"] = self._launch()
            except OSError as exc:
                slot["delay"] = min(self._max, max(self._initial, slot["delay"] * 2))
                slot["due"] = now + slot["delay"]
                logger.warning("could not start a worker (%s); next try in %.1f s", exc, slot["delay"])
                return
            slot["started"] = now
            self.counters.restarts += 1

    def stop(self, timeout: float = 15.0) -> None:
        """Stop supervising, then SIGTERM every worker (SIGKILL after ``timeout``)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            processes = [slot["process"] for slot in self._slots if slot["process"] is not None]
            self._slots.clear()
        stop_processes(processes, timeout)
        self.counters.running = max(0, self.counters.running - len(processes))


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    import signal

    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
