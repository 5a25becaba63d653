"""``POST /v1/verifications``: what the model said before and says after, per prompt, for one tenant."""

from __future__ import annotations

from typing import Any

from litestar import Controller, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from service.auth.dependencies import Principal, provide_principal
from service.core.state import Resources
from service.verification.schemas import VerificationBody
from service.verification.services import verify


class VerificationController(Controller):
    path = "/v1/verifications"
    tags = ["Verification"]
    dependencies = {"principal": Provide(provide_principal)}

    @post(
        "/", status_code=200, summary="Compare answers before and after unlearning (rate-limited per tenant)"
    )
    async def create_verification(
        self,
        data: JSONBody[VerificationBody],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
    ) -> dict[str, Any]:
        return await verify(resources, principal, data)
