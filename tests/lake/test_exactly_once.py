"""Exactly-once Parquet under redelivery, on every object store, and the runner's own proof."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onceflow.adapters.memory import (
    ManualClock,
    MemoryIdempotencyStore,
    MemoryObjectStore,
    MemorySink,
)
from onceflow.event import Event
from onceflow.interfaces import ObjectStore, Sink
from onceflow.lake import Hourly, ParquetSink, read_dataset
from onceflow.pipeline import Pipeline, Step
from onceflow.testing import ExactlyOnceContract
from onceflow.testing.exactly_once import CrashAt, deliver
from tests.lake.conftest import CrashingStore, as_any, query

LEASE = 30.0
SCHEMA = pa.schema([("user", pa.string()), ("n", pa.int64()), ("time", pa.timestamp("us", "UTC"))])
START = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def to_click(event: Event) -> dict[str, Any]:
    body = event.json()
    return {"user": f"u{body['n'] % 7}", "n": body["n"], "time": event.time}


@pytest.mark.anyio
async def test_100_batches_twice_shuffled_with_crashes_leave_one_delivery(
    lake_store: ObjectStore,
) -> None:
    batches = [
        [
            Event(
                id=f"e{b * 10 + i}",
                source="clicks",
                time=START + timedelta(minutes=b + i),
                data=json.dumps({"n": b * 10 + i}).encode(),
            )
            for i in range(10)
        ]
        for b in range(100)
    ]
    clock = ManualClock()
    crashing = CrashingStore(lake_store)
    sink = ParquetSink(as_any(crashing), "clicks", schema=SCHEMA, partition_by=Hourly())
    pipeline = Pipeline(
        to_click,
        sink,
        MemoryIdempotencyStore(clock=clock),
        MemorySink(),
        lease_seconds=LEASE,
        clock=clock,
    )
    rng = random.Random(6)
    crashed = 0
    for number, batch in enumerate(batches):
        if number % 5 == 1:
            crashing.crash_next_commit = True  # files written, manifest never committed
        elif number % 5 == 3:
            pipeline.on_step = CrashAt(Step.AFTER_SINK_WRITE)  # committed, keys not completed
        crashed += await deliver(pipeline, batch) is None
        pipeline.on_step = None
    assert crashed == 40 and crashing.crashes == 20
    clock.advance(LEASE + 1)
    second = [rng.sample(batch, len(batch)) for batch in batches]
    rng.shuffle(second)
    for batch in second:
        result = await pipeline.process_batch(batch)
        assert result.ok
    clicks = await read_dataset(lake_store, "clicks")
    sql = "select count(*), count(distinct _event_key) from clicks"
    assert query(sql, clicks=clicks) == [(1000, 1000)]
    # Even reading every Parquet object in the store, manifest or not, finds each row once:
    # a retried batch rewrote the very objects the crashed one had left.
    listed = [i.path for i in await lake_store.list("clicks/") if i.path.endswith(".parquet")]
    raw = pa.concat_tables(
        [pq.read_table(pa.BufferReader(await lake_store.get(p))) for p in listed]
    )
    assert query("select count(*), count(distinct _output_id) from raw", raw=raw) == [(1000, 1000)]


async def read_parquet_sink(sink: Sink) -> dict[str, Any]:
    if isinstance(sink, MemorySink):  # the dead-letter sink
        return sink.contents()
    assert isinstance(sink, ParquetSink)
    table = await read_dataset(sink.store, sink.root)
    return {
        row["_output_id"]: {k: v for k, v in row.items() if v is not None and not k.startswith("_")}
        for row in table.to_pylist()
    }


class TestParquetSinkExactlyOnce(ExactlyOnceContract):
    """The runner's hypothesis-driven proof with a ParquetSink as the sink."""

    max_examples = 12

    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        return MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()

    @pytest.fixture
    def sink(self) -> ParquetSink:
        schema = pa.schema([("n", pa.int64()), ("part", pa.int64()), ("double", pa.int64())])
        return ParquetSink(MemoryObjectStore(), f"eo-{uuid.uuid4().hex[:8]}", schema=schema)

    @pytest.fixture
    def dead_letter_sink(self) -> MemorySink:
        return MemorySink()

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_parquet_sink
