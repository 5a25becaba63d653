"""Job names and the queue's serializer, shared by the service (which enqueues by name) and the worker.

The service never imports the worker's code: it enqueues ``"reinforce"`` and the like by the names
below. Jobs carry ids, never corpora, and are serialized with msgpack (no pickle on queue data).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

PING: Final = "ping"
REINFORCE: Final = "reinforce"
MINE_ANCHORS: Final = "mine_anchors"
GENERATE_TARGETS: Final = "generate_targets"
UNLEARN: Final = "unlearn"
EVALUATE: Final = "evaluate"
DEPLOY: Final = "deploy"

PIPELINE_STAGES: Final[tuple[str, ...]] = (REINFORCE, MINE_ANCHORS, GENERATE_TARGETS, UNLEARN, EVALUATE)
ALL_JOBS: Final[tuple[str, ...]] = (PING, *PIPELINE_STAGES, DEPLOY)

QUEUE_NAME: Final = "obliviate:queue"
#: Each worker keeps its own health-check key (prefix + worker id) alive while it runs.
WORKER_HEALTH_PREFIX: Final = "obliviate:worker-health:"


def serialize(obj: dict[str, Any]) -> bytes:
    """Serialize an arq job envelope with msgpack.

    Anything msgpack cannot encode (an exception in a failed job's result, say) is stored as its
    ``repr``: results are for humans and logs, and the queue never round-trips Python objects.
    """
    return msgpack.packb(obj, use_bin_type=True, default=repr)


def deserialize(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`serialize`."""
    result = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(result, dict):
        raise ValueError("job payload is not a mapping")
    return result
