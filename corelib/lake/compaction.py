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
from onceflow.lake.transfers import put_all

__all__ = ["CompactionGroup", "CompactionReport", "compact_dataset", "plan", "vacuum_dataset"]

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
) -> CompactionReport:
    """Merge each partition's small files and swap them in, one manifest entry per partition.

    A reader following the manifest sees a partition's old files or its merged ones, never
    both: rows are neither doubled nor lost. Outputs written twice are merged into one row.
    Old files stay in the store until `vacuum_dataset` removes them.
    """
    log = ManifestLog(store, path)
    snapshot = await log.snapshot()
    groups = plan(snapshot, target_bytes)
    report = CompactionReport()
    by_partition: dict[str, list[CompactionGroup]] = {}
    for group in groups:
        by_partition.setdefault(group.partition, []).append(group)
    for partition_groups in by_partition.values():
        merged: list[EncodedFile] = []
        removed: list[str] = []
        for group in partition_groups:
            bodies = await fetch_files(store, log.root, group.files)
            merged.append(await anyio.to_thread.run_sync(_merge, group, bodies, compression))
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
        report.versions.append(version)
        report.partitions += 1
        report.files_after += len(merged)
        report.bytes_written += sum(e.data_file.bytes for e in merged)
    return report


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


async def vacuum_dataset(
    store: ObjectStore,
    path: str,
    *,
    retain: timedelta = timedelta(hours=1),
    now: float | None = None,
) -> list[str]:
    """Delete Parquet objects the latest manifest version does not need; the paths deleted.

    Only objects older than `retain` go: a writer that has put its files but not yet
    committed them must not lose them, so keep `retain` above the longest invocation.
    Manifest entries before the last checkpoint older than `retain` are pruned too.
    """
    log = ManifestLog(store, path)
    snapshot = await log.snapshot()
    live = {join(log.root, p) for p in snapshot.files}
    cutoff = (now if now is not None else time.time()) - retain.total_seconds()
    deleted = []
    for info in await store.list(log.root + "/" if log.root else ""):
        name = info.path[len(log.root) :].lstrip("/")
        if name.startswith(MANIFEST_DIR + "/") or not info.path.endswith(".parquet"):
            continue
        if info.path in live:
            continue
        if retain.total_seconds() > 0 and (info.modified is None or info.modified > cutoff):
            continue
        await store.delete(info.path)
        deleted.append(info.path)
    await log.prune(keep_after=cutoff if retain.total_seconds() > 0 else float("inf"))
    return deleted
