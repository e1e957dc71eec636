"""Data-lake sinks and readers: partitioned Parquet with a manifest, Delta Lake and Iceberg.

Importing this package costs nothing: pyarrow, deltalake and pyiceberg load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.lake.compaction import compact_dataset, vacuum_dataset
    from onceflow.lake.dataset import close_partitions, read_dataset
    from onceflow.lake.delta_sink import DeltaSink, read_delta
    from onceflow.lake.iceberg_sink import IcebergSink, iceberg_catalog, read_iceberg
    from onceflow.lake.manifest import DataFile, ManifestConflict, ManifestLog, Snapshot
    from onceflow.lake.parquet_sink import ParquetSink
    from onceflow.lake.partitions import EVENT_TIME, Hourly
    from onceflow.lake.schema import arrow_schema
    from onceflow.lake.symlinks import publish_symlink_manifest

__all__ = [
    "EVENT_TIME",
    "DataFile",
    "DeltaSink",
    "Hourly",
    "IcebergSink",
    "ManifestConflict",
    "ManifestLog",
    "ParquetSink",
    "Snapshot",
    "arrow_schema",
    "close_partitions",
    "compact_dataset",
    "iceberg_catalog",
    "publish_symlink_manifest",
    "read_dataset",
    "read_delta",
    "read_iceberg",
    "vacuum_dataset",
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
    "vacuum_dataset": ".compaction",
    "publish_symlink_manifest": ".symlinks",
    "IcebergSink": ".iceberg_sink",
    "iceberg_catalog": ".iceberg_sink",
    "read_iceberg": ".iceberg_sink",
    "DeltaSink": ".delta_sink",
    "read_delta": ".delta_sink",
}


__getattr__, __dir__ = lazy_exports(
    __name__,
    _HOMES,
    extra=lambda home: (
        "delta" if home.endswith("delta_sink") else "iceberg" if "iceberg" in home else "parquet"
    ),
)
