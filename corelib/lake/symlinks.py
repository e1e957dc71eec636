"""Symlink manifests: the live files of a Parquet dataset, for engines that list files.

Athena, Presto/Trino and Spark read a table declared with `SymlinkTextInputFormat` through
`_symlink_format_manifest/<partition>/manifest`: one absolute file URI per line. Next to
it, `_live_files/<partition>/files.txt` holds the same files relative to the dataset root
(for DuckDB's `read_parquet([...])` or any script). Both list only files whose rows are
each output once: compaction, which drops outputs that sit in two files, publishes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onceflow.interfaces import ObjectStore
from onceflow.lake.manifest import DataFile, join

__all__ = [
    "FILE_LIST_DIR",
    "SYMLINK_DIR",
    "SymlinkReport",
    "dataset_location",
    "publish_symlink_manifest",
    "published_files",
]

SYMLINK_DIR = "_symlink_format_manifest"
FILE_LIST_DIR = "_live_files"
FILE_LIST = "files.txt"


@dataclass
class SymlinkReport:
    """What a publication wrote: partitions written, unchanged and removed."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def dataset_location(store: ObjectStore, path: str) -> str | None:
    """The absolute URI of `path` in the stores onceflow ships, or None for others."""
    inner: Any = store
    if hasattr(inner, "root") and isinstance(inner.root, Path):  # LocalObjectStore
        return (inner.root / path).as_uri() if path else inner.root.as_uri()
    if hasattr(inner, "bucket"):  # S3ObjectStore
        return "s3://" + join(inner.bucket, getattr(inner, "prefix", ""), path)
    container = getattr(inner, "container", None)
    if container is not None and hasattr(container, "account_name"):  # BlobObjectStore
        authority = f"{container.container_name}@{container.account_name}.dfs.core.windows.net"
        return "abfss://" + join(authority, getattr(inner, "prefix", ""), path)
    return None


def _list_path(root: str, partition: str) -> str:
    return join(root, FILE_LIST_DIR, partition, FILE_LIST)


def _manifest_path(root: str, partition: str) -> str:
    return join(root, SYMLINK_DIR, partition, "manifest")


async def published_files(store: ObjectStore, path: str) -> dict[str, set[str]]:
    """The files last published per partition, relative to the dataset root."""
    root = path.strip("/")
    prefix = join(root, FILE_LIST_DIR) + "/"
    published: dict[str, set[str]] = {}
    for info in await store.list(prefix):
        if not info.path.endswith("/" + FILE_LIST):
            continue
        partition = info.path[len(prefix) : -len(FILE_LIST)].strip("/")
        body = (await store.get(info.path)).decode()
        published[partition] = {line for line in body.splitlines() if line}
    return published


async def publish_symlink_manifest(
    store: ObjectStore,
    path: str,
    live: Mapping[str, Sequence[DataFile]],
    *,
    location: str | None = None,
) -> SymlinkReport:
    """Write each partition's symlink manifest and file list for `live`, its verified files.

    `live` maps each partition to files whose rows hold every output once: the caller has
    checked that (compaction does). Partitions published before but absent now lose their
    manifest. `location` is the dataset root's absolute URI (default: from the store).
    """
    root = path.strip("/")
    base = location or dataset_location(store, root)
    before = await published_files(store, root)
    report = SymlinkReport()
    for partition, files in sorted(live.items()):
        relative = sorted(f.path for f in files)
        if before.get(partition) == set(relative):
            report.unchanged.append(partition)
            continue
        listing = "".join(f"{p}\n" for p in relative).encode()
        if base is not None:
            absolute = "".join(f"{base.rstrip('/')}/{p}\n" for p in relative).encode()
            await store.put(_manifest_path(root, partition), absolute)
        await store.put(_list_path(root, partition), listing)
        report.written.append(partition)
    for partition in sorted(set(before) - set(live)):
        await store.delete(_manifest_path(root, partition))
        await store.delete(_list_path(root, partition))
        report.removed.append(partition)
    return report
