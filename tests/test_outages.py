"""An outage is not a poison pill: delivery counting, the circuit breaker, pacing.

A simulated Kinesis-like source on the memory backend and a manual clock: 10,000 events
in 8 shards, a downstream that is down for 60 seconds in the middle of the run. Each
delivery round hands every shard's next records to the pipeline; a shard restarts at its
first failed record (what Lambda does with `batchItemFailures` for Kinesis), so the
source keeps per-shard order and the pipeline must keep it too.
"""

from __future__ import annotations

import anyio
import pytest

from onceflow import (
    Backoff,
    CircuitBreaker,
    Event,
    FailureKind,
    Pipeline,
    RateLimit,
    RetryPolicy,
)
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink

SHARDS = 8
START = 1_700_000_000.0


class Downstream:
    """A database the processor writes through: down between `down_from` and `down_until`."""

    def __init__(self, clock: ManualClock, down_from: float, down_until: float) -> None:
        self.clock = clock
        self.down_from, self.down_until = down_from, down_until
        self.calls = 0
        self.calls_while_down = 0
        self.poison: set[str] = set()

    def process(self, event: Event) -> dict[str, object]:
        self.calls += 1
        if event.id in self.poison:
            raise ValueError("this order breaks the downstream's parser")  # transient-looking
        if self.down_from <= self.clock.now() < self.down_until:
            self.calls_while_down += 1
            raise ConnectionError("database is unreachable")
        body = event.json()
        return {"shard": event.partition_key, "n": body["n"]}


def shards(count: int) -> list[list[Event]]:
    lanes: list[list[Event]] = [[] for _ in range(SHARDS)]
    for n in range(count):
        lane = n % SHARDS
        lanes[lane].append(
            Event(
                id=f"e{n}",
                source="stream",
                partition_key=f"shard-{lane}",
                sequence=str(n),
                data=b'{"n": %d}' % n,
            )
        )
    return lanes


def drain(
    pipeline: Pipeline, lanes: list[list[Event]], clock: ManualClock, per_shard: int = 25
) -> tuple[int, int]:
    """Deliver every shard until all are settled; (rounds, events handed back)."""
    cursors = [0] * len(lanes)
    rounds = handed_back = 0
    while any(c < len(lane) for c, lane in zip(cursors, lanes, strict=True)):
        rounds += 1
        batch = [e for c, lane in zip(cursors, lanes, strict=True) for e in lane[c : c + per_shard]]
        result = pipeline.run_batch(batch)
        failed = set(result.failed)
        handed_back += len(failed)
        for index, lane in enumerate(lanes):
            window = lane[cursors[index] : cursors[index] + per_shard]
            first = next((i for i, e in enumerate(window) if e.id in failed), len(window))
            cursors[index] += first
        clock.advance(1.0)  # the poller's next round
        assert rounds < 5_000, "the source never drained"
    return rounds, handed_back


def make(
    downstream: Downstream, clock: ManualClock, *, ordered: bool = True, **options: object
) -> tuple[Pipeline, MemorySink, MemorySink]:
    sink, letters = MemorySink(), MemorySink()
    pipeline = Pipeline(
        downstream,
        sink,
        MemoryIdempotencyStore(clock=clock),
        letters,
        ordered=ordered,
        clock=clock,
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.1, jitter=False)),
        **options,  # type: ignore[arg-type]
    )
    return pipeline, sink, letters


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_minute_long_outage_dead_letters_nothing_and_loses_nothing(ordered: bool) -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START + 20, START + 80)
    pipeline, sink, letters = make(downstream, clock, ordered=ordered)
    _, handed_back = drain(pipeline, shards(10_000), clock)
    assert len(letters) == 0
    assert len(sink) == 10_000 and set(sink.write_counts().values()) == {1}
    assert handed_back > 0
    if ordered:
        # Each shard's outputs were committed in sequence order, outage or not.
        by_shard: dict[str, list[int]] = {}
        for oid in sink.writes:
            value = sink.contents()[oid]
            by_shard.setdefault(value["shard"], []).append(value["n"])
        assert all(ns == sorted(ns) for ns in by_shard.values())


def test_the_open_circuit_lets_one_probe_through_per_cool_down() -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START + 20, START + 80)
    breaker = CircuitBreaker(failures=10, cool_down=5.0)
    pipeline, sink, _ = make(downstream, clock, breaker=breaker)
    drain(pipeline, shards(10_000), clock)
    # Until the circuit opens: the failures that open it, with their in-process retries;
    # then one probe per cool-down for the rest of the minute.
    opening = breaker.failures * 3
    assert downstream.calls_while_down <= opening + 60 / breaker.cool_down + 1
    assert len(sink) == 10_000


def test_without_a_breaker_enough_deliveries_ride_the_outage_out() -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START + 2, START + 62)
    pipeline, sink, letters = make(downstream, clock, breaker=False, max_deliveries=100)
    drain(pipeline, shards(2_000), clock)
    assert len(letters) == 0 and len(sink) == 2_000
    assert downstream.calls_while_down > 1_000  # what the breaker saves the downstream


def test_a_poison_pill_inside_the_outage_is_dead_lettered_once_after_max_deliveries() -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START + 20, START + 80)
    downstream.poison = {"e4242"}
    pipeline, sink, letters = make(downstream, clock, max_deliveries=5)
    drain(pipeline, shards(10_000), clock)
    assert list(letters.contents()) == ["stream#e4242#dead-letter"]
    letter = letters.values()[0]
    assert "failed 5 deliveries" in letter["message"]
    assert "ValueError" in letter["message"] and "4242" not in letter["message"].split(":")[-1]
    assert len(sink) == 9_999


def test_store_counts_deliveries_and_refunds_held_back_events() -> None:
    clock = ManualClock(START)
    store = MemoryIdempotencyStore(clock=clock)
    [first] = anyio.run(store.claim, ["k"], 30.0)
    assert first.deliveries == 1
    anyio.run(store.release, [first])
    [second] = anyio.run(store.claim, ["k"], 30.0)
    assert second.deliveries == 2
    anyio.run(lambda: store.release([second], refund=True))
    [third] = anyio.run(store.claim, ["k"], 30.0)
    assert third.deliveries == 2
    clock.advance(31)  # its holder died: the takeover is another delivery
    [fourth] = anyio.run(store.handle().claim, ["k"], 30.0)
    assert fourth.deliveries == 3


def test_the_platform_count_is_used_when_higher() -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START, START + 3600)
    # A store that misses crashed deliveries (DynamoDB upsert): the platform's count helps.
    pipeline = Pipeline(
        downstream,
        MemorySink(),
        MemoryIdempotencyStore(clock=clock, counts_every_delivery=False),
        MemorySink(),
        clock=clock,
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.1, jitter=False)),
        max_deliveries=5,
        breaker=False,
    )
    event = Event(id="m1", source="queue", data=b'{"n": 1}', delivery_count=5)
    result = pipeline.run_batch([event])  # SQS says this is its fifth receive
    assert result.dead_lettered == ["m1"]
    assert result.failures["m1"].kind is FailureKind.DELIVERIES_EXHAUSTED


def test_held_back_events_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, START, START + 3600)
    pipeline, _, _ = make(downstream, clock, ordered=False, breaker=CircuitBreaker(failures=3))
    batch = [e for lane in shards(200) for e in lane]
    with caplog.at_level("WARNING", logger="onceflow"):
        result = pipeline.run_batch(batch)
    kinds = {f.kind for f in result.failures.values()}
    assert kinds == {FailureKind.CIRCUIT_OPEN}  # the 3 that opened it were waiting to retry
    assert len(result.failed) == 200 and not result.dead_lettered
    held = [r for r in caplog.records if "circuit open" in r.getMessage()]
    assert len(held) == 1 and "ConnectionError" in held[0].getMessage()
    assert "200 event(s) handed back" in held[0].getMessage()


def test_rate_limit_paces_processor_calls_and_sink_writes() -> None:
    clock = ManualClock(START)
    downstream = Downstream(clock, 0, 0)
    pipeline, sink, _ = make(
        downstream,
        clock,
        ordered=False,
        rate_limit=RateLimit(per_second=100),
        write_rate_limit=RateLimit(per_second=1000),
    )
    batch = [e for lane in shards(500) for e in lane]
    pipeline.run_batch(batch)
    assert len(sink) == 500
    assert clock.now() - START == pytest.approx(4.0, abs=0.05)  # 500 calls at 100/s, burst 100


def test_a_poison_pill_that_is_the_probe_does_not_hold_the_circuit_open() -> None:
    # The first event of the first shard is both the circuit's probe and a poison pill:
    # the next probe tries another key, the circuit closes, and the pill is charged.
    clock = ManualClock(START)
    downstream = Downstream(clock, START, START + 60)
    downstream.poison = {"e0"}
    pipeline, sink, letters = make(downstream, clock)
    drain(pipeline, shards(2_000), clock)
    assert list(letters.contents()) == ["stream#e0#dead-letter"]
    assert len(sink) == 1_999
