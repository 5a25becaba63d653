"""A live gateway on loopback for serving tests: uvicorn in a thread, a tiny random Llama, real keys.

Requests that are "ready" with an adapter are written straight into the database (the pipeline is
not what these tests exercise); everything else goes through HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from service.app import create_app
from service.auth.keys import create_api_key
from service.db import create_engine
from service.db.base import utcnow
from service.deployments.storage import dir_hash
from service.forget.models import ForgetRequest
from service.forget.service import new_request_id
from service.settings import Settings


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A random tiny Llama with a chat template and four random LoRA adapters (distinct outputs)."""
    from gpu_runtime.engine.testing import build_model_with_adapters

    return build_model_with_adapters(tmp_path_factory.mktemp("tiny-serving"), 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveGateway:
    settings: Settings
    url: str
    keys: dict[str, str] = field(default_factory=dict)  # "<tenant>/<role>" -> key
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    app: Any = None

    @property
    def engine(self) -> Any:
        """The in-process inference engine (to look at its counters; never call it from the test thread)."""
        return self.app.state.resources.extras["engine"]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def key(self, tenant: str = "acme", role: str = "admin") -> str:
        name = f"{tenant}/{role}"
        if name not in self.keys:
            self.keys[name] = asyncio.run(_make_key(self.settings, tenant, role))
        return self.keys[name]

    def ready_request(
        self,
        adapter: Path,
        tenant: str = "acme",
        *,
        probes: list[dict[str, str]] | None = None,
        policy: str = "manual",
    ) -> str:
        """A forget request in ``ready`` whose adapter is ``adapter`` (as the pipeline leaves it)."""
        return self.ready_requests([adapter], tenant, probes=probes, policy=policy)[0]

    def ready_requests(
        self,
        adapters: list[Path],
        tenant: str = "acme",
        *,
        probes: list[dict[str, str]] | None = None,
        policy: str = "manual",
    ) -> list[str]:
        return asyncio.run(_make_ready_requests(self.settings, adapters, tenant, probes or [], policy))

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)


async def _make_key(settings: Settings, tenant: str, role: str) -> str:
    engine = create_engine(settings.resolved_database_url)
    try:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        async with async_sessionmaker(engine)() as session, session.begin():
            _, key = await create_api_key(session, tenant=tenant, role=role)
        return key
    finally:
        await engine.dispose()


async def _make_ready_requests(
    settings: Settings, adapters: list[Path], tenant: str, probes: list[dict[str, str]], policy: str
) -> list[str]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_engine(settings.resolved_database_url)
    now = utcnow()
    hashes = {a: dir_hash(a) for a in set(adapters)}
    rids = [new_request_id() for _ in adapters]
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            for rid, adapter in zip(rids, adapters, strict=True):
                session.add(
                    ForgetRequest(
                        id=rid,
                        tenant=tenant,
                        subject="test subject",
                        status="ready",
                        attempt=1,
                        gates=[],
                        options={"deploy_policy": policy, "target_alias": settings.served_alias},
                        meta={},
                        probes=probes,
                        corpus_hash="0" * 64,
                        corpus_bytes=0,
                        document_count=0,
                        hint_count=0,
                        stages={},
                        progress=1.0,
                        # As the worker leaves a request that passed the acceptance gate.
                        metrics={"gate": {"passed": True}, "passed": True},
                        decisions=[],
                        cancel_requested=False,
                        adapter_path=str(adapter),
                        adapter_hash=hashes[adapter],
                        created_at=now,
                        updated_at=now,
                        due_at=now + timedelta(days=30),
                    )
                )
        return rids
    finally:
        await engine.dispose()


def start_gateway(settings: Settings, *, timeout: float = 120.0) -> LiveGateway:
    """Run the app under uvicorn in a thread on a free loopback port; returns once it answers."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("the gateway did not start in time")
        time.sleep(0.05)
    return LiveGateway(
        settings=settings, url=f"http://127.0.0.1:{port}", server=server, thread=thread, app=app
    )


def serving_settings(data_dir: Path, model_dir: Path, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "redis_url": redis_url,
        "database_url": None,
        "engine": "inprocess",
        "base_model": model_dir,
        "device": "cpu",
        "workers": 0,
        "engine_max_batch": 8,
        "engine_max_tokens": 24,
        "reconcile_interval": 0.2,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The server runs in this process: on a tiny model intra-op threads only add contention (~10x slower
    on a busy 2-core machine), so decode on one thread while the test runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gateway_factory(
    tiny_model: tuple[Path, list[Path]], clean_redis: str, tmp_path: Path, one_torch_thread: None
) -> Iterator[Any]:
    """Start gateways (several replicas may share one data directory and database); all stopped after."""
    started: list[LiveGateway] = []

    def make(data_dir: Path | None = None, **overrides: Any) -> LiveGateway:
        settings = serving_settings(data_dir or tmp_path / "data", tiny_model[0], clean_redis, **overrides)
        gw = start_gateway(settings)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
