"""What engines without onceflow code see: symlink manifests, Delta tables, after crashes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from onceflow.adapters.local import LocalObjectStore
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.cli import main
from onceflow.event import Event
from onceflow.interfaces import ObjectStore
from onceflow.lake import EVENT_TIME, DeltaSink, Hourly, ParquetSink, read_delta
from onceflow.lake.compaction import compact_dataset, vacuum_dataset
from onceflow.lake.manifest import join
from onceflow.lake.symlinks import dataset_location
from onceflow.pipeline import Pipeline
from tests.lake.conftest import CrashingStore, as_any, click_batches, crash_and_redeliver, query

LEASE = 30.0
CLICKS = pa.schema([("user", pa.string()), ("n", pa.int64())])


def to_click(event: Event) -> dict[str, Any]:
    body = event.json()
    return {"user": f"u{body['n'] % 7}", "n": body["n"]}


def pipeline(sink: Any, clock: ManualClock) -> Pipeline:
    store = MemoryIdempotencyStore(clock=clock)
    return Pipeline(to_click, sink, store, MemorySink(), lease_seconds=LEASE, clock=clock)


async def listed(store: ObjectStore, root: str, suffix: str) -> list[str]:
    """Every line of every file under `root` whose path ends with `suffix`."""
    lines: list[str] = []
    for info in await store.list(root + "/"):
        if info.path.endswith(suffix):
            lines += (await store.get(info.path)).decode().split()
    return lines


async def tables(store: ObjectStore, paths: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(pa.BufferReader(await store.get(p))) for p in paths])


@pytest.mark.anyio
async def test_the_symlink_manifest_lists_each_row_once_after_crashes(
    lake_store: ObjectStore,
) -> None:
    clock = ManualClock()
    crashing = CrashingStore(lake_store)
    sink = ParquetSink(as_any(crashing), "clicks", schema=CLICKS, partition_by=Hourly(EVENT_TIME))
    # Redelivered in a shuffled regrouping, crashed batches leave outputs in two files.

    def arm() -> None:
        crashing.crash_next_commit = True

    crashed = await crash_and_redeliver(
        pipeline(sink, clock), click_batches(30), clock, arm, regroup=7
    )
    assert crashed == 12
    everything = [i.path for i in await lake_store.list("clicks/") if i.path.endswith(".parquet")]
    raw = await tables(lake_store, everything)
    [(total, distinct)] = query("select count(*), count(distinct _event_key) from t", t=raw)
    assert distinct == 300 and total > 300  # what a raw glob over the prefix counts
    report = await compact_dataset(lake_store, "clicks")
    assert report.published.written and not report.published.removed
    # The plain file list, relative to the dataset root: what a DuckDB user reads.
    files = await listed(lake_store, "clicks/_live_files", "files.txt")
    view = await tables(lake_store, [join("clicks", f) for f in files])
    sql = "select count(*), count(distinct _event_key) from t"
    assert query(sql, t=view) == [(300, 300)]
    # The Athena symlink manifest names the same files by absolute URI.
    uris = await listed(lake_store, "clicks/_symlink_format_manifest", "/manifest")
    base = dataset_location(lake_store, "clicks")
    if base is None:  # the memory store has no address an engine could read
        assert uris == []
    else:
        assert sorted(u.removeprefix(base + "/") for u in uris) == sorted(files)
    # Superseded files stay (readers mid-query) until vacuum; in-use ones always stay.
    vacuum = await vacuum_dataset(lake_store, "clicks", retain=timedelta(0))
    assert vacuum.in_use == len(files) and len(vacuum.deleted) == len(everything)
    left = [i.path for i in await lake_store.list("clicks/") if i.path.endswith(".parquet")]
    assert query(sql, t=await tables(lake_store, left)) == [(300, 300)]
    again = await compact_dataset(lake_store, "clicks")
    assert again.partitions == 0 and not again.published.written  # nothing changed


@pytest.mark.anyio
async def test_an_hourly_delta_table_holds_each_row_once_after_crashes(
    delta_target: tuple[str, dict[str, str]],
) -> None:
    uri, options = delta_target
    clock = ManualClock()
    sink = DeltaSink(
        uri,
        schema=CLICKS,
        partition_by=Hourly(EVENT_TIME),
        storage_options=options,
        ordered=False,
    )

    def arm() -> None:
        pass  # delta-rs writes and commits in one call: no seam to crash between them

    crashed = await crash_and_redeliver(pipeline(sink, clock), click_batches(20), clock, arm)
    assert crashed == 4
    rows = read_delta(uri, storage_options=options)
    sql = "select count(*), count(distinct _event_key), count(distinct dt || hr) from t"
    assert query(sql, t=rows) == [(200, 200, 3)]
    assert DeltaTable(uri, storage_options=options).metadata().partition_columns == ["dt", "hr"]


async def write_all(sink: Any) -> None:
    run = pipeline(sink, ManualClock())
    for batch in click_batches(12):
        assert (await run.process_batch(batch)).ok


def test_delta_info_compact_and_vacuum_are_recognised_by_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "t")
    sink = DeltaSink(uri, schema=CLICKS, partition_by=Hourly(EVENT_TIME), ordered=False)
    anyio.run(write_all, sink)
    assert main(["lake", "info", uri]) == 0
    out = capsys.readouterr().out
    assert "delta table version" in out and "dt=2024-05-01/hr=10\t9 files\t84 rows" in out
    assert main(["lake", "compact", uri]) == 0
    assert "optimized" in capsys.readouterr().out
    assert main(["lake", "vacuum", uri]) == 0  # a week's retention: nothing goes
    out = capsys.readouterr().out
    assert "deleted 0 files" in out and "kept 13 removed files younger than" in out
    assert main(["lake", "vacuum", uri, "--retain-hours", "0"]) == 0
    assert "deleted 13 files" in capsys.readouterr().out
    assert len(DeltaTable(uri).file_uris()) == 2
    assert read_delta(uri).num_rows == 120


def test_parquet_info_and_vacuum_explain_themselves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalObjectStore(tmp_path)
    sink = ParquetSink(store, "clicks", schema=CLICKS, partition_by=Hourly(EVENT_TIME))
    anyio.run(write_all, sink)
    path = str(tmp_path / "clicks")
    assert main(["lake", "info", path]) == 0
    assert "0 partitions current, 2 behind" in capsys.readouterr().out
    assert main(["lake", "compact", path]) == 0
    assert "published _symlink_format_manifest/" in capsys.readouterr().out
    manifest = tmp_path / "clicks/_symlink_format_manifest/dt=2024-05-01/hr=10/manifest"
    assert manifest.read_text().startswith((tmp_path / "clicks").as_uri() + "/dt=2024-05-01/")
    assert main(["lake", "info", path]) == 0
    assert "2 partitions current, 0 behind" in capsys.readouterr().out
    assert main(["lake", "vacuum", path]) == 0
    out = capsys.readouterr().out
    assert "deleted 0 files" in out and "kept 2 files in use" in out
    assert "kept 13 superseded files younger than the retention of 1 h" in out
