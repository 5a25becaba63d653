"""Start-up hook of the review domain: the UI's session secret and the review loop task."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from service.core.state import Resources
from service.review import services
from service.review.session import load_secret
from service.review.web import SECRET_KEY


async def start(resources: Resources, stack: AsyncExitStack) -> None:
    resources.extras[SECRET_KEY] = await asyncio.to_thread(load_secret, resources.settings.data_dir)
    task = asyncio.create_task(services.run(resources), name="obliviate-review")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    stack.push_async_callback(stop)
