"""DeltaSink: transaction ids skip redelivered batches in ordered pipelines; merge otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.cli import main
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.event import Event
from onceflow.lake import DeltaSink, read_delta
from onceflow.pipeline import Pipeline, Step
from onceflow.records import Output
from onceflow.testing import ExactlyOnceContract
from onceflow.testing.exactly_once import CrashAt, deliver
from tests.lake.conftest import query, values_by_output_id

LEASE = 30.0
SCHEMA = pa.schema([("n", pa.int64()), ("seq", pa.int64()), ("lane", pa.string())])


def events(numbers: range, lanes: int = 2) -> list[Event]:
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


def by_seq(output: Output) -> int:
    return int(output.value["seq"])


def pipeline(sink: DeltaSink, *, ordered: bool, clock: ManualClock) -> Pipeline:
    store = MemoryIdempotencyStore(clock=clock)
    return Pipeline(
        to_row, sink, store, MemorySink(), ordered=ordered, lease_seconds=LEASE, clock=clock
    )


@pytest.mark.anyio
async def test_ordered_redelivery_is_skipped_from_the_table_log(
    delta_target: tuple[str, dict[str, str]],
) -> None:
    uri, options = delta_target
    clock = ManualClock()
    sink = DeltaSink(uri, schema=SCHEMA, storage_options=options, sequence_of=by_seq)
    batches = [events(range(b * 10, b * 10 + 10)) for b in range(4)]
    first = pipeline(sink, ordered=True, clock=clock)
    for number, batch in enumerate(batches):
        first.on_step = CrashAt(Step.AFTER_SINK_WRITE) if number % 2 else None
        await deliver(first, batch)
    version = DeltaTable(uri, storage_options=options).version()
    # A worker that lost every idempotency record redelivers it all: the log alone dedupes.
    again = pipeline(sink, ordered=True, clock=clock)
    for batch in batches:
        assert (await again.process_batch(batch)).ok
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == version  # nothing new was committed
    assert table.transaction_version("onceflow/p0") == 138
    assert table.transaction_version("onceflow/p1") == 139
    rows = read_delta(uri, storage_options=options)
    assert query("select count(*), count(distinct _event_key) from t", t=rows) == [(40, 40)]


@pytest.mark.anyio
async def test_a_batch_resuming_mid_partition_writes_only_its_new_rows(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    sink = DeltaSink(uri, schema=SCHEMA, sequence_of=by_seq)
    clock = ManualClock()
    await pipeline(sink, ordered=True, clock=clock).process_batch(events(range(0, 6)))
    # The source resends from an earlier checkpoint: rows 4..9, of which 4 and 5 are in.
    await pipeline(sink, ordered=True, clock=clock).process_batch(events(range(4, 10)))
    rows = read_delta(uri)
    assert sorted(rows.column("n").to_pylist()) == list(range(10))


@pytest.mark.anyio
async def test_unordered_pipelines_merge_on_output_id_instead(
    delta_target: tuple[str, dict[str, str]],
) -> None:
    uri, options = delta_target
    clock = ManualClock()
    # Unordered, later sequence numbers may commit first: a skip-by-version would lose rows.
    unsound_uri = uri + "-unsound"
    unsound = DeltaSink(unsound_uri, schema=SCHEMA, storage_options=options, sequence_of=by_seq)
    e1, e9 = events(range(10))[1], events(range(10))[9]
    await unsound.write([Output("c#e9#0", "c#e9", "e9", 0, to_row(e9), partition_key="p1")])
    await unsound.write([Output("c#e1#0", "c#e1", "e1", 0, to_row(e1), partition_key="p1")])
    lost = read_delta(unsound_uri, storage_options=options)
    assert lost.num_rows == 1  # e1 lost: why unordered pipelines need ordered=False
    sink = DeltaSink(uri, schema=SCHEMA, storage_options=options, ordered=False)
    first = pipeline(sink, ordered=False, clock=clock)
    first.on_step = CrashAt(Step.AFTER_SINK_WRITE)
    assert await deliver(first, events(range(10))) is None
    clock.advance(LEASE + 1)
    # Redelivered regrouped and reversed after the crash: merged, not appended twice.
    second = pipeline(sink, ordered=False, clock=clock)
    for batch in (events(range(5, 10))[::-1], events(range(0, 5)), events(range(0, 10))):
        assert (await second.process_batch(batch)).ok
    rows = read_delta(uri, storage_options=options)
    assert query("select count(*), count(distinct _output_id) from t", t=rows) == [(10, 10)]


@pytest.mark.anyio
async def test_outputs_without_a_partition_key_are_merged_in_ordered_mode(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    sink = DeltaSink(uri, schema=SCHEMA, sequence_of=by_seq)
    keyed = [
        Output(
            f"c#e{n}#0",
            f"c#e{n}",
            f"e{n}",
            0,
            {"n": n, "seq": 100 + n, "lane": "p0"},
            partition_key="p0",
        )
        for n in range(3)
    ]
    loose = [
        Output(f"c#x{n}#0", f"c#x{n}", f"x{n}", 0, {"n": 50 + n, "seq": 1, "lane": None})
        for n in range(3)
    ]
    await sink.write(keyed + loose)
    await sink.write(loose[::-1] + keyed)  # redelivered: skipped by version, merged by id
    rows = read_delta(uri)
    assert sorted(rows.column("n").to_pylist()) == [0, 1, 2, 50, 51, 52]
    assert DeltaTable(uri).transaction_version("onceflow/p0") == 102


@pytest.mark.anyio
async def test_new_nullable_columns_evolve_the_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    await DeltaSink(uri, schema=SCHEMA, ordered=False).write(
        [Output("c#e1#0", "c#e1", "e1", 0, {"n": 1, "seq": 1, "lane": "a"})]
    )
    wider = SCHEMA.append(pa.field("country", pa.string()))
    await DeltaSink(uri, schema=wider, ordered=False).write(
        [Output("c#e2#0", "c#e2", "e2", 0, {"n": 2, "seq": 2, "lane": "a", "country": "DE"})]
    )
    rows = sorted(read_delta(uri).to_pylist(), key=lambda r: r["n"])
    assert [r["country"] for r in rows] == [None, "DE"]


@pytest.mark.anyio
async def test_files_are_zstd_like_parquet_sinks_and_ids_carry_no_dictionary(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "t")
    sink = DeltaSink(uri, schema=SCHEMA, ordered=False)
    await sink.write(
        [
            Output(f"c#e{n}#0", f"c#e{n}", f"e{n}", 0, {"n": n, "seq": n, "lane": "a"})
            for n in range(5)
        ]
    )
    [path] = DeltaTable(uri).file_uris()
    columns = pq.ParquetFile(path.removeprefix("file://")).metadata.row_group(0)
    by_name = {
        columns.column(i).path_in_schema: columns.column(i) for i in range(columns.num_columns)
    }
    assert {c.compression for c in by_name.values()} == {"ZSTD"}
    assert "RLE_DICTIONARY" not in by_name["_output_id"].encodings
    assert "RLE_DICTIONARY" in by_name["lane"].encodings
    with pytest.raises(ConfigurationError, match="compression must be one of"):
        DeltaSink(uri, schema=SCHEMA, compression="lzo")


@pytest.mark.anyio
async def test_rows_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    sink = DeltaSink(str(tmp_path / "t"), schema=SCHEMA, ordered=False)
    with pytest.raises(OutputRejected) as refused:
        await sink.write([Output("c#e1#0", "c#e1", "e1", 0, {"n": "one"})])
    assert refused.value.rejected["c#e1#0"].startswith("column n: a str of length 3 is not int64")


@pytest.mark.anyio
async def test_partitioned_table_compacts_and_vacuums_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "t")
    sink = DeltaSink(uri, schema=SCHEMA, partition_by=["lane"], sequence_of=by_seq)
    for b in range(6):
        await sink.write(
            [
                Output(f"c#e{n}#0", f"c#e{n}", f"e{n}", 0, to_row(e))
                for n, e in zip(
                    range(b * 5, b * 5 + 5), events(range(b * 5, b * 5 + 5)), strict=True
                )
            ]
        )
    before = len(DeltaTable(uri).file_uris())
    assert main(["lake", "compact", "--delta", uri]) == 0
    assert main(["lake", "vacuum", "--delta", "--retain-hours", "0", uri]) == 0
    assert len(DeltaTable(uri).file_uris()) == 2 < before
    assert read_delta(uri).num_rows == 30
    assert "optimized" in capsys.readouterr().out


async def read_delta_sink(sink: Any) -> dict[str, Any]:
    if isinstance(sink, MemorySink):  # the dead-letter sink
        return sink.contents()
    assert isinstance(sink, DeltaSink)
    try:
        rows = read_delta(sink.table_uri).to_pylist()
    except TableNotFoundError:
        return {}
    return values_by_output_id(rows)


class TestDeltaSinkExactlyOnce(ExactlyOnceContract):
    """The runner's exactly-once proof with an unordered (merging) DeltaSink on local disk."""

    max_examples = 5

    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        return MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()

    @pytest.fixture
    def sink(self, tmp_path: Path) -> DeltaSink:
        schema = pa.schema([("n", pa.int64()), ("part", pa.int64()), ("double", pa.int64())])
        return DeltaSink(str(tmp_path / "eo"), schema=schema, ordered=False)

    @pytest.fixture
    def dead_letter_sink(self) -> MemorySink:
        return MemorySink()

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_delta_sink
