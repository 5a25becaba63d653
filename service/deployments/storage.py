"""Content-addressed, immutable copies of deployed adapters, and the two hash formulas we check.

A deploy copies the request's adapter directory into ``<data_dir>/adapters/<dir hash>/`` so that purging
the request's working files never removes what a replica serves; copies are never deleted here
(several replicas may share the data directory, and rollback needs old versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
# The pipeline's stage marker is not part of an artifact's identity (see pipeline artifacts.hash_dir).
STAGE_MARKER = "stage.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterFilesError(ValueError):
    """The directory is not a servable safetensors adapter."""


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_hash(path: Path) -> str:
    """The engine's adapter identity: sha256 over the weights file then the config file."""
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        with (path / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dir_hash(path: Path) -> str:
    """The pipeline's artifact identity: canonical JSON of (relative name, sha256) of every file.

    Mirrors ``gpu_runtime.pipeline.artifacts.hash_dir`` without importing the pipeline (torch).
    """
    entries = [
        (p.relative_to(path).as_posix(), _file_sha(p))
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != STAGE_MARKER and not p.name.startswith(".")
    ]
    data = json.dumps(entries, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def check_adapter_dir(path: Path) -> None:
    if not path.is_dir():
        raise AdapterFilesError("the adapter directory does not exist")
    pickled = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickled:
        raise AdapterFilesError(f"the adapter holds pickle files {pickled}; only safetensors are served")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise AdapterFilesError(f"the adapter lacks {name}")


def matches_recorded_hash(path: Path, recorded: str | None) -> bool:
    """Whether ``recorded`` (as stored on the request) names this directory's content, in any formula we know."""
    if not recorded:
        return True
    want = recorded.strip().lower().removeprefix("sha256:")
    return want in {engine_hash(path), dir_hash(path), _file_sha(path / WEIGHTS)}


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_adapter(source: Path, store_root: Path) -> tuple[Path, str]:
    """Copy an adapter into the content-addressed store (atomically); returns (path, engine hash).

    The hash is taken from the copy, so what is recorded is exactly what replicas will load.
    """
    check_adapter_dir(source)
    store_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store_root))
    try:
        for item in sorted(source.rglob("*")):
            rel = item.relative_to(source)
            if item.name.startswith(".") or item.name == STAGE_MARKER or item.is_symlink():
                continue
            if item.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif item.is_file():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item, tmp / rel)
        sha = engine_hash(tmp)
        # Named by the whole directory's content (manifest included), so two adapters with equal
        # weights but different provenance never share a folder.
        target = store_root / dir_hash(tmp)
        if target.is_dir():
            # Same content already stored (a redeploy, or another replica won the race): keep it.
            shutil.rmtree(tmp, ignore_errors=True)
            return target, sha
        for p in tmp.rglob("*"):
            if p.is_file():
                p.chmod(0o444)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return target, sha
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
