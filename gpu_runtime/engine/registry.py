"""Bookkeeping of served adapters: ids, aliases, reference counts and LRU order (no torch).

The registry decides *what* to evict or delete; the engine does the model surgery under its model
lock. Every method is atomic under one lock, so resolving a name and taking a reference can never
race with an alias flip or an eviction.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gpu_runtime.engine.errors import (
    AdapterCapacityError,
    AdapterConflict,
    AdapterInUse,
    InvalidRequest,
    UnknownModel,
)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" rows in a mixed batch


@dataclass(slots=True)
class _Entry:
    adapter_id: str
    name: str  # peft adapter name: ids may hold dots, which torch module names cannot
    sha256: str
    path: Path
    loaded_at: float
    refcount: int = 0
    retiring: bool = False
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """Public view of one loaded adapter."""

    adapter_id: str
    sha256: str
    path: str
    in_flight: int
    aliases: tuple[str, ...]
    retiring: bool


@dataclass(frozen=True, slots=True)
class Lease:
    """A reference held by one request on the adapter it resolved to (``adapter_id=None`` = base)."""

    model: str
    adapter_id: str | None
    name: str


class AdapterRegistry:
    """Adapter ids → peft names, aliases, reference counts, LRU eviction choice."""

    def __init__(self, capacity: int, base_name: str) -> None:
        if capacity < 1:
            raise ValueError(f"adapter_capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.base_name = base_name
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest use first
        self._aliases: dict[str, str | None] = {}
        self._names = (f"a{i}" for i in itertools.count())
        # peft names whose last request finished after they were retired; the engine deletes them.
        self._doomed: list[str] = []

    # -- names -------------------------------------------------------------------------------
    def resolve(self, model: str | None) -> str | None:
        """Alias, adapter id or base name → adapter id (``None`` = base). Raises UnknownModel."""
        with self._lock:
            return self._resolve(model)

    def _resolve(self, model: str | None) -> str | None:
        if model is None or model == self.base_name:
            return None
        if model in self._aliases:
            return self._aliases[model]
        entry = self._entries.get(model)
        if entry is None or entry.retiring:
            raise UnknownModel(model)
        return model

    def acquire(self, model: str | None) -> Lease:
        """Resolve ``model`` and take a reference on the result, atomically."""
        with self._lock:
            adapter_id = self._resolve(model)
            label = model or self.base_name
            if adapter_id is None:
                return Lease(label, None, BASE_ADAPTER)
            entry = self._entries[adapter_id]
            entry.refcount += 1
            entry.last_used = time.monotonic()
            self._entries.move_to_end(adapter_id)
            return Lease(label, adapter_id, entry.name)

    def release(self, lease: Lease) -> None:
        with self._lock:
            if lease.adapter_id is None:
                return
            entry = self._entries.get(lease.adapter_id)
            if entry is None or entry.name != lease.name:
                return
            entry.refcount -= 1
            if entry.refcount == 0 and entry.retiring:
                del self._entries[entry.adapter_id]
                self._doomed.append(entry.name)

    def doom(self, name: str) -> None:
        """Queue peft adapter ``name`` for deletion by the engine thread."""
        with self._lock:
            self._doomed.append(name)

    def take_doomed(self) -> list[str]:
        """Peft names that are no longer used by anything and should be deleted from the model now."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
            return doomed

    # -- loading -----------------------------------------------------------------------------
    def lookup(self, adapter_id: str, sha256: str) -> bool:
        """True if ``adapter_id`` is already loaded with this content (revives it if retiring)."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                return False
            if entry.sha256 != sha256:
                raise AdapterConflict(
                    f"adapter {adapter_id!r} is already loaded with different content (sha256:{entry.sha256}); "
                    "adapter ids are immutable versions, load the new content under a new id"
                )
            entry.retiring = False
            return True

    def make_room(self, adapter_id: str) -> tuple[str, list[str]]:
        """Pick a peft name for a new adapter and evict least-recently-used idle adapters to fit it.

        Returns (new peft name, peft names to delete from the model). Evicted entries leave the
        registry at once, so no request can take a reference on them afterwards.
        """
        if adapter_id == self.base_name or adapter_id == BASE_ADAPTER:
            raise InvalidRequest(f"adapter id {adapter_id!r} is reserved for the base model")
        with self._lock:
            if adapter_id in self._aliases:
                raise InvalidRequest(f"adapter id {adapter_id!r} is already used as an alias name")
            aliased = {a for a in self._aliases.values() if a is not None}
            over = len(self._entries) + 1 - self.capacity
            idle = [e for e in self._entries.values() if e.refcount == 0 and e.adapter_id not in aliased]
            if over > len(idle):
                raise AdapterCapacityError(
                    f"adapter cache full ({self.capacity} slots): every cached adapter is in use or aliased"
                )
            victims: list[str] = []
            for entry in idle[: max(over, 0)]:  # least recently used first
                del self._entries[entry.adapter_id]
                victims.append(entry.name)
            return next(self._names), victims

    def add(self, adapter_id: str, name: str, sha256: str, path: Path) -> None:
        with self._lock:
            self._entries[adapter_id] = _Entry(adapter_id, name, sha256, path, time.time())

    # -- aliases and unloading ---------------------------------------------------------------
    def set_alias(self, alias: str, adapter_id: str | None) -> str | None:
        """Point ``alias`` at ``adapter_id`` (``None`` = base); returns the previous target."""
        with self._lock:
            if alias in (self.base_name, BASE_ADAPTER) or alias in self._entries:
                raise InvalidRequest(f"alias {alias!r} collides with a model or adapter id")
            if adapter_id is not None:
                entry = self._entries.get(adapter_id)
                if entry is None or entry.retiring:
                    raise UnknownModel(adapter_id)
                entry.last_used = time.monotonic()
                self._entries.move_to_end(adapter_id)
            previous = self._aliases.get(alias)
            self._aliases[alias] = adapter_id
            return previous

    def remove_alias(self, alias: str) -> None:
        with self._lock:
            if alias not in self._aliases:
                raise UnknownModel(alias)
            del self._aliases[alias]

    def aliases(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self._aliases)

    def retire(self, adapter_id: str) -> str | None:
        """Stop new requests on ``adapter_id``; returns its peft name if it can be deleted now, else None.

        With requests in flight the adapter stays in the model until the last one releases it.
        """
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                raise UnknownModel(adapter_id)
            pointing = sorted(a for a, t in self._aliases.items() if t == adapter_id)
            if pointing:
                raise AdapterInUse(
                    f"adapter {adapter_id!r} is served by alias(es) {pointing}; flip them first"
                )
            entry.retiring = True
            if entry.refcount == 0:
                del self._entries[adapter_id]
                return entry.name
            return None

    def infos(self) -> list[AdapterInfo]:
        with self._lock:
            return [
                AdapterInfo(
                    adapter_id=e.adapter_id,
                    sha256=e.sha256,
                    path=str(e.path),
                    in_flight=e.refcount,
                    aliases=tuple(sorted(a for a, t in self._aliases.items() if t == e.adapter_id)),
                    retiring=e.retiring,
                )
                for e in self._entries.values()
            ]
