"""Compaction: small Parquet files of a partition merged and swapped in through the manifest."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onceflow.interfaces import ObjectStore
from onceflow.lake.dataset import fetch_files, read_files
from onceflow.lake.manifest import MANIFEST_DIR, DataFile, ManifestLog, Snapshot, join
from onceflow.lake.parquet_sink import EncodedFile, encode_file, ids_digest
from onceflow.lake.partitions import parse_partition
from onceflow.lake.schema import META_COLUMNS, OUTPUT_ID
from onceflow.lake.symlinks import SymlinkReport, publish_symlink_manifest, published_files
from onceflow.lake.transfers import put_all

__all__ = [
    "CompactionGroup",
    "CompactionReport",
    "VacuumReport",
    "compact_dataset",
    "plan",
    "vacuum_dataset",
]

MiB = 1024 * 1024
DEFAULT_TARGET = 256 * MiB


@dataclass(frozen=True, slots=True)
class CompactionGroup:
    """Files of one partition to be merged into one."""

    partition: str
    files: tuple[DataFile, ...]

    @property
    def bytes(self) -> int:
        """Their total size."""
        return sum(f.bytes for f in self.files)


@dataclass
class CompactionReport:
    """What a compaction did."""

    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    versions: list[int] = field(default_factory=list)
    published: SymlinkReport = field(default_factory=SymlinkReport)


def plan(snapshot: Snapshot, target_bytes: int = DEFAULT_TARGET) -> list[CompactionGroup]:
    """Groups of small files, per partition, whose merge stays near `target_bytes`."""
    groups: list[CompactionGroup] = []

    def close(partition: str, files: list[DataFile]) -> None:
        if len(files) > 1:  # one file alone is already as merged as it gets
            groups.append(CompactionGroup(partition, tuple(files)))

    for partition, files in sorted(snapshot.partitions().items()):
        current: list[DataFile] = []
        size = 0
        for data_file in (f for f in files if f.bytes < target_bytes):
            if current and size + data_file.bytes > target_bytes:
                close(partition, current)
                current, size = [], 0
            current.append(data_file)
            size += data_file.bytes
        close(partition, current)
    return groups


async def compact_dataset(
    store: ObjectStore,
    path: str,
    *,
    target_bytes: int = DEFAULT_TARGET,
    compression: str = "zstd",
    progress: Callable[[CompactionGroup], None] | None = None,
    location: str | None = None,
) -> CompactionReport:
    """Merge each partition's small files, drop outputs held twice, and publish live files.

    One manifest entry per partition swaps the merged files in, so a manifest reader sees a
    partition's old files or its merged ones, never both. Files that share an output (a
    redelivered batch regrouped) are merged whatever their size, keeping its latest row.
    Then the symlink manifest and file list (`onceflow.lake.symlinks`) of every partition
    are published from the verified files, so engines that list files see each row once.
    Old files stay in the store until `vacuum_dataset` removes them.
    """
    log = ManifestLog(store, path)
    snapshot = await log.snapshot()
    published = await published_files(store, log.root)
    report = CompactionReport()
    live: dict[str, list[DataFile]] = {}
    for partition, files in sorted(snapshot.partitions().items()):
        live[partition] = list(files)
        if published.get(partition) == {f.path for f in files}:
            continue  # unchanged since it was last verified and published
        groups, bodies = await _groups_for(store, log.root, partition, files, target_bytes)
        if not groups:
            continue
        merged: list[EncodedFile] = []
        removed: list[str] = []
        for group in groups:
            group_bodies = [bodies[f.path] for f in group.files if f.path in bodies]
            if len(group_bodies) != len(group.files):
                group_bodies = await fetch_files(store, log.root, group.files)
            merged.append(await anyio.to_thread.run_sync(_merge, group, group_bodies, compression))
            removed.extend(f.path for f in group.files)
            report.files_before += len(group.files)
            report.bytes_read += group.bytes
            if progress is not None:
                progress(group)
        await put_all(store, [(join(log.root, e.data_file.path), e.body) for e in merged])
        version = await log.commit(
            [e.data_file for e in merged],
            removed,
            operation="compact",
            base_version=snapshot.version,
        )
        gone = set(removed)
        live[partition] = [f for f in files if f.path not in gone] + [e.data_file for e in merged]
        report.versions.append(version)
        report.partitions += 1
        report.files_after += len(merged)
        report.bytes_written += sum(e.data_file.bytes for e in merged)
    report.published = await publish_symlink_manifest(store, log.root, live, location=location)
    return report


async def _groups_for(
    store: ObjectStore, root: str, partition: str, files: list[DataFile], target_bytes: int
) -> tuple[list[CompactionGroup], dict[str, bytes]]:
    """One partition's merge groups: small files by size, joined with files sharing outputs."""
    by_size = plan(Snapshot(0, {f.path: f for f in files}), target_bytes)
    owner = {f.path: f.path for f in files}

    def find(path: str) -> str:
        while owner[path] != path:
            owner[path] = owner[owner[path]]
            path = owner[path]
        return path

    def unite(a: str, b: str) -> None:
        owner[find(a)] = find(b)

    for group in by_size:
        for data_file in group.files[1:]:
            unite(data_file.path, group.files[0].path)
    bodies: dict[str, bytes] = {}
    if len({find(f.path) for f in files}) > 1:
        # More than one file survives the size plan: read their ids to find shared outputs.
        fetched = await fetch_files(store, root, files)
        bodies = {f.path: body for f, body in zip(files, fetched, strict=True)}
        holder: dict[str, str] = {}
        for data_file in files:
            for output_id in _ids(bodies[data_file.path]):
                if output_id in holder:
                    unite(data_file.path, holder[output_id])
                else:
                    holder[output_id] = data_file.path
    components: dict[str, list[DataFile]] = {}
    for data_file in files:  # commit order kept: the latest row of an output wins
        components.setdefault(find(data_file.path), []).append(data_file)
    groups = [CompactionGroup(partition, tuple(c)) for c in components.values() if len(c) > 1]
    return groups, bodies


def _ids(body: bytes) -> list[str]:
    table = pq.read_table(pa.BufferReader(body), columns=[OUTPUT_ID])
    return [str(i) for i in table.column(0).to_pylist()]


ROW_GROUP_ROWS = 1 << 20


def _merge(group: CompactionGroup, bodies: list[bytes], compression: str) -> EncodedFile:
    """The group's files as one, streamed row group by row group to bound memory.

    Outputs present in two files (a redelivered batch regrouped) are rare; only then is the
    group read whole to keep each output's latest row.
    """
    files = [pq.ParquetFile(pa.BufferReader(body)) for body in bodies]
    ids = pa.chunked_array(
        [f.read(columns=[OUTPUT_ID]).column(0).combine_chunks() for f in files], pa.string()
    ).combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        table = read_files(group.files, bodies)
        assert table is not None
        # The partition is in the path, not in the rows: drop the columns the reader added.
        table = table.drop_columns(
            [name for name in parse_partition(group.partition) if name in table.column_names]
        )
        return encode_file(table, group.partition, compression)
    schema = pa.unify_schemas([f.schema_arrow for f in files], promote_options="default")
    sink = pa.BufferOutputStream()
    plain = [name for name in schema.names if name not in META_COLUMNS]
    pending: list[pa.Table] = []
    rows = 0
    with pq.ParquetWriter(sink, schema, compression=compression, use_dictionary=plain) as out:
        for parquet_file in files:
            for index in range(parquet_file.num_row_groups):
                pending.append(_conform(parquet_file.read_row_group(index), schema))
                rows += pending[-1].num_rows
                if rows >= ROW_GROUP_ROWS:
                    out.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, rows = [], 0
        if pending:
            out.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
    body = sink.getvalue().to_pybytes()
    data_file = DataFile(
        path=join(group.partition, f"part-{ids_digest(ids)}.parquet"),
        partition=group.partition,
        rows=len(ids),
        bytes=len(body),
        checksum="sha256:" + hashlib.sha256(body).hexdigest(),
        min_key=min(f.min_key for f in group.files),
        max_key=max(f.max_key for f in group.files),
    )
    return EncodedFile(data_file, body)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order; columns it lacks are null."""
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass
class VacuumReport:
    """What a vacuum deleted, and what it kept and why."""

    deleted: list[str] = field(default_factory=list)
    in_use: int = 0
    """Files the latest manifest version or a published symlink manifest names."""
    retained: list[str] = field(default_factory=list)
    """Files no longer in use but younger than the retention (a reader or writer may need them)."""
    retain: timedelta = timedelta(hours=1)
    pruned_entries: int = 0

    def explain(self) -> list[str]:
        """The report as sentences for a person."""
        hours = self.retain.total_seconds() / 3600
        lines = [
            f"deleted {len(self.deleted)} files no manifest version or symlink manifest needs",
            f"kept {self.in_use} files in use (the latest manifest version, or named by "
            "_symlink_format_manifest)",
        ]
        if self.retained:
            lines.append(
                f"kept {len(self.retained)} superseded files younger than the retention of "
                f"{hours:g} h (readers of older versions, or a writer that has not committed "
                "yet, may need them); --retain-hours 0 deletes them"
            )
        if self.pruned_entries:
            lines.append(f"pruned {self.pruned_entries} manifest entries before a checkpoint")
        return lines


async def vacuum_dataset(
    store: ObjectStore,
    path: str,
    *,
    retain: timedelta = timedelta(hours=1),
    now: float | None = None,
) -> VacuumReport:
    """Delete Parquet objects neither the latest manifest nor a symlink manifest names.

    Only objects older than `retain` go: a writer that has put its files but not yet
    committed them must not lose them, so keep `retain` above the longest invocation.
    Manifest entries before the last checkpoint older than `retain` are pruned too.
    """
    log = ManifestLog(store, path)
    snapshot = await log.snapshot()
    live = {join(log.root, p) for p in snapshot.files}
    for files in (await published_files(store, log.root)).values():
        live.update(join(log.root, p) for p in files)
    cutoff = (now if now is not None else time.time()) - retain.total_seconds()
    report = VacuumReport(retain=retain)
    for info in await store.list(log.root + "/" if log.root else ""):
        name = info.path[len(log.root) :].lstrip("/")
        if name.startswith(MANIFEST_DIR + "/") or not info.path.endswith(".parquet"):
            continue
        if info.path in live:
            report.in_use += 1
            continue
        if retain.total_seconds() > 0 and (info.modified is None or info.modified > cutoff):
            report.retained.append(info.path)
            continue
        await store.delete(info.path)
        report.deleted.append(info.path)
    pruned = await log.prune(keep_after=cutoff if retain.total_seconds() > 0 else float("inf"))
    report.pruned_entries = len(pruned)
    return report
