"""Request body of ``POST /v1/verifications``."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Text = Annotated[str, Meta(min_length=1, max_length=4000)]
Term = Annotated[str, Meta(min_length=1, max_length=200)]


class AdHocPrompt(Struct, forbid_unknown_fields=True):
    prompt: Text
    # The answer the model should no longer give (its probability is reported before/after).
    reference: Annotated[str, Meta(max_length=4000)] = ""
    anchors: Annotated[list[Term], Meta(max_length=50)] = []


class VerificationBody(Struct, forbid_unknown_fields=True):
    # The request whose probes to run (its own tenant only); and/or ad-hoc prompts.
    request_id: Annotated[str, Meta(max_length=40)] | None = None
    prompts: Annotated[list[AdHocPrompt], Meta(max_length=200)] = []
    # Terms whose appearance in an answer counts as a leak (for every prompt).
    anchors: Annotated[list[Term], Meta(max_length=200)] = []
    # Default "before": base; default "after": the request's adapter, else the served alias.
    before: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    after: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=256)] = 48
