"""DynamoDB throttling injected at the wire: retried with backoff, never an event failure.

A botocore `before-call` hook answers every other request in DynamoDB's own words instead
of sending it: ProvisionedThroughputExceededException, ThrottlingException,
RequestLimitExceeded, a BatchGetItem with every key unprocessed, a BatchWriteItem with
every item unprocessed, a transaction cancelled with ThrottlingError. botocore raises or
parses them as it would a real answer (and does not retry them itself), so what is
tested is the store's and the sink's own backoff.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from onceflow import Event, Pipeline, RetryPolicy
from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts, lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.retry import Backoff
from tests.aws.moto_clients import SerializedClient, proxied_dynamodb_client
from tests.aws.test_outages import applied_once
from tests.support.proxy import FaultProxy
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

FAST = RetryPolicy(attempts=8, backoff=Backoff(base=0.001, cap=0.01))
EVENTS = 60


def error(code: str, message: str = "Rate of requests exceeds the allowed throughput") -> Any:
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }


class Throttler:
    """Answers every `every`-th DynamoDB request with a throttle, cycling through the kinds."""

    def __init__(self, client: Any, every: int = 2) -> None:
        self.every = every
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self._turn = itertools.count()
        client.meta.events.register("before-call.dynamodb", self.answer)

    def answer(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        operation = model.name
        self.calls[operation] += 1
        if self.calls[operation] % self.every or operation not in _ANSWERS:
            return None  # sent to moto as it is
        kinds = _ANSWERS[operation]
        parsed = kinds[next(self._turn) % len(kinds)](json.loads(params["body"]))
        self.throttled[f"{operation}: {_kind(parsed)}"] += 1
        status = parsed["ResponseMetadata"]["HTTPStatusCode"]
        return AWSResponse("http://throttled", status, {}, None), parsed


def _kind(parsed: dict[str, Any]) -> str:
    if "Error" in parsed:
        return str(parsed["Error"]["Code"])
    return "all unprocessed"


def _ok(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "ResponseMetadata": {"HTTPStatusCode": 200}}


_ANSWERS: dict[str, list[Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "BatchGetItem": [
        lambda body: error("ProvisionedThroughputExceededException"),
        lambda body: _ok({"Responses": {}, "UnprocessedKeys": body["RequestItems"]}),
        lambda body: error("ThrottlingException"),
    ],
    "BatchWriteItem": [
        lambda body: _ok({"UnprocessedItems": body["RequestItems"]}),
        lambda body: error("RequestLimitExceeded"),
    ],
    "TransactWriteItems": [
        lambda body: error("ThrottlingException"),
        lambda body: {
            **error("TransactionCanceledException", "Transaction cancelled"),
            "CancellationReasons": [
                {"Code": "ThrottlingError", "Message": "Throughput exceeds the current capacity"}
                for _ in body["TransactItems"]
            ],
        },
        lambda body: error("ProvisionedThroughputExceededException"),
    ],
    "UpdateItem": [
        lambda body: error("ProvisionedThroughputExceededException"),
        lambda body: error("RequestLimitExceeded"),
    ],
    # A shard's watermark record: read and written once per batch in UPSERT mode.
    "GetItem": [
        lambda body: error("ProvisionedThroughputExceededException"),
        lambda body: error("ThrottlingException"),
    ],
    "PutItem": [
        lambda body: error("ThrottlingException"),
        lambda body: error("RequestLimitExceeded"),
    ],
}


class Flaky:
    """Fails every tenth event transiently on its first delivery (so leases are released)."""

    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()

    def process(self, event: Event) -> dict[str, Any]:
        n = event.json()["n"]
        self.seen[n] += 1
        if n % 10 == 0 and self.seen[n] == 1:
            raise ConnectionError("blip")
        return {"n": n}


@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
def test_throttling_at_the_wire_loses_and_doubles_nothing(
    mode: DynamoDBMode, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    raw = moto.client("dynamodb")
    throttler = Throttler(raw)
    client = SerializedClient(raw)
    ns = f"throttle-{uuid.uuid4().hex[:8]}"
    clock = ManualClock()
    outputs = dynamodb_tables("throttle-outputs")
    store, sink = dynamodb_pipeline_parts(
        dynamodb_tables("throttle-state"),
        outputs,
        mode=mode,
        client=client,
        clock=clock,
        retry=FAST,
        action=applied_once(ns) if mode.atomic else None,
    )
    letters = MemorySink()
    processor = Flaky()
    pipeline = Pipeline(processor, sink, store, letters, clock=clock, retry=RetryPolicy(attempts=1))
    handler = lambda_handler(pipeline)
    records = [
        aws.kinesis_record(n, json.dumps({"n": n}).encode(), f"k{n % 7}") for n in range(EVENTS)
    ]
    first = handler(aws.kinesis_event(*records), aws.LambdaContext())
    # Only the processor's own blips fail; no throttle ever does.
    assert [f["itemIdentifier"] for f in first["batchItemFailures"]] == [
        records[n]["kinesis"]["sequenceNumber"] for n in range(0, EVENTS, 10)
    ]
    assert handler(aws.kinesis_event(*records), aws.LambdaContext()) == {"batchItemFailures": []}
    assert handler(aws.kinesis_event(*records), aws.LambdaContext()) == {"batchItemFailures": []}

    assert len(letters) == 0
    assert processor.seen == Counter({n: 2 if n % 10 == 0 else 1 for n in range(EVENTS)})
    if mode.atomic:
        applied = {}
        for page in client.get_paginator("scan").paginate(TableName=outputs, ConsistentRead=True):
            for item in map(from_wire, page["Items"]):
                if str(item["pk"]).startswith(f"{ns}#n#"):
                    applied[str(item["pk"])] = int(item["applied"])
        assert len(applied) == EVENTS and set(applied.values()) == {1}
    else:
        assert sorted(v["n"] for v in sink.read_all().values()) == list(range(EVENTS))
    # Every kind of throttle was met: every mode settles the shard by its watermark record
    # (GetItem to claim it); atomic modes commit outputs with it in transactions, UPSERT
    # writes outputs in batches and the record with PutItem.
    kinds = {kind.split(": ")[0] for kind in throttler.throttled}
    if mode.atomic:
        assert {"GetItem", "TransactWriteItems"} <= kinds
    else:
        assert {"GetItem", "PutItem", "BatchWriteItem"} <= kinds


def test_throttled_retries_stop_at_the_invocation_deadline(
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every request is throttled, for ever; the policies alone would retry for minutes.

    The handler has 1 s of work time (4 s left, 3 s safety margin): the store's retry
    loops and the pipeline's backend retry stop waiting at that deadline, and every record
    goes back for redelivery, none dead-lettered.
    """
    from tests.support.proxy import Fault, amz_target, dynamodb_error

    for operation in ("BatchGetItem", "TransactWriteItems", "UpdateItem", "BatchWriteItem"):
        moto_proxy.add(Fault.answer(amz_target(operation), dynamodb_error(), times=None))
    patient = RetryPolicy(attempts=100, backoff=Backoff(base=0.05, cap=0.05))
    client = proxied_dynamodb_client(moto, moto_proxy)
    store, sink = dynamodb_pipeline_parts(
        dynamodb_tables("deadline-state"), client=client, retry=patient
    )
    letters = MemorySink()
    pipeline = Pipeline(lambda e: e.json(), sink, store, letters, backend_retry=patient)
    handler = lambda_handler(pipeline, safety_margin=3.0)
    records = [aws.kinesis_record(n, json.dumps({"n": n}).encode()) for n in range(3)]

    with caplog.at_level("WARNING", logger="onceflow"):
        answer = handler(aws.kinesis_event(*records), aws.LambdaContext(remaining_ms=4_000))
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [
        r["kinesis"]["sequenceNumber"] for r in records
    ]
    assert len(letters) == 0
    assert "at the invocation's deadline" in caplog.text
    # Far fewer requests than the policies allow (100 per store call, 100 store calls).
    assert 1 <= sum(1 for s in moto_proxy.seen if s.fault is not None) < 200
