"""An object store on the local disk, with atomic writes and an atomic create-if-absent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

import anyio.to_thread

from onceflow.records import ObjectInfo

__all__ = ["LocalObjectStore"]

# Temp files live in one hidden folder inside the root, so `rename` stays on one filesystem
# (and therefore atomic) and listings never show a half-written object.
_STAGING = ".onceflow-staging"


class LocalObjectStore:
    """Objects as files under `root`: the local mirror of the S3 and Blob stores.

    `put` writes a temp file, fsyncs it and renames it over the target, so readers see the
    whole old object or the whole new one. `put_if_absent` hard-links the finished temp
    file to the target, which the OS refuses atomically when the target exists, so two
    processes racing to create one path have exactly one winner.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self._staging = self.root / _STAGING
        self._staging.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _file(self, path: str) -> Path:
        """The file for object `path`; refuses paths that would leave the root."""
        parts = PurePosixPath(path).parts
        if not parts or path.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError(f"object path {path!r} must be relative, without '.' or '..'")
        if parts[0] == _STAGING:
            raise ValueError(f"object path {path!r} uses the reserved folder {_STAGING!r}")
        return self.root.joinpath(*parts)

    def _info(self, path: str, stat: os.stat_result) -> ObjectInfo:
        # The etag changes whenever the content may have: size + mtime in nanoseconds + inode.
        tag = f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ino}"
        etag = hashlib.md5(tag.encode(), usedforsecurity=False).hexdigest()
        return ObjectInfo(path, stat.st_size, etag, stat.st_mtime)

    def _staged(self, data: bytes) -> str:
        """Write `data` to a fresh temp file in the staging folder; its path."""
        fd, tmp = tempfile.mkstemp(dir=self._staging, prefix="obj-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException:
            _unlink(tmp)
            raise
        return tmp

    # -- blocking implementations, run in a worker thread ------------------------------------

    def _get(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except IsADirectoryError:
            raise FileNotFoundError(path) from None

    def _get_range(self, path: str, start: int, end: int) -> bytes:
        try:
            with self._file(path).open("rb") as handle:
                handle.seek(start)
                return handle.read(max(0, end - start))
        except IsADirectoryError:
            raise FileNotFoundError(path) from None

    def _put(self, path: str, data: bytes) -> None:
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._staged(data)
        try:
            os.replace(tmp, target)
        except BaseException:
            _unlink(tmp)
            raise

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        target = self._file(path)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._staged(data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            _unlink(tmp)
        return True

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the deepest folder the prefix names in full, then filter by the prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            start = self._file(folder) if folder else self.root
        except ValueError:
            return []
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != _STAGING]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not rel.startswith(prefix):
                    continue
                try:
                    stat = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append(self._info(rel, stat))
        found.sort(key=lambda info: info.path)
        return found

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(path).unlink()

    def _head(self, path: str) -> ObjectInfo | None:
        try:
            stat = self._file(path).stat()
        except FileNotFoundError:
            return None
        if not os.path.isfile(self._file(path)):
            return None
        return self._info(path, stat)

    # -- the ObjectStore protocol ------------------------------------------------------------

    async def get(self, path: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when there is none."""
        return await anyio.to_thread.run_sync(self._get, path)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`; `FileNotFoundError` when absent."""
        return await anyio.to_thread.run_sync(self._get_range, path, start, end)

    async def put(self, path: str, data: bytes) -> None:
        """Create or replace the object, atomically."""
        await anyio.to_thread.run_sync(self._put, path, bytes(data))

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object only if it does not exist; whether this call created it."""
        return await anyio.to_thread.run_sync(self._put_if_absent, path, bytes(data))

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose path starts with `prefix`, sorted by path."""
        return await anyio.to_thread.run_sync(self._list, prefix)

    async def delete(self, path: str) -> None:
        """Remove the object; removing an absent object is not an error."""
        await anyio.to_thread.run_sync(self._delete, path)

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""
        return await anyio.to_thread.run_sync(self._head, path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
