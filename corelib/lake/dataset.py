"""Reading a committed Parquet dataset through its manifest, and closing finished partitions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onceflow.errors import OnceflowError
from onceflow.interfaces import ObjectStore
from onceflow.lake.manifest import DataFile, ManifestLog, Snapshot, join
from onceflow.lake.partitions import parse_partition
from onceflow.lake.schema import OUTPUT_ID
from onceflow.lake.transfers import get_all

__all__ = ["ChecksumMismatch", "close_partitions", "fetch_files", "read_dataset", "read_files"]

SUCCESS = "_SUCCESS"


class ChecksumMismatch(OnceflowError):
    """A committed file's bytes differ from the checksum its manifest entry recorded."""


async def fetch_files(
    store: ObjectStore, root: str, files: Sequence[DataFile], *, verify: bool = False
) -> list[bytes]:
    """The files' bytes, fetched concurrently, in the order given."""
    bodies = await get_all(store, [join(root, f.path) for f in files])
    if verify:
        for data_file, body in zip(files, bodies, strict=True):
            actual = "sha256:" + hashlib.sha256(body).hexdigest()
            if actual != data_file.checksum:
                raise ChecksumMismatch(
                    f"{data_file.path} has checksum {actual}, "
                    f"the manifest says {data_file.checksum}"
                )
    return bodies


def read_files(
    files: Sequence[DataFile], bodies: Sequence[bytes], columns: Sequence[str] | None = None
) -> pa.Table | None:
    """The files as one table with their partition columns, each output id once (latest wins)."""
    tables = []
    for data_file, body in zip(files, bodies, strict=True):
        table = pq.read_table(pa.BufferReader(body))
        for name, value in parse_partition(data_file.partition).items():
            if name not in table.column_names:
                table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    table = _latest_per_output(table)
    if columns is not None:
        table = table.select(list(columns))
    return table


def _latest_per_output(table: pa.Table) -> pa.Table:
    """The table with one row per output id: the one committed last."""
    ids = table.column(OUTPUT_ID)
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    seen: set[str] = set()
    keep = []
    for index, output_id in reversed(list(enumerate(ids.to_pylist()))):
        if output_id not in seen:
            seen.add(output_id)
            keep.append(index)
    keep.reverse()
    return table.take(pa.array(keep, pa.int64()))


async def read_dataset(
    store: ObjectStore,
    path: str,
    *,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    partitions: Mapping[str, str] | None = None,
    verify: bool = False,
) -> pa.Table:
    """The dataset's committed rows as one Arrow table (manifest-aware; orphans ignored).

    Partition values come back as string columns (`dt`, `hr`, ...); `partitions` keeps
    only the files whose partition has those values (`{"dt": "2024-05-01"}`). An output
    written twice (a redelivered batch regrouped differently) appears once.
    """
    log = ManifestLog(store, path)
    snapshot = await log.snapshot(version)
    files = list(snapshot.files.values())
    if partitions:
        wanted = dict(partitions)
        files = [f for f in files if wanted.items() <= parse_partition(f.partition).items()]
    bodies = await fetch_files(store, log.root, files, verify=verify)
    table = await anyio.to_thread.run_sync(read_files, files, bodies, columns)
    if table is None:
        return pa.table({OUTPUT_ID: pa.array([], pa.string())})
    return table


async def close_partitions(
    store: ObjectStore,
    path: str,
    *,
    now: datetime | None = None,
    grace: timedelta = timedelta(hours=1),
) -> list[str]:
    """Put `_SUCCESS` in every hourly partition that ended `grace` ago; the ones closed now.

    The marker lists the partition's files and rows as of this manifest version. Rows
    arriving later still land (late data is not dropped); the marker says when it closed.
    """
    now = now or datetime.now(UTC)
    log = ManifestLog(store, path)
    snapshot: Snapshot = await log.snapshot()
    closed = []
    for partition, files in sorted(snapshot.partitions().items()):
        values = parse_partition(partition)
        if "dt" not in values or "hr" not in values:
            continue
        start = datetime.strptime(f"{values['dt']} {values['hr']}", "%Y-%m-%d %H").replace(
            tzinfo=UTC
        )
        if start + timedelta(hours=1) + grace > now:
            continue
        marker = join(log.root, partition, SUCCESS)
        body = json.dumps(
            {
                "closed_at": now.isoformat(),
                "manifest_version": snapshot.version,
                "files": sorted(f.path for f in files),
                "rows": sum(f.rows for f in files),
            }
        ).encode()
        if await store.put_if_absent(marker, body):
            closed.append(partition)
    return closed
