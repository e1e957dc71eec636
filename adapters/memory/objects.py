"""An object store held in process memory."""

from __future__ import annotations

import hashlib
import threading

from onceflow.adapters.memory.faults import Faults
from onceflow.clock import SystemClock
from onceflow.interfaces import Clock
from onceflow.records import ObjectInfo

__all__ = ["MemoryObjectStore"]


class MemoryObjectStore:
    """Objects in a dict, with the same semantics as the disk, S3 and Blob stores."""

    def __init__(self, *, clock: Clock | None = None, faults: Faults | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.faults = faults or Faults()
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}

    def _info(self, path: str, data: bytes) -> ObjectInfo:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return ObjectInfo(path, len(data), etag, self.clock.now())

    async def get(self, path: str) -> bytes:
        """The object's bytes."""
        self.faults.check("objects.get")
        with self._lock:
            if path not in self._objects:
                raise FileNotFoundError(path)
            return self._objects[path][0]

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (exclusive)."""
        return (await self.get(path))[start:end]

    async def put(self, path: str, data: bytes) -> None:
        """Create or replace the object."""
        self.faults.check("objects.put")
        with self._lock:
            self._objects[path] = (bytes(data), self._info(path, data))

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object unless it exists."""
        self.faults.check("objects.put")
        with self._lock:
            if path in self._objects:
                return False
            self._objects[path] = (bytes(data), self._info(path, data))
            return True

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects under `prefix`, sorted by path."""
        with self._lock:
            return [
                info for path, (_, info) in sorted(self._objects.items()) if path.startswith(prefix)
            ]

    async def delete(self, path: str) -> None:
        """Remove the object if present."""
        with self._lock:
            self._objects.pop(path, None)

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None."""
        with self._lock:
            entry = self._objects.get(path)
            return entry[1] if entry else None
