"""Artifact store: corpora, derived training data and adapters, keyed by request.

``ArtifactStore`` is the interface (an object store can implement it); ``LocalArtifactStore`` keeps
everything under ``<data_dir>/artifacts/<request id>/``:

    input/      the request's corpus and hints (personal data; purged)
    work/       the pipeline's stage outputs (derived from the corpus; purged)
    adapter/    the adapter to serve (weights only; kept after the purge)

The pipeline works on local directories, so the store hands the worker a local path
(``local_dir``); an object-store implementation would sync to and from that path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

INPUT = "input"
WORK = "work"
ADAPTER = "adapter"
SPEC_FILE = "spec.json"
#: Areas deleted by the purge; the adapter stays because the served model needs it.
PURGED_AREAS = (INPUT, WORK)


class ArtifactStore(Protocol):
    def put_json(self, request_id: str, area: str, name: str, obj: Any) -> int:
        """Store ``obj`` atomically; returns its size in bytes."""
        ...

    def get_json(self, request_id: str, area: str, name: str) -> Any: ...

    def local_dir(self, request_id: str, area: str) -> Path:
        """A local directory holding the area (created if missing)."""
        ...

    def purge(self, request_id: str, areas: tuple[str, ...] = PURGED_AREAS) -> list[str]:
        """Delete those areas; returns the areas that existed."""
        ...

    def exists(self, request_id: str, area: str) -> bool: ...


def _safe(part: str) -> str:
    if not part or part in {".", ".."} or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"invalid artifact path component {part!r}")
    return part


class LocalArtifactStore:
    """The default store: a directory tree on the local disk (shared by service and worker)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, request_id: str, area: str) -> Path:
        return self.root / _safe(request_id) / _safe(area)

    def put_json(self, request_id: str, area: str, name: str, obj: Any) -> int:
        directory = self._dir(request_id, area)
        directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, directory / _safe(name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(data)

    def get_json(self, request_id: str, area: str, name: str) -> Any:
        path = self._dir(request_id, area) / _safe(name)
        return json.loads(path.read_bytes())

    def local_dir(self, request_id: str, area: str) -> Path:
        directory = self._dir(request_id, area)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def exists(self, request_id: str, area: str) -> bool:
        return self._dir(request_id, area).exists()

    def purge(self, request_id: str, areas: tuple[str, ...] = PURGED_AREAS) -> list[str]:
        removed: list[str] = []
        for area in areas:
            directory = self._dir(request_id, area)
            if directory.exists():
                shutil.rmtree(directory)
                removed.append(area)
        return removed


def store_for(settings: Any) -> LocalArtifactStore:
    """The store configured for ``settings`` (only the local store exists so far)."""
    return LocalArtifactStore(Path(settings.artifacts_dir))
