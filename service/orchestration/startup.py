"""Start-up hook of the forget domain: artifact store, signing key, intake writer, outbox relay, sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from service.artifacts.store import store_for
from service.audit.signing import load_signer
from service.core.state import Resources
from service.forget.writer import IntakeWriter
from service.orchestration import sweeper
from service.orchestration.relay import Relay


async def start(resources: Resources, stack: AsyncExitStack) -> None:
    from service.core import access_log

    access_log.install()  # ?subject= and other personal query values never reach the access log
    resources.extras["artifacts"] = store_for(resources.settings)
    resources.extras["signer"] = await asyncio.to_thread(load_signer, resources.settings)
    writer = IntakeWriter(resources.sessionmaker, resources.engine)
    resources.extras["intake_writer"] = writer
    relay = Relay(resources)
    resources.extras["relay_kick"] = relay.kick
    tasks = [
        asyncio.create_task(relay.run(), name="obliviate-outbox-relay"),
        asyncio.create_task(sweeper.run(resources), name="obliviate-sweeper"),
    ]

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Requests already accepted finish their commit before the engine is disposed.
        await writer.close()

    stack.push_async_callback(stop)
    # Open event streams end at shutdown (registered last, so it runs first).
    from service.forget import streams

    await streams.start(resources, stack)
