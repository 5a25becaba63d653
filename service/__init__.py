"""Obliviate service: the Litestar app (intake, review, gateway, verification). Imports no torch."""

__version__ = "0.1.0"

#: The version of the HTTP API this server speaks: OpenAPI ``info.version``, ``GET /health/live``
#: and the ``Obliviate-API-Version`` header of every response. ``obliviate_client.__version__`` equals
#: it (a test checks), so an SDK can tell whether it speaks the server's API.
API_VERSION = "0.1.0"
API_VERSION_HEADER = "Obliviate-API-Version"
