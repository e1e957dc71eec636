"""The orders example as a Lambda function: unit-tested on the memory backend, and on moto."""

from __future__ import annotations

import importlib
import json
import uuid
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest

from examples.orders.processor import OrderProcessor
from onceflow.adapters.aws import create_table, lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.errors import ConfigurationError
from onceflow.pipeline import Pipeline
from tests.support.servers import MotoServer

ORDER = {"order_id": "o1", "user_id": "u1", "items": [{"sku": "a", "price": "2.50", "quantity": 2}]}


def test_a_lambda_entry_unit_tested_with_the_memory_backend() -> None:
    """The pattern the docs show: no AWS at all, the real handler, a documented event."""
    sink, letters = MemorySink(), MemorySink()
    handler = lambda_handler(Pipeline(OrderProcessor(), sink, MemoryIdempotencyStore(), letters))
    event = aws.sqs_event(
        aws.sqs_record("m1", json.dumps(ORDER)),
        aws.sqs_record("m2", json.dumps({"order_id": "o2"})),  # fails validation
    )
    assert handler(event, aws.LambdaContext()) == {"batchItemFailures": []}
    assert sink.values() == [
        {"order_id": "o1", "user_id": "u1", "items": 2, "total": Decimal("5.00")}
    ]
    [letter] = letters.values()
    assert "m2" in letter["message"] and letter["error_type"] == "ValidationError"


@pytest.fixture
def lambda_module(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`examples.orders.lambda_function`, freshly imported, with the environment set."""
    ddb = moto.client("dynamodb")
    state, orders = f"ex-state-{uuid.uuid4().hex[:6]}", f"ex-orders-{uuid.uuid4().hex[:6]}"
    create_table(ddb, state)
    create_table(ddb, orders, ttl_attribute=None)
    queue = moto.client("sqs").create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    for name, value in {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": moto.access_key,
        "AWS_SECRET_ACCESS_KEY": moto.secret_key,
        "AWS_DEFAULT_REGION": moto.region,
        "ONCEFLOW_STATE_TABLE": state,
        "ONCEFLOW_OUTPUT_TABLE": orders,
        "ONCEFLOW_DEAD_LETTERS": queue,
        "ONCEFLOW_MODE": "atomic",
    }.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("examples.orders.lambda_function")
    return importlib.reload(module)


@pytest.mark.emulator
def test_example_handler_on_moto(lambda_module: ModuleType, moto: MotoServer) -> None:
    import os

    records = [
        aws.kinesis_record(1, json.dumps(ORDER).encode()),
        aws.kinesis_record(2, b"{not json"),
    ]
    answer = lambda_module.handler(aws.kinesis_event(*records), aws.LambdaContext())
    assert answer == {"batchItemFailures": []}
    ddb = moto.client("dynamodb")
    items = [from_wire(i) for i in ddb.scan(TableName=os.environ["ONCEFLOW_OUTPUT_TABLE"])["Items"]]
    assert [i["value"]["total"] for i in items] == [Decimal("5.00")]
    sqs = moto.client("sqs")
    [message] = sqs.receive_message(QueueUrl=os.environ["ONCEFLOW_DEAD_LETTERS"])["Messages"]
    letter: dict[str, Any] = json.loads(message["Body"])
    assert records[1]["kinesis"]["sequenceNumber"] in letter["message"]
    again = lambda_module.handler(aws.kinesis_event(*records), aws.LambdaContext())
    assert again == {"batchItemFailures": []}
    assert len(ddb.scan(TableName=os.environ["ONCEFLOW_OUTPUT_TABLE"])["Items"]) == 1


def test_missing_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONCEFLOW_STATE_TABLE", raising=False)
    module = importlib.reload(importlib.import_module("examples.orders.lambda_function"))
    with pytest.raises(ConfigurationError, match="ONCEFLOW_STATE_TABLE"):
        module.handler(aws.eventbridge_event("e1", ORDER), None)
