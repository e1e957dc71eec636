"""A batch's deadline reaches the backend retry loops: none waits past it."""

from __future__ import annotations

import json

import anyio

from onceflow.adapters.memory import Faults, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import Backoff, RetryPolicy


def test_backend_retries_stop_at_the_batch_deadline() -> None:
    faults = Faults()
    faults.fail("store.claim", times=50, error=ConnectionError("state store down"))
    store = MemoryIdempotencyStore(faults=faults)
    pipeline = Pipeline(
        lambda e: e.json(),
        MemorySink(),
        store,
        MemorySink(),
        # Waits of 5 s and more between attempts: any one of them passes a 2 s deadline.
        backend_retry=RetryPolicy(attempts=50, backoff=Backoff(base=5.0, jitter=False)),
    )
    events = [Event(id="e1", source="t", data=json.dumps({"n": 1}).encode())]

    async def main() -> object:
        return await pipeline.process_batch(events, deadline=pipeline.clock.now() + 2.0)

    result = anyio.run(main)
    # One attempt, no wait: the event comes again, it is not dead-lettered.
    assert faults.failed == ["store.claim"]
    assert result.failed == ["e1"] and not result.dead_lettered  # type: ignore[attr-defined]
