"""Data-lake sinks and readers: partitioned Parquet with a manifest, and Delta Lake tables.

Importing this package costs nothing: pyarrow and deltalake load when a name is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.lake.compaction import compact_dataset
    from onceflow.lake.dataset import close_partitions, read_dataset
    from onceflow.lake.delta_sink import DeltaSink, read_delta
    from onceflow.lake.manifest import DataFile, ManifestConflict, ManifestLog, Snapshot
    from onceflow.lake.parquet_sink import ParquetSink
    from onceflow.lake.partitions import EVENT_TIME, Hourly
    from onceflow.lake.schema import arrow_schema

__all__ = [
    "EVENT_TIME",
    "DataFile",
    "DeltaSink",
    "Hourly",
    "ManifestConflict",
    "ManifestLog",
    "ParquetSink",
    "Snapshot",
    "arrow_schema",
    "close_partitions",
    "compact_dataset",
    "read_dataset",
    "read_delta",
]

_HOMES = {
    "DataFile": ".manifest",
    "ManifestConflict": ".manifest",
    "ManifestLog": ".manifest",
    "Snapshot": ".manifest",
    "ParquetSink": ".parquet_sink",
    "EVENT_TIME": ".partitions",
    "Hourly": ".partitions",
    "arrow_schema": ".schema",
    "read_dataset": ".dataset",
    "close_partitions": ".dataset",
    "compact_dataset": ".compaction",
    "DeltaSink": ".delta_sink",
    "read_delta": ".delta_sink",
}


__getattr__, __dir__ = lazy_exports(
    __name__,
    _HOMES,
    extra=lambda home: "delta" if home.endswith("delta_sink") else "parquet",
)
