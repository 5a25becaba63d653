"""Request plumbing shared by the sync and async clients: headers, retries with backoff, errors."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

from obliviate_client import __version__
from obliviate_client._exceptions import APIError, APITimeoutError, TransportError, error_from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; the server's Retry-After wins when larger."""

    max_retries: int = 2
    initial_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_delay, self.initial_delay * (2**attempt))
        delay = random.uniform(backoff / 2, backoff)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        return delay


#: The header in which the server states the API version it speaks (``service.API_VERSION``).
API_VERSION_HEADER = "Obliviate-API-Version"


def compatible(server_version: str, client_version: str = __version__) -> bool:
    """Whether an SDK of ``client_version`` speaks the API of ``server_version``: the same major and
    minor version (before 1.0 a minor version may break the API, as semantic versioning allows)."""

    def major_minor(version: str) -> tuple[str, ...]:
        return tuple(version.strip().split(".")[:2])

    return major_minor(server_version) == major_minor(client_version)


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"obliviate-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def should_retry(*, method: str, has_idempotency_key: bool, status: int | None, connect_error: bool) -> bool:
    """Which failures are safe to retry.

    GETs and POSTs that carry an Idempotency-Key may be retried on any transient fault. Other POSTs
    only when the server certainly did not act: it refused (429, 503) or we never connected.
    """
    safe = method in {"GET", "HEAD", "OPTIONS"} or has_idempotency_key
    if status is None:
        return safe or connect_error
    if status not in RETRY_STATUSES:
        return False
    return safe or status in {429, 503}


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_from_response(response)


def retry_or_raise(
    policy: RetryPolicy,
    attempt: int,
    method: str,
    headers: dict[str, str],
    outcome: httpx.Response | httpx.TransportError,
) -> float | None:
    """What to do after one try: None (a 2xx answer: done), a delay before the next try, or raise.

    Shared by the sync and async clients so their retry behaviour cannot drift apart.
    """
    keyed = "Idempotency-Key" in headers
    if isinstance(outcome, httpx.Response):
        if outcome.status_code < 400:
            return None
        if attempt < policy.max_retries and should_retry(
            method=method, has_idempotency_key=keyed, status=outcome.status_code, connect_error=False
        ):
            return policy.delay(attempt, retry_after_seconds(outcome))
        raise error_from_response(outcome)
    connect_error = isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)
    if attempt < policy.max_retries and should_retry(
        method=method, has_idempotency_key=keyed, status=None, connect_error=connect_error
    ):
        return policy.delay(attempt)
    if isinstance(outcome, httpx.TimeoutException):
        raise APITimeoutError(f"request timed out: {outcome}", request=outcome.request) from outcome
    raise TransportError(f"{type(outcome).__name__}: {outcome}", request=outcome.request) from outcome


def json_or_none(response: httpx.Response) -> Any:
    if not response.content:
        return None
    return response.json()


__all__ = [
    "API_VERSION_HEADER",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "APIError",
    "RetryPolicy",
    "compatible",
    "default_headers",
    "json_or_none",
    "raise_for_status",
    "retry_after_seconds",
    "retry_or_raise",
    "should_retry",
]
