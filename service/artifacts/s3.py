"""The artifact store in an S3-compatible object store (``OBLIVIATE_ARTIFACTS_URL=s3://bucket/prefix``).

Object layout under the prefix::

    requests/<request id>/input/<name>      sealed (personal data: the corpus and hints)
    requests/<request id>/work/<path>       sealed (everything derived from the corpus)
    adapters/<dir hash>/<path>              plain, content-addressed, written once, never replaced
    adapters/<dir hash>.json                the adapter's file list with sha256s, written last

Sealed objects are AES-256-GCM envelopes (``envelope.py``) under the request's data key, kept in the
database (``keys.py``); the purge deletes the objects and the key, so a backup of the bucket holds
nothing readable. The pipeline works on local files: ``local_dir`` downloads an area into a scratch
directory (``<data_dir>/scratch/<request id>/``), ``save_outputs`` uploads what changed there and
publishes the adapter, ``release`` deletes the scratch copy. Readers of adapters (API replicas, the
worker composing on the served version) get a hash-checked copy in ``<data_dir>/adapters/<dir hash>/``,
the folder a local deploy copies to.

Endpoint and credentials come from boto3's usual sources (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...). Nothing here logs object contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.artifacts import envelope
from service.artifacts.keys import KeyRing, keyring_for
from service.artifacts.store import ADAPTER, INPUT, PURGED_AREAS, WORK, _safe
from service.deployments.storage import STAGE_MARKER, AdapterFilesError, dir_hash

#: Areas holding personal data: sealed under the request's key.
SEALED_AREAS = (INPUT, WORK)
SCHEME = "s3://"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_SYNC_FILE = ".sync-{area}.json"


class DataKeyMissing(FileNotFoundError):
    """The request has no data key (never stored, or purged): its sealed artifacts are unreadable."""


class AdapterIntegrityError(AdapterFilesError):
    """The stored adapter does not hash to its content address (altered or incomplete)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rel_parts(rel: str) -> str:
    """A relative object path, every component checked (no '..', no empty parts)."""
    return "/".join(_safe(part) for part in rel.split("/"))


def _visible_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Files under ``root`` that belong to the area: dot-named files and folders are temporaries."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in rel.parts):
            yield rel.as_posix(), path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class S3Store:
    """``ArtifactStore`` on S3 (see the module docstring for the layout and the sealing)."""

    remote = True

    def __init__(self, url: str, local_root: Path, keys: KeyRing, client: Any | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3:// URL: {url!r}")
        self.url = url.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.scratch = local_root / "scratch"
        # The deployments' content-addressed folder: a download lands where a local deploy's copy
        # would (same name, same files), so every replica records and finds the same path.
        self.adapter_cache = local_root / "adapters"
        self.keys = keys
        self._client = client
        self._client_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    import boto3
                except ImportError:  # pragma: no cover - depends on the installation
                    raise RuntimeError(
                        "OBLIVIATE_ARTIFACTS_URL=s3://... needs boto3: pip install 'obliviate[s3]'"
                    ) from None
                # A session per store: boto3's default session is not thread-safe, its clients are.
                self._client = boto3.session.Session().client("s3")
            return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _area_key(self, request_id: str, area: str) -> str:
        return self._key("requests", _safe(request_id), _safe(area)) + "/"

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _get(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        return response["Body"].read(), str(response.get("ETag", ""))

    def _put(self, key: str, data: bytes, *, once: bool = False) -> str | None:
        """Upload; with ``once`` an existing object is kept (returns None then), never replaced."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if once else {}
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except self.client.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if once and code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                return None
            raise
        return str(response.get("ETag", ""))

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if response.get("Errors"):
                raise OSError(f"the object store refused to delete {len(response['Errors'])} object(s)")

    def _data_key(self, request_id: str, *, create: bool = False) -> bytes:
        key = self.keys.get_or_create(request_id) if create else self.keys.get(request_id)
        if key is None:
            raise DataKeyMissing(f"request {request_id} has no data key (its personal data was purged)")
        return key

    def _encode(self, request_id: str, area: str, rel: str, data: bytes, *, create: bool = False) -> bytes:
        if area not in SEALED_AREAS:
            return data
        key = self._data_key(request_id, create=create)
        return envelope.seal(key, request_id, f"{area}/{rel}", data)

    def _decode(self, request_id: str, area: str, rel: str, blob: bytes, key: bytes | None) -> bytes:
        if area not in SEALED_AREAS:
            return blob
        if key is None:
            key = self._data_key(request_id)
        return envelope.open_sealed(key, request_id, f"{area}/{rel}", blob)

    def _local(self, request_id: str, area: str) -> Path:
        return self.scratch / _safe(request_id) / _safe(area)

    def _sync_path(self, request_id: str, area: str) -> Path:
        return self.scratch / _safe(request_id) / _SYNC_FILE.format(area=_safe(area))

    def _read_sync(self, request_id: str, area: str) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._sync_path(request_id, area).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_sync(self, request_id: str, area: str, state: dict[str, dict[str, str]]) -> None:
        _write_atomic(self._sync_path(request_id, area), json.dumps(state, sort_keys=True).encode())

    # -- the ArtifactStore interface ----------------------------------------------------------------

    def put_json(self, request_id: str, area: str, name: str, obj: Any) -> int:
        rel = _safe(name)
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        # The corpus is the request's first artifact: storing it creates the key. Any later write to
        # a sealed area needs the key to exist, so nothing is re-created after the purge shredded it.
        blob = self._encode(request_id, area, rel, data, create=area == INPUT)
        etag = self._put(self._area_key(request_id, area) + rel, blob)
        local = self._local(request_id, area)
        if local.is_dir():  # keep a pulled copy current (the reviewers' edits, read back at once)
            _write_atomic(local / rel, data)
            state = self._read_sync(request_id, area)
            state[rel] = {"etag": etag or "", "sha256": _sha256(data)}
            self._write_sync(request_id, area, state)
        return len(data)

    def get_json(self, request_id: str, area: str, name: str) -> Any:
        rel = _safe(name)
        blob, _ = self._get(self._area_key(request_id, area) + rel)
        return json.loads(self._decode(request_id, area, rel, blob, None))

    def local_dir(self, request_id: str, area: str) -> Path:
        """The area in this host's scratch directory, brought up to date with the bucket."""
        local = self._local(request_id, area)
        local.mkdir(parents=True, exist_ok=True)
        if area == ADAPTER:
            return local  # the worker's output; published content-addressed by save_outputs
        prefix = self._area_key(request_id, area)
        state = self._read_sync(request_id, area)
        key: bytes | None = None
        changed = False
        for obj in self._list(prefix):
            rel = _rel_parts(obj["Key"][len(prefix) :])
            etag = str(obj.get("ETag", ""))
            target = local / rel
            if state.get(rel, {}).get("etag") == etag and target.is_file():
                continue
            if key is None and area in SEALED_AREAS:
                key = self._data_key(request_id)
            blob, etag = self._get(obj["Key"])
            data = self._decode(request_id, area, rel, blob, key)
            _write_atomic(target, data)
            state[rel] = {"etag": etag, "sha256": _sha256(data)}
            changed = True
        if changed:
            self._write_sync(request_id, area, state)
        return local

    def exists(self, request_id: str, area: str) -> bool:
        response = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self._area_key(request_id, area), MaxKeys=1
        )
        return bool(response.get("KeyCount", 0))

    def sync(self, request_id: str, area: str) -> None:
        """Upload what changed in the local copy of a request area, and delete what was removed there."""
        local = self._local(request_id, area)
        if not local.is_dir():
            return
        prefix = self._area_key(request_id, area)
        state = self._read_sync(request_id, area)
        present: set[str] = set()
        key: bytes | None = None
        for rel, path in _visible_files(local):
            rel = _rel_parts(rel)
            present.add(rel)
            data = path.read_bytes()
            digest = _sha256(data)
            if state.get(rel, {}).get("sha256") == digest:
                continue
            if key is None and area in SEALED_AREAS:
                key = self._data_key(request_id)
            blob = envelope.seal(key, request_id, f"{area}/{rel}", data) if key is not None else data
            state[rel] = {"etag": self._put(prefix + rel, blob) or "", "sha256": digest}
        # Only what this copy knew and no longer has is deleted: objects written meanwhile by someone
        # else (a reviewer's edit) are not in ``state`` and stay.
        gone = sorted(set(state) - present)
        if gone:
            self._delete_keys([prefix + rel for rel in gone])
            for rel in gone:
                del state[rel]
        self._write_sync(request_id, area, state)

    def save_outputs(self, request_id: str, adapter_path: str | None) -> str | None:
        self.sync(request_id, WORK)
        if adapter_path is None:
            return None
        return self.publish_adapter(Path(adapter_path))

    def release(self, request_id: str) -> None:
        shutil.rmtree(self.scratch / _safe(request_id), ignore_errors=True)

    def purge(self, request_id: str, areas: tuple[str, ...] = PURGED_AREAS) -> list[str]:
        """Delete the areas' objects and local copies; once no sealed area is left, shred the key."""
        removed: list[str] = []
        for area in areas:
            keys = [obj["Key"] for obj in self._list(self._area_key(request_id, area))]
            local = self._local(request_id, area)
            if keys or local.exists():
                removed.append(area)
            self._delete_keys(keys)
            shutil.rmtree(local, ignore_errors=True)
            self._sync_path(request_id, area).unlink(missing_ok=True)
        if not any(self.exists(request_id, area) for area in SEALED_AREAS if area not in areas):
            self.keys.delete(request_id)
            shutil.rmtree(self.scratch / _safe(request_id), ignore_errors=True)
        return removed

    # -- adapters: content-addressed, immutable -----------------------------------------------------

    def adapter_url(self, digest: str) -> str:
        return f"{self.url}/adapters/{digest}"

    def publish_adapter(self, path: Path) -> str:
        """Upload an adapter directory under its content hash (never replacing an object); its URL."""
        files = [(rel, p) for rel, p in _visible_files(path) if p.name != STAGE_MARKER]
        if not files:
            raise AdapterFilesError("the adapter directory is empty")
        digest = dir_hash(path)
        base = self._key("adapters", digest)
        listing: dict[str, str] = {}
        for rel, file in files:
            rel = _rel_parts(rel)
            data = file.read_bytes()
            listing[rel] = _sha256(data)
            self._put(f"{base}/{rel}", data, once=True)
        manifest = json.dumps({"dir_hash": digest, "files": listing}, sort_keys=True).encode()
        # Written last: an adapter whose manifest exists is complete.
        self._put(f"{base}.json", manifest, once=True)
        return self.adapter_url(digest)

    def _digest_of(self, ref: str) -> str | None:
        if ref.startswith(SCHEME):
            head, _, digest = ref.rstrip("/").rpartition("/adapters/")
            if head != self.url:
                raise AdapterFilesError(f"the adapter is in another store than {self.url}")
            return digest if _HASH.match(digest) else None
        # A replica's content-addressed copy (<data_dir>/adapters/<dir hash>) recorded by a deploy:
        # another host finds the same content under that hash.
        name = Path(ref).name
        return name if _HASH.match(name) else None

    def adapter_dir(self, ref: str) -> Path:
        if not ref.startswith(SCHEME) and Path(ref).is_dir():
            return Path(ref)
        digest = self._digest_of(ref)
        if digest is None:
            raise AdapterFilesError("the adapter reference names no stored adapter")
        target = self.adapter_cache / digest
        if target.is_dir():
            return target  # only ever renamed into place after its hash was checked
        base = self._key("adapters", digest)
        try:
            manifest = json.loads(self._get(f"{base}.json")[0])
        except FileNotFoundError:
            raise AdapterFilesError("the adapter is not in the object store") from None
        self.adapter_cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.adapter_cache))
        try:
            for rel, expected in sorted(dict(manifest.get("files", {})).items()):
                rel = _rel_parts(rel)
                data, _ = self._get(f"{base}/{rel}")
                if _sha256(data) != expected:
                    raise AdapterIntegrityError(f"adapter {digest}: {rel} does not match its recorded hash")
                _write_atomic(tmp / rel, data)
            if dir_hash(tmp) != digest:
                raise AdapterIntegrityError(f"adapter {digest}: the files do not hash to their address")
            for p in tmp.rglob("*"):
                if p.is_file():
                    p.chmod(0o444)
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- orphans and local copies (the purge pass calls these on every replica) ----------------------

    def stored_request_ids(self, keys_older_than_s: float) -> set[str]:
        """Requests that may be orphans: a data key older than the grace period, or sealed objects
        without any key (already shredded: unreadable, nothing to wait for)."""
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key("requests") + "/"
        listed: set[str] = set()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                listed.add(common["Prefix"][len(prefix) :].rstrip("/"))
        # Keys are read after the listing: a key is created before its request's first object, so an
        # object listed here has its key in this read unless the key was really shredded.
        keyed = dict(self.keys.request_ids_with_age())
        return {rid for rid, age in keyed.items() if age >= keys_older_than_s} | (listed - set(keyed))

    def prune_local(self) -> list[str]:
        """Delete this host's scratch copies of requests whose key is gone (purged elsewhere)."""
        if not self.scratch.is_dir():
            return []
        keyed = {rid for rid, _ in self.keys.request_ids_with_age()}
        pruned = []
        for entry in self.scratch.iterdir():
            if entry.is_dir() and entry.name not in keyed:
                shutil.rmtree(entry, ignore_errors=True)
                pruned.append(entry.name)
        return pruned


_STORES: dict[tuple[str, ...], S3Store] = {}
_STORES_LOCK = threading.Lock()


def s3_store_for(settings: Any) -> S3Store:
    """The S3 store of ``settings`` (one per configuration per process: clients are reused)."""
    config = (
        str(settings.artifacts_url),
        str(settings.data_dir),
        str(settings.resolved_database_url),
        os.environ.get("AWS_ENDPOINT_URL", ""),
        os.environ.get("AWS_ENDPOINT_URL_S3", ""),
        os.environ.get("AWS_ACCESS_KEY_ID", ""),
    )
    with _STORES_LOCK:
        store = _STORES.get(config)
        if store is None:
            store = _STORES[config] = S3Store(
                str(settings.artifacts_url),
                Path(settings.data_dir),
                keyring_for(str(settings.resolved_database_url)),
            )
        return store


__all__ = ["SEALED_AREAS", "AdapterIntegrityError", "DataKeyMissing", "S3Store", "s3_store_for"]
