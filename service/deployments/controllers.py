"""``/v1/deployments``: list what each alias serves, deploy a ready request, roll an alias back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, JSONBody, PathParameter
from msgspec import Meta, Struct

from service.auth.dependencies import Principal, Role, provide_principal, require_role
from service.core.errors import Forbidden
from service.core.openapi import SECURITY, allow, errors, operation
from service.core.state import Resources
from service.deployments import services
from service.deployments.idempotency import once
from service.deployments.models import AdapterVersion
from service.deployments.serving import AliasView, fingerprint, get_serving
from service.forget import service as forget_service


class DeployBody(Struct, forbid_unknown_fields=True):
    request_id: Annotated[str, Meta(min_length=1, max_length=40)]
    # Default: the request's target alias (its options), else the served alias.
    alias: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    # Deploy a request that failed the acceptance gate (admin only; audited, stated in the certificate).
    override: bool = False
    reason: Annotated[str, Meta(max_length=2000)] = ""


class RollbackBody(Struct, forbid_unknown_fields=True):
    # A version id (av_...) or number of this alias; default: the current version's parent. 0 = base.
    to_version: str | int | None = None


def version_out(version: AdapterVersion, principal: Principal) -> dict[str, Any]:
    mine = version.tenant == principal.tenant
    return {
        "id": version.id,
        "object": "adapter_version",
        "alias": version.alias,
        "version": version.version,
        "parent": version.parent_id,
        "sha256": version.sha256,
        "fingerprint": fingerprint(version.sha256),
        "created_at": version.created_at.isoformat(),
        "mine": mine,
        # Other tenants see that a version exists, not which request (subject) it came from.
        "request_id": version.request_id if mine else None,
        "model": f"adapter:{version.request_id}" if mine and version.request_id else None,
    }


def alias_out(view: AliasView, replicas: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The alias's desired version (the database's), and with ``replicas`` what each serving replica
    really serves: ``state`` serving/unavailable, desired vs loaded version, and the load error."""
    out: dict[str, Any] = {
        "object": "deployment",
        "alias": view.alias,
        "version": view.version,
        "version_id": view.version_id,
        "parent": view.parent_id,
        "sha256": view.sha256,
        "fingerprint": fingerprint(view.sha256),
        "generation": view.generation,
        "updated_at": view.updated_at.isoformat() if view.updated_at else None,
    }
    if replicas is not None:
        per_replica = [
            {"replica": r["replica"], **r["aliases"][view.alias]}
            for r in replicas
            if view.alias in r.get("aliases", {})
        ]
        out["replicas"] = per_replica
        out["state"] = (
            "unavailable"
            if any(r["state"] != "serving" for r in per_replica)
            else ("serving" if per_replica else "no_serving_replica")
        )
    return out


def _check_alias_rights(principal: Principal, alias: str, served_alias: str) -> None:
    # Global aliases other than the served one are operator-managed: a tenant that could create them
    # would use up adapter slots that every tenant's deploys need.
    if alias != served_alias and principal.role != Role.OPERATOR:
        raise Forbidden(
            f"Alias '{alias}' is not the served alias '{served_alias}'; only operator keys manage other aliases",
            param="alias",
            code="alias_forbidden",
        )


# Optional; when sent it is 1-255 characters, not all whitespace (else 400).
_IDEMPOTENCY_KEY = operation(
    optional_headers={
        "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"\S"}
    }
)
_IDEMPOTENCY_KEY_OPTIONAL_BODY = operation(
    optional_headers={
        "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"\S"}
    },
    optional_body=True,
)
_SWAP_ERRORS = errors(
    400,
    401,
    403,
    404,
    409,
    413,
    422,
    429,
    503,
    s403="The role, an alias other than the served one (operator keys only), or another tenant's version.",
    s409="The request or alias is not in a state that allows this, or its Idempotency-Key is in flight.",
    s429="Adapter slots or the model are at capacity; retry after `Retry-After` seconds.",
    s503="The model cannot load the adapter now; retry after `Retry-After` seconds.",
)


class DeploymentsController(Controller):
    path = "/v1/deployments"
    tags = ["Deployments"]
    dependencies = {"principal": Provide(provide_principal)}
    security = SECURITY
    options = allow("GET", "POST")

    @get("/", summary="What each alias serves, and every adapter version", responses=errors(401))
    async def list_deployments(
        self, resources: NamedDependency[Resources], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        views, versions = await services.history(resources)
        replicas = await get_serving(resources).replica_states()
        return {
            "object": "list",
            "data": [alias_out(v, replicas) for v in views],
            "replicas": replicas,
            "versions": [version_out(v, principal) for v in versions],
        }

    @post(
        "/",
        status_code=201,
        summary="Deploy a ready request's adapter (hot swap); optional Idempotency-Key",
        guards=[require_role(Role.SUBMITTER, Role.ADMIN, Role.OPERATOR)],
        operation_class=_IDEMPOTENCY_KEY,
        responses=_SWAP_ERRORS,
    )
    async def create_deployment(
        self,
        data: JSONBody[DeployBody],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
    ) -> Response[dict[str, Any]]:
        served = resources.settings.served_alias
        alias = data.alias
        if alias is None:
            async with resources.sessionmaker() as session:
                row = await forget_service.get_for_tenant(session, principal.tenant, data.request_id)
                alias = str((row.options or {}).get("target_alias") or served)
        _check_alias_rights(principal, alias, served)

        async def run() -> dict[str, Any]:
            outcome = await services.deploy(
                resources,
                data.request_id,
                principal=principal,
                alias=data.alias,
                override=data.override,
                reason=data.reason,
            )
            assert outcome.version is not None
            return {
                **alias_out(outcome.view),
                "deployed": version_out(outcome.version, principal),
                "previous_version": outcome.previous.version if outcome.previous else 0,
            }

        return await _once(
            resources, principal, idempotency_key, ("deploy", data.request_id, data.alias), 201, run
        )

    @post(
        "/{alias:str}/rollback",
        status_code=200,
        summary="Serve an earlier version of the alias again; optional Idempotency-Key",
        guards=[require_role(Role.SUBMITTER, Role.ADMIN)],
        operation_class=_IDEMPOTENCY_KEY_OPTIONAL_BODY,
        responses=_SWAP_ERRORS,
    )
    async def rollback(
        self,
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
        alias: Annotated[str, PathParameter(max_length=64)],
        data: JSONBody[RollbackBody | None] = None,
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
    ) -> Response[dict[str, Any]]:
        body = data or RollbackBody()
        _check_alias_rights(principal, alias, resources.settings.served_alias)

        async def run() -> dict[str, Any]:
            outcome = await services.rollback(
                resources, alias, principal=principal, to_version=body.to_version
            )
            return {
                **alias_out(outcome.view),
                "previous_version": outcome.previous.version if outcome.previous else 0,
            }

        return await _once(
            resources, principal, idempotency_key, ("rollback", alias, body.to_version), 200, run
        )


async def _once(
    resources: Resources,
    principal: Principal,
    key: str | None,
    what: tuple[Any, ...],
    status_code: int,
    run: Callable[[], Awaitable[dict[str, Any]]],
) -> Response[dict[str, Any]]:
    return Response(await once(resources, principal.tenant, key, what, run), status_code=status_code)


__all__ = ["DeploymentsController"]
