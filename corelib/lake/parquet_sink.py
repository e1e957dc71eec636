"""A sink that writes outputs as Hive-partitioned Parquet files committed through a manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.interfaces import ObjectStore
from onceflow.lake.manifest import DataFile, ManifestLog, join
from onceflow.lake.partitions import (
    EVENT_TIME,
    Hourly,
    PartitionSpec,
    normalise,
    partition_labels,
    source_columns,
)
from onceflow.lake.schema import (
    EVENT_KEY,
    META_COLUMNS,
    OUTPUT_ID,
    arrow_schema,
    outputs_to_table,
)
from onceflow.lake.transfers import put_all
from onceflow.records import Output

__all__ = ["EncodedFile", "ParquetSink", "encode_file", "ids_digest"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class EncodedFile:
    """A Parquet file ready to put, and its manifest record."""

    data_file: DataFile
    body: bytes


class ParquetSink:
    """Writes each batch's outputs as Parquet files under `path`, exactly once per output.

    Every `write` is one flush: rows are converted to `schema` (outputs that do not fit
    are refused with `OutputRejected` before anything is written), split by partition
    and by the `max_rows`/`max_bytes` thresholds, each file is put in one request under a
    name derived from the output ids it holds (a retried batch rewrites the same object),
    then one manifest entry commits them all. Nothing is held between calls, so a Lambda
    or Functions invocation never leaves rows behind; size files with the batch settings.
    """

    def __init__(
        self,
        store: ObjectStore,
        path: str,
        *,
        schema: pa.Schema | type[BaseModel],
        partition_by: PartitionSpec = None,
        max_rows: int = 5_000_000,
        max_bytes: int = 256 * MiB,
        compression: str = "zstd",
        extra: str = "ignore",
        checkpoint_every: int = 50,
    ) -> None:
        if extra not in ("ignore", "reject"):
            raise ConfigurationError("extra must be 'ignore' or 'reject'")
        if max_rows < 1 or max_bytes < 1:
            raise ConfigurationError("max_rows and max_bytes must be positive")
        self.store = store
        self.root = path.strip("/")
        self.schema = arrow_schema(schema)
        clash = [name for name in META_COLUMNS if name in self.schema.names]
        if clash:
            raise ConfigurationError(f"column {clash[0]!r} is reserved for the sink's own use")
        self.parts = normalise(partition_by)
        missing = [
            c for c in source_columns(self.parts) if c not in self.schema.names and c != EVENT_TIME
        ]
        if missing:
            raise ConfigurationError(f"partition column {missing[0]!r} is not in the schema")
        for part in self.parts:
            if (
                isinstance(part, Hourly)
                and part.field != EVENT_TIME
                and not pa.types.is_timestamp(self.schema.field(part.field).type)
            ):
                raise ConfigurationError(
                    f"Hourly({part.field!r}) needs a timestamp column; "
                    f"{part.field} is {self.schema.field(part.field).type}"
                )
        self._by_event_time = EVENT_TIME in source_columns(self.parts)
        self._dropped = [p for p in self.parts if isinstance(p, str)]
        if self._by_event_time:
            self._dropped.append(EVENT_TIME)  # in the path already, like any partition column
        if compression != "none" and not pa.Codec.is_available(compression):
            raise ConfigurationError(f"compression {compression!r} is not available in pyarrow")
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.compression = compression
        self.extra = extra
        self.manifest = ManifestLog(store, self.root, checkpoint_every=checkpoint_every)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Write the outputs as Parquet files and commit them in one manifest entry."""
        if not outputs:
            return
        encoded = await anyio.to_thread.run_sync(self._encode, list(outputs))
        await put_all(self.store, [(join(self.root, e.data_file.path), e.body) for e in encoded])
        await self.manifest.commit([item.data_file for item in encoded])

    # -- encoding, off the event loop ---------------------------------------------------------

    def _encode(self, outputs: list[Output]) -> list[EncodedFile]:
        table, rejected = outputs_to_table(outputs, self.schema, extra=self.extra)
        if self._by_event_time:
            times = {o.output_id: o.time for o in outputs}
            ids = table.column(OUTPUT_ID).to_pylist()
            when = pa.array([times.get(i) for i in ids], pa.timestamp("us", tz="UTC"))
            table = table.append_column(EVENT_TIME, when)
        labels = partition_labels(table, self.parts) if self.parts else None
        if labels is not None and labels.null_count:
            columns = source_columns(self.parts)
            nulls = pc.is_null(labels).to_pylist()
            ids = table.column(OUTPUT_ID).to_pylist()
            for index, is_null in enumerate(nulls):
                if is_null:
                    empty = next(c for c in columns if table.column(c)[index].as_py() is None)
                    rejected[ids[index]] = f"column {empty}: missing, and it is a partition column"
        if rejected:
            raise OutputRejected(rejected)
        if labels is None:
            return self._files(table, "")
        dictionary = labels.dictionary_encode()
        names = dictionary.dictionary.to_pylist()
        if len(names) == 1:
            return self._files(self._without_partition_columns(table), names[0])
        # One stable sort by partition, then a slice per partition: O(n log n), not O(n x p).
        codes = dictionary.indices
        order = pc.sort_indices(codes)
        table = table.take(order)
        counts = pc.value_counts(codes).to_pylist()
        encoded: list[EncodedFile] = []
        start = 0
        for entry in sorted(counts, key=lambda e: e["values"]):
            part = table.slice(start, entry["counts"])
            start += entry["counts"]
            encoded.extend(
                self._files(self._without_partition_columns(part), names[entry["values"]])
            )
        return encoded

    def _without_partition_columns(self, table: pa.Table) -> pa.Table:
        # Hive layout: a partition column's value is in the path, not in the file.
        return table.drop_columns(self._dropped) if self._dropped else table

    def _files(self, table: pa.Table, partition: str) -> list[EncodedFile]:
        pieces = max(-(-table.num_rows // self.max_rows), -(-table.nbytes // self.max_bytes), 1)
        if pieces > 1:
            # Split on output-id order so a retried batch splits the same way.
            table = table.take(pc.sort_indices(table.column(OUTPUT_ID)))
        size = -(-table.num_rows // pieces)
        files = []
        for start in range(0, table.num_rows, size):
            files.append(self._file(table.slice(start, size), partition))
        return files

    def _file(self, table: pa.Table, partition: str) -> EncodedFile:
        return encode_file(table, partition, self.compression)


def encode_file(table: pa.Table, partition: str, compression: str) -> EncodedFile:
    """The table as Parquet bytes, named by the output ids it holds, with its manifest record."""
    digest = ids_digest(table.column(OUTPUT_ID).combine_chunks())
    sink = pa.BufferOutputStream()
    # Ids are unique per row: a dictionary for them would be built only to be thrown away.
    plain = [name for name in table.column_names if name not in META_COLUMNS]
    pq.write_table(table, sink, compression=compression, use_dictionary=plain)
    body = sink.getvalue().to_pybytes()
    bounds = pc.min_max(table.column(EVENT_KEY))
    data_file = DataFile(
        path=join(partition, f"part-{digest}.parquet"),
        partition=partition,
        rows=table.num_rows,
        bytes=len(body),
        checksum="sha256:" + hashlib.sha256(body).hexdigest(),
        min_key=bounds["min"].as_py(),
        max_key=bounds["max"].as_py(),
    )
    return EncodedFile(data_file, body)


def ids_digest(ids: pa.Array) -> str:
    """A name for a set of output ids, whatever order they arrive in."""
    ordered = ids.take(pc.sort_indices(ids))
    length = len(ordered)
    digest = hashlib.blake2b(digest_size=16)
    _, offsets_buffer, data_buffer = ordered.buffers()
    offsets = memoryview(offsets_buffer).cast("B").cast("i")
    if ordered.offset or offsets[0]:
        digest.update("\n".join(ordered.to_pylist()).encode())
    else:
        # The sorted ids' offsets and bytes, straight from Arrow's buffers: no copy per id.
        digest.update(memoryview(offsets_buffer)[: (length + 1) * 4])
        digest.update(memoryview(data_buffer)[: offsets[length]])
    return digest.hexdigest()
