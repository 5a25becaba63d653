"""Deploy a ready request's adapter to an alias, roll an alias back, and read deployment history.

A swap, in order: copy the adapter into the immutable store and check it against the hash the
pipeline recorded; load it into this replica's engine (the engine checks the hash again on the exact
bytes it loads); commit the new version and the alias flip in one transaction (compare-and-set on the
alias generation, so concurrent deploys from several replicas cannot interleave); flip the engine
alias. Requests in flight keep the adapter they leased; the engine drops an old adapter only when it
is idle and unaliased. Other replicas follow within ``reconcile_interval``.

Fail closed: a request whose evaluation missed the acceptance gate is never deployed by the system
(auto policy), and by a person only with an admin's explicit override and reason, which the audit
trail and the certificate record (:func:`acceptance_override`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.artifacts.store import store_of
from service.auth.keys import Principal, Role
from service.core.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceError, Unprocessable
from service.core.state import Resources
from service.db.base import utcnow
from service.deployments import storage
from service.deployments.models import AdapterVersion, AliasEvent, ServedAlias
from service.deployments.serving import AliasView, Serving, _bump, engine_adapter_id, get_serving, view_of
from service.forget import service as forget_service
from service.forget.models import ForgetRequest

ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = {"base"}


def new_version_id() -> str:
    return "av_" + secrets.token_hex(10)


def store_root(resources: Resources) -> Path:
    return resources.settings.data_dir / "adapters"


def check_alias(alias: str) -> str:
    if not ALIAS_PATTERN.match(alias) or alias in RESERVED_NAMES or ":" in alias:
        raise BadRequest(
            f"Invalid alias {alias!r}: use 1-64 letters, digits, '.', '_' or '-' (not 'base')", param="alias"
        )
    return alias


@dataclass(frozen=True)
class SwapOutcome:
    version: AdapterVersion | None
    previous: AliasView | None
    view: AliasView


async def _alias_row(session: AsyncSession, alias: str) -> ServedAlias:
    row = await session.get(ServedAlias, alias, populate_existing=True)
    if row is None:
        row = ServedAlias(alias=alias, version_id=None, generation=0, updated_at=utcnow())
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            raise Conflict("The alias changed concurrently; retry", code="concurrent_change") from None
    return row


async def _compare_and_set(session: AsyncSession, alias: str, generation: int, version_id: str | None) -> int:
    result = await session.execute(
        update(ServedAlias)
        .where(ServedAlias.alias == alias, ServedAlias.generation == generation)
        .values(version_id=version_id, generation=generation + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(
            f"Alias {alias!r} changed concurrently (another deploy or rollback); retry",
            code="concurrent_change",
        )
    return generation + 1


def acceptance_override(
    ref: forget_service.AdapterRef, principal: Principal | None, override: bool, reason: str
) -> dict[str, Any] | None:
    """Fail closed: a request whose evaluation missed the acceptance gate is deployed only by an admin
    who says so and why (None: it passed, nothing to override). The system (auto policy) never does."""
    if ref.acceptance_passed:
        return None
    failed = forget_service.describe_failures(ref.acceptance)
    if principal is None:
        raise Conflict(
            f"Request {ref.request_id} failed the acceptance gate ({failed}); it is never deployed "
            "automatically. An admin may deploy it with an explicit override.",
            code="acceptance_failed",
        )
    if not override:
        raise Conflict(
            f"Request {ref.request_id} failed the acceptance gate ({failed}), so the model may still "
            "know what it should forget. To deploy it anyway, an admin sends "
            f'{{"request_id": "{ref.request_id}", "override": true, "reason": "..."}} to POST /v1/deployments '
            "(CLI: obliviate requests deploy --override --reason ...); the override is recorded in the audit "
            "trail and the certificate.",
            code="acceptance_failed",
            param="override",
        )
    if principal.role != Role.ADMIN:
        raise Forbidden(
            "Only an admin key may override a failed acceptance gate",
            code="override_forbidden",
            param="override",
        )
    if not reason.strip():
        raise Unprocessable("An override needs a reason: say why the request may be deployed", param="reason")
    failures = (ref.acceptance or {}).get("failures") or []
    return {
        "actor": principal.actor,
        "reason": reason.strip(),
        "failed_checks": [f.get("check") for f in failures if isinstance(f, dict)],
    }


async def deploy(
    resources: Resources,
    request_id: str,
    *,
    principal: Principal | None,
    alias: str | None = None,
    override: bool = False,
    reason: str = "",
) -> SwapOutcome:
    """Deploy a ready request's adapter (``principal=None``: the system, e.g. the auto-deploy policy).

    A request that failed the acceptance gate needs ``override`` with a ``reason`` from an admin.
    """
    from service.observability import tracing

    async with tracing.request_span(
        resources.settings, resources.arq, "obliviate.deploy", request_id, automatic=principal is None
    ) as span:
        outcome = await _deploy(
            resources, request_id, principal=principal, alias=alias, override=override, reason=reason
        )
        tracing.set_attributes(span, alias=outcome.view.alias, version=outcome.view.version)
        return outcome


async def _deploy(
    resources: Resources,
    request_id: str,
    *,
    principal: Principal | None,
    alias: str | None = None,
    override: bool = False,
    reason: str = "",
) -> SwapOutcome:
    serving = get_serving(resources)
    async with resources.sessionmaker() as session:
        if principal is not None:
            await forget_service.get_for_tenant(session, principal.tenant, request_id)
        ref = await forget_service.ready_adapter(session, request_id)
    override_record = acceptance_override(ref, principal, override, reason)
    alias = check_alias(alias or ref.target_alias or resources.settings.served_alias)
    try:
        # The recorded adapter as a local directory (object store: downloaded, hash-checked).
        source = await asyncio.to_thread(store_of(resources).adapter_dir, ref.path)
        path, sha = await asyncio.to_thread(storage.store_adapter, source, store_root(resources))
    except (storage.AdapterFilesError, OSError) as exc:
        raise Conflict(
            f"The request's adapter cannot be deployed: {exc}", code="adapter_unavailable"
        ) from None
    if not await asyncio.to_thread(storage.matches_recorded_hash, path, ref.sha256):
        raise Conflict(
            "The adapter files do not match the hash recorded when the request was evaluated; refusing to deploy",
            code="hash_mismatch",
        )
    manifest = await asyncio.to_thread(storage.read_manifest, path)
    engine_id = engine_adapter_id(request_id, "")
    actor = principal.actor if principal is not None else "system"
    async with serving.lock:
        # Load before anything changes: a version that cannot be loaded is never recorded as served.
        await load_or_raise(serving, engine_id, path, sha, model=alias)
        async with resources.sessionmaker() as session, session.begin():
            alias_row = await _alias_row(session, alias)
            parent = await session.get(AdapterVersion, alias_row.version_id) if alias_row.version_id else None
            if parent is not None and parent.request_id == request_id:
                # Another replica deployed this request since it was read as ready (both replicas'
                # auto-deploy passes pick up the same request): not a stale parent, just done.
                raise Conflict(
                    f"Request {request_id} is deployed (version {parent.version}), not ready to deploy",
                    code="not_ready",
                )
            await _check_parent(manifest, parent)
            number = (
                await session.scalar(
                    select(func.max(AdapterVersion.version)).where(AdapterVersion.alias == alias)
                )
                or 0
            ) + 1
            version = AdapterVersion(
                id=new_version_id(),
                alias=alias,
                version=number,
                request_id=request_id,
                tenant=ref.tenant,
                parent_id=parent.id if parent is not None else None,
                path=str(path),
                sha256=sha,
                created_by=actor,
                created_at=utcnow(),
            )
            session.add(version)
            try:
                await session.flush()
            except IntegrityError:
                # Another replica numbered its version alike and committed first (unique alias+version).
                raise Conflict(
                    f"Alias {alias!r} changed concurrently (another deploy or rollback); retry",
                    code="concurrent_change",
                ) from None
            generation = await _compare_and_set(session, alias, alias_row.generation, version.id)
            session.add(
                AliasEvent(
                    alias=alias,
                    action="deploy",
                    from_version_id=parent.id if parent else None,
                    to_version_id=version.id,
                    generation=generation,
                    tenant=ref.tenant,
                    actor=actor,
                    created_at=utcnow(),
                )
            )
            await forget_service.mark_deployed(
                session,
                request_id,
                f"{alias}@{number}",
                ref.sha256,
                actor=actor,
                retention_s=resources.settings.retention_s,
                override=override_record,
            )
            if parent is not None and parent.request_id is not None:
                await _leave(session, parent.request_id, superseded_by=f"{alias}@{number}", actor=actor)
        previous = serving.view(alias)
        view = AliasView(
            alias=alias,
            generation=generation,
            version_id=version.id,
            version=number,
            sha256=sha,
            engine_id=engine_id,
            parent_id=version.parent_id,
            tenant=ref.tenant,
            path=str(path),
            updated_at=utcnow(),
        )
        serving.flip(view)
    await serving.announce(alias)
    return SwapOutcome(version=version, previous=previous, view=view)


async def _leave(session: AsyncSession, request_id: str, *, superseded_by: str, actor: str) -> None:
    row = await session.get(ForgetRequest, request_id)
    # A parent that was itself rolled back and redeployed through a rollback stays as it is.
    if row is not None and row.status == "deployed":
        await forget_service.mark_superseded(session, request_id, by_version=superseded_by, actor=actor)


async def _check_parent(manifest: dict[str, Any], parent: AdapterVersion | None) -> None:
    """Refuse an adapter composed on another version than the one served (it would un-forget requests)."""
    if "deployed_adapter_sha256" not in manifest:
        return
    built_on = manifest.get("deployed_adapter_sha256")
    current = await asyncio.to_thread(storage.dir_hash, Path(parent.path)) if parent is not None else None
    if built_on != current:
        served = f"version {parent.version}" if parent is not None else "the base model"
        raise Conflict(
            f"This adapter was composed on another version than the one the alias serves now ({served}); "
            "deploying it would undo later forget requests. Re-run the request's unlearning stage on the "
            "served version.",
            code="stale_parent",
        )


async def load_or_raise(serving: Serving, engine_id: str, path: Path | str, sha: str, *, model: str) -> None:
    # Metrics label by alias; every request-scoped adapter ("adapter:<id>") shares one label.
    label = "adapter" if model.startswith("adapter:") else model
    try:
        await serving.load(engine_id, path, sha, alias=label)
    except ServiceError:
        raise
    except Exception as exc:
        from service.gateway.errors import map_engine_error

        _bump(serving.metrics.load_failures_total, label)

        raise map_engine_error(exc, model=model, prompt_param="request_id") from None


async def rollback(
    resources: Resources, alias: str, *, principal: Principal, to_version: str | int | None = None
) -> SwapOutcome:
    """Serve an earlier version of ``alias`` again (default: the current version's parent).

    Only the tenant whose versions are undone may roll them back: undoing another tenant's version
    would make the model recall what that tenant asked to forget.
    """
    serving = get_serving(resources)
    async with serving.lock:
        async with resources.sessionmaker() as session:
            alias_row = await session.get(ServedAlias, alias)
            if alias_row is None and alias not in serving.aliases():
                raise NotFound(f"No alias {alias!r}", param="alias")
            if alias_row is None or alias_row.version_id is None:
                raise Conflict(
                    f"Alias {alias!r} serves the base model; there is nothing to roll back",
                    code="nothing_to_roll_back",
                )
            current = await session.get(AdapterVersion, alias_row.version_id)
            assert current is not None
            chain_: list[AdapterVersion] = [current]
            target: AdapterVersion | None = None
            cursor = current
            while True:
                parent = await session.get(AdapterVersion, cursor.parent_id) if cursor.parent_id else None
                if to_version is None or _is(parent, to_version):
                    target = parent
                    break
                if parent is None:
                    raise BadRequest(
                        f"Version {to_version!r} is not an earlier version of alias {alias!r}",
                        param="to_version",
                    )
                chain_.append(parent)
                cursor = parent
            undone = chain_
            foreign = [v for v in undone if v.tenant != principal.tenant]
            if foreign:
                raise Forbidden(
                    "Rolling back would undo a version deployed by another tenant; only that tenant can undo it",
                    code="foreign_version",
                )
            generation_seen = alias_row.generation
        if target is not None:
            await load_or_raise(
                serving,
                engine_adapter_id(target.request_id, target.id),
                target.path,
                target.sha256,
                model=alias,
            )
        async with resources.sessionmaker() as session, session.begin():
            generation = await _compare_and_set(
                session, alias, generation_seen, target.id if target else None
            )
            session.add(
                AliasEvent(
                    alias=alias,
                    action="rollback",
                    from_version_id=current.id,
                    to_version_id=target.id if target else None,
                    generation=generation,
                    tenant=principal.tenant,
                    actor=principal.actor,
                    created_at=utcnow(),
                )
            )
            for version in undone:
                if version.request_id is None:
                    continue
                row = await session.get(ForgetRequest, version.request_id)
                if row is not None and row.status == "deployed":
                    await forget_service.mark_rolled_back(
                        session,
                        version.request_id,
                        reason=f"alias {alias} rolled back to version {target.version if target else 0}",
                        actor=principal.actor,
                    )
            alias_now = await session.get(ServedAlias, alias, populate_existing=True)
            assert alias_now is not None
        previous = serving.view(alias)
        view = view_of(alias_now, target)
        serving.flip(view)
    await serving.announce(alias)
    return SwapOutcome(version=target, previous=previous, view=view)


def _is(version: AdapterVersion | None, wanted: str | int) -> bool:
    if version is None:
        return wanted in (0, "0", "base")
    return wanted in (version.id, version.version, str(version.version))


async def history(resources: Resources) -> tuple[list[AliasView], list[AdapterVersion]]:
    """Every alias's current state and every version, newest first."""
    serving = get_serving(resources)
    async with resources.sessionmaker() as session:
        rows = (
            await session.execute(
                select(ServedAlias, AdapterVersion).outerjoin(
                    AdapterVersion, AdapterVersion.id == ServedAlias.version_id
                )
            )
        ).all()
        versions = list(
            (
                await session.scalars(
                    select(AdapterVersion).order_by(AdapterVersion.alias, AdapterVersion.version.desc())
                )
            ).all()
        )
    views = {row[0].alias: view_of(row[0], row[1]) for row in rows}
    for alias in serving.aliases():
        views.setdefault(alias, AliasView(alias=alias, generation=0))
    return [views[a] for a in sorted(views)], versions
