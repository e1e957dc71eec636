"""The manifest: an append-only log of which Parquet files make up a dataset.

Each flush or compaction commits one entry, `_manifest/<version>.json`, created with
`put_if_absent`, so concurrent writers get distinct versions and a reader replaying the
log sees a file either fully committed or not at all. Every `checkpoint_every` versions a
checkpoint holds the whole file list, so readers need not replay from the start.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from onceflow.errors import OnceflowError
from onceflow.interfaces import ObjectStore
from onceflow.lake.transfers import get_all

__all__ = ["DataFile", "ManifestConflict", "ManifestLog", "Snapshot", "join"]

MANIFEST_DIR = "_manifest"
_DIGITS = 20


class ManifestConflict(OnceflowError):
    """Another writer removed files this commit meant to replace; nothing was committed."""


@dataclass(frozen=True, slots=True)
class DataFile:
    """One committed Parquet file: where it is and what it holds."""

    path: str
    """Relative to the dataset's root, e.g. `dt=2024-05-01/hr=12/part-ab12.parquet`."""
    partition: str
    rows: int
    bytes: int
    checksum: str
    """`sha256:<hex>` of the file's bytes."""
    min_key: str
    max_key: str
    """The smallest and largest event key in the file."""


@dataclass
class Snapshot:
    """The files of a dataset as of one manifest version, in commit order."""

    version: int
    files: dict[str, DataFile] = field(default_factory=dict)

    def partitions(self) -> dict[str, list[DataFile]]:
        """Committed files grouped by partition."""
        groups: dict[str, list[DataFile]] = {}
        for data_file in self.files.values():
            groups.setdefault(data_file.partition, []).append(data_file)
        return groups


def join(*parts: str) -> str:
    """Object-store path parts joined with `/`, empty parts skipped."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class ManifestLog:
    """The manifest of the dataset rooted at `path` in `store`."""

    def __init__(self, store: ObjectStore, path: str, *, checkpoint_every: int = 50) -> None:
        self.store = store
        self.root = path.strip("/")
        self.prefix = join(self.root, MANIFEST_DIR) + "/"
        self.checkpoint_every = checkpoint_every
        self._next: int | None = None

    def _entry(self, version: int) -> str:
        return f"{self.prefix}{version:0{_DIGITS}d}.json"

    def _checkpoint(self, version: int) -> str:
        return f"{self.prefix}{version:0{_DIGITS}d}.checkpoint.json"

    async def _listing(self) -> tuple[list[int], list[int]]:
        """Committed versions and checkpoint versions, ascending."""
        versions, checkpoints = [], []
        for info in await self.store.list(self.prefix):
            name = info.path[len(self.prefix) :]
            number, _, rest = name.partition(".")
            if not number.isdigit():
                continue
            if rest == "json":
                versions.append(int(number))
            elif rest == "checkpoint.json":
                checkpoints.append(int(number))
        return versions, checkpoints

    async def commit(
        self,
        add: Sequence[DataFile],
        remove: Iterable[str] = (),
        *,
        operation: str = "append",
        base_version: int | None = None,
    ) -> int:
        """Append one entry adding and removing files; the version it got.

        With `base_version`, the commit is refused (`ManifestConflict`) when an entry
        after that version already removed one of the files in `remove`.
        """
        removed = sorted(set(remove))
        # A commit id in the entry lets a retry recognise its own entry when the reply to a
        # put that succeeded was lost (the retried put finds the version taken).
        commit_id = uuid.uuid4().hex
        if self._next is None:
            versions, _ = await self._listing()
            self._next = (versions[-1] + 1) if versions else 1
        body = {
            "operation": operation,
            "committed_at": time.time(),
            "add": [asdict(f) for f in add],
            "remove": removed,
            "commit_id": commit_id,
        }
        if base_version is not None and removed:
            await self._check_conflicts(base_version + 1, self._next, removed)
        while True:
            version = self._next
            body["version"] = version
            data = json.dumps(body, separators=(",", ":")).encode()
            if await self._put(version, data, commit_id):
                self._next = version + 1
                break
            if base_version is not None and removed:
                await self._check_conflicts(version, version + 1, removed)
            self._next = version + 1
        if self.checkpoint_every and version % self.checkpoint_every == 0:
            await self._write_checkpoint(version)
        return version

    async def _put(self, version: int, data: bytes, commit_id: str) -> bool:
        """Create the entry at `version`; whether this commit's entry is there now."""
        try:
            if await self.store.put_if_absent(self._entry(version), data):
                return True
        except Exception:
            # The put may have landed with its reply lost: only our own entry there says so.
            if await self._holds(version, commit_id):
                return True
            raise
        return await self._holds(version, commit_id)

    async def _holds(self, version: int, commit_id: str) -> bool:
        """Whether the entry at `version` is the one this commit wrote."""
        try:
            entry = json.loads(await self.store.get(self._entry(version)))
        except FileNotFoundError:
            return False
        return bool(entry.get("commit_id") == commit_id)

    async def _check_conflicts(self, start: int, stop: int, removed: list[str]) -> None:
        wanted = set(removed)
        for version in range(start, stop):
            try:
                entry = json.loads(await self.store.get(self._entry(version)))
            except FileNotFoundError:
                continue
            clash = wanted.intersection(entry["remove"])
            if clash:
                raise ManifestConflict(
                    f"manifest version {version} already replaced {sorted(clash)[0]}; "
                    "run the compaction again"
                )

    async def _write_checkpoint(self, version: int) -> None:
        snapshot = await self.snapshot(version)
        body = {"version": version, "files": [asdict(f) for f in snapshot.files.values()]}
        await self.store.put(self._checkpoint(version), json.dumps(body).encode())

    async def prune(self, *, keep_after: float) -> list[str]:
        """Delete entries and checkpoints older than the last checkpoint made before `keep_after`.

        Readers then start from that checkpoint; versions before it can no longer be read.
        The latest entries are never touched, so writers keep numbering from them.
        """
        versions, checkpoints = await self._listing()
        infos = {i.path: i for i in await self.store.list(self.prefix)}
        floor = 0
        for checkpoint in checkpoints:
            info = infos.get(self._checkpoint(checkpoint))
            if info is not None and info.modified is not None and info.modified < keep_after:
                floor = checkpoint
        doomed = [self._entry(v) for v in versions if v < floor]
        doomed += [self._checkpoint(c) for c in checkpoints if c < floor]
        for path in doomed:
            await self.store.delete(path)
        return doomed

    async def snapshot(self, version: int | None = None) -> Snapshot:
        """The committed files as of `version` (default: the latest)."""
        versions, checkpoints = await self._listing()
        if version is not None:
            versions = [v for v in versions if v <= version]
            checkpoints = [c for c in checkpoints if c <= version]
        snapshot = Snapshot(version=versions[-1] if versions else 0)
        start = 0
        if checkpoints:
            start = checkpoints[-1]
            body = json.loads(await self.store.get(self._checkpoint(start)))
            snapshot.files = {f["path"]: DataFile(**f) for f in body["files"]}
        pending = [v for v in versions if v > start]
        bodies = await get_all(self.store, [self._entry(v) for v in pending])
        entries = {v: json.loads(body) for v, body in zip(pending, bodies, strict=True)}
        for number in pending:
            entry = entries[number]
            for path in entry["remove"]:
                snapshot.files.pop(path, None)
            for raw in entry["add"]:
                data_file = DataFile(**raw)
                # A re-added path moves to the end: its latest rows win on read.
                snapshot.files.pop(data_file.path, None)
                snapshot.files[data_file.path] = data_file
        return snapshot
