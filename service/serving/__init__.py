"""Serving backends: the one interface (:class:`ServingBackend`) through which the gateway, verification
and deployments run the model, with the embedded engine and an OpenAI-compatible upstream pool behind it.

Nothing here imports torch; :mod:`service.serving.embedded` (which does) is imported only when chosen.
"""

from service.serving.backend import CompletionStream, ServingBackend
from service.serving.types import Completion, Params, Prompt, StreamEvent, Usage

__all__ = ["Completion", "CompletionStream", "Params", "Prompt", "ServingBackend", "StreamEvent", "Usage"]
