"""The scheduled operations functions' handlers (`operations_entry`) on the moto server.

The canary: `canary_handler` sends a marked message to an SQS queue, a consumer thread
hands what it receives to onceflow's Lambda handler as Lambda's SQS trigger would (the
event shape of an SQS event source mapping), that pipeline writes a DynamoDB sink table,
and the canary handler returns once it sees the output, or raises at its deadline. The
reconciliation: `reconcile_handler` reads the counts a counted pipeline kept in its state
table and the sink table's items, and prints the gap as an EMF line.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from onceflow import Event, Pipeline
from onceflow.adapters.aws import (
    DynamoDBIdempotencyStore,
    DynamoDBSink,
    lambda_handler,
    operations_entry,
)
from onceflow.adapters.aws.dynamodb_store import create_table
from onceflow.adapters.aws.operations_entry import OperationsError
from onceflow.adapters.aws.window_counts import DynamoDBWindowCounts
from onceflow.canary import CANARY, is_canary
from onceflow.reconcile import count_windows
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator


class Context:
    """The part of Lambda's context object the handler reads."""

    function_name = "orders"
    aws_request_id = "r-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def lambda_sqs_event(messages: list[dict[str, Any]], arn: str) -> dict[str, Any]:
    """What Lambda's SQS event source mapping hands a function for these received messages."""
    records = []
    for m in messages:
        attributes = {
            name: {
                "stringValue": value.get("StringValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in m.get("MessageAttributes", {}).items()
        }
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {"ApproximateReceiveCount": "1"}),
                "messageAttributes": attributes,
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The environment a deployed function has, pointed at the moto server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setattr(operations_entry, "_clients", {})  # clients made in this environment
    return moto


@pytest.fixture
def queue_and_table(aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """A source queue and a sink table, named in the canary function's environment."""
    sqs = aws_env.client("sqs")
    url = sqs.create_queue(QueueName=f"orders-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    table = f"out-{uuid.uuid4().hex[:8]}"
    create_table(aws_env.client("dynamodb"), table, ttl_attribute=None)
    monkeypatch.setenv("ONCEFLOW_PIPELINE", "orders")
    monkeypatch.setenv("ONCEFLOW_CANARY_QUEUE_URL", url)
    monkeypatch.setenv("ONCEFLOW_CANARY_TABLE", table)
    return url, arn, table


@pytest.fixture
def consumer(aws_env: MotoServer, queue_and_table: tuple[str, str, str]) -> Iterator[list[str]]:
    """The deployed pipeline: SQS messages through `lambda_handler` into the sink table."""
    url, arn, table = queue_and_table
    marks: list[str] = []

    def process(event: Event) -> dict[str, Any]:
        if is_canary(event):
            marks.append(event.attributes[CANARY])
        return {"seen": True}

    dynamodb = aws_env.client("dynamodb")
    state = f"state-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, state)
    handler = lambda_handler(
        Pipeline(
            process,
            DynamoDBSink(table, client=dynamodb),
            DynamoDBIdempotencyStore(state, client=dynamodb),
        )
    )
    sqs = aws_env.client("sqs")
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                AttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                continue
            answer = handler(lambda_sqs_event(messages, arn), Context())
            failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
            for m in messages:
                if m["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    yield marks
    stop.set()
    thread.join(timeout=10)


def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_the_canary_is_seen_through_the_deployed_pipeline(
    consumer: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ONCEFLOW_CANARY_DEADLINE", "30")
    answer = operations_entry.canary_handler({}, Context())
    assert answer["waited"] is not None and answer["waited"] < 30
    assert consumer == [answer["canary_id"]]  # the pipeline saw the mark
    [emf] = emf_lines(capsys.readouterr().out)
    assert emf["CanaryFailed"] == 0 and emf["pipeline"] == "orders"
    assert emf["CanarySeconds"] == answer["waited"]


def test_a_canary_nobody_processes_fails_the_function_at_its_deadline(
    queue_and_table: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ONCEFLOW_CANARY_DEADLINE", "1.5")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not seen in table"):
        operations_entry.canary_handler({}, Context())
    assert 1.5 <= time.monotonic() - started < 10
    [emf] = emf_lines(capsys.readouterr().out)
    assert emf["CanaryFailed"] == 1 and "CanarySeconds" not in emf


@pytest.mark.parametrize("deadline", ["soon", "0", "-3", "inf"])
def test_a_bad_canary_deadline_is_one_line_and_sends_nothing(
    deadline: str,
    aws_env: MotoServer,
    queue_and_table: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ONCEFLOW_CANARY_DEADLINE", deadline)
    with pytest.raises(OperationsError, match="ONCEFLOW_CANARY_DEADLINE") as caught:
        operations_entry.canary_handler({}, Context())
    assert len(str(caught.value).splitlines()) == 1
    attributes = aws_env.client("sqs").get_queue_attributes(
        QueueUrl=queue_and_table[0], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert capsys.readouterr().out == ""


def counted_pipeline(moto: MotoServer, state: str, sink: str) -> Any:
    """A Lambda handler whose pipeline keeps window counts in its state table."""
    dynamodb = moto.client("dynamodb")
    pipeline = Pipeline(
        lambda event: event.json(),
        DynamoDBSink(sink, client=dynamodb),
        DynamoDBIdempotencyStore(state, client=dynamodb),
        name="orders",
    )
    count_windows(pipeline, DynamoDBWindowCounts(state, client=dynamodb))
    return lambda_handler(pipeline)


def sqs_delivery(ids: list[str]) -> dict[str, Any]:
    messages = [
        {
            "MessageId": i,
            "ReceiptHandle": f"rh-{i}",
            "Body": json.dumps({"n": i}),
            "MD5OfBody": "x",
        }
        for i in ids
    ]
    return lambda_sqs_event(messages, "arn:aws:sqs:us-east-1:123456789012:orders")


def test_reconcile_handler_on_a_counted_pipelines_tables(
    aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dynamodb = aws_env.client("dynamodb")
    state, sink = f"state-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, state)
    create_table(dynamodb, sink, ttl_attribute=None)
    handler = counted_pipeline(aws_env, state, sink)
    handler(sqs_delivery(["m1", "m2", "m3"]), Context())
    handler(sqs_delivery(["m2", "m3", "m4"]), Context())  # two redelivered, one new
    monkeypatch.setenv("ONCEFLOW_PIPELINE", "orders")
    monkeypatch.setenv("ONCEFLOW_STATE_TABLE", state)
    monkeypatch.setenv("ONCEFLOW_SINK_TABLE", sink)
    assert operations_entry.reconcile_handler({}, Context()) == {
        "windows": 1,
        "sink_rows": 4,
        "gap": 0,
    }
    [emf] = emf_lines(capsys.readouterr().out)
    assert emf["ReconciliationGap"] == 0 and emf["pipeline"] == "orders"
    assert emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["pipeline"]]
    some = dynamodb.scan(TableName=sink, Limit=1)["Items"][0]
    dynamodb.delete_item(TableName=sink, Key={"pk": some["pk"]})  # a row lost downstream
    assert operations_entry.reconcile_handler({}, Context())["gap"] == 1
    [emf] = emf_lines(capsys.readouterr().out)
    assert emf["ReconciliationGap"] == 1


def test_reconcile_handler_on_a_state_without_counts_emits_nothing(
    aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = f"old-{uuid.uuid4().hex[:8]}"
    create_table(aws_env.client("dynamodb"), state)
    monkeypatch.setenv("ONCEFLOW_PIPELINE", "orders")
    monkeypatch.setenv("ONCEFLOW_STATE_TABLE", state)
    with pytest.raises(OperationsError, match="holds no window counts") as caught:
        operations_entry.reconcile_handler({}, Context())
    assert len(str(caught.value).splitlines()) == 1
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("ONCEFLOW_STATE_TABLE")
    with pytest.raises(OperationsError, match="no ONCEFLOW_STATE_TABLE"):
        operations_entry.reconcile_handler({}, Context())
