"""Obliviate service: the Litestar app (intake, review, gateway, verification). Imports no torch."""

__version__ = "0.1.0"
