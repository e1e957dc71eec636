"""A Delta Lake sink whose commits carry per-partition transaction ids, and Delta helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import TableNotFoundError
from pydantic import BaseModel

from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.lake.partitions import (
    EVENT_TIME,
    HOUR_COLUMNS,
    Hourly,
    PartitionSpec,
    normalise,
    with_event_time,
    with_hour_columns,
)
from onceflow.lake.schema import META_COLUMNS, OUTPUT_ID, arrow_schema, outputs_to_table
from onceflow.lake.watermarks import SequenceOf, lanes_of, output_sequence, past_watermarks
from onceflow.records import Output

__all__ = ["DeltaSink", "optimize_delta", "read_delta", "vacuum_delta"]

log = logging.getLogger("onceflow.lake")

MiB = 1024 * 1024
CODECS = ("zstd", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "none")


class DeltaSink:
    """Appends each batch's outputs to a Delta table in one transaction, exactly once.

    `ordered=True` (for ordered pipelines only): each commit records, per source partition,
    an application transaction `<app_id>/<partition>` whose version is the highest sequence
    number written, so rows at or below it are recognised from the table's own log and
    skipped, atomically with the commit. `ordered=False`, and outputs of events without a
    partition key: rows are merged on `_output_id`, so a rewrite replaces, never duplicates.

    `partition_by` takes the ParquetSink forms: `Hourly(EVENT_TIME)` (the event's own time,
    kept as `_event_time`) or `Hourly("ts")` add string partition columns `dt` and `hr`, as
    Spark and Athena users lay out Hive tables; plain names partition by the column.
    `max_bytes` is Delta's target file size; `compression` the Parquet codec (zstd, as
    ParquetSink writes; delta-rs would pick snappy, files half again as large).
    """

    def __init__(
        self,
        table_uri: str,
        *,
        schema: pa.Schema | type[BaseModel],
        partition_by: PartitionSpec = None,
        max_bytes: int = 256 * MiB,
        compression: str = "zstd",
        storage_options: dict[str, str] | None = None,
        ordered: bool = True,
        app_id: str = "onceflow",
        sequence_of: SequenceOf = output_sequence,
    ) -> None:
        self.table_uri = table_uri
        self.schema = arrow_schema(schema)
        self.parts = normalise(partition_by)
        self._hourly = next((p.field for p in self.parts if isinstance(p, Hourly)), None)
        names: list[str] = []
        for part in self.parts:
            if isinstance(part, Hourly):
                if part.field != self._hourly:
                    raise ConfigurationError("DeltaSink takes one Hourly(...) partition")
                clash = [c for c in HOUR_COLUMNS if c in self.schema.names]
                if clash:
                    raise ConfigurationError(
                        f"column {clash[0]!r} is the hourly partition's; rename it"
                    )
                if part.field != EVENT_TIME and (
                    part.field not in self.schema.names
                    or not pa.types.is_timestamp(self.schema.field(part.field).type)
                ):
                    raise ConfigurationError(f"Hourly({part.field!r}) needs a timestamp column")
                names.extend(HOUR_COLUMNS)
            elif part not in self.schema.names:
                raise ConfigurationError(f"partition column {part!r} is not in the schema")
            else:
                names.append(part)
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be positive")
        if compression not in CODECS:
            raise ConfigurationError(f"compression must be one of {', '.join(CODECS)}")
        self.partition_by = names
        self.compression = compression
        self.writer_properties = WriterProperties(
            compression="UNCOMPRESSED" if compression == "none" else compression.upper(),  # type: ignore[arg-type]
            # Ids are unique per row: a dictionary for them would be built only to be dropped.
            column_properties={
                name: ColumnProperties(dictionary_enabled=False) for name in META_COLUMNS
            },
        )
        self.max_bytes = max_bytes
        self.storage_options = storage_options
        self.ordered = ordered
        self.app_id = app_id
        self.sequence_of = sequence_of

    async def write(self, outputs: Sequence[Output]) -> None:
        """Commit the outputs not yet in the table, in one Delta transaction."""
        if not outputs:
            return
        table, rejected = outputs_to_table(outputs, self.schema)
        if self._hourly == EVENT_TIME:
            table, late = with_event_time(table, outputs)
            for output_id in late:
                rejected[output_id] = f"column {EVENT_TIME}: missing, and it is a partition column"
        if rejected:
            raise OutputRejected(rejected)
        if self._hourly is not None:
            table = with_hour_columns(table, self._hourly)
            if table.column("dt").null_count:
                nulls = pc.is_null(table.column("dt"))
                for output_id in table.filter(nulls).column(OUTPUT_ID).to_pylist():
                    rejected[output_id] = (
                        f"column {self._hourly}: missing, and it is a partition column"
                    )
                raise OutputRejected(rejected)
        # Nothing was refused (refusals raise above): every output is in the table.
        await anyio.to_thread.run_sync(self._commit, table, list(outputs))

    def transaction_id(self, partition: str | None) -> str:
        """The application transaction id for one source partition."""
        return f"{self.app_id}/{partition or ''}"

    def _table(self) -> DeltaTable | None:
        try:
            return DeltaTable(self.table_uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def _commit(self, table: pa.Table, outputs: list[Output]) -> None:
        existing = self._table()
        if not self.ordered:
            self._merge(existing, table)
            return
        lanes = lanes_of(outputs)
        if None in lanes:
            # Events without a partition key promise no order, so no version can vouch
            # for them: they are merged on their output ids instead.
            mask = pc.invert(pc.is_null(pa.array(lanes, pa.string())))
            self._merge(existing, table.filter(pc.invert(mask)))
            table = table.filter(mask)
            keyed = mask.to_pylist()
            outputs = [o for o, k in zip(outputs, keyed, strict=True) if k]
            lanes = lanes_of(outputs)
            existing = self._table()
        if outputs:
            self._append_new(existing, table, outputs, lanes)

    def _merge(self, existing: DeltaTable | None, table: pa.Table) -> None:
        if existing is None:
            self._append(table, None)
        else:
            (
                existing.merge(
                    table,
                    predicate=f"t.{OUTPUT_ID} = s.{OUTPUT_ID}",
                    source_alias="s",
                    target_alias="t",
                    merge_schema=True,
                    writer_properties=self.writer_properties,
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )

    def _append_new(
        self,
        existing: DeltaTable | None,
        table: pa.Table,
        outputs: list[Output],
        lanes: list[str | None] | None = None,
    ) -> None:
        def committed(lane: str) -> int | None:
            if existing is None:
                return None
            version = existing.transaction_version(self.transaction_id(lane))
            return None if version is None else int(version)

        keep, highest = past_watermarks(
            outputs, self.sequence_of, committed, sink="DeltaSink", lanes=lanes
        )
        if not highest:
            log.info("every row of this batch is already in %s; skipped", self.table_uri)
            return
        if keep.false_count:
            table = table.filter(keep)
        transactions = [Transaction(self.transaction_id(lane), v) for lane, v in highest.items()]
        self._append(table, transactions)

    def _append(self, table: pa.Table, transactions: list[Transaction] | None) -> None:
        write_deltalake(
            self.table_uri,
            table,
            mode="append",
            partition_by=self.partition_by or None,
            storage_options=self.storage_options,
            schema_mode="merge",
            target_file_size=self.max_bytes,
            writer_properties=self.writer_properties,
            commit_properties=CommitProperties(app_transactions=transactions),
        )


def read_delta(
    table_uri: str,
    *,
    storage_options: dict[str, str] | None = None,
    version: int | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """A Delta table (at `version`, default the latest) as one Arrow table."""
    table = DeltaTable(table_uri, version=version, storage_options=storage_options)
    dataset = table.to_pyarrow_dataset()
    return dataset.to_table(columns=list(columns) if columns else None)


def delta_partitions(table: DeltaTable) -> dict[str, list[tuple[str, int, int]]]:
    """The table's live files per partition label (`dt=.../hr=...`): (path, rows, bytes)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    columns = [f"partition.{name}" for name in table.metadata().partition_columns]
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    rows = (
        actions.column("num_records").to_pylist()
        if "num_records" in actions.column_names
        else [0] * len(paths)
    )
    values = [actions.column(c).to_pylist() for c in columns]
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for index, path in enumerate(paths):
        label = "/".join(
            f"{c.removeprefix('partition.')}={v[index]}"
            for c, v in zip(columns, values, strict=True)
        )
        groups.setdefault(label, []).append((path, int(rows[index] or 0), int(sizes[index])))
    return groups


def optimize_delta(
    table_uri: str,
    *,
    storage_options: dict[str, str] | None = None,
    target_bytes: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Compact small files with Delta's own optimize, one partition (one commit) at a time.

    `progress(partition, bytes)` is called after each partition; the summed metrics return.
    """
    table = DeltaTable(table_uri, storage_options=storage_options)
    partitions = delta_partitions(table)
    totals: dict[str, Any] = {"numFilesAdded": 0, "numFilesRemoved": 0, "partitionsOptimized": 0}
    for label, files in sorted(partitions.items()):
        if len(files) > 1:
            filters = [
                (name, "=", value)
                for name, _, value in (piece.partition("=") for piece in label.split("/") if piece)
            ]
            metrics = table.optimize.compact(
                partition_filters=filters or None, target_size=target_bytes
            )
            totals["numFilesAdded"] += metrics.get("numFilesAdded", 0)
            totals["numFilesRemoved"] += metrics.get("numFilesRemoved", 0)
            totals["partitionsOptimized"] += 1
        if progress is not None:
            progress(label, sum(size for _, _, size in files))
    return totals


def vacuum_delta(
    table_uri: str,
    *,
    storage_options: dict[str, str] | None = None,
    retain: timedelta = timedelta(days=7),
) -> list[str]:
    """Delete files no table version within `retain` needs; the files deleted."""
    result = explain_vacuum_delta(table_uri, storage_options=storage_options, retain=retain)
    return list(result["deleted"])


def explain_vacuum_delta(
    table_uri: str,
    *,
    storage_options: dict[str, str] | None = None,
    retain: timedelta = timedelta(days=7),
    dry_run: bool = False,
) -> dict[str, Any]:
    """Vacuum, and say what was kept and why: files in use, and files within retention."""
    table = DeltaTable(table_uri, storage_options=storage_options)
    hours = int(retain.total_seconds() // 3600)
    in_use = sum(len(files) for files in delta_partitions(table).values())
    unreferenced = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)
    deleted = table.vacuum(retention_hours=hours, dry_run=dry_run, enforce_retention_duration=False)
    return {
        "deleted": list(deleted),
        "in_use": in_use,
        "retained": sorted(set(unreferenced) - set(deleted)),
        "retain_hours": hours,
    }
