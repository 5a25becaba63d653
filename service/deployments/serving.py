"""This replica's serving state and the reconciler that converges it onto the database.

The database says which version each alias serves (``served_aliases``, with a ``generation`` that
grows on every change). Each replica polls it every ``reconcile_interval`` seconds, and wakes at once
when another replica announces a change on Redis pub/sub (a lost message costs one poll). For an
alias whose generation moved it loads the version's adapter first (hash checked), then flips the
alias in the serving backend (:mod:`service.serving`: the embedded engine, or an upstream pool whose
every healthy member must hold the version). Each pass also runs the backend's own upkeep (upstreams:
health probes, re-warming a restarted one). A restarted replica runs one pass before it accepts requests.

Admission (:meth:`Serving.admit`): polling alone leaves a replica a fraction of a second behind a
flip made elsewhere. So every request for an alias first reads the alias's generation from the
database (one primary-key SELECT); if this replica serves an older generation, the request waits
(at most ``CATCH_UP_S``) while this replica loads and flips to what the database says now, and
answers 503 ``alias_unavailable`` if that does not happen in time. A request is therefore never
answered by a version older than the one the database held when it was admitted; one admitted before
a flip may still finish on the version it started with (it already left admission).

Fail closed: when the version the database wants cannot be loaded here (file missing on this host,
hash mismatch, load error, no upstream reachable or holding it), the alias is taken out of the backend
and answers 503 ``alias_unavailable``
until the load succeeds -- never the base model, never an older version, both of which still know what
was forgotten. Until the first pass has read the database the served alias is not served either. The
failure is logged once per transition (and once on recovery), counted in :class:`ServingMetrics`,
reported by ``/health/ready`` and per replica in ``/v1/deployments``; loads are retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select

from service.core.errors import Unavailable
from service.core.state import Resources
from service.deployments.models import AdapterVersion, ServedAlias
from service.serving.backend import ServingBackend
from service.serving.errors import AdapterError

logger = logging.getLogger("obliviate.deployments")

SERVING_KEY = "serving"
CHANGES_CHANNEL = "obliviate:deployments:changed"
# Each serving replica publishes its per-alias state here (a key per replica, expiring), so any replica
# can show every replica's real state in /v1/deployments.
REPLICA_KEY_PREFIX = "obliviate:serving:replica:"
MAX_RETRY_S = 10.0
# How long a request waits at admission for this replica to serve the alias's generation in the
# database (load the version's adapter and flip) before it is answered 503 alias_unavailable.
CATCH_UP_S = 5.0
# The alias's generation, read on every request for an alias (primary-key lookup).
_GENERATION = select(ServedAlias.generation).where(ServedAlias.alias == bindparam("alias"))


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


@dataclass
class AliasFault:
    """Why this replica cannot serve the version an alias should serve."""

    code: str  # not_loaded_yet | adapter_missing | hash_mismatch | load_failed | upstream_unavailable
    message: str
    version: int
    generation: int
    since: float = field(default_factory=time.time)
    attempts: int = 0
    next_try: float = 0.0  # monotonic


@dataclass
class ServingMetrics:
    """In-process counters and gauges of fail-closed serving (for a later /metrics export)."""

    load_failures_total: dict[str, int] = field(default_factory=dict)  # per alias: failed loads
    unavailable_transitions_total: dict[str, int] = field(default_factory=dict)  # serving -> unavailable
    recoveries_total: dict[str, int] = field(default_factory=dict)  # unavailable -> serving
    refused_requests_total: dict[str, int] = field(default_factory=dict)  # 503 alias_unavailable answered
    loads_total: dict[str, int] = field(default_factory=dict)  # per alias ("adapter": by request id)
    swaps_total: dict[str, int] = field(default_factory=dict)  # alias pointed at another adapter

    def unavailable(self, serving: Serving) -> dict[str, int]:
        """Gauge: 1 for each alias this replica should serve and cannot, else 0."""
        return {alias: int(serving.fault(alias) is not None) for alias in serving.aliases()}

    def snapshot(self, serving: Serving) -> dict[str, Any]:
        return {
            "alias_load_failures_total": dict(self.load_failures_total),
            "alias_unavailable_transitions_total": dict(self.unavailable_transitions_total),
            "alias_recoveries_total": dict(self.recoveries_total),
            "alias_refused_requests_total": dict(self.refused_requests_total),
            "alias_unavailable": self.unavailable(serving),
        }


def _bump(counter: dict[str, int], alias: str) -> None:
    counter[alias] = counter.get(alias, 0) + 1


FAULT_CODES = {"adapter_missing", "hash_mismatch", "upstream_unavailable"}


def fault_code(exc: BaseException) -> str:
    """A stable code for a load failure (the backend's :class:`~service.serving.errors.AdapterError` code)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, AdapterError) and code in FAULT_CODES:
        return str(code)
    if isinstance(exc, FileNotFoundError):
        return "adapter_missing"
    return "load_failed"


class Serving:
    """Per-replica state: alias views, adapter fingerprints, and the lock that orders local swaps.

    ``views`` holds what this replica serves (loaded and flipped); ``wanted`` what the database says
    each alias should serve; ``faults`` the aliases where the two differ, with the reason.
    """

    def __init__(self, resources: Resources) -> None:
        from service.gateway.runtime import BACKEND_KEY

        self.resources = resources
        self.backend: ServingBackend | None = resources.extras.get(BACKEND_KEY)
        self.replica_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.views: dict[str, AliasView] = {}
        self.wanted: dict[str, AliasView] = {}
        self.faults: dict[str, AliasFault] = {}
        self.metrics = ServingMetrics()
        # backend adapter id -> content sha256, for fingerprints of responses.
        self.fingerprints: dict[str, str] = {}
        # Deploys, rollbacks and reconcile passes in this process run one at a time.
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.passes = 0
        # Ready requests with an auto policy whose deploy was refused; left to a human (manual deploy).
        self.auto_refused: set[str] = set()
        # Per alias: the catch-up started by a request that found this replica behind the database.
        self._catching_up: dict[str, asyncio.Task[None]] = {}

    @property
    def settings(self) -> Any:
        return self.resources.settings

    @property
    def serves(self) -> bool:
        """Whether this replica serves models at all (an intake-only replica has no backend)."""
        return self.backend is not None

    def aliases(self) -> list[str]:
        names = set(self.views) | set(self.wanted) | {self.settings.served_alias}
        return sorted(names)

    def view(self, alias: str) -> AliasView | None:
        """What ``alias`` serves here, else what it should serve (``None``: not an alias)."""
        if alias in self.views:
            return self.views[alias]
        if alias in self.wanted:
            return self.wanted[alias]
        if alias == self.settings.served_alias:
            return AliasView(alias=alias, generation=0)
        return None

    def fault(self, alias: str) -> AliasFault | None:
        """Why this replica cannot serve ``alias`` now (``None``: it serves the wanted version)."""
        if not self.serves:
            return None
        return self.faults.get(alias)

    def check_servable(self, alias: str) -> None:
        """Raise 503 ``alias_unavailable`` when this replica cannot serve the alias's wanted version."""
        fault = self.fault(alias)
        if fault is None:
            return
        _bump(self.metrics.refused_requests_total, alias)
        what = f"version {fault.version}" if fault.version else "its deployed version"
        raise Unavailable(
            f"The model '{alias}' is unavailable: this server cannot load {what} ({fault.code}). "
            "It will not answer with another version; retry later or contact the operator.",
            param="model",
            code="alias_unavailable",
            retry_after=max(1.0, min(MAX_RETRY_S, fault.next_try - time.monotonic())),
        )

    # -- admission ---------------------------------------------------------------------------------
    async def admit(self, alias: str) -> bool:
        """Make sure a request for ``alias`` is served by the version the database holds now, or newer.

        Reads the alias's generation from the database (the source of truth); when this replica serves
        an older one, waits (at most ``CATCH_UP_S``) while it converges on the database, else raises
        503 ``alias_unavailable``. Returns whether the database has a row for the alias (``False``: it
        was never deployed). The caller's :meth:`check_servable` then refuses an alias that is faulted.
        Flips only move forward, so once this returned, the alias here stays at this generation or a
        later one for as long as the request runs.
        """
        if not self.serves:
            return alias in self.views or alias in self.wanted
        try:
            async with self.resources.engine.connect() as connection:
                generation = (await connection.execute(_GENERATION, {"alias": alias})).scalar_one_or_none()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Without the source of truth the version to answer with is unknown: fail closed.
            logger.warning(
                "admission of a request for alias %s: database read failed: %s", alias, type(exc).__name__
            )
            _bump(self.metrics.refused_requests_total, alias)
            raise Unavailable(
                f"The model '{alias}' is unavailable: this server cannot read which version it serves. "
                "Retry later.",
                param="model",
                code="alias_unavailable",
                retry_after=1.0,
            ) from None
        if generation is None:
            return False
        if not self._behind(alias, generation):
            return True
        deadline = time.monotonic() + CATCH_UP_S
        while self._behind(alias, generation):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            task = self._catching_up.get(alias)
            if task is None or task.done():
                # One catch-up per alias at a time. It reads the database after this request did, so
                # it converges on this generation or a later one; a request that joined an earlier
                # catch-up (which may have read an earlier generation) starts another when it ends.
                task = asyncio.ensure_future(self._catch_up(alias))
                self._catching_up[alias] = task
            with contextlib.suppress(TimeoutError):
                # Shielded: a request that gives up (or whose client left) does not cancel the load.
                await asyncio.wait_for(asyncio.shield(task), timeout=left)
            fault = self.faults.get(alias)
            if fault is not None and fault.generation >= generation:
                return True  # cannot load it here: check_servable answers 503 with the reason
            if task.done() and self._behind(alias, generation):
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # no busy retry
        if self._behind(alias, generation):
            _bump(self.metrics.refused_requests_total, alias)
            raise Unavailable(
                f"The model '{alias}' is unavailable: this server is still loading its deployed version. "
                "It will not answer with an earlier version; retry shortly.",
                param="model",
                code="alias_unavailable",
                retry_after=1.0,
            )
        return True

    def _behind(self, alias: str, generation: int) -> bool:
        """Whether this replica neither serves ``generation`` (or later) nor knows why it cannot."""
        view = self.views.get(alias)
        if view is not None and view.generation >= generation:
            return False
        fault = self.faults.get(alias)
        return fault is None or fault.generation < generation

    async def _catch_up(self, alias: str) -> None:
        """Converge one alias on the database now (what a reconcile pass does, for this alias only)."""
        try:
            async with self.resources.sessionmaker() as session:
                row = (
                    await session.execute(
                        select(ServedAlias, AdapterVersion)
                        .outerjoin(AdapterVersion, AdapterVersion.id == ServedAlias.version_id)
                        .where(ServedAlias.alias == alias)
                    )
                ).first()
            if row is None:
                return
            async with self.lock:
                await self._converge(view_of(row[0], row[1]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reconciler retries; the waiting requests answer 503
            logger.warning("catching up alias %s failed: %s", alias, type(exc).__name__)

    def replica_state(self) -> dict[str, Any]:
        """This replica's real state per alias: wanted vs loaded version, and the error if they differ."""
        out: dict[str, Any] = {}
        for alias in self.aliases():
            wanted = self.wanted.get(alias)
            loaded = self.views.get(alias)
            fault = self.fault(alias)
            out[alias] = {
                "state": "serving" if fault is None else "unavailable",
                "desired_version": wanted.version if wanted else None,
                "desired_generation": wanted.generation if wanted else None,
                "loaded_version": loaded.version if loaded else None,
                "loaded_sha256": loaded.sha256 if loaded else None,
                "error": None
                if fault is None
                else {
                    "code": fault.code,
                    "message": fault.message,
                    "since": fault.since,
                    "attempts": fault.attempts,
                },
            }
        state: dict[str, Any] = {"replica": self.replica_id, "serves": self.serves, "aliases": out}
        if self.backend is not None:
            state["backend"] = self.backend.health()
        return state

    def fingerprint_of(self, engine_adapter: str | None) -> str:
        return fingerprint(self.fingerprints.get(engine_adapter) if engine_adapter else None)

    async def load(self, engine_id: str, path: str | Path, sha256: str, *, alias: str | None = None) -> None:
        """Load an adapter into the backend (no-op when already loaded); the backend checks the hash.

        ``alias``: the alias it is loaded for (counted per alias; ``None``: a request's own adapter)."""
        if self.backend is None:
            return
        fresh = not self.backend.is_loaded(engine_id)
        if str(path).startswith("s3://") or not await asyncio.to_thread(Path(path).is_dir):
            # Another host's copy: the object store has the same content under its hash.
            from service.artifacts.store import store_of

            path = await asyncio.to_thread(store_of(self.resources).adapter_dir, str(path))
        await self.backend.load_adapter(engine_id, path, sha256)
        self.fingerprints[engine_id] = sha256
        if fresh:
            _bump(self.metrics.loads_total, alias or "adapter")

    def flip(self, view: AliasView) -> None:
        """Point the backend's alias at the view's adapter (atomic there) and record the view."""
        if self.backend is not None:
            self.backend.set_alias(view.alias, view.engine_id)
        before = self.views.get(view.alias)
        if before is not None and before.engine_id != view.engine_id:
            _bump(self.metrics.swaps_total, view.alias)
        self.views[view.alias] = view
        wanted = self.wanted.get(view.alias)
        if wanted is None or wanted.generation <= view.generation:
            self.wanted[view.alias] = view
        fault = self.faults.pop(view.alias, None)
        if fault is not None and fault.code != "not_loaded_yet":
            _bump(self.metrics.recoveries_total, view.alias)
            logger.warning(
                "alias %s serves again: version %s loaded after %s failed attempt(s) (%s)",
                view.alias,
                view.version,
                fault.attempts,
                fault.code,
            )

    def block(self, view: AliasView, exc: BaseException) -> None:
        """Fail closed: the wanted version cannot be loaded, so the alias serves nothing here."""
        alias = view.alias
        self.views.pop(alias, None)
        if self.backend is not None:
            with contextlib.suppress(Exception):  # not (or no longer) an alias there
                self.backend.remove_alias(alias)
        code = fault_code(exc)
        _bump(self.metrics.load_failures_total, alias)
        previous = self.faults.get(alias)
        attempts = (previous.attempts if previous is not None else 0) + 1
        delay = min(MAX_RETRY_S, float(self.settings.reconcile_interval) * 2 ** min(attempts - 1, 10))
        fault = AliasFault(
            code=code,
            # The backend's messages name ids, paths, hashes and upstream URLs, never corpus text.
            message=f"{type(exc).__name__}: {exc}"[:500],
            version=view.version,
            generation=view.generation,
            attempts=attempts,
            next_try=time.monotonic() + delay,
        )
        same = previous is not None and (previous.code, previous.generation) == (code, view.generation)
        if same:
            assert previous is not None
            fault.since = previous.since
        self.faults[alias] = fault
        if not same:
            if previous is None or previous.code == "not_loaded_yet":
                _bump(self.metrics.unavailable_transitions_total, alias)
            # Once per transition, not every tick: the operator sees why, the log stays readable.
            logger.error(
                "alias %s is unavailable (answers 503): cannot load version %s (generation %s): %s; "
                "retrying with back-off",
                alias,
                view.version,
                view.generation,
                fault.message,
            )

    def _pending(self, alias: str) -> None:
        """Not served until the first reconcile pass loaded what the database wants."""
        if alias not in self.views and alias not in self.faults:
            self.faults[alias] = AliasFault(
                code="not_loaded_yet",
                message="this replica has not loaded the deployed version yet",
                version=0,
                generation=-1,
            )

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
        if self.backend is not None:
            try:
                await self.backend.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # upkeep must not stop the aliases from converging
                logger.warning("serving backend upkeep failed: %s", type(exc).__name__)
        desired = await self.desired()
        if not any(v.alias == self.settings.served_alias for v in desired):
            # No row yet: the served alias serves the base model (nothing was ever deployed).
            desired.append(AliasView(alias=self.settings.served_alias, generation=0))
        changed = 0
        async with self.lock:
            for view in desired:
                current = self.views.get(view.alias)
                if current is not None and current.generation >= view.generation:
                    self._want(view)
                    if self._unservable(current):
                        changed += 1
                    continue
                if await self._converge(view):
                    changed += 1
        self.passes += 1
        return changed

    def _want(self, view: AliasView) -> None:
        wanted = self.wanted.get(view.alias)
        if wanted is None or wanted.generation <= view.generation:
            self.wanted[view.alias] = view

    async def _converge(self, view: AliasView) -> bool:
        """Serve ``view`` here if it is newer than what is served (call with the lock held)."""
        self._want(view)
        if self.wanted[view.alias].generation > view.generation:
            # A stale read (a request's catch-up or a deploy saw a later generation meanwhile): never
            # flip back to an earlier version, even while the later one cannot be loaded.
            return False
        current = self.views.get(view.alias)
        if current is not None and current.generation >= view.generation:
            return False
        fault = self.faults.get(view.alias)
        if fault is not None and fault.generation == view.generation and time.monotonic() < fault.next_try:
            return False  # back-off: a broken file is not re-hashed every tick
        return await self._apply(view)

    def _unservable(self, view: AliasView) -> bool:
        """Fail closed when the backend lost what an alias serves (every upstream down, or none holds it)."""
        if self.backend is None or self.backend.can_serve(view.engine_id):
            return False
        self.block(view, AdapterError(_no_upstream(view), code="upstream_unavailable"))
        return True

    async def _apply(self, view: AliasView) -> bool:
        if view.engine_id is not None and view.path is not None and view.sha256 is not None:
            try:
                await self.load(view.engine_id, view.path, view.sha256, alias=view.alias)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # fail closed: serve nothing for this alias, retry with back-off
                self.block(view, exc)
                return False
        if self._unservable(view):
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
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup must not end reconciliation for good
                logger.warning("reconcile pass failed: %s", type(exc).__name__)
            await self.publish_state()
            try:
                await self.auto_deploy_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("auto-deploy pass failed: %s", type(exc).__name__)

    async def publish_state(self) -> None:
        """Write this replica's per-alias state to Redis (expiring), for /v1/deployments on any replica."""
        if not self.serves:
            return
        ttl = max(5, int(float(self.settings.reconcile_interval) * 10))
        try:
            await self.resources.arq.set(
                REPLICA_KEY_PREFIX + self.replica_id, json.dumps(self.replica_state()), ex=ttl
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis down: /v1/deployments still shows this replica's own state
            pass

    async def replica_states(self) -> list[dict[str, Any]]:
        """Every serving replica's published state (this one's always current), ordered by id."""
        states: dict[str, dict[str, Any]] = {}
        try:
            redis = self.resources.arq
            keys = [key async for key in redis.scan_iter(match=REPLICA_KEY_PREFIX + "*", count=100)]
            values = await redis.mget(keys) if keys else []
            for raw in values:
                if raw:
                    with contextlib.suppress(ValueError, TypeError):
                        item = json.loads(raw)
                        states[str(item["replica"])] = item
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        if self.serves:
            states[self.replica_id] = self.replica_state()
        return [states[k] for k in sorted(states)]

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
            target = (options or {}).get("target_alias")
            if target not in (None, self.settings.served_alias):
                # Other aliases are operator-managed: the system does not create or move them on a
                # tenant's behalf (an operator key deploys such a request by hand).
                self.auto_refused.add(rid)
                logger.warning("auto-deploy of %s refused: alias_forbidden (not the served alias)", rid)
                continue
            try:
                await deploy(self.resources, rid, principal=None)
                deployed += 1
            except ServiceError as exc:
                if exc.status_code >= 500 or exc.status_code == 429 or exc.code == "concurrent_change":
                    # Transient (adapter slots busy, another replica's deploy or rollback won the race
                    # for the alias, ...): the next tick tries again.
                    continue
                # Refused for a reason a retry will not fix (stale parent, hash mismatch): a human decides.
                self.auto_refused.add(rid)
                logger.warning("auto-deploy of %s refused: %s", rid, exc.code)
        return deployed


def _no_upstream(view: AliasView) -> str:
    what = f"version {view.version}" if view.version else "the base model"
    return f"no serving upstream can answer for alias {view.alias} ({what})"


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
    # Until this pass loaded what the database wants, the served alias answers 503 (never the base).
    serving._pending(resources.settings.served_alias)
    try:
        await serving.reconcile_once()
    except Exception as exc:  # the background loop retries; meanwhile the alias stays unavailable
        logger.error("first reconcile pass failed: %s", type(exc).__name__)
    await serving.publish_state()
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
        if serving.serves:
            with contextlib.suppress(Exception):
                await resources.arq.delete(REPLICA_KEY_PREFIX + serving.replica_id)

    stack.push_async_callback(_stop)
