"""One gateway completion as the metrics see it: running/waiting gauges, first token, token gaps, usage."""

from __future__ import annotations

import time

from service.observability.metrics import Metrics, model_label


class Flight:
    """Tracks one completion request from queueing to its end (``metrics=None``: does nothing)."""

    __slots__ = ("done", "last", "metrics", "model", "started", "stream")

    def __init__(self, metrics: Metrics | None, model: str, *, stream: bool) -> None:
        self.metrics = metrics
        self.model = model_label(model)
        self.stream = stream
        self.started = time.perf_counter()
        self.last: float | None = None
        self.done = False
        if metrics is not None:
            metrics.running.labels(self.model).inc()
            if stream:
                metrics.waiting.labels(self.model).inc()

    def token(self) -> None:
        """A streamed token left the backend."""
        if self.metrics is None:
            return
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.labels(self.model).observe(now - self.started)
            self.metrics.waiting.labels(self.model).dec()
        else:
            self.metrics.itl.labels(self.model).observe(now - self.last)
        self.last = now

    def finish(self, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """The request ended (``ok``, ``error`` or ``cancelled``); counted once."""
        if self.metrics is None or self.done:
            return
        self.done = True
        m = self.metrics
        m.running.labels(self.model).dec()
        if self.stream and self.last is None:
            m.waiting.labels(self.model).dec()
        m.completions.labels(self.model, "true" if self.stream else "false", outcome).inc()
        if prompt_tokens:
            m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        if completion_tokens:
            m.completion_tokens.labels(self.model).inc(completion_tokens)
