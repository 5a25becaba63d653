"""``POST /v1/verifications``: what the model said before and says after, per prompt, for one tenant."""

from __future__ import annotations

from typing import Any

from litestar import Controller, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from service.auth.dependencies import Principal, provide_principal
from service.core.openapi import SECURITY, errors
from service.core.state import Resources
from service.verification.schemas import VerificationBody
from service.verification.services import verify


class VerificationController(Controller):
    path = "/v1/verifications"
    tags = ["Verification"]
    dependencies = {"principal": Provide(provide_principal)}
    security = SECURITY

    @post(
        "/",
        status_code=200,
        summary="Compare answers before and after unlearning (rate-limited per tenant)",
        responses=errors(
            400,
            401,
            403,
            404,
            409,
            413,
            422,
            429,
            503,
            s400="Nothing to verify, too many prompts, or a prompt over the model's context.",
            s403="`base` as `after`, or without a `request_id`, needs an operator key.",
            s404="Unknown request or model (another tenant's is a 404 too).",
            s409="An adapter failed its integrity check.",
            s503="No model on this replica, or an alias cannot serve its deployed version.",
        ),
    )
    async def create_verification(
        self,
        data: JSONBody[VerificationBody],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
    ) -> dict[str, Any]:
        return await verify(resources, principal, data)
