"""Python SDK for the Obliviate unlearning service (httpx + pydantic only).

    from obliviate_client import Client

    with Client("http://127.0.0.1:8000", api_key="obl_...") as client:
        request = client.forget_requests.create("Jane Roe", corpus=["..."], hints=["Jane Roe"])
        done = client.forget_requests.wait(request.id, progress=True)
        certificate = client.forget_requests.certificate(done.id)  # signature checked locally

For chat, point the official ``openai`` client at the gateway (``base_url=.../v1``); this SDK does
not wrap it.
"""

#: Equals the API version of the server this SDK speaks (``service.API_VERSION``: the server states
#: it in ``GET /health/live`` and the ``Obliviate-API-Version`` header). A client warns once
#: (:class:`APIVersionWarning`) when a server speaks another; ``Client.server_version()`` asks.
__version__ = "0.1.0"

from obliviate_client._client import AsyncClient, Client
from obliviate_client._exceptions import (
    APIError,
    APITimeoutError,
    APIVersionWarning,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    ObliviateError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    SignatureError,
    TransportError,
    UnprocessableEntityError,
)
from obliviate_client._models import (
    Acceptance,
    AcceptanceOverride,
    AcceptanceStatement,
    AcceptanceSummary,
    AuditEvent,
    AuditTrail,
    Certificate,
    Document,
    ForgetRequest,
    ForgetRequestPage,
    Hint,
    Options,
    Probe,
    QAPair,
    RequestEvent,
    ServerVersion,
)

__all__ = [
    "APIError",
    "APITimeoutError",
    "APIVersionWarning",
    "Acceptance",
    "AcceptanceOverride",
    "AcceptanceStatement",
    "AcceptanceSummary",
    "AsyncClient",
    "AuditEvent",
    "AuditTrail",
    "AuthenticationError",
    "BadRequestError",
    "Certificate",
    "Client",
    "ConflictError",
    "Document",
    "ForgetRequest",
    "ForgetRequestPage",
    "Hint",
    "NotFoundError",
    "ObliviateError",
    "Options",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Probe",
    "QAPair",
    "RateLimitedError",
    "RequestEvent",
    "ServerError",
    "ServerVersion",
    "SignatureError",
    "TransportError",
    "UnprocessableEntityError",
    "__version__",
]
