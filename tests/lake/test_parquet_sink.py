"""ParquetSink: partitions, refusals, deterministic names, thresholds, manifest, reader."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from onceflow.adapters.memory import (
    Faults,
    ManualClock,
    MemoryIdempotencyStore,
    MemoryObjectStore,
    MemorySink,
)
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.event import Event
from onceflow.interfaces import ObjectStore
from onceflow.lake import EVENT_TIME, Hourly, ManifestLog, ParquetSink, arrow_schema, read_dataset
from onceflow.lake.dataset import close_partitions
from onceflow.pipeline import Pipeline
from onceflow.records import Output
from tests.lake.conftest import query

SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("n", pa.int64()),
        ("time", pa.timestamp("us", "UTC")),
        ("country", pa.string()),
    ]
)


def click(i: int, hour: int = 10, **extra: Any) -> Output:
    value = {
        "user": f"u{i}",
        "n": i,
        "time": f"2024-05-01T{hour:02d}:{i % 60:02d}:00+00:00",
        "country": "DE" if i % 2 else "FR",
        **extra,
    }
    return Output(f"clicks#e{i}#0", f"clicks#e{i}", f"e{i}", 0, value)


def data_files(paths: list[str]) -> list[str]:
    return [p for p in paths if p.endswith(".parquet")]


@pytest.mark.anyio
async def test_rows_land_in_hive_partitions_and_read_back(lake_store: ObjectStore) -> None:
    sink = ParquetSink(lake_store, "lake/clicks", schema=SCHEMA, partition_by=[Hourly(), "country"])
    await sink.write([click(i, hour=10 + i % 4 // 2) for i in range(40)])
    paths = [i.path for i in await lake_store.list("lake/clicks/")]
    assert sorted({p.rsplit("/", 1)[0] for p in data_files(paths)}) == [
        f"lake/clicks/dt=2024-05-01/hr={h}/country={c}" for h in ("10", "11") for c in ("DE", "FR")
    ]
    clicks = await read_dataset(lake_store, "lake/clicks")
    assert clicks.num_rows == 40
    counts = query(
        "select hr, country, count(*) from clicks group by all order by all", clicks=clicks
    )
    assert counts == [("10", "DE", 10), ("10", "FR", 10), ("11", "DE", 10), ("11", "FR", 10)]
    only = await read_dataset(lake_store, "lake/clicks", partitions={"hr": "11", "country": "DE"})
    assert only.num_rows == 10 and set(only.column("country").to_pylist()) == {"DE"}
    first_file = pq.read_schema(pa.BufferReader(await lake_store.get(data_files(paths)[0])))
    assert "country" not in first_file.names


@pytest.mark.anyio
async def test_many_partitions_in_one_batch_keep_every_row_in_its_own() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=[Hourly(), "user"])
    await sink.write([click(i, hour=i % 24) for i in range(480)])
    snapshot = await ManifestLog(store, "ds").snapshot()
    assert len(snapshot.files) == 480  # every user once per hour: one row per partition
    rows = await read_dataset(store, "ds")
    assert query("select count(*) from t where hr::int = n % 24", t=rows) == [(480,)]
    assert query("select count(*) from t where user = 'u' || n", t=rows) == [(480,)]


@pytest.mark.anyio
async def test_concurrent_writers_commit_distinct_manifest_versions() -> None:
    import anyio

    store = MemoryObjectStore()
    writers = [ParquetSink(store, "ds", schema=SCHEMA) for _ in range(4)]
    async with anyio.create_task_group() as group:
        for w, sink in enumerate(writers):
            for b in range(5):
                group.start_soon(sink.write, [click(w * 100 + b * 10 + i) for i in range(10)])
    snapshot = await ManifestLog(store, "ds").snapshot()
    assert snapshot.version == 20 and len(snapshot.files) == 20
    assert (await read_dataset(store, "ds")).num_rows == 200


@pytest.mark.anyio
async def test_a_retried_batch_rewrites_the_same_objects_in_any_order() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=Hourly())
    batch = [click(i, hour=10 + i % 3) for i in range(30)]
    await sink.write(batch)
    first = data_files([i.path for i in await store.list()])
    await sink.write(list(reversed(batch)))
    assert data_files([i.path for i in await store.list()]) == first
    assert (await read_dataset(store, "ds")).num_rows == 30


@pytest.mark.anyio
async def test_rows_that_do_not_fit_are_refused_by_column_before_anything_is_written() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=Hourly())
    bad_type = click(1, n="seven")
    no_time = click(2, time=None)
    not_object = Output("clicks#e3#0", "clicks#e3", "e3", 0, [1, 2])
    with pytest.raises(OutputRejected) as refused:
        await sink.write([click(0), bad_type, no_time, not_object, click(4)])
    assert await store.list() == []
    reasons = refused.value.rejected
    assert set(reasons) == {"clicks#e1#0", "clicks#e2#0", "clicks#e3#0"}
    assert reasons["clicks#e1#0"].startswith("column n: a str of length 5 is not int64")
    assert "seven" not in reasons["clicks#e1#0"]  # reasons never carry payload values
    assert reasons["clicks#e2#0"] == "column time: missing, and it is a partition column"
    assert reasons["clicks#e3#0"] == "value: expected an object, got list"


@pytest.mark.anyio
async def test_pipeline_dead_letters_exactly_the_refused_events() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA)
    letters = MemorySink()
    pipeline = Pipeline(
        lambda e: e.json(), sink, MemoryIdempotencyStore(clock=ManualClock()), letters
    )
    events = [
        Event(id=f"e{i}", source="clicks", data=json.dumps(click(i).value).encode())
        for i in range(5)
    ] + [Event(id="bad", source="clicks", data=b'{"user": "x", "n": [1]}')]
    result = await pipeline.process_batch(events)
    assert result.dead_lettered == ["bad"]
    assert "column n: a list of length 1 is not int64" in result.reasons["bad"]
    assert (await read_dataset(store, "ds")).num_rows == 5
    assert list(letters.contents()) == ["clicks#bad#dead-letter"]


@pytest.mark.anyio
async def test_files_are_split_by_rows_and_bytes_and_the_manifest_records_them() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, max_rows=25)
    await sink.write([click(i) for i in range(100)])
    snapshot = await ManifestLog(store, "ds").snapshot()
    assert snapshot.version == 1
    files = list(snapshot.files.values())
    assert [f.rows for f in files] == [25, 25, 25, 25]
    for f in files:
        body = await store.get(f"ds/{f.path}")
        assert f.bytes == len(body) and f.checksum.startswith("sha256:")
        assert f.min_key <= f.max_key
    by_bytes = ParquetSink(store, "ds2", schema=SCHEMA, max_bytes=2_000)
    await by_bytes.write([click(i) for i in range(100)])
    assert len((await ManifestLog(store, "ds2").snapshot()).files) > 1
    assert (await read_dataset(store, "ds2", verify=True)).num_rows == 100


@pytest.mark.anyio
async def test_a_failed_upload_leaves_no_manifest_entry() -> None:
    faults = Faults()
    store = MemoryObjectStore(faults=faults)
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=Hourly())
    faults.fail("objects.put", times=1)
    with pytest.raises(ConnectionError):
        await sink.write([click(i, hour=10 + i % 3) for i in range(9)])
    assert [i.path for i in await store.list("ds/_manifest/")] == []
    assert (await read_dataset(store, "ds")).num_rows == 0


@pytest.mark.anyio
async def test_reader_ignores_orphans_and_counts_each_output_once() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA)
    await sink.write([click(i) for i in range(10)])
    # The same outputs regrouped (a redelivery after a partial commit) land in a new file.
    await sink.write([click(i) for i in range(5, 15)])
    await store.put("ds/part-orphan.parquet", b"not even parquet")
    table = await read_dataset(store, "ds")
    assert sorted(table.column("n").to_pylist()) == list(range(15))


@pytest.mark.anyio
async def test_manifest_checkpoints_keep_the_same_snapshot() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, checkpoint_every=3)
    for i in range(8):
        await sink.write([click(i)])
    paths = [i.path for i in await store.list("ds/_manifest/")]
    assert sum(p.endswith(".checkpoint.json") for p in paths) == 2
    assert sorted((await read_dataset(store, "ds")).column("n").to_pylist()) == list(range(8))
    assert (await read_dataset(store, "ds", version=4)).num_rows == 4
    pruned = await ManifestLog(store, "ds").prune(keep_after=float("inf"))
    assert len(pruned) == 5 + 1  # versions 1-5 and checkpoint 3 go; checkpoint 6 stays
    assert sorted((await read_dataset(store, "ds")).column("n").to_pylist()) == list(range(8))
    await sink.write([click(8)])  # the writer numbers on from the entries that remain
    assert (await ManifestLog(store, "ds").snapshot()).version == 9


@pytest.mark.anyio
async def test_extra_fields_can_be_refused() -> None:
    sink = ParquetSink(MemoryObjectStore(), "ds", schema=SCHEMA, extra="reject")
    with pytest.raises(OutputRejected) as refused:
        await sink.write([click(1), click(2, referrer="x")])
    assert refused.value.rejected == {"clicks#e2#0": "column referrer: not in the schema"}


@pytest.mark.anyio
async def test_closed_hours_get_a_success_marker() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=Hourly())
    await sink.write([click(i, hour=10 + i % 3) for i in range(9)])
    now = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    closed = await close_partitions(store, "ds", now=now, grace=timedelta(minutes=40))
    assert closed == ["dt=2024-05-01/hr=10"]
    marker = json.loads(await store.get("ds/dt=2024-05-01/hr=10/_SUCCESS"))
    assert marker["rows"] == 3
    assert await close_partitions(store, "ds", now=now, grace=timedelta(minutes=40)) == []


class Click(BaseModel):
    user: str
    n: int
    time: datetime
    country: str | None = None
    tags: list[str] = []


@pytest.mark.anyio
async def test_schema_from_a_pydantic_model() -> None:
    schema = arrow_schema(Click)
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("country").nullable and not schema.field("user").nullable
    assert schema.field("tags").type == pa.list_(pa.string())
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=Click, partition_by=Hourly())
    value = Click(user="u", n=1, time=datetime(2024, 5, 1, 10, tzinfo=UTC), tags=["a"])
    await sink.write([Output("s#1#0", "s#1", "1", 0, value.model_dump(mode="json"))])
    [row] = (await read_dataset(store, "ds")).to_pylist()
    assert row["tags"] == ["a"] and row["dt"] == "2024-05-01" and row["hr"] == "10"


@pytest.mark.anyio
async def test_partition_values_with_slashes_stay_one_level() -> None:
    store = MemoryObjectStore()
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by="country")
    await sink.write([click(1, country="a/b=c"), click(2, country="ü")])
    paths = sorted(i.path for i in await store.list("ds/country="))
    assert [p.split("/")[1] for p in paths] == ["country=%C3%BC", "country=a%2Fb%3Dc"]
    rows = await read_dataset(store, "ds")
    assert sorted(rows.column("country").to_pylist()) == ["a/b=c", "ü"]


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'missing' is not in the schema"):
        ParquetSink(MemoryObjectStore(), "ds", schema=SCHEMA, partition_by="missing")
    reserved = SCHEMA.append(pa.field("_output_id", pa.string()))
    with pytest.raises(ConfigurationError, match="'_output_id' is reserved"):
        ParquetSink(MemoryObjectStore(), "ds", schema=reserved)
    with pytest.raises(ConfigurationError, match="needs a timestamp column"):
        ParquetSink(MemoryObjectStore(), "ds", schema=SCHEMA, partition_by=Hourly("user"))


@pytest.mark.anyio
async def test_event_time_partitions_through_the_pipeline() -> None:
    store = MemoryObjectStore()
    schema = pa.schema([("user", pa.string()), ("n", pa.int64())])
    sink = ParquetSink(store, "lake/by_event", schema=schema, partition_by=Hourly(EVENT_TIME))

    class Rows:
        def process(self, event: Event) -> dict[str, Any]:
            return {"user": f"u{event.id}", "n": int(event.id)}

    start = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)
    events = [
        Event(id=str(i), source="clicks", time=start + timedelta(minutes=20 * i), data=b"{}")
        for i in range(6)
    ]
    clock = ManualClock()
    pipeline = Pipeline(
        Rows(), sink, MemoryIdempotencyStore(clock=clock), MemorySink(), clock=clock
    )
    result = await pipeline.process_batch(events)
    assert sorted(result.processed) == [str(i) for i in range(6)]
    folders = sorted(
        {
            i.path.rsplit("/", 1)[0]
            for i in await store.list("lake/by_event/")
            if i.path.endswith(".parquet")
        }
    )
    assert folders == [
        "lake/by_event/dt=2024-05-01/hr=22",
        "lake/by_event/dt=2024-05-01/hr=23",
        "lake/by_event/dt=2024-05-02/hr=00",
    ]
    rows = await read_dataset(store, "lake/by_event")
    assert rows.num_rows == 6 and EVENT_TIME not in rows.column_names
    hours = query("select dt, hr, count(*) from rows group by all order by all", rows=rows)
    assert hours == [("2024-05-01", "22", 2), ("2024-05-01", "23", 3), ("2024-05-02", "00", 1)]
