"""Iceberg table upkeep pyiceberg lacks: merging small files and deleting orphaned files.

- `compact_iceberg` rewrites each partition holding several small files as one `overwrite`
  snapshot whose filter is exactly that partition: readers see the old files or the new
  ones, never both, and the table properties (the lane watermarks) are untouched. A commit
  that lands between our scan and our commit makes the catalog refuse ours; the partition is
  then read and rewritten again, so no row appended meanwhile is lost.
- `remove_iceberg_orphans` deletes data files under the table's `data/` folder that no
  live snapshot references (files of expired snapshots, files of crashed writers) once
  they are older than a retention, so a writer's files are never deleted before its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
)
from pyiceberg.table import Table
from pyiceberg.transforms import HourTransform, IdentityTransform

__all__ = ["IcebergCompaction", "compact_iceberg", "remove_iceberg_orphans"]

log = logging.getLogger("onceflow.lake")

COMMIT_ATTEMPTS = 8
_HOUR_MICROS = 3_600_000_000


@dataclass
class IcebergCompaction:
    """What one compaction of an Iceberg table did."""

    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0
    bytes_read: int = 0
    skipped: list[str] = field(default_factory=list)
    """Partitions left alone: a transform this compaction cannot express as a filter."""


@dataclass(frozen=True)
class _Partition:
    label: str
    values: dict[str, Any]
    files: int
    bytes: int


def compact_iceberg(
    table: Table,
    *,
    target_bytes: int = 256 * 1024 * 1024,
    progress: Callable[[str, int], None] | None = None,
) -> IcebergCompaction:
    """Merge every partition of `table` that holds more than one small file; what it did.

    `progress(partition, bytes)` is called after each partition is rewritten.
    """
    report = IcebergCompaction()
    compacted = []
    for partition in _partitions(table):
        if partition.files < 2 or partition.bytes >= target_bytes * partition.files * 0.75:
            continue
        row_filter = _filter(table, partition.values)
        if row_filter is None:
            report.skipped.append(partition.label)
            continue
        report.rows += _rewrite(table, partition, row_filter)
        report.partitions += 1
        report.files_before += partition.files
        report.bytes_read += partition.bytes
        compacted.append(partition.label)
        if progress is not None:
            progress(partition.label, partition.bytes)
    table.refresh()
    after = {p.label: p.files for p in _partitions(table)}
    report.files_after = sum(after.get(label, 0) for label in compacted)
    return report


def _rewrite(table: Table, partition: _Partition, row_filter: BooleanExpression) -> int:
    for attempt in range(COMMIT_ATTEMPTS):
        if attempt:
            table.refresh()
            log.info("%s moved on under the compaction; rewriting again", partition.label)
        rows = table.scan(row_filter=row_filter).to_arrow()
        summary = {"onceflow.operation": "compact", "onceflow.compacted": partition.label}
        try:
            with table.transaction() as transaction:
                transaction.overwrite(
                    rows, overwrite_filter=row_filter, snapshot_properties=summary
                )
            return int(rows.num_rows)
        except CommitFailedException:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _partitions(table: Table) -> list[_Partition]:
    if table.current_snapshot() is None:
        return []
    found = []
    for row in table.inspect.partitions().to_pylist():
        values = dict(row.get("partition") or {})
        label = "/".join(f"{k}={v}" for k, v in values.items()) or "(root)"
        found.append(
            _Partition(label, values, row["file_count"], row["total_data_file_size_in_bytes"])
        )
    return found


def _filter(table: Table, values: dict[str, Any]) -> BooleanExpression | None:
    """The row filter that selects exactly one partition (None: not expressible)."""
    spec = table.spec()
    schema = table.schema()
    clauses: list[BooleanExpression] = []
    for part in spec.fields:
        column = schema.find_column_name(part.source_id)
        value = values.get(part.name)
        if column is None:
            return None
        if isinstance(part.transform, IdentityTransform):
            clauses.append(
                IsNull(term=column) if value is None else EqualTo(term=column, value=value)
            )
        elif isinstance(part.transform, HourTransform) and isinstance(value, int):
            start = value * _HOUR_MICROS
            clauses.append(GreaterThanOrEqual(term=column, value=start))
            clauses.append(LessThan(term=column, value=start + _HOUR_MICROS))
        else:
            return None
    if not clauses:
        return AlwaysTrue()
    expression = clauses[0]
    for clause in clauses[1:]:
        expression = And(expression, clause)
    return expression


def remove_iceberg_orphans(
    table: Table, *, older_than: timedelta = timedelta(days=3), now: datetime | None = None
) -> list[str]:
    """Delete data files no live snapshot references and older than `older_than`; their URIs.

    Only pyarrow's FileIO can list a folder; with another FileIO nothing is deleted.
    """
    location = table.location().rstrip("/") + "/data"
    referenced = set(table.inspect.all_files().column("file_path").to_pylist())
    io: Any = table.io
    fs_by_scheme = getattr(io, "fs_by_scheme", None)
    if fs_by_scheme is None:
        log.warning("%s: this FileIO cannot list files; no orphans removed", location)
        return []
    scheme, netloc, path = io.parse_location(location, io.properties)
    fs: pafs.FileSystem = fs_by_scheme(scheme, netloc)
    cutoff = (now or datetime.now(UTC)) - older_than
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    if not location.endswith(path.rstrip("/")):
        log.warning("%s: cannot map listed files to table URIs; no orphans removed", location)
        return []
    # pyarrow lists `bucket/key` or `/dir/file`; manifests hold `scheme://` + that.
    scheme_part = location[: len(location) - len(path.rstrip("/"))]
    removed = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        uri = scheme_part + info.path
        if uri in referenced or (info.mtime is not None and info.mtime > cutoff):
            continue
        fs.delete_file(info.path)
        removed.append(uri)
    return removed
