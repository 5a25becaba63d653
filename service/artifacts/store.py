"""Artifact store: corpora, derived training data and adapters, keyed by request.

``ArtifactStore`` is the interface; ``store_for`` picks the implementation from the settings.
``LocalArtifactStore`` (the default) keeps everything under ``<data_dir>/artifacts/<request id>/``:

    input/      the request's corpus and hints (personal data; purged)
    work/       the pipeline's stage outputs (derived from the corpus; purged)
    adapter/    the adapter to serve (weights only; kept after the purge)

``S3Store`` (``OBLIVIATE_ARTIFACTS_URL=s3://bucket/prefix``, in ``s3.py``) keeps the same areas in an
S3-compatible object store, personal ones sealed with a per-request key, and adapters
content-addressed. The pipeline works on local directories, so the store hands out a local path
(``local_dir``: the area itself here, a synced scratch copy there) and is told when the outputs are
final (``save_outputs``) and when the local copy may go (``release``).
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
    #: Whether calls go over the network (callers on the event loop then use a thread).
    remote: bool

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

    def save_outputs(self, request_id: str, adapter_path: str | None) -> str | None:
        """Persist what a stage wrote under ``local_dir`` (work area, and the adapter if one was made).

        Returns the reference to record for the adapter (``adapter_path`` itself for the local store).
        """
        ...

    def release(self, request_id: str) -> None:
        """Drop this host's local copies of the request's areas (the stored ones stay)."""
        ...

    def adapter_dir(self, ref: str) -> Path:
        """A local directory with the adapter ``ref`` names (downloaded and hash-checked if remote)."""
        ...


def _safe(part: str) -> str:
    if not part or part in {".", ".."} or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"invalid artifact path component {part!r}")
    return part


class LocalArtifactStore:
    """The default store: a directory tree on the local disk (shared by service and worker)."""

    remote = False

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

    def save_outputs(self, request_id: str, adapter_path: str | None) -> str | None:
        return adapter_path  # the local directories are the store

    def release(self, request_id: str) -> None:
        return None

    def adapter_dir(self, ref: str) -> Path:
        return Path(ref)


def store_for(settings: Any) -> ArtifactStore:
    """The store configured for ``settings``: the object store when ``artifacts_url`` is set."""
    if getattr(settings, "artifacts_url", None):
        from service.artifacts.s3 import s3_store_for

        return s3_store_for(settings)
    return LocalArtifactStore(Path(settings.artifacts_dir))


def store_of(resources: Any) -> ArtifactStore:
    """The app's store (made at start-up), or one built from its settings (apps without that hook)."""
    store: ArtifactStore | None = resources.extras.get("artifacts")
    return store if store is not None else store_for(resources.settings)
