"""The runner's behaviour, one rule at a time, on the memory backend."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from onceflow import (
    Backoff,
    ConfigurationError,
    CountingMetrics,
    Event,
    InvalidRecord,
    PermanentError,
    Pipeline,
    run_source,
)
from onceflow.adapters.memory import (
    Faults,
    ManualClock,
    MemoryIdempotencyStore,
    MemorySink,
    MemorySource,
)
from onceflow.records import ClaimStatus, Output
from onceflow.retry import RetryPolicy


def ev(n: int, data: bytes | None = None, **fields: Any) -> Event:
    return Event(id=f"e{n}", source="test", data=data or b'{"n":%d}' % n, **fields)


class Double:
    def process(self, event: Event) -> dict[str, int]:
        return {"n": event.json()["n"] * 2}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore(clock=clock)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def dlq() -> MemorySink:
    return MemorySink()


def make(
    processor: Any,
    store: MemoryIdempotencyStore,
    sink: MemorySink,
    dlq: MemorySink | None,
    clock: ManualClock,
    **options: Any,
) -> Pipeline:
    retry = RetryPolicy(attempts=options.pop("max_attempts", 3), backoff=Backoff(seed=1))
    return Pipeline(processor, sink, store, dlq, clock=clock, retry=retry, **options)


# -- processors -------------------------------------------------------------------------------


def test_sync_async_function_and_generator_processors(
    store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    class AsyncOne:
        async def process(self, event: Event) -> dict[str, str]:
            await anyio.sleep(0)
            return {"id": event.id}

    class Many:
        def process(self, event: Event) -> Iterator[dict[str, int]]:
            yield from ({"part": i} for i in range(3))

    def nothing(event: Event) -> None:
        return None

    cases: list[tuple[Any, list[Any]]] = [
        (AsyncOne(), [{"id": "x"}]),
        (Many(), [{"part": 0}, {"part": 1}, {"part": 2}]),
        (nothing, []),
    ]
    for n, (processor, expected) in enumerate(cases):
        sink = MemorySink()
        # A source per case: the store remembers keys across the cases.
        result = make(processor, store, sink, None, clock).run_batch(
            [Event(id="x", source=f"case{n}")]
        )
        assert result.processed == ["x"]
        assert sink.values() == expected


def test_output_ids_are_deterministic(store: MemoryIdempotencyStore, clock: ManualClock) -> None:
    class Two:
        def process(self, event: Event) -> list[dict[str, int]]:
            return [{"i": 0}, {"i": 1}]

    sink = MemorySink()
    make(Two(), store, sink, None, clock).run_batch([ev(1)])
    assert sorted(sink.contents()) == ["test#e1#0", "test#e1#1"]


def test_pydantic_outputs_are_stored_as_plain_data(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    class Out(BaseModel):
        n: int

    class Proc:
        def process(self, event: Event) -> Out:
            return Out(n=event.json()["n"])

    make(Proc(), store, sink, None, clock).run_batch([ev(5)])
    assert sink.values() == [{"n": 5}]


def test_setup_runs_once_per_worker(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    class WithSetup:
        calls = 0

        async def setup(self) -> None:
            WithSetup.calls += 1

        def process(self, event: Event) -> None:
            return None

    pipeline = make(WithSetup(), store, sink, None, clock)
    pipeline.run_batch([ev(1)])
    pipeline.run_batch([ev(2)])
    assert WithSetup.calls == 1


def test_object_without_process_is_refused(store: MemoryIdempotencyStore, sink: MemorySink) -> None:
    with pytest.raises(ConfigurationError, match="no process"):
        Pipeline(object(), sink, store)


# -- retries and dead letters ---------------------------------------------------------------


def test_transient_failure_is_retried_with_growing_backoff(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class FailTwice:
        attempts = 0

        def process(self, event: Event) -> dict[str, int]:
            FailTwice.attempts += 1
            if FailTwice.attempts < 3:
                raise ConnectionError("downstream hiccup")
            return {"ok": 1}

    result = make(FailTwice(), store, sink, dlq, clock, max_attempts=3).run_batch([ev(1)])
    assert result.processed == ["e1"]
    assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0]
    assert len(dlq) == 0


def test_exhausted_retries_dead_letter_with_the_whole_story(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class Always:
        def process(self, event: Event) -> None:
            raise TimeoutError("upstream timed out")

    # One delivery allowed: the in-process attempts are all it gets.
    pipeline = make(Always(), store, sink, dlq, clock, max_attempts=4, max_deliveries=1)
    result = pipeline.run_batch([ev(1), ev(2)])
    assert sorted(result.dead_lettered) == ["e1", "e2"]
    letter = dlq.contents()["test#e1#dead-letter"]
    assert letter["error_type"] == "TimeoutError"
    assert "event e1 from test" in letter["message"] and "upstream timed out" in letter["message"]
    assert letter["attempts"] == 4
    assert "Traceback" in letter["traceback"]
    assert letter["event"]["id"] == "e1" and letter["event"]["data"] == {"n": 1}
    assert letter["first_attempt_at"] < letter["failed_at"]
    [claim] = anyio.run(store.claim, ["test#e1"], 30.0)
    assert claim.status is ClaimStatus.COMPLETED  # redelivery will not repeat it
    assert make(Always(), store, sink, dlq, clock).run_batch([ev(1)]).duplicates == ["e1"]


def test_permanent_and_validation_errors_skip_retries(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class Order(BaseModel):
        order_id: str

    class Strict:
        def process(self, event: Event) -> Order:
            if event.id == "e1":
                raise PermanentError("refund of an unknown order")
            return Order.model_validate_json(event.data)

    result = make(Strict(), store, sink, dlq, clock).run_batch([ev(1), ev(2, b'{"secret": 1}')])
    assert sorted(result.dead_lettered) == ["e1", "e2"]
    assert clock.slept == []
    message = dlq.contents()["test#e2#dead-letter"]["message"]
    assert "order_id: Field required" in message
    assert "secret" not in message  # the payload never reaches messages or logs


def test_bad_records_are_dead_lettered_and_the_rest_continue(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    invalid = InvalidRecord(
        id="line-3",
        source="in.jsonl",
        reason="in.jsonl:3: not JSON",
        raw=b"{",
        locator="in.jsonl:3",
    )
    batch = [ev(1), ev(2, b"\xff\xfe"), invalid, ev(4)]
    result = make(Double(), store, sink, dlq, clock).run_batch(batch)
    assert sorted(result.processed) == ["e1", "e4"]
    assert sorted(result.dead_lettered) == ["e2", "line-3"]
    assert "not valid JSON" in result.reasons["e2"]
    assert "in.jsonl:3" in result.reasons["line-3"]


def test_unstorable_output_is_dead_lettered(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class Weird:
        def process(self, event: Event) -> Any:
            return {"v": float("nan")} if event.id == "e1" else {"v": 1}

    result = make(Weird(), store, sink, dlq, clock).run_batch([ev(1), ev(2)])
    assert result.dead_lettered == ["e1"] and result.processed == ["e2"]
    assert "output 0 cannot be stored" in result.reasons["e1"]


@pytest.mark.parametrize("atomic", [True, False])
def test_output_the_sink_refuses_is_dead_lettered(
    atomic: bool, store: MemoryIdempotencyStore, dlq: MemorySink, clock: ManualClock
) -> None:
    class Sized:
        def process(self, event: Event) -> dict[str, str]:
            return {"blob": "x" * (500 if event.id == "e2" else 5)}

    sink = MemorySink(atomic=atomic, max_value_bytes=100)
    result = make(Sized(), store, sink, dlq, clock).run_batch([ev(1), ev(2), ev(3)])
    assert result.dead_lettered == ["e2"]
    assert sorted(result.processed) == ["e1", "e3"]
    assert sorted(sink.contents()) == ["test#e1#0", "test#e3#0"]
    assert "over this sink's 100-byte limit" in result.reasons["e2"]
    assert make(Sized(), store, sink, dlq, clock).run_batch([ev(2)]).duplicates == ["e2"]


def test_without_dead_letter_sink_failures_are_redelivered(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    class Bad:
        def process(self, event: Event) -> None:
            raise PermanentError("nope")

    result = make(Bad(), store, sink, None, clock).run_batch([ev(1)])
    assert result.failed == ["e1"]
    assert "no dead-letter sink" in result.reasons["e1"]
    assert store.status("test#e1") is None  # released: the redelivery can claim it at once


# -- keys, duplicates, leases -----------------------------------------------------------------


def test_custom_key_and_a_key_function_that_fails(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    def by_order(event: Event) -> str:
        return "order/" + event.json()["order"]

    pipeline = make(Double(), store, sink, dlq, clock, key=by_order)
    first = pipeline.run_batch(
        [ev(1, b'{"n":1,"order":"A"}'), ev(2, b'{"n":2,"order":"A"}'), ev(3, b"{}")]
    )
    assert first.processed == ["e1"] and first.duplicates == ["e2"]
    assert first.dead_lettered == ["e3"] and "key function failed" in first.reasons["e3"]


def test_in_batch_duplicate_shares_the_fate_of_the_first(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    ok = make(Double(), store, sink, None, clock).run_batch([ev(1), ev(1)])
    assert ok.processed == ["e1"] and ok.duplicates == ["e1"]

    class Bad:
        def process(self, event: Event) -> None:
            raise PermanentError("no")

    failed = make(Bad(), store, sink, None, clock).run_batch([ev(9), ev(9)])
    assert failed.failed == ["e9", "e9"]


def test_event_leased_elsewhere_is_reported_failed(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    anyio.run(store.handle().claim, ["test#e1"], 60.0)
    result = make(Double(), store, sink, None, clock).run_batch([ev(1), ev(2)])
    assert result.failed == ["e1"] and result.processed == ["e2"]
    assert "another worker" in result.reasons["e1"]


def test_lease_takeover_mid_batch_commits_once(
    store: MemoryIdempotencyStore, dlq: MemorySink, clock: ManualClock
) -> None:
    other_store = store.handle()
    taken: list[Any] = []

    class Slow:
        async def process(self, event: Event) -> dict[str, str]:
            clock.advance(100)  # outlives the 10 s lease
            taken.extend(await other_store.claim([event.key], 10.0))
            return {"by": "slow"}

    sink = MemorySink()
    result = make(Slow(), store, sink, dlq, clock, lease_seconds=10).run_batch([ev(1)])
    assert taken[0].status is ClaimStatus.NEW  # the other worker took the key over
    assert result.failed == ["e1"] and "lease lost" in result.reasons["e1"]
    assert len(sink) == 0  # the refused commit wrote nothing


# -- time budget, backend faults --------------------------------------------------------------


def test_deadline_stops_new_work_and_releases_it(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    class Slow:
        def process(self, event: Event) -> dict[str, int]:
            clock.advance(2)
            return {"n": 1}

    pipeline = make(Slow(), store, sink, None, clock, ordered=True)
    batch = [ev(n, partition_key="p", sequence=str(n)) for n in range(5)]
    result = pipeline.run_batch(batch, deadline=clock.now() + 0.5)
    assert result.processed == ["e0"]
    assert result.failed == ["e1", "e2", "e3", "e4"]
    assert all(store.status(f"test#e{n}") is None for n in range(1, 5))


def test_retry_that_would_outlive_the_budget_is_left_for_redelivery(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class Flaky:
        def process(self, event: Event) -> None:
            raise ConnectionError("try later")

    pipeline = make(Flaky(), store, sink, dlq, clock, time_budget=0.01, max_attempts=5)
    result = pipeline.run_batch([ev(1)])
    assert result.failed == ["e1"] and len(dlq) == 0


def test_store_outage_fails_the_batch_for_redelivery(clock: ManualClock, sink: MemorySink) -> None:
    faults = Faults()
    store = MemoryIdempotencyStore(clock=clock, faults=faults)
    faults.fail("store.claim", times=1)
    assert make(Double(), store, sink, None, clock).run_batch([ev(1)]).processed == ["e1"]
    faults.fail("store.claim", times=10)
    down = make(Double(), store, sink, None, clock).run_batch([ev(2)])
    assert down.failed == ["e2"] and "store unavailable" in down.reasons["e2"]


def test_transient_sink_failure_is_retried(
    store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    faults = Faults()
    sink = MemorySink(atomic=False, faults=faults)
    faults.fail("sink.write", times=2)
    result = make(Double(), store, sink, None, clock).run_batch([ev(1)])
    assert result.processed == ["e1"] and len(sink) == 1


# -- ordering ----------------------------------------------------------------------------------


def test_ordered_mode_sorts_lanes_by_sequence_and_leaves_keyless_events_free(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    seen: list[str] = []

    class Record:
        def process(self, event: Event) -> None:
            seen.append(event.id)

    batch = [
        ev(3, partition_key="a", sequence="10"),
        ev(1, partition_key="a", sequence="9"),
        ev(2, partition_key="a", sequence="100"),
        ev(7),
    ]
    make(Record(), store, sink, None, clock, ordered=True).run_batch(batch)
    assert [e for e in seen if e != "e7"] == ["e1", "e3", "e2"]
    assert "e7" in seen


# -- observability -----------------------------------------------------------------------------


def test_metrics_and_structured_logs_without_payload(
    store: MemoryIdempotencyStore,
    sink: MemorySink,
    dlq: MemorySink,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    pipeline = make(Double(), store, sink, dlq, clock, metrics=metrics, max_deliveries=1)
    with caplog.at_level(logging.INFO, logger="onceflow"):
        pipeline.run_batch([ev(1), ev(2, b'{"card":"4111-1111"}'), ev(1)])
    assert metrics.counters["received"] == 3
    assert metrics.counters["processed"] == 1
    assert metrics.counters["duplicates"] == 1
    assert metrics.counters["dead_lettered"] == 1
    assert metrics.timings["batch_seconds"]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.event_key == "test#e2"  # type: ignore[attr-defined]
    assert record.attempt == 3  # type: ignore[attr-defined]
    assert "4111" not in record.getMessage()


def test_json_log_formatter_carries_the_extra_fields() -> None:
    from onceflow import JsonFormatter

    record = logging.makeLogRecord(
        {
            "msg": "boom %s",
            "args": ("x",),
            "event_key": "s#1",
            "levelname": "WARNING",
            "name": "onceflow",
        }
    )
    line = JsonFormatter(service="orders").format(record)
    import json

    parsed = json.loads(line)
    assert parsed["message"] == "boom x" and parsed["event_key"] == "s#1"
    assert parsed["service"] == "orders" and parsed["level"] == "WARNING"


def test_payload_reuse_is_reported(
    store: MemoryIdempotencyStore,
    sink: MemorySink,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    pipeline = make(Double(), store, sink, None, clock, check_payload=True, metrics=metrics)
    pipeline.run_batch([ev(1)])
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        result = pipeline.run_batch([ev(1, b'{"n":999}')])
    assert result.duplicates == ["e1"]
    assert metrics.counters["key_reused"] == 1
    assert "different payload" in caplog.text


# -- pull mode ---------------------------------------------------------------------------------


def test_run_source_redelivers_failures_until_done(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    anyio.run(store.handle().claim, ["test#e3"], 5.0)  # busy elsewhere for 5 s

    class Tick:
        def process(self, event: Event) -> dict[str, int]:
            clock.advance(1)
            return {"n": 1}

    source = MemorySource([ev(n) for n in range(6)])
    total = anyio.run(
        lambda: run_source(make(Tick(), store, sink, dlq, clock), source, batch_size=2)
    )
    assert sorted(total.processed) == [f"e{n}" for n in range(6)]
    assert source.redelivered.count("e3") >= 1
    assert len(sink) == 6


def test_dead_letter_of_a_payload_with_nan_is_still_written(
    store: MemoryIdempotencyStore, sink: MemorySink, dlq: MemorySink, clock: ManualClock
) -> None:
    class Refuse:
        def process(self, event: Event) -> None:
            raise PermanentError("no")

    result = make(Refuse(), store, sink, dlq, clock).run_batch([ev(1, b'{"n":NaN}')])
    assert result.dead_lettered == ["e1"]
    assert dlq.values()[0]["event"]["data_base64"]


def test_the_one_dict_fast_path_builds_the_same_output_as_the_general_path(
    store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    # A sync processor's dict takes the runner's fast path (the Output built as a bare
    # tuple); an async processor's goes through the general one. They must agree field by
    # field, and a field added to Output must be added to the fast path too.
    class Capture:
        def __init__(self) -> None:
            self.outputs: list[Any] = []

        async def write(self, outputs: Any) -> None:
            self.outputs.extend(outputs)

    class Sync:
        def process(self, event: Event) -> dict[str, int]:
            return {"n": 1}

    class Async:
        async def process(self, event: Event) -> dict[str, int]:
            return {"n": 1}

    captured = []
    event = ev(1, partition_key="p", sequence="7")
    for processor in (Sync(), Async()):
        sink = Capture()
        make(processor, MemoryIdempotencyStore(clock=clock), sink, None, clock).run_batch([event])
        (output,) = sink.outputs
        assert type(output) is Output and len(output) == len(Output._fields)
        captured.append(output)
    assert captured[0] == captured[1]
    assert captured[0] == Output(
        output_id="test#e1#0",
        event_key="test#e1",
        event_id="e1",
        index=0,
        value={"n": 1},
        partition_key="p",
        time=event.time,
        sequence="7",
    )


def test_run_batch_keeps_one_event_loop_per_thread_and_closes_it_with_the_thread(
    store: MemoryIdempotencyStore, sink: MemorySink, clock: ManualClock
) -> None:
    import asyncio
    import gc
    import threading

    loops: list[asyncio.AbstractEventLoop] = []

    def process(event: Event) -> None:
        loops.append(asyncio.get_running_loop())

    pipeline = make(process, store, sink, None, clock)
    pipeline.run_batch([ev(1)])
    pipeline.run_batch([ev(2)])
    worker = threading.Thread(target=lambda: pipeline.run_batch([ev(3)]))
    worker.start()
    worker.join()
    del worker
    gc.collect()
    mine, again, theirs = loops
    assert mine is again and theirs is not mine  # one loop per thread, made once
    assert theirs.is_closed() and not mine.is_closed()  # closed when its thread ended
