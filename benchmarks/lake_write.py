"""Lake sinks (Parquet, Delta, Iceberg) against bare pyarrow, and small files before/after.

    nice -n 5 .venv/bin/python benchmarks/lake_write.py [--rows 1000000] [--runs 5]

1. Throughput: the same 1,000,000 rows of a 10-column schema written once by
   `pq.write_table(pa.Table.from_pylist(rows))` (the peer) and once by
   `ParquetSink.write(outputs)` on local disk (conversion, partition, naming, checksum,
   atomic put and manifest commit included), by `DeltaSink.write` and by
   `IcebergSink.write` (ordered: lane watermark committed with the rows; the SQLite catalog
   and the empty table are made before the clock starts, as a running sink makes them once,
   and each round writes into a fresh target). The five writers
   run back to back in each of `--runs` rounds, so load elsewhere hits peer and sinks alike;
   the table shows median seconds and the median of the per-round ratios (and each round's).
   Targets: ParquetSink >= 80% of the peer, Delta and Iceberg >= 70%.
2. Small files: 100,000 events through a `Pipeline` as 1,000 batches of 100 into an
   hourly-partitioned ParquetSink, then `compact_dataset`. Target: <= 2 files per partition.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from onceflow.adapters.local import LocalObjectStore
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.lake import (
    DeltaSink,
    Hourly,
    IcebergSink,
    ManifestLog,
    ParquetSink,
    iceberg_catalog,
    read_dataset,
)
from onceflow.lake.compaction import compact_dataset, vacuum_dataset
from onceflow.pipeline import Pipeline
from onceflow.records import Output

SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("session", pa.string()),
        ("url", pa.string()),
        ("referrer", pa.string()),
        ("country", pa.string()),
        ("duration_ms", pa.float64()),
        ("clicks", pa.int64()),
        ("revenue", pa.float64()),
        ("is_bot", pa.bool_()),
        ("time", pa.timestamp("us", "UTC")),
    ]
)
START = datetime(2024, 5, 1, tzinfo=UTC)


def rows(count: int, spacing: timedelta = timedelta(milliseconds=30)) -> list[dict[str, Any]]:
    """`count` clicks, `spacing` apart."""
    rng = random.Random(6)
    return [
        {
            "user": f"u{rng.randrange(50_000)}",
            "session": f"s{i // 20}",
            "url": f"/product/{rng.randrange(5_000)}",
            "referrer": None if i % 3 else "https://search.example/",
            "country": rng.choice(["DE", "FR", "US", "BR", "JP"]),
            "duration_ms": rng.random() * 10_000,
            "clicks": rng.randrange(20),
            "revenue": round(rng.random() * 100, 2),
            "is_bot": i % 97 == 0,
            "time": (START + i * spacing).isoformat(),
        }
        for i in range(count)
    ]


Prepared = Callable[[], Callable[[], None]]


def interleaved(runs: int, *writers: Prepared) -> list[list[float]]:
    """Each writer's time per round; rounds interleave the writers so load hits all alike.

    A writer is prepared (an empty target made) before its clock starts, then timed.
    """
    times: list[list[float]] = [[] for _ in writers]
    for _ in range(runs):
        for index, prepare in enumerate(writers):
            call = prepare()
            started = time.perf_counter()
            call()
            times[index].append(time.perf_counter() - started)
    return times


def throughput(count: int, runs: int, workdir: Path) -> list[tuple[str, ...]]:
    data = rows(count)
    outputs = [Output(f"clicks#e{i}#0", f"clicks#e{i}", f"e{i}", 0, r) for i, r in enumerate(data)]
    typed = [{**r, "time": datetime.fromisoformat(r["time"])} for r in data]

    def bare() -> Callable[[], None]:
        def call() -> None:
            table = pa.Table.from_pylist(typed, schema=SCHEMA)
            pq.write_table(table, workdir / "bare.parquet", compression="zstd")

        return call

    def bare_from_text() -> Callable[[], None]:
        def call() -> None:
            # The rows exactly as the sink receives them (times as ISO text), cast by Arrow.
            text = SCHEMA.set(9, pa.field("time", pa.string()))
            table = pa.Table.from_pylist(data, schema=text)
            table = table.set_column(
                9, "time", table.column("time").cast(SCHEMA.field("time").type)
            )
            pq.write_table(table, workdir / "bare2.parquet", compression="zstd")

        return call

    def sink() -> Callable[[], None]:
        target = workdir / "sink"
        shutil.rmtree(target, ignore_errors=True)
        parquet = ParquetSink(LocalObjectStore(target), "clicks", schema=SCHEMA)
        return lambda: anyio.run(parquet.write, outputs)

    # Table formats, ordered: one lane, so exactly-once costs one watermark per commit.
    laned = [o._replace(partition_key="shard-0", sequence=str(i)) for i, o in enumerate(outputs)]

    def delta() -> Callable[[], None]:
        target = workdir / "delta"
        shutil.rmtree(target, ignore_errors=True)
        table = DeltaSink(str(target), schema=SCHEMA)
        return lambda: anyio.run(table.write, laned)

    def iceberg() -> Callable[[], None]:
        target = workdir / "iceberg"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        catalog = iceberg_catalog(f"sqlite:///{target / 'catalog.db'}", target.as_uri())
        table = IcebergSink(catalog, "bench.clicks", schema=SCHEMA)
        # A running sink creates its catalog and table once, not per batch: not timed.
        table.table()
        return lambda: anyio.run(table.write, laned)

    names = (
        "pq.write_table(from_pylist(rows)) (peer)",
        "same, times as ISO text + cast",
        "ParquetSink.write, local disk",
        "DeltaSink.write (ordered), local disk",
        "IcebergSink.write (ordered, SQLite catalog), local disk",
    )
    targets = ("", "", ">= 80%", ">= 70%", ">= 70%")
    times = interleaved(runs, bare, bare_from_text, sink, delta, iceberg)
    files = list((workdir / "sink" / "clicks").glob("*.parquet"))
    assert pq.read_metadata(files[0]).num_rows == count
    peer = times[0]
    out = []
    for name, target, seconds in zip(names, targets, times, strict=True):
        # The ratio of each round: peer and sink ran back to back, under the same load.
        ratios = [p / s for p, s in zip(peer, seconds, strict=True)]
        middle = statistics.median(seconds)
        out.append(
            (
                name,
                f"{middle:.2f}",
                f"{count / middle:,.0f}",
                f"{statistics.median(ratios):.0%}",
                " ".join(f"{r:.0%}" for r in ratios),
                target,
            )
        )
    return out


def small_files(events: int, batch: int, workdir: Path) -> list[tuple[str, str, str, str]]:
    store = LocalObjectStore(workdir / "small")
    clock = ManualClock()
    sink = ParquetSink(store, "clicks", schema=SCHEMA, partition_by=Hourly())
    pipeline = Pipeline(
        lambda e: {**e.json(), "time": e.time},
        sink,
        MemoryIdempotencyStore(clock=clock),
        MemorySink(),
        clock=clock,
    )
    # The events span ten hours, so batches land in ten hourly partitions.
    data = rows(events, spacing=timedelta(hours=10) / events)
    all_events = [
        Event(
            id=f"e{i}",
            source="clicks",
            time=datetime.fromisoformat(r["time"]),
            data=json.dumps({k: v for k, v in r.items() if k != "time"}).encode(),
        )
        for i, r in enumerate(data)
    ]

    async def run() -> tuple[float, float, dict[str, int], dict[str, int], int]:
        started = time.perf_counter()
        for start in range(0, events, batch):
            result = await pipeline.process_batch(all_events[start : start + batch])
            assert result.ok, result.reasons
        written = time.perf_counter() - started
        before = {
            p: len(f)
            for p, f in (await ManifestLog(store, "clicks").snapshot()).partitions().items()
        }
        started = time.perf_counter()
        await compact_dataset(store, "clicks")
        compacted = time.perf_counter() - started
        await vacuum_dataset(store, "clicks", retain=timedelta(0))
        after = {
            p: len(f)
            for p, f in (await ManifestLog(store, "clicks").snapshot()).partitions().items()
        }
        table = await read_dataset(store, "clicks")
        connection = duckdb.connect()
        connection.register("clicks", table)
        [(total, distinct)] = connection.execute(
            "select count(*), count(distinct _event_key) from clicks"
        ).fetchall()
        assert total == distinct == events, (total, distinct)
        on_disk = len(list((workdir / "small" / "clicks").rglob("*.parquet")))
        return written, compacted, before, after, on_disk

    written, compacted, before, after, on_disk = anyio.run(run)
    return [
        ("partitions (hours)", str(len(before)), str(len(after)), ""),
        ("files in manifest", str(sum(before.values())), str(sum(after.values())), ""),
        (
            "max files per partition",
            str(max(before.values())),
            str(max(after.values())),
            "target <= 2",
        ),
        ("parquet objects on disk", "", str(on_disk), "after vacuum"),
        (
            "seconds",
            f"{written:.2f} (write)",
            f"{compacted:.2f} (compact)",
            f"{events / written:,.0f} events/s through Pipeline",
        ),
    ]


def table(title: str, header: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, tuple("-" * w for w in widths), *body]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--skip-small", action="store_true", help="throughput only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        table(
            f"1. {args.rows:,} rows x 10 columns, zstd, local disk "
            f"(medians of {args.runs} interleaved rounds)",
            ("writer", "seconds", "rows/s", "vs peer", "vs peer per round", "target"),
            throughput(args.rows, args.runs, workdir),
        )
        if args.skip_small:
            return
        table(
            f"2. {args.events:,} events as {args.events // args.batch:,} batches of {args.batch}",
            ("", "before compaction", "after compaction", "note"),
            small_files(args.events, args.batch, workdir),
        )


if __name__ == "__main__":
    main()
