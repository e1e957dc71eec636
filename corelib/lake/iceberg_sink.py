"""An Apache Iceberg sink (pyiceberg) whose commits carry each lane's watermark, and helpers.

Exactly once, in one catalog commit per batch:
- `ordered=True`: the table property `onceflow.watermark.<app_id>/<lane>` holds the highest
  source sequence written for that lane. It is set in the same transaction as the append,
  so rows at or below it are recognised from the table's own metadata and skipped. The
  snapshot summary also records `onceflow.lanes` (the lanes and sequences of that commit).
  Table properties, unlike snapshot summaries, survive `expire_snapshots`.
- `ordered=False`, and outputs of events without a partition key: before appending, the
  table is scanned for the batch's `_output_id`s and only absent rows are appended.
Either way a concurrent commit makes the catalog refuse ours (`CommitFailedException`); the
sink reloads the table and decides again, so two workers never both add the same row.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import In
from pyiceberg.table import Table, Transaction
from pyiceberg.transforms import HourTransform, IdentityTransform

from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.lake.partitions import EVENT_TIME, Hourly, PartitionSpec, normalise, with_event_time
from onceflow.lake.schema import OUTPUT_ID, arrow_schema, outputs_to_table
from onceflow.lake.watermarks import SequenceOf, lanes_of, output_sequence, past_watermarks
from onceflow.records import Output

__all__ = ["IcebergSink", "expire_iceberg", "iceberg_catalog", "read_iceberg"]

log = logging.getLogger("onceflow.lake")

MiB = 1024 * 1024
WATERMARK = "onceflow.watermark."
COMMIT_ATTEMPTS = 8
AZURE_SCHEMES = ("abfs", "abfss", "wasb", "wasbs")


def iceberg_catalog(uri: str, warehouse: str, **properties: str) -> SqlCatalog:
    """pyiceberg's SQL catalog at `uri` (`sqlite:///catalog.db`) with tables under `warehouse`.

    `warehouse` is a directory (`file:///lake`), `s3://bucket/prefix` (FileIO properties
    `s3.endpoint`, `s3.region`, ...) or `abfs://container/prefix` (`adls.account-name`,
    `adls.account-key`, ...: pyiceberg's pyarrow FileIO takes the container from the URI
    and the account from the properties; `az://` and the `container@account` form are
    refused, as that FileIO cannot read them).
    """
    scheme, _, rest = warehouse.partition("://")
    if scheme == "az":
        raise ConfigurationError(
            "an Iceberg warehouse on Azure Blob is abfs://<container>/<prefix>, not az://"
        )
    if scheme in AZURE_SCHEMES:
        if "@" in rest.split("/", 1)[0]:
            # pyarrow's FileIO reads the authority as the container name, whole.
            raise ConfigurationError(
                f"name the warehouse {scheme}://<container>/<prefix> and the account in the "
                "adls.account-name property, not <container>@<account>.dfs.core.windows.net"
            )
        # pyiceberg would pick its fsspec FileIO (adlfs) first; pyarrow's needs no extra.
        properties.setdefault("py-io-impl", "pyiceberg.io.pyarrow.PyArrowFileIO")
    return SqlCatalog("onceflow", uri=uri, warehouse=warehouse, **properties)


class IcebergSink:
    """Appends each batch's outputs to an Iceberg table in one catalog commit, exactly once.

    `partition_by` takes the ParquetSink forms: `Hourly(EVENT_TIME)` adds an `_event_time`
    column partitioned by `hours(...)`, `Hourly("ts")` partitions a timestamp column by
    hour, a plain name by identity (hidden partitioning: engines prune on the column).
    `max_bytes` becomes the table's `write.target-file-size-bytes`; a batch over `max_rows`
    is written as a data file (or more, for `max_bytes`) per `max_rows` slice, still in one
    snapshot. `properties` are table properties set when the sink creates the table.
    """

    def __init__(
        self,
        catalog: Catalog,
        identifier: str,
        *,
        schema: pa.Schema | type[BaseModel],
        partition_by: PartitionSpec = None,
        max_rows: int = 5_000_000,
        max_bytes: int = 256 * MiB,
        ordered: bool = True,
        app_id: str = "onceflow",
        sequence_of: SequenceOf = output_sequence,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if "." not in identifier:
            raise ConfigurationError(f"name the table as namespace.table, not {identifier!r}")
        if max_rows < 1 or max_bytes < 1:
            raise ConfigurationError("max_rows and max_bytes must be positive")
        self.catalog = catalog
        self.identifier = identifier
        self.schema = arrow_schema(schema)
        self.parts = normalise(partition_by)
        self._by_event_time = any(
            isinstance(p, Hourly) and p.field == EVENT_TIME for p in self.parts
        )
        for part in self.parts:
            name = part.field if isinstance(part, Hourly) else part
            if name != EVENT_TIME and name not in self.schema.names:
                raise ConfigurationError(f"partition column {name!r} is not in the schema")
            if (
                isinstance(part, Hourly)
                and name != EVENT_TIME
                and not pa.types.is_timestamp(self.schema.field(name).type)
            ):
                raise ConfigurationError(f"Hourly({name!r}) needs a timestamp column")
        self.ordered = ordered
        self.app_id = app_id
        self.sequence_of = sequence_of
        self.max_rows = max_rows
        self.properties = {
            "write.target-file-size-bytes": str(max_bytes),
            # pyiceberg's default (2 MiB) builds dictionaries twice as long as pyarrow's
            # before giving up on high-cardinality columns (ids, urls): a fifth of the write.
            "write.parquet.dict-size-bytes": str(MiB),
            **(properties or {}),
        }
        self._table: Table | None = None

    async def write(self, outputs: Sequence[Output]) -> None:
        """Commit the outputs not yet in the table, in one Iceberg snapshot."""
        if not outputs:
            return
        table, rejected = outputs_to_table(outputs, self.schema)
        if self._by_event_time:
            table, late = with_event_time(table, outputs)
            for output_id in late:
                rejected[output_id] = f"column {EVENT_TIME}: missing, and it is a partition column"
        if rejected:
            raise OutputRejected(rejected)
        await anyio.to_thread.run_sync(self._commit, table, list(outputs))

    def watermark_key(self, partition: str | None) -> str:
        """The table property holding one lane's highest committed sequence."""
        return f"{WATERMARK}{self.app_id}/{partition or ''}"

    def table(self) -> Table:
        """The Iceberg table, created (with its partition spec) on first use."""
        if self._table is None:
            self._table = self._load_or_create()
        return self._table

    def _load_or_create(self) -> Table:
        namespace = self.identifier.rsplit(".", 1)[0]
        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            pass
        with contextlib.suppress(NamespaceAlreadyExistsError):
            self.catalog.create_namespace(namespace)
        full = self.schema.append(pa.field(OUTPUT_ID, pa.string(), nullable=False))
        full = full.append(pa.field("_event_key", pa.string(), nullable=False))
        if self._by_event_time:
            full = full.append(pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"), nullable=False))
        try:
            creating = self.catalog.create_table_transaction(
                self.identifier, schema=full, properties=self.properties
            )
            if self.parts:
                with creating.update_spec() as spec:
                    for part in self.parts:
                        if isinstance(part, Hourly):
                            spec.add_field(part.field, HourTransform(), f"{part.field}_hour")
                        else:
                            spec.add_field(part, IdentityTransform(), part)
            creating.commit_transaction()
        except TableAlreadyExistsError:
            pass  # another worker created it first
        return self.catalog.load_table(self.identifier)

    def _commit(self, table: pa.Table, outputs: list[Output]) -> None:
        for attempt in range(COMMIT_ATTEMPTS):
            current = self.table() if attempt == 0 else self._reload()
            try:
                self._commit_once(current, table, outputs)
                return
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                log.info("%s moved on under us; deciding again", self.identifier)

    def _reload(self) -> Table:
        self._table = self.catalog.load_table(self.identifier)
        return self._table

    def _commit_once(self, current: Table, table: pa.Table, outputs: list[Output]) -> None:
        lanes = lanes_of(outputs)
        laneless = None in lanes  # a C-speed scan; the per-row mask is built only if mixed
        every = self.ordered and not laneless
        some = self.ordered and (every or any(lane is not None for lane in lanes))
        # Filtering copies every column: skip it when the whole batch takes one path.
        mask = None
        if some and not every:
            mask = pc.invert(pc.is_null(pa.array(lanes, pa.string())))
            keyed = mask.to_pylist()
        parts: list[pa.Table] = []
        if not every:
            # No lane vouches for these rows: keep the ones whose output id is absent.
            unordered = table if mask is None else table.filter(pc.invert(mask))
            parts.append(self._absent(current, unordered))
        watermarks: dict[str, str] = {}
        if some:
            fresh, watermarks = self._past_watermark(
                current,
                table if mask is None else table.filter(mask),
                outputs if every else [o for o, k in zip(outputs, keyed, strict=True) if k],
                lanes if every else None,
            )
            parts.append(fresh)
        rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if not rows.num_rows:
            log.info("every row of this batch is already in %s; skipped", self.identifier)
            return
        summary = {"onceflow.rows": str(rows.num_rows)}
        if watermarks:
            summary["onceflow.lanes"] = json.dumps(
                {k[len(WATERMARK) :]: int(v) for k, v in watermarks.items()}, sort_keys=True
            )
        with current.transaction() as transaction:
            if rows.num_rows <= self.max_rows:
                transaction.append(rows, snapshot_properties=summary)
            else:
                self._append_sliced(transaction, current, rows, summary)
            if watermarks:
                transaction.set_properties(watermarks)

    def _append_sliced(
        self, transaction: Transaction, current: Table, rows: pa.Table, summary: dict[str, str]
    ) -> None:
        """One snapshot adding a data file (or more, for `max_bytes`) per `max_rows` slice."""
        # What `Transaction.append` does, a slice at a time: pyiceberg bins by size only.
        from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files

        metadata = transaction.table_metadata
        _check_pyarrow_schema_compatible(
            metadata.schema(), provided_schema=rows.schema, format_version=metadata.format_version
        )
        counter = itertools.count(0)  # shared, so slices' file names never collide
        update = transaction.update_snapshot(snapshot_properties=summary)
        with update.fast_append() as append:
            for start in range(0, rows.num_rows, self.max_rows):
                for data_file in _dataframe_to_data_files(
                    table_metadata=metadata,
                    df=rows.slice(start, self.max_rows),
                    io=current.io,
                    write_uuid=append.commit_uuid,
                    counter=counter,
                ):
                    append.append_data_file(data_file)

    def _absent(self, current: Table, table: pa.Table) -> pa.Table:
        if not table.num_rows or current.current_snapshot() is None:
            return table
        ids = table.column(OUTPUT_ID).to_pylist()
        found = (
            current.scan(row_filter=In(term=OUTPUT_ID, literals=ids), selected_fields=(OUTPUT_ID,))
            .to_arrow()
            .column(OUTPUT_ID)
        )
        if not len(found):
            return table
        return table.filter(pc.invert(pc.is_in(table.column(OUTPUT_ID), value_set=found)))

    def _past_watermark(
        self,
        current: Table,
        table: pa.Table,
        outputs: list[Output],
        lanes: list[str | None] | None = None,
    ) -> tuple[pa.Table, dict[str, str]]:
        properties = current.properties

        def committed(lane: str) -> int | None:
            value = properties.get(self.watermark_key(lane))
            return None if value is None else int(value)

        keep, highest = past_watermarks(
            outputs, self.sequence_of, committed, sink="IcebergSink", lanes=lanes
        )
        fresh_rows = table.filter(keep) if keep.false_count else table
        return fresh_rows, {self.watermark_key(k): str(v) for k, v in highest.items()}


def read_iceberg(catalog: Catalog, identifier: str, *, snapshot_id: int | None = None) -> pa.Table:
    """An Iceberg table (at `snapshot_id`, default the current one) as one Arrow table."""
    return catalog.load_table(identifier).scan(snapshot_id=snapshot_id).to_arrow()


def expire_iceberg(
    table: Table, *, retain: timedelta = timedelta(days=7), now: datetime | None = None
) -> list[int]:
    """Expire snapshots older than `retain` (never the current one); the ids expired."""
    cutoff = (now or datetime.now(UTC)) - retain
    current = table.current_snapshot()
    doomed = [
        s.snapshot_id
        for s in table.snapshots()
        if s.timestamp_ms < cutoff.timestamp() * 1000
        and (current is None or s.snapshot_id != current.snapshot_id)
    ]
    if doomed:
        table.maintenance.expire_snapshots().by_ids(doomed).commit()
    return doomed


def iceberg_summary(table: Table) -> dict[str, Any]:
    """The table's snapshot, partitions (files, rows, bytes) and lane watermarks."""
    snapshot = table.current_snapshot()
    partitions = []
    if snapshot is not None:
        for row in table.inspect.partitions().to_pylist():
            partition = row.get("partition") or {}
            label = "/".join(f"{k}={_shown(k, v)}" for k, v in partition.items()) or "(root)"
            partitions.append(
                (
                    label,
                    row["file_count"],
                    row["record_count"],
                    row["total_data_file_size_in_bytes"],
                )
            )
    return {
        "snapshot_id": snapshot.snapshot_id if snapshot else None,
        "snapshots": len(table.snapshots()),
        "partitions": sorted(partitions),
        "watermarks": {
            k[len(WATERMARK) :]: int(v)
            for k, v in table.properties.items()
            if k.startswith(WATERMARK)
        },
    }


def _shown(name: str, value: Any) -> str:
    """A partition value as a person reads it: hours as `2024-05-01-10`, not hours since 1970."""
    if name.endswith("_hour") and isinstance(value, int):
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=value)).strftime("%Y-%m-%d-%H")
    return str(value)
