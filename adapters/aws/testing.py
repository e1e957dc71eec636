"""Lambda trigger events in the documented AWS shapes, for unit tests of Lambda entry points.

Build the event a trigger would deliver and call the handler with it; with a pipeline on
`onceflow.adapters.memory` no AWS account, emulator or boto3 is needed:

    from onceflow.adapters.aws import lambda_handler
    from onceflow.adapters.aws.testing import LambdaContext, sqs_event, sqs_record
    from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink

    handler = lambda_handler(Pipeline(MyProcessor(), MemorySink(), MemoryIdempotencyStore()))
    answer = handler(sqs_event(sqs_record("m1", '{"order_id": "o1"}')), LambdaContext())
    assert answer == {"batchItemFailures": []}

Only the standard library is imported here. Records name the fixed account, region and
ARNs below unless told otherwise.

`SimulatedShards` and `SimulatedQueue` drive a handler the way Lambda's pollers do, in the
time of a manual clock, for outage tests: a shard restarts at the lowest failed sequence
number; a failed SQS message comes back after its visibility timeout with
`ApproximateReceiveCount` one higher (a FIFO group stays blocked behind it), or goes to
the queue's dead-letter list once it reached the redrive policy's `max_receive_count`.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "FIFO_ARN",
    "QUEUE_ARN",
    "REGION",
    "STREAM_ARN",
    "TABLE_STREAM_ARN",
    "TOPIC_ARN",
    "CapacityMeter",
    "LambdaContext",
    "PollRound",
    "SimulatedQueue",
    "SimulatedShards",
    "dynamodb_event",
    "dynamodb_record",
    "eventbridge_event",
    "eventbridge_s3_event",
    "kinesis_event",
    "kinesis_record",
    "s3_event",
    "s3_record",
    "s3_via_sns",
    "s3_via_sqs",
    "sqs_event",
    "sqs_record",
]

REGION = "us-east-1"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
TABLE_STREAM_ARN = (
    "arn:aws:dynamodb:us-east-1:123456789012:table/users/stream/2024-01-01T00:00:00.000"
)
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"
FIFO_ARN = "arn:aws:sqs:us-east-1:123456789012:orders.fifo"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:uploads"


def kinesis_record(
    seq: int,
    data: bytes | str,
    partition_key: str = "p0",
    shard: str = "shardId-000000000000",
    *,
    stream_arn: str = STREAM_ARN,
) -> dict[str, Any]:
    """One Kinesis record numbered `seq`; `data` bytes are base64-encoded, a str is used as is."""
    encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    sequence = f"4959{seq:052d}"
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": sequence,
            "data": encoded,
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": REGION,
        "eventSourceARN": stream_arn,
    }


def kinesis_event(*records: dict[str, Any]) -> dict[str, Any]:
    """A Kinesis trigger payload."""
    return {"Records": list(records)}


def sqs_record(
    message_id: str, body: str, *, group: str | None = None, seq: int = 0, receive_count: int = 1
) -> dict[str, Any]:
    """One SQS message; with `group`, a FIFO message with that MessageGroupId and number `seq`."""
    attributes = {
        "ApproximateReceiveCount": str(receive_count),
        "SentTimestamp": "1545082649183",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
    }
    if group is not None:
        attributes |= {
            "MessageGroupId": group,
            "SequenceNumber": str(18849496460467696128 + seq),
            "MessageDeduplicationId": message_id,
        }
    return {
        "messageId": message_id,
        "receiptHandle": f"AQEB-{message_id}",
        "body": body,
        "attributes": attributes,
        "messageAttributes": {
            "tenant": {
                "stringValue": "acme",
                "dataType": "String",
                "stringListValues": [],
                "binaryListValues": [],
            }
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": FIFO_ARN if group is not None else QUEUE_ARN,
        "awsRegion": REGION,
    }


def sqs_event(*records: dict[str, Any]) -> dict[str, Any]:
    """An SQS trigger payload."""
    return {"Records": list(records)}


def s3_record(
    bucket: str,
    encoded_key: str,
    *,
    version_id: str | None = None,
    sequencer: str = "0055AED6DCD90281E5",
    event_name: str = "ObjectCreated:Put",
    size: int = 1024,
) -> dict[str, Any]:
    """One S3 notification record; the key is given already form-encoded, as S3 sends it."""
    obj: dict[str, Any] = {
        "key": encoded_key,
        "size": size,
        "eTag": "d41d8cd98f00b204e9800998ecf8427e",
        "sequencer": sequencer,
    }
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2024-01-01T12:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
        "requestParameters": {"sourceIPAddress": "205.255.255.255"},
        "responseElements": {
            "x-amz-request-id": "D82B88E5F771F645",
            "x-amz-id-2": "vlR7PnpV2Ce81l0PRw6jlUpck7Jo5ZsQjryTjKlc5aLWGVHPZLj5",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "onceflow",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    """An S3 trigger payload."""
    return {"Records": list(records)}


def eventbridge_event(
    event_id: str,
    detail: Any,
    *,
    source: str = "com.example.orders",
    detail_type: str = "OrderPlaced",
) -> dict[str, Any]:
    """An EventBridge event as a Lambda target receives it."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": detail_type,
        "source": source,
        "account": "123456789012",
        "time": "2024-01-01T12:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": detail,
    }


def eventbridge_s3_event(
    event_id: str, bucket: str, key: str, *, version_id: str | None = None
) -> dict[str, Any]:
    """An S3 'Object Created' event delivered by EventBridge."""
    obj: dict[str, Any] = {
        "key": key,
        "size": 5,
        "etag": "b1946ac92492d2347c6235b4d2611184",
        "sequencer": "00617F08299329D189",
    }
    if version_id is not None:
        obj["version-id"] = version_id
    event = eventbridge_event(
        event_id,
        {
            "version": "0",
            "bucket": {"name": bucket},
            "object": obj,
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
        source="aws.s3",
        detail_type="Object Created",
    )
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    return event


def dynamodb_record(
    seq: int,
    event_name: str,
    keys: dict[str, Any],
    new_image: dict[str, Any] | None = None,
    old_image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One DynamoDB Streams record with typed images, binaries base64 as on the wire."""
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": 1704110400,
        "Keys": keys,
        "SequenceNumber": f"{111000000000000000000 + seq}",
        "SizeBytes": 26,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new_image is not None:
        body["NewImage"] = new_image
    if old_image is not None:
        body["OldImage"] = old_image
    return {
        "eventID": f"c4ca4238a0b923820dcc509a6f7584{seq:02d}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": body,
        "eventSourceARN": TABLE_STREAM_ARN,
    }


def dynamodb_event(*records: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB Streams trigger payload."""
    return {"Records": list(records)}


def s3_via_sqs(message_id: str, *records: dict[str, Any]) -> dict[str, Any]:
    """An SQS message (a record for `sqs_event`) whose body is an S3 notification."""
    return sqs_record(message_id, json.dumps({"Records": list(records)}))


def s3_via_sns(
    message_id: str, *records: dict[str, Any], topic_arn: str = TOPIC_ARN
) -> dict[str, Any]:
    """An SQS message whose body is an SNS notification wrapping an S3 notification."""
    envelope = {
        "Type": "Notification",
        "MessageId": f"sns-{message_id}",
        "TopicArn": topic_arn,
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps({"Records": list(records)}),
        "Timestamp": "2024-01-01T12:00:00.000Z",
    }
    return sqs_record(message_id, json.dumps(envelope))


class LambdaContext:
    """A Lambda context object: what the handler reads, with a fixed time left."""

    def __init__(
        self,
        remaining_ms: int = 60_000,
        *,
        function_name: str = "onceflow-test",
        aws_request_id: str = "req-1",
    ) -> None:
        self.remaining_ms = remaining_ms
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:{function_name}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function times out."""
        return self.remaining_ms


# -- pollers ---------------------------------------------------------------------------------


class _Clock(Protocol):
    def now(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class PollRound:
    """What one polling round did."""

    invocations: int = 0
    received: int = 0
    failed: int = 0
    """Records reported in `batchItemFailures`, or in a batch whose invocation raised."""
    raised: list[Exception] = field(default_factory=list)
    """What the invocations that raised raised."""

    @property
    def errors(self) -> int:
        """Invocations that raised."""
        return len(self.raised)

    def invoke(self, handler: Handler, event: dict[str, Any], context: Any) -> set[str] | None:
        """The identifiers the handler reported failed; None when the invocation raised."""
        self.invocations += 1
        self.received += len(event["Records"])
        try:
            answer = handler(event, context)
        except Exception as exc:
            self.raised.append(exc)
            return None
        failures = answer.get("batchItemFailures", []) if isinstance(answer, dict) else []
        return {str(f["itemIdentifier"]) for f in failures}


@dataclass
class SimulatedShards:
    """Kinesis shards as Lambda polls them: per round, one invocation per shard with its next
    `batch_size` records; a shard restarts at the lowest failed sequence number (or at the
    start of a batch whose invocation raised), as Lambda does with `batchItemFailures`."""

    shards: Sequence[Sequence[dict[str, Any]]]
    """Each shard's records (`kinesis_record`), in sequence order."""
    clock: _Clock
    batch_size: int = 100
    poll_interval: float = 1.0
    """Seconds of `clock` each round takes."""
    cursors: list[int] = field(default_factory=list)
    deliveries: int = 0
    """Records handed to the handler, redeliveries included."""

    def __post_init__(self) -> None:
        self.cursors = [0] * len(self.shards)

    @property
    def drained(self) -> bool:
        """Whether every shard's last record has been checkpointed."""
        return all(c >= len(s) for c, s in zip(self.cursors, self.shards, strict=True))

    def poll(self, handler: Handler, context: Any = None) -> PollRound:
        """One round over every shard, then `poll_interval` passes."""
        done = PollRound()
        for index, shard in enumerate(self.shards):
            batch = list(shard[self.cursors[index] : self.cursors[index] + self.batch_size])
            if not batch:
                continue
            self.deliveries += len(batch)
            failed = done.invoke(handler, kinesis_event(*batch), context)
            seqs = [r["kinesis"]["sequenceNumber"] for r in batch]
            if failed is None:
                done.failed += len(batch)
                continue
            first = next((i for i, seq in enumerate(seqs) if seq in failed), len(batch))
            done.failed += len(batch) - first
            self.cursors[index] += first
        self.clock.advance(self.poll_interval)
        return done


@dataclass
class _Message:
    message_id: str
    body: str
    group: str | None
    seq: int
    receive_count: int = 0
    visible_at: float = float("-inf")


class SimulatedQueue:
    """An SQS queue (standard, or FIFO when messages have groups) as Lambda's poller drives it.

    Each round sends up to `concurrency` batches of visible messages; a message the answer
    reports failed (all of them when the invocation raised) comes back after
    `visibility_timeout` with `ApproximateReceiveCount` one higher, or, once it has been
    received `max_receive_count` times (a redrive policy), moves to `dead_letters`. A raised
    invocation halves the poller's concurrency (Lambda backs off); a clean one adds one back.
    A FIFO group is delivered in order, in one batch at a time, and stays blocked behind a
    message waiting to come back.
    """

    def __init__(
        self,
        clock: _Clock,
        *,
        batch_size: int = 10,
        concurrency: int = 5,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.batch_size = batch_size
        self.max_concurrency = self.concurrency = concurrency
        self.visibility_timeout = visibility_timeout
        self.max_receive_count = max_receive_count
        self.poll_interval = poll_interval
        self.messages: dict[str, _Message] = {}
        """Messages not deleted yet, in the order sent (a dict: deleting is cheap)."""
        self.dead_letters: list[str] = []
        """Message ids the redrive policy moved to the dead-letter queue."""
        self.deliveries = 0
        """Messages handed to the handler, redeliveries included."""
        self.receive_counts: dict[str, int] = {}
        """Every message's receives so far, kept after it was deleted."""

    def send(self, message_id: str, body: str, *, group: str | None = None, seq: int = 0) -> None:
        """Enqueue one message (with `group`, a FIFO message numbered `seq` in its group)."""
        self.messages[message_id] = _Message(message_id, body, group, seq)

    @property
    def drained(self) -> bool:
        """Whether every message has been deleted (or moved to the dead-letter queue)."""
        return not self.messages

    def _receive(self, now: float) -> list[list[_Message]]:
        """This round's batches: visible messages, each FIFO group whole in one batch."""
        batches: list[list[_Message]] = [[]]
        blocked: set[str] = set()  # FIFO groups waiting behind an invisible message
        placed: dict[str, int] = {}  # FIFO group -> the batch it went into this round
        for message in self.messages.values():
            group = message.group
            if group is not None and group in blocked:
                continue
            if message.visible_at > now:
                if group is not None:
                    blocked.add(group)
                continue
            if len(batches[-1]) == self.batch_size:
                if len(batches) == self.concurrency:
                    break
                batches.append([])
            here = len(batches) - 1
            if group is not None and placed.setdefault(group, here) != here:
                blocked.add(group)  # in flight in an earlier batch: the rest waits
                continue
            batches[-1].append(message)
        return [batch for batch in batches if batch]

    def poll(self, handler: Handler, context: Any = None) -> PollRound:
        """One round of the poller, then `poll_interval` passes."""
        done = PollRound()
        now = self.clock.now()
        for batch in self._receive(now):
            for message in batch:
                message.receive_count += 1
                self.receive_counts[message.message_id] = message.receive_count
            self.deliveries += len(batch)
            event = sqs_event(
                *(
                    sqs_record(
                        m.message_id,
                        m.body,
                        group=m.group,
                        seq=m.seq,
                        receive_count=m.receive_count,
                    )
                    for m in batch
                )
            )
            failed = done.invoke(handler, event, context)
            if failed is None:
                failed = {m.message_id for m in batch}
            done.failed += len(failed)
            for message in batch:
                if message.message_id not in failed:
                    del self.messages[message.message_id]
                elif (
                    self.max_receive_count is not None
                    and message.receive_count >= self.max_receive_count
                ):
                    del self.messages[message.message_id]
                    self.dead_letters.append(message.message_id)
                else:
                    message.visible_at = now + self.visibility_timeout
        if done.errors:
            self.concurrency = max(1, self.concurrency // 2)
        elif done.invocations:
            self.concurrency = min(self.max_concurrency, self.concurrency + 1)
        self.clock.advance(self.poll_interval)
        return done


@dataclass
class CapacityMeter:
    """DynamoDB requests by operation, and read and write units as DynamoDB bills them.

    `attach(client)` counts every call of a boto3 DynamoDB client before it is sent (a
    failed conditional write is billed too). Units follow the price sheet for items under
    4 KB read and 1 KB per write unit, an item's JSON size standing in for DynamoDB's
    count; transactions bill twice.
    """

    requests: Counter[str] = field(default_factory=Counter)
    write_units: int = 0
    read_units: float = 0.0

    def attach(self, client: Any) -> Any:
        """Count `client`'s calls from now on; the client."""
        client.meta.events.register("before-parameter-build.dynamodb.*", self.hook)
        return client

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        """botocore's before-parameter-build event: one call, billed."""
        name = model.name
        self.requests[name] += 1
        if name == "GetItem":
            self.read_units += _read_unit(params)
        elif name == "BatchGetItem":
            for request in params["RequestItems"].values():
                self.read_units += len(request["Keys"]) * _read_unit(request)
        elif name == "TransactGetItems":
            self.read_units += 2.0 * len(params["TransactItems"])
        elif name in {"PutItem", "UpdateItem", "DeleteItem"}:
            self.write_units += _write_units(params.get("Item") or params.get("Key") or {})
        elif name == "BatchWriteItem":
            for requests in params["RequestItems"].values():
                for request in requests:
                    put = request.get("PutRequest", {}).get("Item")
                    self.write_units += _write_units(put or request["DeleteRequest"]["Key"])
        elif name == "TransactWriteItems":
            for action in params["TransactItems"]:
                [(kind, body)] = action.items()
                if kind != "ConditionCheck":
                    item = body.get("Item") or body.get("Key") or {}
                    self.write_units += 2 * _write_units(item)

    @property
    def total(self) -> int:
        """Requests of every operation."""
        return sum(self.requests.values())

    def reset(self) -> None:
        """Start counting again from zero."""
        self.requests.clear()
        self.write_units, self.read_units = 0, 0.0


def _read_unit(request: dict[str, Any]) -> float:
    # 1 per strongly consistent read of an item under 4 KB, 0.5 eventually consistent.
    return 1.0 if request.get("ConsistentRead") else 0.5


def _write_units(item: dict[str, Any]) -> int:
    size = len(json.dumps(item, separators=(",", ":"), default=str).encode())
    return max(1, math.ceil(size / 1024))
