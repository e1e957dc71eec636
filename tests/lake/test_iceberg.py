"""IcebergSink: lane watermarks in table properties, id-dedup otherwise, on disk, S3 and Blob."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from onceflow.adapters.azure import BlobObjectStore
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.cli import main
from onceflow.errors import ConfigurationError, OutputRejected, SimulatedCrash
from onceflow.event import Event
from onceflow.lake import EVENT_TIME, Hourly, IcebergSink, iceberg_catalog, read_iceberg
from onceflow.pipeline import Pipeline, Step
from onceflow.records import Output
from onceflow.testing import ExactlyOnceContract
from onceflow.testing.exactly_once import CrashAt, deliver
from tests.lake.conftest import click_batches, crash_and_redeliver, query, values_by_output_id
from tests.support.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, MotoServer

LEASE = 30.0
CLICKS = pa.schema([("user", pa.string()), ("n", pa.int64())])
LANES = pa.schema([("n", pa.int64()), ("seq", pa.int64()), ("lane", pa.string())])


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.emulator),
        pytest.param("azure", marks=pytest.mark.emulator),
    ]
)
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> SqlCatalog:
    """A SQLite SQL catalog whose warehouse is local disk, S3 on moto or Blob on Azurite."""
    uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    name = f"w{uuid.uuid4().hex[:10]}"
    if request.param == "local":
        return iceberg_catalog(uri, (tmp_path / "warehouse").as_uri())
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("lake_bucket")
        return iceberg_catalog(
            uri,
            f"s3://{bucket}/{name}",
            **{
                "s3.endpoint": moto.endpoint,
                "s3.access-key-id": moto.access_key,
                "s3.secret-access-key": moto.secret_key,
                "s3.region": moto.region,
            },
        )
    azurite: Azurite = request.getfixturevalue("azurite_server")
    container = request.getfixturevalue("lake_container")
    BlobObjectStore(container, connection_string=azurite.connection_string)
    authority = f"127.0.0.1:{azurite.blob_port}"
    return iceberg_catalog(
        uri,
        f"abfs://{container}/{name}",
        **{
            "adls.account-name": AZURITE_ACCOUNT,
            "adls.account-key": AZURITE_KEY,
            "adls.blob-storage-authority": authority,
            "adls.dfs-storage-authority": authority,
            "adls.blob-storage-scheme": "http",
            "adls.dfs-storage-scheme": "http",
        },
    )


def to_click(event: Event) -> dict[str, Any]:
    body = event.json()
    return {"user": f"u{body['n'] % 7}", "n": body["n"]}


def crash_next_commit(catalog: SqlCatalog) -> list[int]:
    """Arm a crash after the data files are written, before the catalog commit; its count."""
    crashes = [0]
    commit = catalog.commit_table

    def crashing(*args: Any, **kwargs: Any) -> Any:
        catalog.commit_table = commit  # type: ignore[method-assign]
        crashes[0] += 1
        raise SimulatedCrash("between data file write and catalog commit")

    def arm() -> None:
        catalog.commit_table = crashing  # type: ignore[method-assign]

    return crashes, arm  # type: ignore[return-value]


@pytest.mark.anyio
async def test_crashes_and_shuffled_redelivery_leave_each_row_once(catalog: SqlCatalog) -> None:
    clock = ManualClock()
    sink = IcebergSink(
        catalog, "lake.clicks", schema=CLICKS, partition_by=Hourly(EVENT_TIME), ordered=False
    )
    pipeline = Pipeline(
        to_click,
        sink,
        MemoryIdempotencyStore(clock=clock),
        MemorySink(),
        lease_seconds=LEASE,
        clock=clock,
    )
    crashes, arm = crash_next_commit(catalog)  # type: ignore[misc]
    crashed = await crash_and_redeliver(pipeline, click_batches(20), clock, arm)
    assert crashed == 8 and crashes[0] == 4
    rows = read_iceberg(catalog, "lake.clicks")
    sql = "select count(*), count(distinct _event_key) from t"
    assert query(sql, t=rows) == [(200, 200)]
    # Hidden partitioning by hour of the event: the files sit in hourly partitions.
    table = catalog.load_table("lake.clicks")
    assert str(table.spec().fields[0].transform) == "hour"
    hours = {f.file.partition[0] for f in table.scan().plan_files()}
    assert len(hours) == 3  # 10:00 to 12:22


def lane_events(numbers: range, lanes: int = 2) -> list[Event]:
    return [
        Event(
            id=f"e{n}",
            source="clicks",
            partition_key=f"p{n % lanes}",
            sequence=str(100 + n),
            data=json.dumps({"n": n}).encode(),
        )
        for n in numbers
    ]


def to_row(event: Event) -> dict[str, Any]:
    return {"n": event.json()["n"], "seq": int(event.sequence or 0), "lane": event.partition_key}


@pytest.mark.anyio
async def test_ordered_redelivery_is_skipped_by_the_lane_watermarks(catalog: SqlCatalog) -> None:
    clock = ManualClock()
    sink = IcebergSink(catalog, "lake.lanes", schema=LANES, partition_by="lane")
    batches = [lane_events(range(b * 10, b * 10 + 10)) for b in range(4)]

    def make() -> Pipeline:
        store = MemoryIdempotencyStore(clock=clock)
        return Pipeline(to_row, sink, store, MemorySink(), ordered=True, lease_seconds=LEASE)

    first = make()
    for number, batch in enumerate(batches):
        first.on_step = CrashAt(Step.AFTER_SINK_WRITE) if number % 2 else None
        await deliver(first, batch)
    snapshots = len(catalog.load_table("lake.lanes").snapshots())
    # A worker that lost every idempotency record redelivers it all: the table alone dedupes.
    again = make()
    for batch in batches:
        assert (await again.process_batch(batch)).ok
    table = catalog.load_table("lake.lanes")
    assert len(table.snapshots()) == snapshots  # nothing new was committed
    assert table.properties["onceflow.watermark.onceflow/p0"] == "138"
    assert table.properties["onceflow.watermark.onceflow/p1"] == "139"
    lanes = json.loads(table.current_snapshot().summary["onceflow.lanes"])  # type: ignore[union-attr]
    assert lanes == {"onceflow/p0": 138, "onceflow/p1": 139}
    rows = read_iceberg(catalog, "lake.lanes")
    assert query("select count(*), count(distinct _event_key) from t", t=rows) == [(40, 40)]


@pytest.mark.anyio
async def test_resuming_mid_lane_writes_only_new_rows_and_keyless_rows_once(
    tmp_path: Path,
) -> None:
    catalog = iceberg_catalog(f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "w").as_uri())
    sink = IcebergSink(catalog, "lake.t", schema=LANES)
    outputs = [
        Output(
            f"c#e{n}#0", f"c#e{n}", f"e{n}", 0, to_row(e), partition_key="p0", sequence=e.sequence
        )
        for n, e in zip(range(10), lane_events(range(10), lanes=1), strict=True)
    ]
    loose = [Output(f"c#x{n}#0", f"c#x{n}", f"x{n}", 0, {"n": 50 + n}) for n in range(3)]
    await sink.write(outputs[:6] + loose)
    await sink.write(loose[::-1] + outputs[4:])  # resent from an earlier checkpoint
    rows = read_iceberg(catalog, "lake.t")
    assert sorted(rows.column("n").to_pylist()) == [*range(10), 50, 51, 52]


@pytest.mark.anyio
async def test_a_batch_over_max_rows_is_written_as_slices_in_one_snapshot(tmp_path: Path) -> None:
    catalog = iceberg_catalog(f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "w").as_uri())
    sink = IcebergSink(catalog, "lake.t", schema=LANES, partition_by="lane", max_rows=5)
    outputs = [
        Output(
            f"c#e{n}#0", f"c#e{n}", f"e{n}", 0, to_row(e), partition_key="p0", sequence=e.sequence
        )
        for n, e in zip(range(25), lane_events(range(25)), strict=True)
    ]
    await sink.write(outputs)
    await sink.write(outputs[::-1])  # redelivered: below the watermark, skipped
    table = catalog.load_table("lake.t")
    assert len(table.snapshots()) == 1
    files = table.inspect.files().to_pylist()
    # Five slices of five rows, each split by lane: no file over max_rows.
    assert len(files) == 10 and max(f["record_count"] for f in files) <= 5
    assert table.properties["onceflow.watermark.onceflow/p0"] == "124"
    rows = read_iceberg(catalog, "lake.t")
    assert sorted(rows.column("n").to_pylist()) == list(range(25))


@pytest.mark.parametrize(
    ("warehouse", "cause"),
    [
        ("az://lake/warehouse", "not az://"),
        ("abfs://lake@acct.dfs.core.windows.net/warehouse", "adls.account-name"),
    ],
)
def test_azure_warehouses_are_named_as_pyarrows_fileio_reads_them(
    tmp_path: Path, warehouse: str, cause: str
) -> None:
    with pytest.raises(ConfigurationError, match=cause):
        iceberg_catalog(f"sqlite:///{tmp_path / 'c.db'}", warehouse)


@pytest.mark.anyio
async def test_rows_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    catalog = iceberg_catalog(f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "w").as_uri())
    sink = IcebergSink(catalog, "lake.t", schema=LANES, ordered=False)
    with pytest.raises(OutputRejected) as refused:
        await sink.write([Output("c#e1#0", "c#e1", "e1", 0, {"n": "one"})])
    assert refused.value.rejected["c#e1#0"].startswith("column n: a str of length 3 is not int64")


@pytest.mark.anyio
async def test_lake_info_and_vacuum_read_an_iceberg_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'c.db'}"
    catalog = iceberg_catalog(uri, (tmp_path / "w").as_uri())
    sink = IcebergSink(catalog, "lake.t", schema=LANES, partition_by="lane")
    for b in range(3):
        await sink.write(
            [
                Output(f"c#e{n}#0", f"c#e{n}", f"e{n}", 0, to_row(e), "p0", None, e.sequence)
                for n, e in zip(
                    range(b * 4, b * 4 + 4), lane_events(range(b * 4, b * 4 + 4)), strict=True
                )
            ]
        )
    assert main(["lake", "info", "--iceberg", "lake.t", "--catalog", uri]) == 0
    out = capsys.readouterr().out
    assert "iceberg lake.t" in out and "lane=p0" in out and "onceflow/p0 = 111" in out
    assert (
        main(["lake", "vacuum", "--iceberg", "lake.t", "--catalog", uri, "--retain-hours", "0"])
        == 0
    )
    out = capsys.readouterr().out
    assert "expired 2 snapshots" in out and "kept the current snapshot" in out
    assert "deleted 0 data files no live snapshot references" in out
    assert len(catalog.load_table("lake.t").snapshots()) == 1
    assert read_iceberg(catalog, "lake.t").num_rows == 12
    assert main(["lake", "compact", "--iceberg", "lake.t", "--catalog", uri]) == 0
    assert "compacted 2 partitions of lake.t: 6 files" in capsys.readouterr().out
    assert read_iceberg(catalog, "lake.t").num_rows == 12


async def read_iceberg_sink(sink: Any) -> dict[str, Any]:
    if isinstance(sink, MemorySink):  # the dead-letter sink
        return sink.contents()
    assert isinstance(sink, IcebergSink)
    try:
        rows = read_iceberg(sink.catalog, sink.identifier).to_pylist()
    except Exception:  # no table yet: nothing written
        return {}
    return values_by_output_id(rows)


class TestIcebergSinkExactlyOnce(ExactlyOnceContract):
    """The runner's exactly-once proof with an unordered IcebergSink on local disk."""

    max_examples = 4

    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        return MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()

    @pytest.fixture
    def sink(self, tmp_path: Path) -> IcebergSink:
        schema = pa.schema([("n", pa.int64()), ("part", pa.int64()), ("double", pa.int64())])
        name = uuid.uuid4().hex[:8]
        catalog = iceberg_catalog(
            f"sqlite:///{tmp_path / f'{name}.db'}", (tmp_path / name).as_uri()
        )
        return IcebergSink(catalog, "eo.t", schema=schema, ordered=False)

    @pytest.fixture
    def dead_letter_sink(self) -> MemorySink:
        return MemorySink()

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_iceberg_sink


@pytest.mark.anyio
# Blob is left out: each Iceberg commit there costs seconds on Azurite, and the FileIO
# listing the orphans is the same pyarrow one the S3 case runs.
@pytest.mark.parametrize(
    "catalog", ["local", pytest.param("s3", marks=pytest.mark.emulator)], indirect=True
)
async def test_compaction_merges_each_partition_and_vacuum_removes_orphans(
    catalog: SqlCatalog,
) -> None:
    from datetime import timedelta

    from onceflow.lake.iceberg_maintenance import compact_iceberg, remove_iceberg_orphans
    from onceflow.lake.iceberg_sink import expire_iceberg
    from onceflow.lake.schema import OUTPUT_ID

    clicks = IcebergSink(
        catalog, "lake.hours", schema=CLICKS, partition_by=Hourly(EVENT_TIME), ordered=False
    )
    lanes = IcebergSink(catalog, "lake.lanes", schema=LANES, partition_by="lane")
    # Eighteen batches seven minutes apart: three hours of event time.
    for batch in click_batches(18, size=3):
        await clicks.write(
            [Output(f"c#{e.id}#0", f"c#{e.id}", e.id, 0, to_click(e), time=e.time) for e in batch]
        )
    for number in range(6):
        events = lane_events(range(number * 4, number * 4 + 4))
        await lanes.write(
            [
                Output(
                    f"l#{e.id}#0",
                    f"l#{e.id}",
                    e.id,
                    0,
                    to_row(e),
                    e.partition_key,
                    None,
                    e.sequence,
                )
                for e in events
            ]
        )
    for sink, rows, partitions, merged in ((clicks, 54, 3, 2), (lanes, 24, 2, 2)):
        table = sink.table()
        before = read_iceberg(catalog, sink.identifier).sort_by(OUTPUT_ID)
        seen: list[str] = []
        report = compact_iceberg(table, progress=lambda label, _, s=seen: s.append(label))
        # The last hour holds a single file: nothing to merge there.
        assert report.partitions == merged == len(seen) and report.files_after == merged
        assert report.files_before > merged
        table = catalog.load_table(sink.identifier)
        assert len({f.file.file_path for f in table.scan().plan_files()}) == partitions
        after = read_iceberg(catalog, sink.identifier).sort_by(OUTPUT_ID)
        assert after.equals(before.select(after.column_names))
        # A compacted table is not compacted again; its watermarks are untouched.
        assert compact_iceberg(table).partitions == 0
        # The replaced files stay for readers of older snapshots until those expire.
        assert remove_iceberg_orphans(table, older_than=timedelta(0)) == []
        expire_iceberg(table, retain=timedelta(0))
        removed = remove_iceberg_orphans(table, older_than=timedelta(0))
        assert len(removed) == report.files_before
        assert read_iceberg(catalog, sink.identifier).num_rows == rows
    table = catalog.load_table("lake.lanes")
    assert table.properties["onceflow.watermark.onceflow/p1"] == "123"
