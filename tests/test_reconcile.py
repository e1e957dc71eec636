"""Per-window counts (`onceflow.reconcile`) on the memory backend, and the gaps they show."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.adapters.memory.window_counts import MemoryWindowCounts
from onceflow.errors import ConfigurationError
from onceflow.filters import Filter
from onceflow.metrics import CountingMetrics
from onceflow.reconcile import (
    RETENTION_SECONDS,
    CountRow,
    WindowPolicy,
    count_windows,
    reconcile,
    window_label,
)

START = 1_800_000_000.0  # 2027-01-15T08:00Z: a window boundary for hours
HOUR = 3600


def ev(n: int, **fields: Any) -> Event:
    return Event(id=f"e{n}", source="test", data=b'{"n":%d}' % n, **fields)


def process(event: Event) -> dict[str, int]:
    n = event.json()["n"]
    if n == 13:
        raise PermanentError("thirteen")
    return {"n": n}


def pipeline(clock: ManualClock, **options: Any) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    pipe = Pipeline(
        process,
        sink,
        MemoryIdempotencyStore(clock=clock),
        MemorySink(),
        clock=clock,
        name="p",
        **options,
    )
    return pipe, sink


def test_one_add_per_window_per_batch_and_redelivery_does_not_double_processed() -> None:
    clock = ManualClock(START)
    pipe, _ = pipeline(clock)
    counts = MemoryWindowCounts()
    count_windows(pipe, counts)
    batch = [ev(1), ev(2), ev(13), ev(2)]
    pipe.run_batch(batch)
    assert counts.adds == 1
    pipe.run_batch(batch)  # the platform delivers the whole batch again
    assert counts.adds == 2
    [(key, tally)] = counts.read().items()
    assert key == ("p", int(START))
    # received counts deliveries; processed and dead-lettered each event once.
    assert tally == {
        "received": 8,
        "processed": 2,
        "duplicates": 5,
        "filtered": 0,
        "dead_lettered": 1,
        "failed": 0,
    }
    report = reconcile(counts.read(), source=3)
    assert report.source_gap == 0 and not report.unexplained


def test_processing_time_windows_follow_the_clock() -> None:
    clock = ManualClock(START + HOUR - 1)
    pipe, _ = pipeline(clock)
    counts = MemoryWindowCounts()
    count_windows(pipe, counts)
    pipe.run_batch([ev(1)])
    clock.advance(2)
    pipe.run_batch([ev(2)])
    assert [w for _, w in counts.read()] == [int(START), int(START) + HOUR]
    assert window_label(int(START)) == "2027-01-15T08:00Z"


def test_event_time_windows_split_one_batch() -> None:
    clock = ManualClock(START)
    pipe, _ = pipeline(clock)
    counts = MemoryWindowCounts()
    count_windows(pipe, counts, WindowPolicy(seconds=HOUR, by="event"))
    early = datetime.fromtimestamp(START - HOUR, UTC)
    now = datetime.fromtimestamp(START, UTC)
    pipe.run_batch([ev(1, time=early), ev(2, time=early), ev(3, time=now)])
    windows = counts.read()
    assert counts.adds == 2  # one per window the batch touched
    assert windows[("p", int(START) - HOUR)]["processed"] == 2
    assert windows[("p", int(START))]["processed"] == 1


def test_filtered_events_are_counted_and_explain_missing_rows() -> None:
    clock = ManualClock(START)
    pipe, sink = pipeline(clock, filter=Filter({"data": {"n": [{"numeric": [">", 1]}]}}))
    counts = MemoryWindowCounts()
    count_windows(pipe, counts)
    pipe.run_batch([ev(1), ev(2), ev(3)])
    tally = counts.read()[("p", int(START))]
    assert tally["processed"] == 3 and tally["filtered"] == 1
    report = reconcile(counts.read(), source=3, sink_rows=len(sink.outputs))
    assert report.sink_gap == 0 and not report.unexplained
    dropped = reconcile(counts.read(), source=3, sink_rows=len(sink.outputs) - 1)
    assert dropped.sink_gap == 1 and dropped.unexplained


def test_gaps_duplicates_explain_and_those_they_do_not() -> None:
    windows = {("p", 0): {"received": 5, "processed": 3, "duplicates": 1, "dead_lettered": 1}}
    assert not reconcile(windows, source=5).unexplained  # a repeated key in the source
    assert reconcile(windows, source=6).unexplained_source == 1
    assert reconcile(windows, source=3).unexplained_source == -1  # counted more than held
    unsettled = {("p", 0): {"received": 2, "processed": 1}}
    assert reconcile(unsettled).unexplained  # a delivery with no recorded outcome


@pytest.mark.parametrize("policy", [{"seconds": 0}, {"by": "wall"}])
def test_bad_window_policies_are_refused(policy: Any) -> None:
    with pytest.raises(ConfigurationError):
        WindowPolicy(**policy)


def row(batch: str, written: float, **counts: int) -> CountRow:
    return CountRow("p", int(START), batch, counts, written, written + HOUR)


def test_a_second_write_of_a_batchs_row_replaces_it() -> None:
    counts = MemoryWindowCounts()
    counts.put(row("b1", START, received=3, processed=3))
    counts.put(row("b1", START, received=3, processed=3))  # a retry whose first reply was lost
    counts.put(row("b2", START, received=2, duplicates=2))
    assert counts.read(now=START)[("p", int(START))]["received"] == 5


def test_rows_expire_after_the_retention() -> None:
    clock = ManualClock(START)
    pipe, _ = pipeline(clock)
    counts = MemoryWindowCounts()
    count_windows(pipe, counts, WindowPolicy(retention_seconds=2 * HOUR))
    pipe.run_batch([ev(1)])
    assert counts.read(now=START + 2 * HOUR - 1)
    assert counts.read(now=START + 2 * HOUR) == {}
    assert WindowPolicy().retention_seconds == RETENTION_SECONDS == 35 * 86_400


def test_every_call_is_its_own_attempt() -> None:
    clock = ManualClock(START)
    pipe, _ = pipeline(clock)
    counts = MemoryWindowCounts()
    count_windows(pipe, counts)
    pipe.run_batch([ev(1)])
    pipe.run_batch([ev(1)])  # the same records again: a delivery of its own, added
    assert len({batch for _, _, batch in counts.rows}) == 2


class Refusing(MemoryWindowCounts):
    def put(self, row: CountRow) -> None:
        raise ConnectionError("unreachable")


def test_a_count_write_that_fails_leaves_the_batch_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An in-process `onceflow run` earlier in the session leaves the logger at ERROR.
    caplog.set_level(logging.WARNING, logger="onceflow")
    clock = ManualClock(START)
    metrics = CountingMetrics()
    pipe, sink = pipeline(clock, metrics=metrics)
    count_windows(pipe, Refusing())
    result = pipe.run_batch([ev(1), ev(2)])
    assert result.processed == ["e1", "e2"] and len(sink.outputs) == 2
    assert metrics.counters["window_counts_lost"] == 1
    assert "window counts of pipeline 'p'" in caplog.text and "ConnectionError" in caplog.text


@pytest.mark.parametrize("retention", [0, -1.0])
def test_a_retention_must_be_positive(retention: float) -> None:
    with pytest.raises(ConfigurationError):
        WindowPolicy(retention_seconds=retention)
