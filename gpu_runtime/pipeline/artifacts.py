"""Idempotent, atomic stage artifacts: content hashes of inputs, atomic writes, skip-if-done.

Every stage writes its output into a temporary sibling and renames it into place only when
complete, with a ``stage.json`` marker holding the hash of everything that went in. A re-run that
finds a marker with the same hash skips; a marker with another hash means the inputs changed and
the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import Cancelled, PipelineError
from .types import CancelFn, ProgressFn, StageResult

MARKER = "stage.json"
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def hash_json(obj: Any) -> str:
    """SHA-256 of a canonical JSON encoding."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def hash_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def hash_dir(path: Path) -> str:
    """Hash of a model or adapter directory: every regular file's relative name and content.

    Stage markers and hidden files are left out so that a copied artifact hashes the same.
    """
    path = Path(path)
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.startswith("."):
            entries.append((p.relative_to(path).as_posix(), hash_file(p)))
    return hash_json(entries)


def read_marker(out: Path) -> dict[str, Any] | None:
    marker = out / MARKER if out.is_dir() else out.with_name(out.name + "." + MARKER)
    try:
        data = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None
    return data if isinstance(data, dict) else None


def is_done(out: Path, input_hash: str) -> bool:
    marker = read_marker(out)
    return marker is not None and marker.get("input_hash") == input_hash


def stage_output(work_dir: Path | str, dirname: str, stage: str, what: str) -> tuple[Path, str]:
    """A finished stage's directory and input hash; fails (naming the stage to run) if it has not run."""
    out = Path(work_dir) / dirname
    marker = read_marker(out)
    if marker is None:
        raise PipelineError(f"no {what} in the work directory: run {stage} first", stage=stage)
    return out, str(marker["input_hash"])


def skipped_result(stage: str, out: Path, input_hash: str) -> StageResult:
    """The result of a stage that found its artifact already built for the same inputs."""
    summary = (read_marker(out) or {}).get("summary", {})
    return StageResult(stage=stage, artifact=str(out), input_hash=input_hash, skipped=True, summary=summary)


@contextmanager
def atomic_dir(out: Path, input_hash: str, summary: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out`` with a marker written inside.

    On an exception (``Cancelled`` included) the temporary directory is removed and ``out`` is left
    as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    meta: dict[str, Any] = {"input_hash": input_hash, "summary": summary if summary is not None else {}}
    try:
        yield tmp
        meta["finished_at"] = time.time()
        (tmp / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


class Reporter:
    """Progress and cancellation for one stage; both callbacks optional."""

    def __init__(self, stage: str, progress: ProgressFn | None, should_cancel: CancelFn | None) -> None:
        self.stage = stage
        self._progress = progress
        self._cancel = should_cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            self._progress(self.stage, max(0.0, min(1.0, fraction)), message)

    def check(self) -> None:
        """Raise ``Cancelled`` if the caller asked to stop."""
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled by request", stage=self.stage)
