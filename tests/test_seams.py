"""The runner's seams: identities, failure kinds, retry policies, commit strategy, redelivery."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from onceflow import (
    Backoff,
    Event,
    Failure,
    FailureKind,
    InvalidRecord,
    PermanentError,
    Pipeline,
    RetryPolicy,
    TransactionalStore,
)
from onceflow.adapters.memory import Faults, ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.adapters.memory.store import MemoryWrites
from onceflow.commit import AtomicCommit, NoDeadLetters, WriteThenComplete
from onceflow.errors import ConfigurationError
from onceflow.identity import dead_letter_id, event_key, key_parts, output_id, output_suffix
from onceflow.records import Completion, Outcome, OutcomeStatus, Output


def ev(n: int, data: bytes | None = None, **fields: Any) -> Event:
    return Event(id=f"e{n}", source="test", data=data or b'{"n":%d}' % n, **fields)


START = 1_700_000_000.0


def quick(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=Backoff(base=0.01, jitter=False))


# -- identities --------------------------------------------------------------------------


def test_identities_are_built_in_one_place() -> None:
    key = event_key("orders", "17")
    assert key == Event(id="17", source="orders").key == "orders#17"
    assert InvalidRecord(id="17", source="orders", reason="x").key == key
    assert output_id(key, 2) == "orders#17#2"
    assert dead_letter_id(key) == "orders#17#dead-letter"
    assert key_parts(key) == ("orders", "17")
    assert key_parts("no-separator") == ("", "no-separator")
    assert output_suffix(output_id(key, 2), key) == "2"
    assert output_suffix(dead_letter_id(key), key) == "dead-letter"
    assert output_suffix("other#1", key) is None


def test_outputs_and_letters_carry_the_identities() -> None:
    sink, letters = MemorySink(), MemorySink()

    def process(event: Event) -> list[dict[str, int]]:
        if event.id == "e2":
            raise PermanentError("bad order")
        return [{"i": 0}, {"i": 1}]

    Pipeline(process, sink, MemoryIdempotencyStore(), letters).run_batch([ev(1), ev(2)])
    assert sorted(sink.contents()) == [output_id("test#e1", 0), output_id("test#e1", 1)]
    assert list(letters.contents()) == [dead_letter_id("test#e2")]


# -- failure kinds -------------------------------------------------------------------------


def test_every_failure_has_a_kind_and_a_sentence() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    other = store.handle()
    anyio.run(other.claim, ["test#e3"], 60.0)  # another worker holds e3

    def process(event: Event) -> dict[str, int]:
        if event.id == "e2":
            raise PermanentError("bad order")
        if event.id == "e4":
            raise RuntimeError("downstream is down")
        return {"n": 1}

    pipeline = Pipeline(process, MemorySink(), store, MemorySink(), clock=clock, retry=quick(2))
    invalid = InvalidRecord(id="e5", source="test", reason="line 5: not valid JSON")
    result = pipeline.run_batch([ev(1), ev(2), ev(3), ev(4), invalid])
    kinds = {event_id: failure.kind for event_id, failure in result.failures.items()}
    assert kinds == {
        "e2": FailureKind.PERMANENT_ERROR,
        "e3": FailureKind.LEASED_ELSEWHERE,
        "e4": FailureKind.TRANSIENT,
        "e5": FailureKind.INVALID_RECORD,
    }
    assert result.failed == ["e3", "e4"] and FailureKind.LEASED_ELSEWHERE.redelivers
    assert FailureKind.TRANSIENT.redelivers and not FailureKind.DELIVERIES_EXHAUSTED.redelivers
    assert result.reasons["e2"] == str(result.failures["e2"])
    assert "bad order" in result.reasons["e2"] and "e2" in result.reasons["e2"]
    assert isinstance(result.failures["e4"], Failure)


def test_a_lost_lease_and_a_missing_dead_letter_sink_are_kinds_too() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)

    def process(event: Event) -> dict[str, int]:
        if event.id == "e2":
            raise PermanentError("bad order")
        clock.advance(120)  # the lease runs out while processing, and another worker takes it
        anyio.from_thread.run(store.handle().claim, [event.key], 60.0)
        return {"n": 1}

    pipeline = Pipeline(process, MemorySink(), store, None, clock=clock, lease_seconds=60)

    async def main() -> Any:
        return await anyio.to_thread.run_sync(pipeline.run_batch, [ev(1), ev(2)])

    result = anyio.run(main)
    assert result.failures["e1"].kind is FailureKind.LEASE_LOST
    assert result.failures["e2"].kind is FailureKind.NO_DEAD_LETTER_SINK
    assert "bad order" in result.reasons["e2"]


# -- retry policies ----------------------------------------------------------------------


def test_event_and_backend_retries_are_counted_separately() -> None:
    faults = Faults()
    store = MemoryIdempotencyStore(clock=ManualClock(), faults=faults)
    calls: list[str] = []

    def flaky(event: Event) -> dict[str, int]:
        calls.append(event.id)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return {"n": 1}

    faults.fail("store.claim", times=3)
    pipeline = Pipeline(
        flaky,
        MemorySink(),
        store,
        MemorySink(),
        clock=store.clock,
        retry=quick(3),
        backend_retry=quick(4),
    )
    result = pipeline.run_batch([ev(1)])
    assert result.processed == ["e1"]  # 3 claim failures < 4 backend attempts; 3 event attempts
    assert calls == ["e1", "e1", "e1"]


def test_retry_policy_rules() -> None:
    policy = RetryPolicy(attempts=3, backoff=Backoff(base=1.0, factor=2.0, jitter=False))
    assert list(policy.delays()) == [1.0, 2.0]
    assert not policy.exhausted(2) and policy.exhausted(3)
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
    tries: list[int] = []

    def call() -> int:
        tries.append(1)
        if len(tries) < 3:
            raise OSError("throttled")
        return 7

    assert policy.call_blocking(call, sleep=lambda _: None) == 7
    assert len(tries) == 3

    async def always() -> None:
        raise PermanentError("never")

    async def nap(_: float) -> None:
        return None

    with pytest.raises(PermanentError):
        anyio.run(lambda: policy.call(always, sleep=nap, permanent=(PermanentError,)))


# -- the commit seam -----------------------------------------------------------------------


def test_commit_strategy_is_chosen_once_at_construction() -> None:
    store = MemoryIdempotencyStore()
    atomic = Pipeline(lambda e: None, MemorySink(), store, MemorySink())
    plain = Pipeline(lambda e: None, MemorySink(atomic=False), store, None)
    assert isinstance(atomic._committer.outputs, AtomicCommit)
    assert isinstance(atomic._committer.letters, AtomicCommit)
    assert isinstance(plain._committer.outputs, WriteThenComplete)
    assert isinstance(plain._committer.letters, NoDeadLetters)


def test_memory_store_is_a_transactional_store() -> None:
    store = MemoryIdempotencyStore()
    assert isinstance(store, TransactionalStore)
    sink = MemorySink()
    [held, taken] = anyio.run(store.claim, ["k1", "k2"], 30.0)
    anyio.run(store.release, [taken])
    anyio.run(store.handle().claim, ["k2"], 30.0)  # k2's fence is now someone else's
    outputs = [Output(output_id("k1", 0), "k1", "1", 0, {"a": 1}),
               Output(output_id("k2", 0), "k2", "2", 0, {"b": 2})]  # fmt: skip
    done = Outcome(OutcomeStatus.SUCCEEDED, 1)
    completions = [Completion(held, done), Completion(taken, done)]
    accepted = anyio.run(store.complete_with, completions, MemoryWrites(sink._put, outputs))
    assert accepted == [True, False]
    assert sink.contents() == {output_id("k1", 0): {"a": 1}}
    with pytest.raises(ConfigurationError, match="MemoryWrites"):
        anyio.run(store.complete_with, completions, {"k1": [outputs[0]]})


# -- redelivery ----------------------------------------------------------------------------


def test_redeliver_runs_failures_again_until_they_settle() -> None:
    clock = ManualClock(START)
    store = MemoryIdempotencyStore(clock=clock)
    other = store.handle()
    [blocker] = anyio.run(other.claim, ["test#e2"], 5.0)  # held elsewhere for 5 s
    seen: list[tuple[str, int]] = []

    def process(event: Event) -> dict[str, int]:
        seen.append((event.id, event.delivery_count))
        return {"n": 1}

    pipeline = Pipeline(
        process,
        MemorySink(),
        store,
        MemorySink(),
        clock=clock,
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=4.0, jitter=False)),
    )
    result = anyio.run(lambda: pipeline.redeliver([ev(1), ev(2)], rounds=3))
    assert sorted(result.processed) == ["e1", "e2"] and result.failed == []
    assert result.failures == {}
    # Delivered again after the backoff; the store, not the event, counts the deliveries.
    assert seen == [("e1", 1), ("e2", 1)] and clock.now() - START >= 5.0
    assert blocker.status.value == "new"


def test_redeliver_hands_back_what_outlives_the_deadline() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    anyio.run(store.handle().claim, ["test#e2"], 600.0)
    pipeline = Pipeline(lambda e: {"n": 1}, MemorySink(), store, MemorySink(), clock=clock)
    result = anyio.run(lambda: pipeline.redeliver([ev(1), ev(2)], deadline=clock.now() + 10))
    assert result.processed == ["e1"] and result.failed == ["e2"]
    assert result.failures["e2"].kind is FailureKind.LEASED_ELSEWHERE
    assert clock.now() >= 10  # it kept trying until the deadline
