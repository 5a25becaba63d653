"""This replica's serving state and the reconciler that converges it onto the database.

The database says which version each alias serves (``served_aliases``, with a ``generation`` that
grows on every change). Each replica polls it every ``reconcile_interval`` seconds, and wakes at once
when another replica announces a change on Redis pub/sub (a lost message costs one poll). For an
alias whose generation moved it loads the version's adapter first (hash checked), then flips the
engine alias. A load that fails (file missing on this host, hash mismatch) leaves the alias where it
was and is retried on the next tick: a replica never serves an adapter it could not verify. A
restarted replica runs one pass before it accepts requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.core.state import Resources
from service.deployments.models import AdapterVersion, ServedAlias

logger = logging.getLogger("obliviate.deployments")

SERVING_KEY = "serving"
CHANGES_CHANNEL = "obliviate:deployments:changed"


def engine_adapter_id(request_id: str | None, version_id: str) -> str:
    """The engine id of a version: a request's adapter has one id whether served by alias or by name."""
    return f"adapter:{request_id}" if request_id else f"version:{version_id}"


def fingerprint(sha256: str | None) -> str:
    """``system_fingerprint`` of a response: names the adapter content without revealing whose it is."""
    return f"fp_{sha256[:16]}" if sha256 else "fp_base"


@dataclass(frozen=True)
class AliasView:
    """What one alias serves (version 0 = the base model)."""

    alias: str
    generation: int
    version_id: str | None = None
    version: int = 0
    sha256: str | None = None
    engine_id: str | None = None
    parent_id: str | None = None
    tenant: str | None = None
    path: str | None = None
    updated_at: datetime | None = None


class Serving:
    """Per-replica state: alias views, adapter fingerprints, and the lock that orders local swaps."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.engine: Any = resources.extras.get("engine")
        self.views: dict[str, AliasView] = {}
        # engine adapter id -> content sha256, for fingerprints of responses.
        self.fingerprints: dict[str, str] = {}
        # Deploys, rollbacks and reconcile passes in this process run one at a time.
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.passes = 0
        # Ready requests with an auto policy whose deploy was refused; left to a human (manual deploy).
        self.auto_refused: set[str] = set()

    @property
    def settings(self) -> Any:
        return self.resources.settings

    def aliases(self) -> list[str]:
        names = set(self.views) | {self.settings.served_alias}
        return sorted(names)

    def view(self, alias: str) -> AliasView | None:
        if alias in self.views:
            return self.views[alias]
        if alias == self.settings.served_alias:
            return AliasView(alias=alias, generation=0)
        return None

    def fingerprint_of(self, engine_adapter: str | None) -> str:
        return fingerprint(self.fingerprints.get(engine_adapter) if engine_adapter else None)

    async def load(self, engine_id: str, path: str | Path, sha256: str) -> None:
        """Load an adapter into the engine (no-op when already loaded); the engine checks the hash."""
        if self.engine is None:
            return
        await self.engine.aload_adapter(engine_id, path, sha256)
        self.fingerprints[engine_id] = sha256

    def flip(self, view: AliasView) -> None:
        """Point the engine alias at the view's adapter (atomic in the engine) and record the view."""
        if self.engine is not None:
            self.engine.set_alias(view.alias, view.engine_id)
        self.views[view.alias] = view

    # -- reconciliation ---------------------------------------------------------------------------
    async def desired(self) -> list[AliasView]:
        async with self.resources.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(ServedAlias, AdapterVersion).outerjoin(
                        AdapterVersion, AdapterVersion.id == ServedAlias.version_id
                    )
                )
            ).all()
        return [view_of(alias_row, version_row) for alias_row, version_row in rows]

    async def reconcile_once(self) -> int:
        """Converge on the database; returns how many aliases changed here."""
        desired = await self.desired()
        changed = 0
        async with self.lock:
            for view in desired:
                current = self.views.get(view.alias)
                if current is not None and current.generation >= view.generation:
                    continue
                if not await self._apply(view):
                    continue
                changed += 1
        self.passes += 1
        return changed

    async def _apply(self, view: AliasView) -> bool:
        if view.engine_id is not None and view.path is not None and view.sha256 is not None:
            try:
                await self.load(view.engine_id, view.path, view.sha256)
            except Exception as exc:  # any failure: keep serving what we have and retry next tick
                logger.error(
                    "cannot load version %s of alias %s: %s", view.version_id, view.alias, type(exc).__name__
                )
                return False
        self.flip(view)
        logger.info(
            "alias %s now serves version %s (generation %s)", view.alias, view.version, view.generation
        )
        return True

    async def run(self) -> None:
        interval = float(self.settings.reconcile_interval)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=interval)
            self.wake.clear()
            try:
                await self.reconcile_once()
                await self.auto_deploy_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup must not end reconciliation for good
                logger.warning("reconcile pass failed: %s", type(exc).__name__)

    async def announce(self, alias: str) -> None:
        """Tell the other replicas to reconcile now (best effort: polling converges anyway)."""
        try:
            await self.resources.arq.publish(CHANGES_CHANNEL, alias)
        except Exception as exc:  # Redis down: the next poll picks the change up
            logger.warning("could not announce a deployment change: %s", type(exc).__name__)

    async def listen(self) -> None:
        """Wake the reconciler when another replica announces a change (Redis pub/sub)."""
        while True:
            try:
                async with self.resources.arq.pubsub() as pubsub:
                    await pubsub.subscribe(CHANGES_CHANNEL)
                    while True:
                        # A bounded wait (shorter than the pool's socket timeout): an idle channel
                        # returns None instead of raising a read timeout every few seconds.
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if message is not None and message.get("type") == "message":
                            self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect after a Redis restart; polling covers the gap
                logger.warning("deployment change listener: %s; retrying", type(exc).__name__)
                await asyncio.sleep(max(1.0, float(self.settings.reconcile_interval)))

    async def auto_deploy_once(self) -> int:
        """Deploy ready requests whose policy is ``auto`` (any replica may; the alias compare-and-set
        makes sure each is deployed once). A request whose evaluation did not pass waits for a human."""
        from service.core.errors import ServiceError
        from service.deployments.services import deploy
        from service.forget.models import ForgetRequest

        async with self.resources.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(ForgetRequest.id, ForgetRequest.options, ForgetRequest.metrics).where(
                        ForgetRequest.status == "ready"
                    )
                )
            ).all()
        deployed = 0
        for rid, options, metrics in rows:
            if (options or {}).get("deploy_policy") != "auto" or rid in self.auto_refused:
                continue
            if isinstance(metrics, dict) and metrics.get("passed") is False:
                continue
            try:
                await deploy(self.resources, rid, principal=None)
                deployed += 1
            except ServiceError as exc:
                if exc.status_code >= 500 or exc.status_code == 429:
                    continue  # transient (adapter slots busy, ...): the next tick tries again
                # Refused for a reason a retry will not fix (stale parent, hash mismatch): a human decides.
                self.auto_refused.add(rid)
                logger.warning("auto-deploy of %s refused: %s", rid, exc.code)
        return deployed


def view_of(alias_row: ServedAlias, version_row: AdapterVersion | None) -> AliasView:
    if version_row is None:
        return AliasView(
            alias=alias_row.alias, generation=alias_row.generation, updated_at=alias_row.updated_at
        )
    return AliasView(
        alias=alias_row.alias,
        generation=alias_row.generation,
        version_id=version_row.id,
        version=version_row.version,
        sha256=version_row.sha256,
        engine_id=engine_adapter_id(version_row.request_id, version_row.id),
        parent_id=version_row.parent_id,
        tenant=version_row.tenant,
        path=version_row.path,
        updated_at=alias_row.updated_at,
    )


def get_serving(resources: Resources) -> Serving:
    serving: Serving | None = resources.extras.get(SERVING_KEY)
    if serving is None:
        # Apps built without the deployments hook (unit setups) still get a consistent, empty view.
        serving = resources.extras[SERVING_KEY] = Serving(resources)
    return serving


async def start_reconciler(resources: Resources, stack: AsyncExitStack) -> None:
    """Startup hook (after the engine's): converge once, then keep converging in the background."""
    serving = Serving(resources)
    resources.extras[SERVING_KEY] = serving
    await serving.reconcile_once()
    tasks = [
        asyncio.create_task(serving.run(), name="obliviate-reconciler"),
        asyncio.create_task(serving.listen(), name="obliviate-deployments-listener"),
    ]

    async def _stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    stack.push_async_callback(_stop)
