"""Ordered mode never applies a lane out of order, on the memory backend and on SQLite.

Issue 17 item 2: with no dead-letter sink, or a dead-letter sink that refuses (or cannot
take) event 1's letter, events 2 and 3 of the lane used to commit while 1 went back for
redelivery, so the lane was applied as [2, 3, 1]. A lane must stop at an event that will
come again, whatever the reason: what follows it is held for redelivery (HELD_FOR_ORDER)
and charged no delivery.

SQLite runs with the real `SqliteIdempotencyStore` and `SqliteSink`, both sharing the
store's file (an atomic commit) and in a file of its own (write, then complete).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink
from onceflow.adapters.memory import Faults, ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.errors import OutputRejected
from onceflow.failures import FailureKind
from onceflow.identity import dead_letter_id, output_id
from onceflow.interfaces import IdempotencyStore, Sink
from onceflow.records import Output
from onceflow.results import BatchResult
from onceflow.retry import RetryPolicy

LANE = "customer-7"


def lane_events() -> list[Event]:
    """Events 1, 2, 3 of one partition, delivered out of order (the lane sorts them)."""
    return [
        Event(id=f"e{n}", source="orders", partition_key=LANE, sequence=str(n), data=b"{}")
        for n in (3, 1, 2)
    ]


class PoisonFirst:
    """Refuses event 1 as a poison pill until `cured`; emits the event's id otherwise."""

    def __init__(self) -> None:
        self.cured = False

    def process(self, event: Event) -> dict[str, str]:
        if event.id == "e1" and not self.cured:
            raise PermanentError("event 1 cannot be applied")
        return {"id": event.id}


class Letters:
    """A plain dead-letter sink (written, then completed) that refuses or fails on demand."""

    def __init__(self) -> None:
        self.mode = "refuse"
        self.letters: dict[str, Any] = {}

    async def write(self, outputs: Sequence[Output]) -> None:
        if self.mode == "refuse":
            raise OutputRejected({o.output_id: "letter too large for the queue" for o in outputs})
        if self.mode == "outage":
            raise ConnectionError("dead-letter queue unreachable")
        self.letters.update((o.output_id, o.value) for o in outputs)


class Backend:
    """A store and output sink, and how to read what the sink applied, in commit order."""

    def __init__(
        self, store: IdempotencyStore, sink: Sink, applied: Callable[[], list[str]]
    ) -> None:
        self.store = store
        self.sink = sink
        self.applied = applied


def memory(_: Path, clock: ManualClock) -> Backend:
    sink = MemorySink()
    return Backend(
        MemoryIdempotencyStore(clock=clock), sink, lambda: [v["id"] for v in sink.values()]
    )


def sqlite_atomic(tmp: Path, clock: ManualClock) -> Backend:
    sink = SqliteSink(tmp / "state.db", clock=clock)
    return Backend(
        SqliteIdempotencyStore(tmp / "state.db", clock=clock),
        sink,
        lambda: [value["id"] for _, _, value in sink.rows()],
    )


def sqlite_write_then_complete(tmp: Path, clock: ManualClock) -> Backend:
    sink = SqliteSink(tmp / "outputs.db", clock=clock)
    return Backend(
        SqliteIdempotencyStore(tmp / "state.db", clock=clock),
        sink,
        lambda: [value["id"] for _, _, value in sink.rows()],
    )


BACKENDS = {
    "memory": memory,
    "sqlite-atomic": sqlite_atomic,
    "sqlite-write-then-complete": sqlite_write_then_complete,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=list(BACKENDS))
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[Backend]:
    made = BACKENDS[request.param](tmp_path, clock)
    yield made
    if isinstance(made.store, SqliteIdempotencyStore):
        made.store.close()


def pipeline(
    backend: Backend, letters: Sink | None, clock: ManualClock, processor: Any
) -> Pipeline:
    return Pipeline(
        processor,
        backend.sink,
        backend.store,
        letters,
        ordered=True,
        clock=clock,
        retry=RetryPolicy(attempts=1),
        backend_retry=RetryPolicy(attempts=2),
    )


def run(p: Pipeline, events: list[Event]) -> BatchResult:
    async def main() -> BatchResult:
        return await p.process_batch(events)

    return anyio.run(main)


def assert_lane_stopped_at_e1(result: BatchResult, backend: Backend, kind: FailureKind) -> None:
    assert sorted(result.failed) == ["e1", "e2", "e3"]
    assert result.failures["e1"].kind is kind
    assert result.failures["e2"].kind is FailureKind.HELD_FOR_ORDER
    assert result.failures["e3"].kind is FailureKind.HELD_FOR_ORDER
    assert backend.applied() == []  # nothing of the lane went past event 1


def test_without_a_dead_letter_sink_the_lane_stops_at_the_poison_event(
    backend: Backend, clock: ManualClock
) -> None:
    processor = PoisonFirst()
    p = pipeline(backend, None, clock, processor)
    for _ in range(3):  # it comes again, and again: the lane never goes past it
        result = run(p, lane_events())
        assert_lane_stopped_at_e1(result, backend, FailureKind.NO_DEAD_LETTER_SINK)
    processor.cured = True  # the fix is deployed: the lane runs in order
    result = run(p, lane_events())
    assert result.processed == ["e3", "e1", "e2"]  # by delivery order
    assert backend.applied() == ["e1", "e2", "e3"]


@pytest.mark.parametrize("mode", ["refuse", "outage"])
def test_a_refused_or_failed_dead_letter_stops_the_lane(
    backend: Backend, clock: ManualClock, mode: str
) -> None:
    letters = Letters()
    letters.mode = mode
    p = pipeline(backend, letters, clock, PoisonFirst())
    result = run(p, lane_events())
    assert_lane_stopped_at_e1(result, backend, FailureKind.DEAD_LETTER_REFUSED)
    letters.mode = "accept"
    result = run(p, lane_events())
    assert result.dead_lettered == ["e1"]
    assert sorted(result.processed) == ["e2", "e3"]
    assert list(letters.letters) == [dead_letter_id(lane_events()[1].key)]
    assert backend.applied() == ["e2", "e3"]


def test_a_letter_the_atomic_dead_letter_sink_refuses_stops_the_lane(
    clock: ManualClock,
) -> None:
    # Memory letters commit with the memory store: the letter and its completion in one step.
    store = MemoryIdempotencyStore(clock=clock)
    sink, faults = MemorySink(), Faults()
    letters = MemorySink(faults=faults)
    key = lane_events()[1].key
    faults.fail("sink.write_and_complete", error=OutputRejected({dead_letter_id(key): "too big"}))
    backend = Backend(store, sink, lambda: [v["id"] for v in sink.values()])
    p = pipeline(backend, letters, clock, PoisonFirst())
    result = run(p, lane_events())
    assert_lane_stopped_at_e1(result, backend, FailureKind.DEAD_LETTER_REFUSED)
    result = run(p, lane_events())
    assert result.dead_lettered == ["e1"]
    assert backend.applied() == ["e2", "e3"]
    assert list(letters.contents()) == [dead_letter_id(key)]


def test_an_output_the_sink_refuses_holds_the_rest_of_its_lane_until_its_letter_lands(
    clock: ManualClock,
) -> None:
    # The sink refuses event 1's output inside the commit: event 1 becomes a dead letter
    # whose letter is not written yet, so events 2 and 3 are not committed behind it.
    store = MemoryIdempotencyStore(clock=clock)
    faults = Faults()
    sink = MemorySink(faults=faults)
    key = lane_events()[1].key
    faults.fail("sink.write_and_complete", error=OutputRejected({output_id(key, 0): "too big"}))
    letters = Letters()
    backend = Backend(store, sink, lambda: [v["id"] for v in sink.values()])
    p = pipeline(backend, letters, clock, _Cured())
    result = run(p, lane_events())
    assert_lane_stopped_at_e1(result, backend, FailureKind.DEAD_LETTER_REFUSED)
    # Next delivery the sink takes event 1's output: the lane is applied in order.
    result = run(p, lane_events())
    assert sorted(result.processed) == ["e1", "e2", "e3"]
    assert backend.applied() == ["e1", "e2", "e3"]


class _Cured(PoisonFirst):
    def __init__(self) -> None:
        self.cured = True


def test_held_events_are_charged_no_delivery(clock: ManualClock) -> None:
    # Processed, then held behind event 1 at commit: the store refunds their deliveries,
    # so waiting behind a poison pill never makes them look like poison pills themselves.
    store = MemoryIdempotencyStore(clock=clock)
    p = Pipeline(PoisonFirst(), MemorySink(), store, None, ordered=True, clock=clock)
    for _ in range(4):
        run(p, lane_events())
    claims = {c.key: c for c in anyio.run(store.claim, [e.key for e in lane_events()], 60.0)}
    deliveries = {key.split("#")[-1]: claim.deliveries for key, claim in claims.items()}
    assert deliveries == {"e1": 5, "e2": 1, "e3": 1}
