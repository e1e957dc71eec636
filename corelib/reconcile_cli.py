"""`onceflow reconcile`: the per-window counts kept with the state against the source and sink.

Targets name where the counts are: `local` (a state folder), `dynamodb` (the state table),
`table` (the Azure state Table), `cosmos` (the Cosmos state container). The source count is
a supplied `--expected N`, the lines of `--source-lines` files (JSONL: one event a
non-blank line), or the objects under `--source-objects` (a folder, or `s3://bucket/prefix`).
The sink's rows: the local state's outputs (`--sink state`), a SQLite file's table
(`--sink sqlite:PATH[#TABLE]`), a Parquet dataset (`--sink parquet:FOLDER`), a Delta table
(`--sink delta:URI`), a DynamoDB table (`--sink dynamodb:TABLE`, a Select=COUNT scan of
items with a `value`), an Azure Table (`--sink table:NAME`, TableSink's output rows) or a
Cosmos container (`--sink cosmos:CONTAINER`, CosmosSink's items: those with an `output_id`).

Exit status: 0 when every gap is explained (duplicates, filtered, dead letters), 1 when one
is not, 2 on bad input (one line naming the cause; nothing is written).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onceflow.cli import CliError
from onceflow.reconcile import COUNTS, Counts, Reconciliation, reconcile, window_label

__all__ = ["register"]

FORMATS = ("table", "json")


def register(subparsers: Any) -> None:
    """Add `onceflow reconcile` and its targets."""
    command = subparsers.add_parser(
        "reconcile", help="compare per-window counts with the source and the sink; gaps exit 1"
    )
    targets = command.add_subparsers(dest="target", metavar="TARGET")
    local = targets.add_parser("local", help="counts in a local state folder")
    local.add_argument("--state", required=True, help="the runner's state folder (its --state)")
    _common(local)
    local.set_defaults(func=_run, read=_local_counts)
    dynamodb = targets.add_parser("dynamodb", help="counts in the DynamoDB state table")
    dynamodb.add_argument("--table", required=True, help="the idempotency state table")
    dynamodb.add_argument("--key-attribute", default="pk", help="its key attribute (default pk)")
    _common(dynamodb)
    dynamodb.set_defaults(func=_run, read=_dynamodb_counts)
    table = targets.add_parser("table", help="counts in the Azure Table state")
    table.add_argument("--table", required=True, help="the idempotency state Table")
    table.add_argument(
        "--connection-string", required=True, help="the storage account's connection string"
    )
    _common(table)
    table.set_defaults(func=_run, read=_table_counts)
    cosmos = targets.add_parser("cosmos", help="counts in the Cosmos DB state container")
    cosmos.add_argument("--endpoint", required=True, help="the account's endpoint URL")
    cosmos.add_argument(
        "--key-env",
        default="COSMOS_KEY",
        help="the environment variable holding the account key (default COSMOS_KEY)",
    )
    cosmos.add_argument("--database", required=True)
    cosmos.add_argument("--container", required=True, help="the idempotency state container")
    _common(cosmos)
    cosmos.set_defaults(func=_run, read=_cosmos_counts)
    command.set_defaults(func=_missing_target)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, help="one pipeline's counts (default all)")
    parser.add_argument("--window", default=None, help="one window, e.g. 2026-12-02T20:00Z")
    parser.add_argument("--expected", default=None, help="how many events the source held")
    parser.add_argument("--source-lines", action="append", default=[], help="JSONL input file")
    parser.add_argument("--source-objects", default=None, help="a folder or s3://bucket/prefix")
    parser.add_argument("--sink", default=None, help="where the outputs are (see the docs)")
    parser.add_argument("--rows-per-event", default="1", help="sink rows per kept event")
    parser.add_argument("--format", default="table", help="table (default) or json")
    parser.add_argument("--emf", action="store_true", help="also print the gap as an EMF line")
    parser.add_argument("--endpoint-url", default=None, help="an AWS endpoint (an emulator)")
    parser.add_argument("--region", default=None)


def _missing_target(args: argparse.Namespace) -> int:
    raise CliError("name a target: onceflow reconcile local|dynamodb|table|cosmos ...")


def _integer(value: str | None, flag: str, least: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise CliError(f"{flag} {value!r} is not a whole number") from None
    if number < least:
        raise CliError(f"{flag} {value!r}: at least {least}")
    return number


def _window(value: str) -> int:
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    except ValueError:
        raise CliError(f"--window {value!r} is not a time like 2026-12-02T20:00Z") from None
    return int(moment.timestamp())


def _run(args: argparse.Namespace) -> int:
    # Every flag is checked before anything is read, so bad input costs no request.
    if args.format not in FORMATS:
        raise CliError(f"--format {args.format!r}: one of {', '.join(FORMATS)}")
    expected = _integer(args.expected, "--expected", 0)
    per_event = _integer(args.rows_per_event, "--rows-per-event", 1) or 1
    window = None if args.window is None else _window(args.window)
    sources = [args.expected is not None, bool(args.source_lines), bool(args.source_objects)]
    if sum(sources) > 1:
        raise CliError("give one of --expected, --source-lines, --source-objects")
    sink = None if args.sink is None else _sink_reader(args)
    read: Callable[[argparse.Namespace], Counts] = args.read
    windows = read(args)
    if args.pipeline is not None:
        windows = {k: v for k, v in windows.items() if k[0] == args.pipeline}
    if not windows:
        where = f" for pipeline {args.pipeline!r}" if args.pipeline else ""
        raise CliError(
            f"the state holds no window counts{where} (a run from before counts were kept, "
            "counts past their retention, or a pipeline not wired with count_windows); "
            "nothing to reconcile"
        )
    if window is not None:
        windows = {k: v for k, v in windows.items() if k[1] == window}
        if not windows:
            raise CliError(f"window {args.window} has no counts in the state")
    source = expected
    if args.source_lines:
        source = _count_lines(args.source_lines)
    elif args.source_objects:
        source = _count_objects(args)
    rows = None if sink is None else sink()
    report = reconcile(windows, source=source, sink_rows=rows, rows_per_event=per_event)
    if args.format == "json":
        print(json.dumps(_plain(report), sort_keys=True))
    else:
        _print_table(report)
    if args.emf:
        print(json.dumps(_emf(report, args.pipeline)))
    return 1 if report.unexplained else 0


# -- the counts ---------------------------------------------------------------------------


def _local_counts(args: argparse.Namespace) -> Counts:
    from onceflow.adapters.local.database import Database
    from onceflow.adapters.local.state import DATABASE
    from onceflow.adapters.local.window_counts import SqliteWindowCounts

    path = Path(args.state) / DATABASE
    if not path.is_file():
        raise CliError(f"no onceflow state in {args.state} (expected {path})")
    database = Database(path)
    try:
        return SqliteWindowCounts(database, create=False).read()
    finally:
        database.close()


def _dynamodb_counts(args: argparse.Namespace) -> Counts:
    from onceflow.adapters.aws.window_counts import DynamoDBWindowCounts

    counts = DynamoDBWindowCounts(
        args.table, client=_boto_client(args, "dynamodb"), key_attribute=args.key_attribute
    )
    found: Counts = counts.read()
    return found


def _table_counts(args: argparse.Namespace) -> Counts:
    from onceflow.adapters.azure.window_counts import TableWindowCounts

    counts = TableWindowCounts(args.table, connection_string=args.connection_string)
    found: Counts = counts.read()
    return found


def _cosmos_database(args: argparse.Namespace) -> Any:
    import os

    key = os.environ.get(args.key_env)
    if not key:
        raise CliError(f"no Cosmos DB key: set the environment variable {args.key_env}")
    try:
        from azure.cosmos import CosmosClient
    except ImportError:
        raise CliError(
            "`onceflow reconcile cosmos` needs azure-cosmos: pip install 'onceflow[azure]'"
        ) from None
    client = CosmosClient(args.endpoint, credential=key, enable_endpoint_discovery=False)
    return client.get_database_client(args.database)


def _cosmos_counts(args: argparse.Namespace) -> Counts:
    from azure.cosmos.exceptions import CosmosHttpResponseError

    from onceflow.adapters.azure.window_counts import CosmosWindowCounts

    container = _cosmos_database(args).get_container_client(args.container)
    try:
        found: Counts = CosmosWindowCounts(container).read()
    except CosmosHttpResponseError as exc:
        raise CliError(f"cannot read container {args.container}: HTTP {exc.status_code}") from None
    return found


def _boto_client(args: argparse.Namespace, service: str) -> Any:
    try:
        import boto3
    except ImportError:
        raise CliError(
            f"`onceflow reconcile` on {service} needs boto3: pip install 'onceflow[aws]'"
        ) from None
    options = {
        k: v for k, v in (("endpoint_url", args.endpoint_url), ("region_name", args.region)) if v
    }
    make: Any = boto3.client
    return make(service, **options)


# -- the source ---------------------------------------------------------------------------


def _count_lines(paths: list[str]) -> int:
    total = 0
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise CliError(f"--source-lines {name}: no such file")
        with path.open("rb") as handle:
            total += sum(1 for line in handle if line.strip())
    return total


def _count_objects(args: argparse.Namespace) -> int:
    where: str = args.source_objects
    if where.startswith("s3://"):
        bucket, _, prefix = where[5:].partition("/")
        client = _boto_client(args, "s3")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)
    folder = Path(where)
    if not folder.is_dir():
        raise CliError(f"--source-objects {where}: no such folder")
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- the sink -----------------------------------------------------------------------------


def _sink_reader(args: argparse.Namespace) -> Callable[[], int]:
    """A reader of the sink's row count, for a --sink checked before anything is read."""
    spec: str = args.sink
    kind, _, where = spec.partition(":")
    if kind == "state":
        if getattr(args, "state", None) is None:
            raise CliError("--sink state is the local target's state folder; use sqlite:PATH")
        return lambda: _sqlite_rows(Path(args.state) / "state.db", "outputs")
    if not where:
        raise CliError(
            f"--sink {spec!r}: one of state, sqlite:PATH[#TABLE], parquet:FOLDER, "
            "delta:URI, dynamodb:TABLE, table:NAME, cosmos:CONTAINER"
        )
    if kind == "sqlite":
        path, _, table = where.partition("#")
        return lambda: _sqlite_rows(Path(path), table or "outputs")
    if kind == "parquet":
        return lambda: _parquet_rows(Path(where))
    if kind == "delta":
        return lambda: _delta_rows(where)
    if kind == "dynamodb":
        return lambda: _dynamodb_rows(args, where)
    if kind == "table":
        if getattr(args, "connection_string", None) is None:
            raise CliError("--sink table:NAME is for the table target (its --connection-string)")
        return lambda: _table_rows(args, where)
    if kind == "cosmos":
        if getattr(args, "endpoint", None) is None:
            raise CliError("--sink cosmos:CONTAINER is for the cosmos target (its --endpoint)")
        return lambda: _cosmos_rows(args, where)
    raise CliError(
        f"--sink kind {kind!r}: one of state, sqlite, parquet, delta, dynamodb, table, cosmos"
    )


def _sqlite_rows(path: Path, table: str) -> int:
    if not path.is_file():
        raise CliError(f"--sink: no SQLite file {path}")
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        except sqlite3.OperationalError:
            raise CliError(f"--sink: {path} has no table {table!r}") from None


def _parquet_rows(folder: Path) -> int:
    if not folder.is_dir():
        raise CliError(f"--sink parquet: no folder {folder}")
    import anyio

    from onceflow.adapters.local.objects import LocalObjectStore
    from onceflow.lake.dataset import read_dataset

    store = LocalObjectStore(folder.parent)

    async def rows() -> int:
        return int((await read_dataset(store, folder.name)).num_rows)

    return anyio.run(rows)


def _delta_rows(uri: str) -> int:
    from onceflow.lake.delta_sink import read_delta

    return int(read_delta(uri).num_rows)


def _dynamodb_rows(args: argparse.Namespace, table: str) -> int:
    # Only items with a `value` are outputs (DynamoDBSink's shape): a sink sharing the
    # state table also holds markers and counts, which this does not count.
    client = _boto_client(args, "dynamodb")
    pages = client.get_paginator("scan").paginate(
        TableName=table,
        Select="COUNT",
        FilterExpression="attribute_exists(#v)",
        ExpressionAttributeNames={"#v": "value"},
    )
    return sum(int(page["Count"]) for page in pages)


def _cosmos_rows(args: argparse.Namespace, name: str) -> int:
    # CosmosSink's items carry `output_id`; the store's markers and count items do not.
    container = _cosmos_database(args).get_container_client(name)
    query = "SELECT c.id FROM c WHERE IS_DEFINED(c.output_id)"
    return sum(1 for _ in container.query_items(query, enable_cross_partition_query=True))


def _table_rows(args: argparse.Namespace, table: str) -> int:
    connection = args.connection_string
    from azure.data.tables import TableClient

    from onceflow.adapters.azure.table_keys import OUTPUT

    client = TableClient.from_connection_string(connection, table)
    # TableSink's output rows have RowKeys starting with its prefix; markers and counts not.
    query = f"RowKey ge '{OUTPUT}' and RowKey lt '{chr(ord(OUTPUT) + 1)}'"
    return sum(1 for _ in client.query_entities(query, select=["RowKey"]))


# -- the report ---------------------------------------------------------------------------


def _plain(report: Reconciliation) -> dict[str, Any]:
    return {
        "windows": [
            {"pipeline": p, "window": window_label(w), **t, "gap": report.window_gap(t)}
            for (p, w), t in sorted(report.windows.items())
        ],
        "totals": report.totals,
        "source": report.source,
        "source_gap": report.source_gap,
        "unexplained_source": report.unexplained_source,
        "sink_rows": report.sink_rows,
        "sink_gap": report.sink_gap,
        "unexplained": report.unexplained,
    }


def _print_table(report: Reconciliation) -> None:
    headers = ["pipeline", "window", *COUNTS, "gap"]
    rows = [
        [p, window_label(w), *(str(t.get(n, 0)) for n in COUNTS), str(report.window_gap(t))]
        for (p, w), t in sorted(report.windows.items())
    ]
    rows.append(["total", "", *(str(report.totals[n]) for n in COUNTS), ""])
    lines = [
        f"source: {_shown(report.source)}  processed + dead-lettered: "
        f"{report.totals['processed'] + report.totals['dead_lettered']}  "
        f"gap: {_shown(report.source_gap)} (unexplained: {report.unexplained_source})",
        f"sink rows: {_shown(report.sink_rows)}  expected: "
        f"{(report.totals['processed'] - report.totals['filtered']) * report.rows_per_event}  "
        f"gap: {_shown(report.sink_gap)}",
        "unexplained gap" if report.unexplained else "no unexplained gap",
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\t".join(headers))
        for row in rows:
            print("\t".join(row))
        print("\n".join(lines))
        return
    table = Table(title="onceflow reconcile")
    for name in headers:
        table.add_column(name, justify="left" if name in ("pipeline", "window") else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    for line in lines:
        console.print(line, highlight=False)


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)


def _emf(report: Reconciliation, pipeline: str | None) -> dict[str, Any]:
    """An EMF document of the unexplained gap: CloudWatch takes the metric from the line."""
    gap = abs(report.unexplained_source) + abs(report.sink_gap or 0)
    gap += sum(abs(report.window_gap(t)) for t in report.windows.values())
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "onceflow",
                    "Dimensions": [["pipeline"]],
                    "Metrics": [{"Name": "ReconciliationGap", "Unit": "Count"}],
                }
            ],
        },
        "pipeline": pipeline or "all",
        "ReconciliationGap": gap,
    }
