"""Public model names → engine model names, with tenant and role checks.

chat (settings.served_alias) and other aliases   the deployed version, for every tenant: the one the
                                                  database holds when the request is admitted (or a later
                                                  one); 503 ``alias_unavailable`` while this replica
                                                  cannot load it
base                                              the unmodified model: operator keys only, since it still
                                                  knows every tenant's forgotten subjects (tenant admins
                                                  and reviewers compare before/after through
                                                  request-scoped ``/v1/verifications``)
adapter:<request id>                              one request's adapter, for its own tenant only
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.artifacts.store import store_of
from service.auth.keys import Principal, Role
from service.core.errors import Forbidden
from service.core.state import Resources
from service.deployments import storage
from service.deployments.serving import Serving, engine_adapter_id, get_serving
from service.forget.models import ForgetRequest
from service.gateway.errors import ModelNotFound
from service.gateway.runtime import BASE_MODEL_NAME

ADAPTER_PREFIX = "adapter:"
# Statuses whose adapter exists and has been evaluated (earlier ones have no final adapter yet).
_SERVABLE = {"ready", "deployed", "superseded", "rolled_back"}
# A candidate the acceptance gate stopped at the evaluation review: its own tenant's reviewers and
# admins may question it (that is what the review is for), unless it brings back what an earlier
# request on the alias forgot (another tenant's subject, perhaps): then nobody may, fail closed.
_UNDER_REVIEW = "awaiting_evaluation_review"
_REVIEW_ROLES = {Role.REVIEWER, Role.ADMIN, Role.OPERATOR}
BASE_ROLES = {Role.OPERATOR}


@dataclass(frozen=True)
class Target:
    """A resolved model: the name the client used and the name the engine resolves."""

    public: str
    engine_name: str


def can_use_base(principal: Principal) -> bool:
    return principal.role in BASE_ROLES


async def resolve(
    resources: Resources, principal: Principal, name: str, *, allow_base: bool = False
) -> Target:
    """``allow_base``: the caller already scoped the use of base to one of its own requests (verification)."""
    serving = get_serving(resources)
    if name == BASE_MODEL_NAME:
        if not (allow_base or can_use_base(principal)):
            raise Forbidden(
                "The base model still knows what forget requests removed; only operator keys may query it. "
                "Compare before and after for one of your requests with POST /v1/verifications.",
                param="model",
                code="model_forbidden",
            )
        return Target(name, BASE_MODEL_NAME)
    if name.startswith(ADAPTER_PREFIX):  # aliases have no ':'
        return Target(
            name, await ensure_request_adapter(resources, serving, principal, name[len(ADAPTER_PREFIX) :])
        )
    # Admission: this replica serves the version the database holds now (or a later one), catching up
    # first if it is behind a flip made elsewhere; never the version the alias just left.
    if await serving.admit(name) or serving.view(name) is not None:
        # Fail closed: an alias whose deployed version this replica cannot load answers 503.
        serving.check_servable(name)
        return Target(name, name)
    raise ModelNotFound(name)


async def ensure_request_adapter(
    resources: Resources, serving: Serving, principal: Principal, request_id: str
) -> str:
    """Load a request's own adapter into the serving backend on first use (immutable store copy, hash checked)."""
    public = ADAPTER_PREFIX + request_id
    async with resources.sessionmaker() as session:
        row = await session.get(ForgetRequest, request_id)
    # Another tenant's request is indistinguishable from a missing one.
    if row is None or row.tenant != principal.tenant:
        raise ModelNotFound(public)
    if row.status == _UNDER_REVIEW and row.adapter_path and row.adapter_hash:
        if principal.role not in _REVIEW_ROLES:
            raise Forbidden(
                f"Request {request_id}'s adapter did not pass the acceptance gate; only reviewer and "
                "admin keys may question it during the evaluation review.",
                param="model",
                code="model_forbidden",
            )
        if _releaks_earlier(row.metrics):
            raise Forbidden(
                f"Request {request_id}'s adapter brings back what an earlier deployed request forgot; "
                "it is not served to anyone.",
                param="model",
                code="model_forbidden",
            )
    elif row.status not in _SERVABLE or not row.adapter_path or not row.adapter_hash:
        raise ModelNotFound(
            public, f"Request {request_id} has no evaluated adapter yet (status {row.status})."
        )
    engine_id = engine_adapter_id(request_id, "")
    if engine_id in serving.fingerprints and _loaded(serving, engine_id):
        return engine_id
    try:
        source = await asyncio.to_thread(store_of(resources).adapter_dir, row.adapter_path)
        path, sha = await asyncio.to_thread(
            storage.store_adapter, source, resources.settings.data_dir / "adapters"
        )
    except (storage.AdapterFilesError, OSError):
        raise ModelNotFound(public, "Its adapter files are no longer available.") from None
    if not await asyncio.to_thread(storage.matches_recorded_hash, path, row.adapter_hash):
        raise ModelNotFound(public, "Its adapter files do not match the recorded hash.")
    from service.deployments.services import load_or_raise

    await load_or_raise(serving, engine_id, path, sha, model=public)
    return engine_id


def _loaded(serving: Serving, engine_id: str) -> bool:
    # False once the backend evicted it (LRU) since we last loaded it.
    return serving.backend is None or serving.backend.is_loaded(engine_id)


def _releaks_earlier(metrics: dict[str, object]) -> bool:
    """True unless the request's evaluation shows no leak on earlier requests' probes (counted, or no
    earlier requests at all): a missing number is not evidence, fail closed."""
    leaks = metrics.get("earlier_leaks_after") if isinstance(metrics, dict) else None
    if leaks is None:
        return bool(isinstance(metrics, dict) and metrics.get("earlier_n"))
    return not isinstance(leaks, int | float) or leaks > 0
