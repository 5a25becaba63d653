"""What ``wait(progress=...)`` shows: a live bar on a terminal, one line per stage change elsewhere.

A bar redrawn with carriage returns reads well on a terminal and badly in a log file or a CI job,
where every redraw becomes another copy of the line. So the output is chosen by the stream: on a
terminal, a live bar (``rich``'s when it is installed, as it is with the ``obliviate`` command line
and the SDK's ``progress`` extra; a one-line text bar otherwise); anywhere else, exactly one line
each time the request's status changes, however often it is polled.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from obliviate_client._models import ForgetRequest


class ProgressView(Protocol):
    def update(self, request: ForgetRequest) -> None: ...

    def close(self) -> None: ...


def _fraction(request: ForgetRequest) -> float:
    return max(0.0, min(1.0, request.progress.overall))


def _eta(request: ForgetRequest) -> str:
    eta = request.progress.eta_s
    return f", ETA {eta:,.0f} s" if eta is not None else ""


class StageLines:
    """One line per status change (for logs, pipes and CI): never a redraw."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last: str | None = None

    def update(self, request: ForgetRequest) -> None:
        if request.status == self._last:
            return
        self._last = request.status
        self.stream.write(
            f"{request.id}: {request.status} ({_fraction(request) * 100:.0f}%{_eta(request)})\n"
        )
        self.stream.flush()

    def close(self) -> None:
        pass


class TextBar:
    """A one-line bar redrawn in place (a terminal without ``rich``)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._drawn = False

    def update(self, request: ForgetRequest) -> None:
        fraction = _fraction(request)
        filled = int(fraction * self.width)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% "
            f"{request.status:<28}{_eta(request)}   "
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class RichBar:
    """``rich``'s live progress bar with the status and the server's ETA."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.fields[request]}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=stream, force_terminal=True),
        )
        self._task: Any = None

    def update(self, request: ForgetRequest) -> None:
        description = f"{request.status}{_eta(request)}"
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(description, total=1.0, request=request.id)
        self._progress.update(self._task, completed=_fraction(request), description=description)

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_view(progress: bool | TextIO) -> ProgressView | None:
    """The view for ``wait(progress=...)``: False → none; True → stderr; or the given stream."""
    if progress is False:
        return None
    stream: TextIO = sys.stderr if progress is True else progress
    if not _is_terminal(stream):
        return StageLines(stream)
    try:
        return RichBar(stream)
    except ImportError:
        return TextBar(stream)
