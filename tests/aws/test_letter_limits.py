"""Limits of the AWS message services, through the Lambda handler: letters and outputs.

On the moto server: an SQS dead-letter queue (256 KiB a message) and a Kinesis stream
(1 MiB a record) as the pipeline's dead-letter sink. A letter over the sink's
`max_message_bytes` keeps everything but its payload, which is cut to the prefix that
fits and described (`truncated`: field, original size, SHA-256). Moto does not enforce
SQS's size limit on its own, so the test measures every body it stores.

Outputs over an SQS message's, a Kinesis record's or an EventBridge entry's limit are
dead-lettered with the limit named, and the rest of the batch is delivered; batches of
10,000 records (Lambda's largest) are answered with no failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest

from onceflow.adapters.aws import EventBridgeSink, KinesisSink, SQSSink, lambda_handler
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


# -- outputs over a service's limit, and the largest batches ---------------------------------


def big_outputs(event: Event) -> Any:
    size = json.loads(event.data)["size"]
    return {"blob": "x" * size}


def sinks(moto: MotoServer) -> dict[str, tuple[Any, int]]:
    """Each message sink on the moto server, with the size of an output just over its limit."""
    sqs, kinesis, events = moto.client("sqs"), moto.client("kinesis"), moto.client("events")
    name = f"big-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    events.create_event_bus(Name=name)
    return {
        "SQS message": (SQSSink(url, client=sqs), 256 * 1024),
        "Kinesis record": (KinesisSink(name, client=kinesis), 1024 * 1024),
        "EventBridge entry": (EventBridgeSink(name, client=events), 256 * 1024),
    }


def test_outputs_over_a_message_services_limit_are_dead_lettered_naming_it(
    moto: MotoServer,
) -> None:
    for what, (sink, limit) in sinks(moto).items():
        clock, letters = ManualClock(), MemorySink()
        pipeline = Pipeline(
            big_outputs, sink, MemoryIdempotencyStore(clock=clock), letters, clock=clock
        )
        sizes = [10, limit, 20]
        event = aws.sqs_event(
            *(aws.sqs_record(f"m{n}", json.dumps({"size": size})) for n, size in enumerate(sizes))
        )
        answer = lambda_handler(pipeline)(event, aws.LambdaContext())
        assert answer == {"batchItemFailures": []}, what
        [letter] = letters.values()
        assert letter["event"]["id"] == "m1"
        assert f"byte {what} limit" in letter["message"] and "x" * 10 not in letter["message"]


@pytest.mark.parametrize("kind", ["kinesis", "sqs"])
def test_a_batch_of_10000_records_is_answered_with_no_failure(kind: str) -> None:
    clock, sink, letters = ManualClock(), MemorySink(), MemorySink()
    pipeline = Pipeline(
        lambda e: {"n": len(e.data)},
        sink,
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
    )
    if kind == "kinesis":
        records = [aws.kinesis_record(n, b'{"n": %d}' % n, f"p{n % 100}") for n in range(10_000)]
        records[5_000]["kinesis"]["data"] = "%%% not base64 %%%"
        event = aws.kinesis_event(*records)
    else:
        messages = [aws.sqs_record(f"m{n}", "{}") for n in range(10_000)]
        messages[5_000]["body"] = None
        event = aws.sqs_event(*messages)
    assert lambda_handler(pipeline)(event, aws.LambdaContext()) == {"batchItemFailures": []}
    assert len(sink.values()) == 9_999 and len(letters.values()) == 1
