"""Dead letters fit their sink: a poison event bigger than the dead-letter queue's limit.

On the moto server: an SQS dead-letter queue (256 KiB a message) and a Kinesis stream
(1 MiB a record) as the pipeline's dead-letter sink, fed by the Lambda handler. A letter
over the sink's `max_message_bytes` keeps everything but its payload, which is cut to the
prefix that fits and described (`truncated`: field, original size, SHA-256). Moto does
not enforce SQS's size limit on its own, so the test measures every body it stores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest

from onceflow.adapters.aws import KinesisSink, SQSSink, lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.errors import PermanentError
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator


def refuse_poison(event: Event) -> Any:
    if event.data.startswith(b"\x00poison"):
        raise PermanentError("a poison pill")
    return {"size": len(event.data)}


def handler(letters: Any) -> Any:
    clock = ManualClock()
    pipeline = Pipeline(
        refuse_poison,
        MemorySink(),
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),
        backend_retry=RetryPolicy(attempts=1),
    )
    return lambda_handler(pipeline)


def poison(size: int) -> bytes:
    # Binary, so the letter carries it as base64: a third bigger than the event.
    return b"\x00poison" + bytes(range(256)) * (size // 256)


def check_truncated(letter: dict[str, Any], payload: bytes, limit: int) -> None:
    truncated = letter["truncated"]
    assert truncated["size"] == len(payload) and truncated["limit"] == limit
    assert truncated["sha256"] == hashlib.sha256(payload).hexdigest()
    prefix = base64.b64decode(truncated["prefix_base64"])
    assert payload.startswith(prefix) and len(prefix) > limit // 2
    assert "data_base64" not in letter["event"] and "raw" not in letter["event"]


def test_a_200_kb_poison_event_is_dead_lettered_to_an_sqs_queue_truncated(
    moto: MotoServer,
) -> None:
    sqs = moto.client("sqs")
    url = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    letters = SQSSink(url, client=sqs)
    payload = poison(200_000)
    event = aws.kinesis_event(
        aws.kinesis_record(1, payload),
        aws.kinesis_record(2, b'{"ok": 1}'),
        aws.kinesis_record(3, "%%% not base64 %%%" * 20_000),  # an invalid record, 360 KB
    )
    assert handler(letters)(event, aws.LambdaContext()) == {"batchItemFailures": []}
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(got) == 2
    bodies = {json.loads(m["Body"])["event"]["id"]: m["Body"] for m in got}
    assert all(len(body.encode()) <= SQSSink.max_message_bytes for body in bodies.values())
    poisoned = json.loads(next(b for i, b in bodies.items() if i.endswith("1")))
    check_truncated(poisoned, payload, SQSSink.max_message_bytes)
    assert poisoned["message"].endswith("a poison pill (permanent error)")
    invalid = json.loads(next(b for i, b in bodies.items() if i.endswith("3")))
    assert invalid["truncated"]["field"] == "raw" and invalid["truncated"]["size"] > 360_000
    assert "kinesis.data is not valid base64" in invalid["message"]


def test_a_small_letter_is_sent_whole(moto: MotoServer) -> None:
    sqs = moto.client("sqs")
    url = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    event = aws.kinesis_event(aws.kinesis_record(1, poison(1_000)))
    assert handler(SQSSink(url, client=sqs))(event, None) == {"batchItemFailures": []}
    [message] = sqs.receive_message(QueueUrl=url)["Messages"]
    letter = json.loads(message["Body"])
    assert "truncated" not in letter
    assert base64.b64decode(letter["event"]["data_base64"]) == poison(1_000)


def test_a_poison_event_over_a_kinesis_records_limit_does_not_block_the_shard(
    moto: MotoServer,
) -> None:
    kinesis = moto.client("kinesis")
    stream = f"dlq-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1})
    payload = poison(900_000)  # 1.2 MB as base64
    event = aws.kinesis_event(aws.kinesis_record(1, payload), aws.kinesis_record(2, b"{}"))
    answer = handler(KinesisSink(stream, client=kinesis))(event, None)
    assert answer == {"batchItemFailures": []}
    shard = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    [record] = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert len(record["Data"]) <= KinesisSink.max_message_bytes
    check_truncated(json.loads(record["Data"]), payload, KinesisSink.max_message_bytes)


def test_a_letter_too_long_without_its_payload_has_its_traceback_cut() -> None:
    from onceflow.dead_letters import dead_letter
    from onceflow.serialization import dumps

    event = Event(id="e1", source="s", data=b'{"v":"' + b"x" * 20_000 + b'"}')
    letter = dead_letter(
        event, "boom", key=event.key, now=0.0, pipeline="p", traceback="t" * 50_000, max_bytes=8_000
    ).value
    assert len(dumps(letter).encode()) <= 8_000
    assert letter["truncated"]["cut"] == ["traceback"] and letter["message"] == "boom"
    assert letter["truncated"]["field"] == "data" and letter["truncated"]["size"] == len(event.data)
