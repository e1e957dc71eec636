"""A minute-long outage through the Lambda handler, with Lambda's pollers simulated.

The downstream a processor writes through is down for 60 seconds in the middle of the
run. `SimulatedShards` restarts each Kinesis shard at its lowest failed sequence number;
`SimulatedQueue` brings failed SQS messages back after their visibility timeout with
`ApproximateReceiveCount` one higher (a FIFO group stays blocked behind its failed
message). Time is a manual clock shared by the pipeline and the pollers. Nothing may be
dead-lettered but a poison pill, which must be dead-lettered once, after max_deliveries;
every effect lands once and per-key order holds for Kinesis and FIFO.

On the memory backend with 10,000 events; on DynamoDB (the moto server) with 300 in
`make test` and 10,000 in `make soak` (`ONCEFLOW_OUTAGE_EVENTS`), one store mode per
trigger: FENCED for Kinesis, UPSERT for SQS standard, OPTIMISTIC for FIFO.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from onceflow import Backoff, Event, Pipeline, RetryPolicy
from onceflow.adapters.aws import BatchFailed, DynamoDBMode, dynamodb_pipeline_parts, lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.interfaces import IdempotencyStore, Sink
from onceflow.records import Output
from tests.aws.moto_clients import dynamodb_worker_client
from tests.support.servers import MotoServer

START = 1_700_000_000.0
OUTAGE = (START + 10, START + 70)
KEYS = 40
FAST = RetryPolicy(attempts=8, backoff=Backoff(base=0.001, cap=0.01))
Poller = aws.SimulatedShards | aws.SimulatedQueue


class Downstream:
    """The database behind the processor: unreachable during `OUTAGE`; `poison` never works."""

    def __init__(self, clock: ManualClock, poison: str | None = None) -> None:
        self.clock = clock
        self.poison = poison
        self.calls_while_down = 0
        self.applied: dict[str, list[int]] = {}
        """Each key's event numbers in the order the processor succeeded with them."""

    def process(self, event: Event) -> dict[str, Any]:
        body = event.json()
        if body["n"] == self.poison:
            raise ValueError("this order breaks the downstream's parser")  # transient-looking
        if OUTAGE[0] <= self.clock.now() < OUTAGE[1]:
            self.calls_while_down += 1
            raise ConnectionError("database is unreachable")
        self.applied.setdefault(body["key"], []).append(body["n"])
        return body


def body(n: int) -> str:
    return json.dumps({"n": n, "key": f"k{n % KEYS}"})


def kinesis(clock: ManualClock, count: int, *, shards: int = 4, batch: int = 100) -> Poller:
    lanes: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    for n in range(count):
        key = n % KEYS
        lanes[key % shards].append(
            aws.kinesis_record(n, body(n).encode(), f"k{key}", f"shardId-{key % shards:012d}")
        )
    return aws.SimulatedShards(lanes, clock, batch_size=batch, poll_interval=1.0)


def queue(clock: ManualClock, count: int, *, fifo: bool, batch: int = 100) -> Poller:
    sqs = aws.SimulatedQueue(clock, batch_size=batch, concurrency=5, visibility_timeout=30.0)
    for n in range(count):
        sqs.send(f"m{n}", body(n), group=f"k{n % KEYS}" if fifo else None, seq=n)
    return sqs


def drain(poller: Poller, handler: Callable[[Any, Any], Any], clock: ManualClock) -> float:
    """Poll until the source is drained; the simulated seconds it took after recovery."""
    rounds = 0
    while not poller.drained:
        done = poller.poll(handler, aws.LambdaContext())
        assert all(isinstance(e, BatchFailed) for e in done.raised), done.raised
        rounds += 1
        assert rounds < 2_000, "the source never drained"
    return clock.now() - OUTAGE[1]


def pipeline(
    downstream: Downstream,
    sink: Sink,
    store: IdempotencyStore,
    letters: MemorySink,
    *,
    ordered: bool,
) -> Pipeline:
    return Pipeline(
        downstream,
        sink,
        store,
        letters,
        ordered=ordered,
        clock=downstream.clock,
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.1, jitter=False)),
        max_deliveries=5,
    )


def assert_in_order(downstream: Downstream) -> None:
    for ns in downstream.applied.values():
        assert ns == sorted(ns)


TRIGGERS = ["kinesis", "sqs", "sqs-fifo"]


def source(trigger: str, clock: ManualClock, count: int) -> Poller:
    if trigger == "kinesis":
        return kinesis(clock, count)
    return queue(clock, count, fifo=trigger == "sqs-fifo")


# -- memory ------------------------------------------------------------------------------------


# A poison pill first delivered as the outage begins (Kinesis: at the head of a shard's batch).
POISON = {"kinesis": 4002, "sqs": 5042, "sqs-fifo": 5042}


@pytest.mark.parametrize("poisoned", [False, True], ids=["outage", "outage-and-poison-pill"])
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_an_outage_through_the_lambda_handler_on_memory(trigger: str, poisoned: bool) -> None:
    clock = ManualClock(START)
    poison = POISON[trigger] if poisoned else None
    downstream = Downstream(clock, poison)
    sink, letters = MemorySink(), MemorySink()
    ordered = trigger != "sqs"
    handler = lambda_handler(
        pipeline(downstream, sink, MemoryIdempotencyStore(clock=clock), letters, ordered=ordered)
    )
    poller = source(trigger, clock, 10_000)
    drain(poller, handler, clock)

    expected = 10_000 - (poison is not None)
    assert len(sink) == expected and set(sink.write_counts().values()) == {1}
    assert poller.deliveries > 10_000  # the outage handed events back
    assert downstream.calls_while_down < 100  # the circuit breaker held the rest back
    if poison is None:
        assert len(letters) == 0
    else:
        [(letter_id, letter)] = letters.contents().items()
        assert f"{poison:04d}#dead-letter" in letter_id  # the message id or sequence number
        assert set(letters.write_counts().values()) == {1}
        assert "failed 5 deliveries" in letter["message"] and "ValueError" in letter["message"]
    if ordered:
        assert_in_order(downstream)


# -- DynamoDB on the moto server --------------------------------------------------------------

EVENTS = int(os.environ.get("ONCEFLOW_OUTAGE_EVENTS", "300"))
"""300 in `make test`; `make soak` runs 10,000 (about 2 minutes for the three triggers, on
the moto server of tests/support/moto_main.py, whose transactions no longer copy tables)."""
DYNAMODB_POISON = {"kinesis": 101, "sqs": 201, "sqs-fifo": 201}
MODES = {
    "kinesis": DynamoDBMode.FENCED,
    "sqs": DynamoDBMode.UPSERT,
    "sqs-fifo": DynamoDBMode.OPTIMISTIC,
}


def applied_once(ns: str) -> Callable[[Output], dict[str, Any]]:
    """A counter per event: a doubled effect would show as 2."""

    def action(output: Output) -> dict[str, Any]:
        return {
            "Update": {
                "Key": {"pk": f"{ns}#n#{output.value['n']}"},
                "UpdateExpression": "ADD applied :one",
                "ExpressionAttributeValues": {":one": 1},
            }
        }

    return action


@pytest.mark.emulator
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_an_outage_through_the_lambda_handler_on_dynamodb(
    trigger: str, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    clock = ManualClock(START)
    mode = MODES[trigger]
    poison = DYNAMODB_POISON[trigger]
    downstream = Downstream(clock, poison)
    ns = f"outage-{uuid.uuid4().hex[:8]}"
    client = dynamodb_worker_client(moto)
    outputs = dynamodb_tables("outage-outputs")
    store, sink = dynamodb_pipeline_parts(
        dynamodb_tables("outage-state"),
        outputs,
        mode=mode,
        client=client,
        clock=clock,
        retry=FAST,
        action=applied_once(ns) if mode.atomic else None,
    )
    letters = MemorySink()
    handler = lambda_handler(pipeline(downstream, sink, store, letters, ordered=trigger != "sqs"))
    # Fewer rounds and shards: each round's claims are a transaction per shard, and a
    # FENCED store ends every held-back lease with a request of its own.
    if trigger == "kinesis":
        poller = kinesis(clock, EVENTS, shards=2, batch=50)
    else:
        poller = queue(clock, EVENTS, fifo=trigger == "sqs-fifo", batch=25)
    poller.poll_interval = 15.0
    drain(poller, handler, clock)

    [(letter_id, letter)] = letters.contents().items()
    assert f"{poison}#dead-letter" in letter_id and "failed 5 deliveries" in letter["message"]
    assert set(letters.write_counts().values()) == {1}
    if mode.atomic:
        applied: Counter[int] = Counter()
        for page in client.get_paginator("scan").paginate(TableName=outputs, ConsistentRead=True):
            for raw in page["Items"]:
                item = from_wire(raw)
                if str(item["pk"]).startswith(f"{ns}#n#"):
                    applied[int(str(item["pk"]).rsplit("#", 1)[1])] = int(item["applied"])
        assert set(applied) == set(range(EVENTS)) - {poison}
        assert set(applied.values()) == {1}
    else:
        assert sorted(v["n"] for v in sink.read_all().values()) == [
            n for n in range(EVENTS) if n != poison
        ]
    if trigger != "sqs":
        assert_in_order(downstream)
