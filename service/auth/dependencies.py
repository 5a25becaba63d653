"""The ``principal`` dependency and role guards that every domain's routes use.

Usage in a controller::

    from service.auth.dependencies import AUTH_DEPENDENCIES, Principal, Role, require_role

    class ThingController(Controller):
        dependencies = AUTH_DEPENDENCIES        # provides ``principal``

    @post("/things", guards=[require_role(Role.REVIEWER)])   # admin, operator always pass
    async def make(self, principal: Principal) -> ...:
        ...  # principal.tenant scopes every query; another tenant's object is a 404

Keys come in ``Authorization: Bearer <key>`` (what the ``openai`` client sends) or ``X-API-Key``.
Lookups are cached for ``settings.auth_cache_s`` so authentication costs no query per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from service.auth.keys import Principal, Role, hash_key, lookup
from service.core.errors import Forbidden, Unauthorized
from service.core.state import Resources

__all__ = ["AUTH_DEPENDENCIES", "Principal", "Role", "authenticate", "provide_principal", "require_role"]

_CACHE_KEY = "auth_cache"
_STATE_KEY = "obliviate_principal"
_MAX_CACHE = 10_000


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = connection.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller's principal (memoised on the connection); 401 without a valid key."""
    cached = connection.scope.get("state", {}).get(_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    key = _presented_key(connection)
    if key is None:
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    resources: Resources = connection.app.state.resources
    cache: dict[str, tuple[float, Principal | None]] = resources.extras.setdefault(_CACHE_KEY, {})
    digest = hash_key(key)
    now = time.monotonic()
    hit = cache.get(digest)
    if hit is not None and hit[0] > now:
        principal = hit[1]
    else:
        async with resources.sessionmaker() as session:
            principal = await lookup(session, key)
        if len(cache) >= _MAX_CACHE:
            cache.clear()
        ttl = resources.settings.auth_cache_s
        # Unknown keys are not cached for long, so a key created a moment ago works at once.
        cache[digest] = (now + (ttl if principal is not None else min(ttl, 1.0)), principal)
    if principal is None:
        raise Unauthorized("Invalid API key", headers={"WWW-Authenticate": "Bearer"})
    connection.scope.setdefault("state", {})[_STATE_KEY] = principal
    return principal


async def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Litestar dependency: ``principal: Principal`` in a handler's signature."""
    return await authenticate(request)


def require_role(*roles: Role | str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A guard that lets only these roles through (admin and operator always pass); 401/403 otherwise.

    The operator runs the service for every tenant; it can do what its own tenant's admin can (objects
    stay tenant-scoped), plus what only it may: query the base model and manage global aliases.
    """
    allowed = {Role(role) for role in roles} | {Role.ADMIN, Role.OPERATOR}

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        if principal.role not in allowed:
            names = ", ".join(sorted(role.value for role in allowed))
            raise Forbidden(f"This action needs one of the roles: {names}; your key is {principal.role}")

    return guard


def invalidate_cache(resources: Resources) -> None:
    """Forget cached lookups (after a key is revoked in this process)."""
    resources.extras.pop(_CACHE_KEY, None)


#: Put on a controller or router (``dependencies = AUTH_DEPENDENCIES``) to inject ``principal``.
AUTH_DEPENDENCIES: dict[str, Provide] = {"principal": Provide(provide_principal)}
