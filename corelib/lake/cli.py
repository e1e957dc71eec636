"""`onceflow lake ...`: compact, vacuum, inspect and close Parquet datasets and Delta tables."""

# Imports sit inside the handlers on purpose: `onceflow --help` must not load pyarrow,
# deltalake, rich or a cloud SDK, and `import onceflow.lake.cli` must stay free.

from __future__ import annotations

import argparse
import importlib
import os
from datetime import timedelta
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

    compact = commands.add_parser("compact", help="merge small files of each partition")
    _target(compact)
    compact.add_argument("--target-mib", type=float, default=256.0, help="file size to aim for")
    compact.add_argument("--delta", action="store_true", help="PATH is a Delta table URI")
    compact.set_defaults(func=_compact)

    vacuum = commands.add_parser("vacuum", help="delete files no manifest version needs")
    _target(vacuum)
    vacuum.add_argument("--retain-hours", type=float, default=1.0)
    vacuum.add_argument("--delta", action="store_true", help="PATH is a Delta table URI")
    vacuum.set_defaults(func=_vacuum)

    info = commands.add_parser("info", help="partitions, files, rows and bytes of a dataset")
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
        "path", metavar="PATH", help="a directory, s3://bucket/prefix or az://container/prefix"
    )
    parser.add_argument(
        "--store",
        metavar="MODULE:FACTORY",
        help="a callable returning the ObjectStore that holds PATH (PATH is then inside it)",
    )


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
    if args.delta:
        from onceflow.lake.delta_sink import optimize_delta

        metrics = optimize_delta(args.path, target_bytes=int(args.target_mib * 1024 * 1024))
        print(f"optimized {args.path}: {metrics}")
        return 0
    from onceflow.lake.compaction import compact_dataset, plan
    from onceflow.lake.manifest import ManifestLog

    store, root = open_store(args.path, args.store)
    target = int(args.target_mib * 1024 * 1024)

    async def main() -> Any:
        snapshot = await ManifestLog(store, root).snapshot()
        if not snapshot.version:
            raise CliError(f"{args.path} holds no committed dataset (no _manifest entries)")
        groups = plan(snapshot, target)
        with _Progress(groups) as progress:
            return await compact_dataset(
                store, root, target_bytes=target, progress=progress.advance
            )

    report = _run(main)
    print(
        f"compacted {report.partitions} partitions: {report.files_before} files "
        f"({_size(report.bytes_read)}) -> {report.files_after} files "
        f"({_size(report.bytes_written)})"
    )
    return 0


def _vacuum(args: argparse.Namespace) -> int:
    retain = timedelta(hours=args.retain_hours)
    if args.delta:
        from onceflow.lake.delta_sink import vacuum_delta

        deleted = vacuum_delta(args.path, retain=retain)
    else:
        from onceflow.lake.compaction import vacuum_dataset

        store, root = open_store(args.path, args.store)
        deleted = _run(lambda: vacuum_dataset(store, root, retain=retain))
    print(f"deleted {len(deleted)} files no longer in the manifest")
    return 0


def _info(args: argparse.Namespace) -> int:
    from onceflow.lake.manifest import ManifestLog

    store, root = open_store(args.path, args.store)
    snapshot = _run(lambda: ManifestLog(store, root).snapshot())
    if not snapshot.version:
        raise CliError(f"{args.path} holds no committed dataset (no _manifest entries)")
    print(f"manifest version {snapshot.version}")
    for partition, files in sorted(snapshot.partitions().items()):
        rows = sum(f.rows for f in files)
        size = sum(f.bytes for f in files)
        print(f"{partition or '(root)'}\t{len(files)} files\t{rows} rows\t{_size(size)}")
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

    def __init__(self, groups: list[Any]) -> None:
        self.groups = groups
        self.bar: Any = None
        self.partitions_done: set[str] = set()

    def __enter__(self) -> _Progress:
        try:
            from rich.progress import BarColumn, Progress, TextColumn
        except ImportError:
            return self
        self.bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[shown]}"),
        )
        self.bar.start()
        partitions = len({g.partition for g in self.groups})
        total = sum(g.bytes for g in self.groups)
        self.total_bytes = total
        self.partitions_total = partitions
        self.partitions_task = self.bar.add_task(
            "partitions", total=partitions, shown=f"0/{partitions}"
        )
        self.bytes_task = self.bar.add_task("bytes", total=total, shown=f"0 B/{_size(total)}")
        self.bytes_done = 0
        return self

    def advance(self, group: Any) -> None:
        """One group merged."""
        if self.bar is None:
            return
        self.bytes_done += group.bytes
        self.bar.update(
            self.bytes_task,
            advance=group.bytes,
            shown=f"{_size(self.bytes_done)}/{_size(self.total_bytes)}",
        )
        if group.partition not in self.partitions_done:
            self.partitions_done.add(group.partition)
            done = len(self.partitions_done)
            self.bar.update(
                self.partitions_task, advance=1, shown=f"{done}/{self.partitions_total}"
            )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
