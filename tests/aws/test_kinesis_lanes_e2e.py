"""A 1,000-record Kinesis batch through the Lambda handler on the moto server, DynamoDB
store and sink in upsert mode, and in the atomic modes (outputs chained with the lane
record, 99 per transaction): the shard's lane settles it, billed as issue 15 targets."""

from __future__ import annotations

import json
import os
import uuid
from decimal import Decimal
from typing import Any

import pytest

from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts, lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.dynamodb_store import create_table
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from tests.aws.moto_clients import SerializedClient
from tests.aws.test_lambda_handler import _kpl
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

RECORDS = int(os.environ.get("ONCEFLOW_LANE_E2E_RECORDS", "1000"))


Meter = aws.CapacityMeter


class OrderItem:
    """One item per order."""

    def process(self, event: Event) -> dict[str, Any]:
        order = json.loads(event.data)
        return {"order_id": order["order_id"], "total": Decimal(order["total"])}


def _handler(
    moto: MotoServer, meter: Meter, mode: DynamoDBMode = DynamoDBMode.UPSERT
) -> tuple[Any, Pipeline, str]:
    raw = moto.client("dynamodb")
    meter.attach(raw)
    client = SerializedClient(raw)
    state, orders = f"lanes-state-{uuid.uuid4().hex[:6]}", f"lanes-orders-{uuid.uuid4().hex[:6]}"
    create_table(client, state)
    create_table(client, orders, ttl_attribute=None)
    store, sink = dynamodb_pipeline_parts(state, orders, mode=mode, client=client)
    pipeline = Pipeline(OrderItem(), sink, store)
    meter.reset()
    return lambda_handler(pipeline), pipeline, orders


def _batch(count: int, start: int = 0) -> dict[str, Any]:
    return aws.kinesis_event(
        *[
            aws.kinesis_record(
                n, json.dumps({"order_id": f"o{n}", "total": f"{n % 97}.50"}).encode(), f"u{n % 50}"
            )
            for n in range(start, start + count)
        ]
    )


def test_a_kinesis_batch_costs_one_write_per_event_and_its_redelivery_nothing(
    moto: MotoServer,
) -> None:
    """First delivery <= 1.05 WCU and <= 0.05 RCU per event; again: 0 writes, <= 0.01 req.

    The redelivery's 0 writes needs `watermarks.settles_all` (a wholly settled range is
    answered without a lease); without it the lane record is written twice per batch."""
    meter = Meter()
    handler, pipeline, orders = _handler(moto, meter)
    assert pipeline.watermarks
    event = _batch(RECORDS)
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    first = (meter.write_units / RECORDS, meter.read_units / RECORDS, meter.total / RECORDS)
    print(f"first delivery: {dict(meter.requests)} wcu/event={first[0]:.4f} "
          f"rcu/event={first[1]:.4f} requests/event={first[2]:.4f}")  # fmt: skip
    assert first[0] <= 1.05 and first[1] <= 0.05
    assert "TransactWriteItems" not in meter.requests
    meter.reset()
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    again = (meter.write_units / RECORDS, meter.read_units / RECORDS, meter.total / RECORDS)
    print(f"redelivery: {dict(meter.requests)} wcu/event={again[0]:.4f} "
          f"rcu/event={again[1]:.4f} requests/event={again[2]:.4f}")  # fmt: skip
    assert meter.write_units == 0, dict(meter.requests)  # the lane record is only read
    assert again[2] <= 0.01
    scanned = SerializedClient(moto.client("dynamodb")).scan(TableName=orders, Select="COUNT")
    assert scanned["Count"] == RECORDS


ATOMIC = [DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC]


@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_an_atomic_kinesis_batch_costs_its_transactional_writes_and_its_redelivery_nothing(
    mode: DynamoDBMode, moto: MotoServer
) -> None:
    """Atomic modes: first delivery <= 2.1 WCU (a transactional write is billed twice:
    2.0 is the floor) and <= 0.05 RCU per event, no marker per event; again: 0 writes,
    <= 0.01 requests per event."""
    meter = Meter()
    handler, pipeline, orders = _handler(moto, meter, mode)
    assert pipeline.watermarks
    event = _batch(RECORDS)
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    first = (meter.write_units / RECORDS, meter.read_units / RECORDS, meter.total / RECORDS)
    print(f"{mode.value} first delivery: {dict(meter.requests)} wcu/event={first[0]:.4f} "
          f"rcu/event={first[1]:.4f} requests/event={first[2]:.4f}")  # fmt: skip
    assert first[0] <= 2.1 and first[1] <= 0.05, dict(meter.requests)
    assert meter.requests["TransactWriteItems"] == -(-RECORDS // 99)  # 99 outputs a link
    assert first[2] <= 0.02
    meter.reset()
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    again = (meter.write_units / RECORDS, meter.read_units / RECORDS, meter.total / RECORDS)
    print(f"{mode.value} redelivery: {dict(meter.requests)} wcu/event={again[0]:.4f} "
          f"rcu/event={again[1]:.4f} requests/event={again[2]:.4f}")  # fmt: skip
    assert meter.write_units == 0, dict(meter.requests)
    assert again[2] <= 0.01
    scanned = SerializedClient(moto.client("dynamodb")).scan(TableName=orders, Select="COUNT")
    assert scanned["Count"] == RECORDS


def test_a_redelivery_from_the_middle_writes_only_what_is_new(moto: MotoServer) -> None:
    """Lambda restarts a shard at a failed record: what was settled is a duplicate."""
    meter = Meter()
    handler, _, orders = _handler(moto, meter)
    assert handler(_batch(100), aws.LambdaContext()) == {"batchItemFailures": []}
    meter.reset()
    assert handler(_batch(100, start=50), aws.LambdaContext()) == {"batchItemFailures": []}
    print(f"redelivery from the middle: {dict(meter.requests)} wcu={meter.write_units}")
    assert meter.write_units <= 50 + 4  # the 50 new events and the lane record
    scanned = SerializedClient(moto.client("dynamodb")).scan(TableName=orders, Select="COUNT")
    assert scanned["Count"] == 150


def test_kpl_aggregated_records_keep_per_key_markers_beside_the_lane(moto: MotoServer) -> None:
    """A KPL carrier's user records share a sequence: they take markers, the rest the lane."""
    meter = Meter()
    handler, _, orders = _handler(moto, meter)
    carrier = aws.kinesis_record(
        1,
        _kpl(
            ("a", json.dumps({"order_id": "k1", "total": "1"}).encode()),
            ("b", json.dumps({"order_id": "k2", "total": "2"}).encode()),
        ),
    )
    plain = aws.kinesis_record(2, json.dumps({"order_id": "p1", "total": "3"}).encode())
    event = aws.kinesis_event(carrier, plain)
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    meter.reset()
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    assert "BatchWriteItem" not in meter.requests
    scanned = SerializedClient(moto.client("dynamodb")).scan(TableName=orders, Select="COUNT")
    assert scanned["Count"] == 3


class FlakyOrders(OrderItem):
    """Fails each order in `flaky` once (a transient error), then writes it."""

    def __init__(self, flaky: set[str]) -> None:
        self.flaky = set(flaky)

    def process(self, event: Event) -> dict[str, Any]:
        order = json.loads(event.data)["order_id"]
        if order in self.flaky:
            self.flaky.discard(order)
            raise ConnectionError("downstream busy")
        return super().process(event)


def test_a_half_failed_batch_comes_back_from_its_failure_and_writes_only_that(
    moto: MotoServer,
) -> None:
    """Lambda restarts the shard at the failed record: the rest of the batch is settled
    above the gap, so only the failed record is written on the redelivery."""
    meter = Meter()
    raw = moto.client("dynamodb")
    meter.attach(raw)
    client = SerializedClient(raw)
    state, orders = f"lanes-state-{uuid.uuid4().hex[:6]}", f"lanes-orders-{uuid.uuid4().hex[:6]}"
    create_table(client, state)
    create_table(client, orders, ttl_attribute=None)
    store, sink = dynamodb_pipeline_parts(state, orders, mode=DynamoDBMode.UPSERT, client=client)
    pipeline = Pipeline(FlakyOrders({"o30"}), sink, store, retry=RetryPolicy(attempts=1))
    handler = lambda_handler(pipeline)
    event = _batch(100)
    answer = handler(event, aws.LambdaContext())
    failed = event["Records"][30]["kinesis"]["sequenceNumber"]
    assert answer == {"batchItemFailures": [{"itemIdentifier": failed}]}
    meter.reset()
    again = {"Records": event["Records"][30:]}  # what Lambda delivers next
    assert handler(again, aws.LambdaContext()) == {"batchItemFailures": []}
    outputs = meter.write_units - meter.requests["PutItem"]  # PutItem: the lane record only
    assert outputs == 1, dict(meter.requests)
    scanned = client.scan(TableName=orders, Select="COUNT")
    assert scanned["Count"] == 100
