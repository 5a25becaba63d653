"""Python SDK for the Obliviate unlearning service (httpx + pydantic only)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
