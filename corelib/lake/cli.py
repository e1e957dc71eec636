"""`onceflow lake ...`: compact, vacuum, inspect and close Parquet, Delta and Iceberg tables."""

# Imports sit inside the handlers on purpose: `onceflow --help` must not load pyarrow,
# deltalake, rich or a cloud SDK, and `import onceflow.lake.cli` must stay free.

from __future__ import annotations

import argparse
import importlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from onceflow.cli import CliError, load_object

__all__ = ["open_store", "register"]

_STORES = {
    # scheme: (module, class) — looked up only when a user names that scheme.
    "s3": ("onceflow.adapters.aws", "S3ObjectStore"),
    "az": ("onceflow.adapters.azure", "BlobObjectStore"),
}

BATCH_ADVICE = """\
Large files come from large batches: the sink flushes once per batch, at its end.
  AWS Lambda (Kinesis/SQS): BatchSize 10000 and MaximumBatchingWindowInSeconds 300
  Azure Functions (Event Hubs): maxEventBatchSize 1000-10000 and maxWaitTime 00:05:00
Then run `onceflow lake compact PATH` hourly to merge what is still small."""


def register(subparsers: Any) -> None:
    """Add `onceflow lake` and its sub-commands."""
    lake = subparsers.add_parser(
        "lake",
        help="compact and inspect Parquet datasets and Delta tables",
        description=BATCH_ADVICE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = lake.add_subparsers(dest="lake_command", metavar="COMMAND")

    compact = commands.add_parser(
        "compact",
        help="merge small files of each partition and publish the symlink manifest",
    )
    _target(compact)
    compact.add_argument("--target-mib", type=float, default=256.0, help="file size to aim for")
    compact.add_argument(
        "--location",
        help="the dataset's absolute URI for _symlink_format_manifest (default: from PATH)",
    )
    compact.set_defaults(func=_compact)

    vacuum = commands.add_parser(
        "vacuum", help="delete files no version needs, and say what was kept and why"
    )
    _target(vacuum)
    vacuum.add_argument(
        "--retain-hours",
        type=float,
        default=None,
        help="keep superseded files this young (default 1 for Parquet, 168 for Delta/Iceberg)",
    )
    vacuum.set_defaults(func=_vacuum)

    info = commands.add_parser("info", help="partitions, files, rows and bytes of any format")
    _target(info)
    info.set_defaults(func=_info)

    sizing = commands.add_parser(
        "sizing", help="the file sizes a batch size and batch window give, before compaction"
    )
    sizing.add_argument("--events-per-second", type=float, required=True)
    sizing.add_argument(
        "--bytes-per-event",
        type=float,
        default=25.0,
        help="compressed Parquet bytes per row (23 for the benchmark's 10-column clicks)",
    )
    sizing.add_argument("--batch-size", type=int, default=10_000)
    sizing.add_argument("--window-seconds", type=float, default=300.0)
    sizing.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions one batch spreads over (1 for hourly by event time)",
    )
    sizing.set_defaults(func=_sizing)

    close = commands.add_parser("close", help="put _SUCCESS in hourly partitions that ended")
    _target(close)
    close.add_argument("--grace-minutes", type=float, default=60.0)
    close.set_defaults(func=_close)
    lake.set_defaults(func=lambda args: _help(lake))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        help="a directory, s3://bucket/prefix or az://container/prefix (a Delta table is "
        "recognised by its _delta_log/)",
    )
    parser.add_argument(
        "--store",
        metavar="MODULE:FACTORY",
        help="a callable returning the ObjectStore that holds PATH (PATH is then inside it)",
    )
    parser.add_argument("--delta", action="store_true", help="PATH is a Delta table URI")
    parser.add_argument("--iceberg", metavar="NAMESPACE.TABLE", help="an Iceberg table")
    parser.add_argument(
        "--catalog",
        metavar="URI|NAME",
        help="the Iceberg catalog: a SQL catalog URI (sqlite:///catalog.db) or a catalog "
        "name from .pyiceberg.yaml / PYICEBERG_CATALOG__* variables",
    )


def table_format(args: argparse.Namespace) -> str:
    """`parquet`, `delta` or `iceberg`: what PATH (or --iceberg) names."""
    if args.iceberg:
        return "iceberg"
    if not args.path:
        raise CliError("name PATH, or --iceberg NAMESPACE.TABLE with --catalog")
    if args.delta:
        return "delta"
    if "://" not in args.path and not args.store:
        return "delta" if os.path.isdir(os.path.join(args.path, "_delta_log")) else "parquet"
    if args.store:
        return "parquet"
    store, root = open_store(args.path)
    prefix = (root.strip("/") + "/" if root.strip("/") else "") + "_delta_log/"
    return "delta" if _run(lambda: store.list(prefix)) else "parquet"


def _iceberg_table(args: argparse.Namespace) -> Any:
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError as exc:
        raise CliError(
            f"pyiceberg is not available ({exc}): pip install 'onceflow[iceberg]'"
        ) from exc
    if not args.catalog:
        raise CliError("--iceberg needs --catalog: a SQL catalog URI or a configured name")
    catalog: Any
    if "://" in args.catalog:
        catalog = SqlCatalog("onceflow", uri=args.catalog)
    else:
        catalog = load_catalog(args.catalog)
    return catalog.load_table(args.iceberg)


def open_store(path: str, factory: str | None = None) -> tuple[Any, str]:
    """The object store holding `path` and the dataset's path inside it."""
    if factory:
        return load_object(factory)(), path
    scheme, sep, rest = path.partition("://")
    if not sep:
        if not os.path.isdir(path):
            raise CliError(f"{path} is not a directory")
        module, name = "onceflow.adapters.local", "LocalObjectStore"
        return _load(module, name, "local")(path), ""
    if scheme not in _STORES:
        raise CliError(f"{scheme}:// is not a known store; use a directory, s3:// or az://")
    container, _, inner = rest.partition("/")
    module, name = _STORES[scheme]
    if scheme == "az":
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not connection:
            raise CliError("set AZURE_STORAGE_CONNECTION_STRING to open az:// paths")
        return _load(module, name, "azure")(container, connection_string=connection), inner
    return _load(module, name, "aws")(container), inner


def _load(module: str, name: str, extra: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise CliError(
            f"{module} is not available ({exc}): pip install 'onceflow[{extra}]'"
        ) from exc


def _run(call: Any) -> Any:
    return anyio.run(call)


def _compact(args: argparse.Namespace) -> int:
    kind = table_format(args)
    target = int(args.target_mib * 1024 * 1024)
    if kind == "iceberg":
        from onceflow.lake.iceberg_maintenance import compact_iceberg

        table = _iceberg_table(args)
        partitions = table.inspect.partitions().to_pylist() if table.current_snapshot() else []
        total = sum(p["total_data_file_size_in_bytes"] for p in partitions)
        with _Progress(len(partitions), total) as bar:
            done = compact_iceberg(table, target_bytes=target, progress=bar.advance)
        print(
            f"compacted {done.partitions} partitions of {args.iceberg}: {done.files_before} "
            f"files ({_size(done.bytes_read)}) -> {done.files_after} files"
        )
        for label in done.skipped:
            print(f"left {label} alone: its partition transform is not hourly or identity")
        return 0
    if kind == "delta":
        from deltalake import DeltaTable

        from onceflow.lake.delta_sink import delta_partitions, optimize_delta

        partitions = delta_partitions(DeltaTable(args.path))
        total = sum(size for files in partitions.values() for _, _, size in files)
        with _Progress(len(partitions), total) as bar:
            metrics = optimize_delta(args.path, target_bytes=target, progress=bar.advance)
        print(
            f"optimized {args.path}: {metrics['partitionsOptimized']} partitions, "
            f"{metrics['numFilesRemoved']} files -> {metrics['numFilesAdded']}"
        )
        return 0
    from onceflow.lake.compaction import compact_dataset, plan
    from onceflow.lake.manifest import ManifestLog

    store, root = open_store(args.path, args.store)
    location = args.location or _location(args.path, args.store)

    async def main() -> Any:
        snapshot = await ManifestLog(store, root).snapshot()
        if not snapshot.version:
            raise CliError(f"{args.path} holds no committed dataset (no _manifest entries)")
        groups = plan(snapshot, target)
        partitions = len({g.partition for g in groups})
        with _Progress(partitions, sum(g.bytes for g in groups)) as bar:
            return await compact_dataset(
                store,
                root,
                target_bytes=target,
                progress=lambda g: bar.advance(g.partition, g.bytes),
                location=location,
            )

    report = _run(main)
    print(
        f"compacted {report.partitions} partitions: {report.files_before} files "
        f"({_size(report.bytes_read)}) -> {report.files_after} files "
        f"({_size(report.bytes_written)})"
    )
    published = report.published
    print(
        f"published _symlink_format_manifest/ and _live_files/ for {len(published.written)} "
        f"partitions ({len(published.unchanged)} unchanged, {len(published.removed)} removed)"
    )
    return 0


def _location(path: str, factory: str | None) -> str | None:
    """PATH as the absolute URI engines read (None: the store decides)."""
    if factory:
        return None
    if "://" not in path:
        return Path(path).resolve().as_uri()
    return path if path.startswith("s3://") else None


def _vacuum(args: argparse.Namespace) -> int:
    kind = table_format(args)
    if kind == "iceberg":
        from onceflow.lake.iceberg_sink import expire_iceberg

        hours = 168.0 if args.retain_hours is None else args.retain_hours
        table = _iceberg_table(args)
        before = len(table.snapshots())
        expired = expire_iceberg(table, retain=timedelta(hours=hours))
        print(f"expired {len(expired)} snapshots older than {hours:g} h")
        print(
            f"kept the current snapshot and {before - len(expired) - 1} younger ones "
            "(time travel and running readers use them)"
        )
        from onceflow.lake.iceberg_maintenance import remove_iceberg_orphans

        removed = remove_iceberg_orphans(table, older_than=timedelta(hours=hours))
        print(
            f"deleted {len(removed)} data files no live snapshot references, older than {hours:g} h"
        )
        return 0
    if kind == "delta":
        from onceflow.lake.delta_sink import explain_vacuum_delta

        hours = 168.0 if args.retain_hours is None else args.retain_hours
        result = explain_vacuum_delta(args.path, retain=timedelta(hours=hours))
        print(f"deleted {len(result['deleted'])} files no table version within {hours:g} h needs")
        print(f"kept {result['in_use']} files in use by the latest version")
        if result["retained"]:
            print(
                f"kept {len(result['retained'])} removed files younger than the retention of "
                f"{hours:g} h (readers of older versions may need them); --retain-hours 0 "
                "deletes them"
            )
        return 0
    from onceflow.lake.compaction import vacuum_dataset

    hours = 1.0 if args.retain_hours is None else args.retain_hours
    store, root = open_store(args.path, args.store)
    report = _run(lambda: vacuum_dataset(store, root, retain=timedelta(hours=hours)))
    for line in report.explain():
        print(line)
    return 0


def _info(args: argparse.Namespace) -> int:
    kind = table_format(args)
    if kind == "iceberg":
        from onceflow.lake.iceberg_sink import iceberg_summary

        summary = iceberg_summary(_iceberg_table(args))
        print(
            f"iceberg {args.iceberg}: snapshot {summary['snapshot_id']} "
            f"({summary['snapshots']} snapshots)"
        )
        for label, files, rows, size in summary["partitions"]:
            print(f"{label}\t{files} files\t{rows} rows\t{_size(size)}")
        for lane, sequence in sorted(summary["watermarks"].items()):
            print(f"watermark {lane} = {sequence}")
        return 0
    if kind == "delta":
        from deltalake import DeltaTable

        from onceflow.lake.delta_sink import delta_partitions

        table = DeltaTable(args.path)
        print(f"delta table version {table.version()}")
        for label, files in sorted(delta_partitions(table).items()):
            rows = sum(r for _, r, _ in files)
            size = sum(b for _, _, b in files)
            print(f"{label or '(root)'}\t{len(files)} files\t{rows} rows\t{_size(size)}")
        return 0
    from onceflow.lake.manifest import ManifestLog
    from onceflow.lake.symlinks import published_files

    store, root = open_store(args.path, args.store)
    snapshot = _run(lambda: ManifestLog(store, root).snapshot())
    if not snapshot.version:
        raise CliError(f"{args.path} holds no committed dataset (no _manifest entries)")
    published = _run(lambda: published_files(store, root))
    print(f"manifest version {snapshot.version}")
    stale = 0
    for partition, files in sorted(snapshot.partitions().items()):
        rows = sum(f.rows for f in files)
        size = sum(f.bytes for f in files)
        fresh = published.get(partition) == {f.path for f in files}
        stale += not fresh
        print(f"{partition or '(root)'}\t{len(files)} files\t{rows} rows\t{_size(size)}")
    print(
        f"symlink manifest: {len(snapshot.partitions()) - stale} partitions current, "
        f"{stale} behind the manifest (run `onceflow lake compact`)"
    )
    return 0


def _close(args: argparse.Namespace) -> int:
    from onceflow.lake.dataset import close_partitions

    store, root = open_store(args.path, args.store)
    grace = timedelta(minutes=args.grace_minutes)
    closed = _run(lambda: close_partitions(store, root, grace=grace))
    for partition in closed:
        print(f"closed {partition}")
    return 0


def sizing(
    events_per_second: float,
    bytes_per_event: float,
    batch_size: int,
    window_seconds: float,
    partitions: int = 1,
) -> dict[str, float]:
    """Rows and bytes per file, and files per partition-hour, for one source shard."""
    per_batch = min(batch_size, events_per_second * window_seconds)
    seconds = per_batch / events_per_second if events_per_second else window_seconds
    rows = per_batch / max(partitions, 1)
    return {
        "rows_per_file": rows,
        "bytes_per_file": rows * bytes_per_event,
        "files_per_partition_hour": 3600 / max(seconds, 1e-9),
    }


def _sizing(args: argparse.Namespace) -> int:
    numbers = sizing(
        args.events_per_second,
        args.bytes_per_event,
        args.batch_size,
        args.window_seconds,
        args.partitions,
    )
    print(
        f"each flush: {numbers['rows_per_file']:,.0f} rows, "
        f"~{_size(int(numbers['bytes_per_file']))} per file; "
        f"{numbers['files_per_partition_hour']:,.1f} files per partition-hour per shard"
    )
    print("the sink flushes once per batch: raise the batch size or the window for larger files")
    return 0


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{count} B"
        size /= 1024
    return f"{count} B"


class _Progress:
    """A rich progress bar over partitions and bytes, or nothing when rich is missing."""

    def __init__(self, partitions: int, total_bytes: int) -> None:
        self.partitions_total = partitions
        self.total_bytes = total_bytes
        self.bytes_done = 0
        self.bar: Any = None
        self.partitions_done: set[str] = set()

    def __enter__(self) -> _Progress:
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return self
        self.bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[shown]}"),
            TimeRemainingColumn(),
        )
        self.bar.start()
        total = self.partitions_total
        self.partitions_task = self.bar.add_task("partitions", total=total, shown=f"0/{total}")
        self.bytes_task = self.bar.add_task(
            "bytes", total=self.total_bytes, shown=f"0 B/{_size(self.total_bytes)}"
        )
        return self

    def advance(self, partition: str, size: int) -> None:
        """`size` bytes of `partition` done."""
        if self.bar is None:
            return
        self.bytes_done += size
        self.bar.update(
            self.bytes_task,
            advance=size,
            shown=f"{_size(self.bytes_done)}/{_size(self.total_bytes)}",
        )
        if partition not in self.partitions_done:
            self.partitions_done.add(partition)
            done = len(self.partitions_done)
            self.bar.update(
                self.partitions_task, advance=1, shown=f"{done}/{self.partitions_total}"
            )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
