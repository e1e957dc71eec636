"""Non-idempotent writes (counters) under duplicate and concurrent delivery, on the moto server."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from onceflow.adapters.aws import (
    DynamoDBIdempotencyStore,
    DynamoDBMode,
    DynamoDBSink,
    dynamodb_pipeline_parts,
)
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.clock import ManualClock
from onceflow.event import Event
from onceflow.metrics import CountingMetrics
from onceflow.pipeline import BatchResult, Pipeline
from onceflow.records import Output
from tests.aws.moto_clients import dynamodb_worker_client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

USERS = 4
EVENTS = 60


class CountPerUser:
    """The DynamoDB-Streams aggregate pattern: one output per event naming its user."""

    def process(self, event: Event) -> dict[str, str]:
        return {"user": event.json()["user"]}


def increment(ns: str) -> Callable[[Output], dict[str, Any]]:
    def action(output: Output) -> dict[str, Any]:
        return {
            "Update": {
                "Key": {"pk": f"{ns}#user#{output.value['user']}"},
                "UpdateExpression": "ADD event_count :one",
                "ExpressionAttributeValues": {":one": 1},
            }
        }

    return action


@pytest.mark.parametrize(
    "mode", [DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC], ids=["fenced", "optimistic"]
)
@pytest.mark.anyio
async def test_counts_are_exact_under_duplicate_and_concurrent_delivery(
    mode: DynamoDBMode, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    ns = f"count-{uuid.uuid4().hex[:8]}"
    clock = ManualClock()
    state, totals = dynamodb_tables("count-state"), dynamodb_tables("count-totals")
    events = [
        Event(id=f"e{n}", source=ns, data=json.dumps({"user": f"u{n % USERS}"}).encode())
        for n in range(EVENTS)
    ]

    def worker() -> Pipeline:
        store, sink = dynamodb_pipeline_parts(
            state,
            totals,
            mode=mode,
            client=dynamodb_worker_client(moto),
            clock=clock,
            action=increment(ns),
        )
        return Pipeline(CountPerUser(), sink, store, lease_seconds=30, clock=clock)

    workers = [worker() for _ in range(3)]
    rng = random.Random(7)
    deliveries = []
    for _ in range(6):  # overlapping, shuffled batches with in-batch duplicates
        batch = rng.sample(events, 30) + rng.sample(events, 5)
        deliveries.append(batch)
    results: list[BatchResult] = []

    async def deliver(pipeline: Pipeline, batch: list[Event]) -> None:
        results.append(await pipeline.process_batch(batch))

    async with anyio.create_task_group() as group:
        for i, batch in enumerate(deliveries):
            group.start_soon(deliver, workers[i % 3], batch)
    clock.advance(31)
    final = await workers[0].process_batch(events)
    assert final.ok, final.reasons
    again = await workers[1].process_batch(events)
    assert sorted(again.duplicates) == sorted(e.id for e in events)

    client = dynamodb_worker_client(moto)
    counts = {}
    for u in range(USERS):
        item = client.get_item(
            TableName=totals, Key={"pk": {"S": f"{ns}#user#u{u}"}}, ConsistentRead=True
        )["Item"]
        counts[f"u{u}"] = int(from_wire(item)["event_count"])
    assert counts == dict(Counter(f"u{n % USERS}" for n in range(EVENTS)))


@pytest.mark.anyio
async def test_same_key_with_another_payload_is_reported(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    clock, metrics = ManualClock(), CountingMetrics()
    store = DynamoDBIdempotencyStore(dynamodb_tables("state"), client=dynamodb_client, clock=clock)
    sink = DynamoDBSink(dynamodb_tables("outputs"), client=dynamodb_client)
    pipeline = Pipeline(
        lambda e: e.json(), sink, store, clock=clock, metrics=metrics, check_payload=True
    )
    ns = f"reuse-{uuid.uuid4().hex[:8]}"
    first = await pipeline.process_batch([Event(id="o1", source=ns, data=b'{"total": 1}')])
    second = await pipeline.process_batch([Event(id="o1", source=ns, data=b'{"total": 2}')])
    assert first.processed == ["o1"] and second.duplicates == ["o1"]
    assert metrics.counters["key_reused"] == 1
    assert sink.read_all()[f"{ns}#o1#0"] == {"total": 1}
