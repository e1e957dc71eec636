"""Lambda decoders put ordered records on watermark lanes: Kinesis shards, SQS FIFO groups."""

from __future__ import annotations

import json
from typing import Any

from onceflow.adapters.aws import lambda_handler
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.decode import decode
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from onceflow.watermarks import LANE_ATTRIBUTE, lane_of, position_of
from tests.aws.test_lambda_handler import _kpl

SHARD = "shardId-000000000000"


def events(payload: dict[str, Any], **options: Any) -> list[Event]:
    found = decode(payload, **options).records
    assert all(isinstance(r, Event) for r in found)
    return found  # type: ignore[return-value]


def test_kinesis_records_are_on_their_shards_lane_at_their_sequence_number() -> None:
    """The lane is the stream ARN and the shard; the position the sequence number."""
    other = "shardId-000000000003"
    payload = aws.kinesis_event(
        aws.kinesis_record(1, b"{}"),
        aws.kinesis_record(2, b"{}", shard=other),
        aws.kinesis_record(3, b"{}"),
    )
    first, second, third = events(payload)
    assert first.attributes[LANE_ATTRIBUTE] == SHARD
    assert lane_of(first) == f"{aws.STREAM_ARN}#lane#{SHARD}"
    assert lane_of(second) == f"{aws.STREAM_ARN}#lane#{other}"
    assert lane_of(third) == lane_of(first)
    assert position_of(first) == int(payload["Records"][0]["kinesis"]["sequenceNumber"])
    assert position_of(first) < position_of(third)  # type: ignore[operator]
    assert first.attributes["aws.shard"] == SHARD


def test_an_event_id_that_is_not_shard_and_sequence_names_no_lane() -> None:
    """The shard is read from eventID only when it ends in the record's own sequence."""
    record = aws.kinesis_record(1, b"{}")
    record["eventID"] = "shardId-000000000000:12345"  # not this record's sequence number
    [event] = events(aws.kinesis_event(record))
    assert LANE_ATTRIBUTE not in event.attributes and lane_of(event) is None
    assert "aws.shard" not in event.attributes


def test_kpl_aggregated_user_records_keep_per_key_markers() -> None:
    """User records share their carrier's sequence number: they are on no lane."""
    carrier = aws.kinesis_record(1, _kpl(("a", b'{"n": 1}'), ("b", b'{"n": 2}')))
    plain = aws.kinesis_record(2, b'{"n": 3}')
    one, two, three = events(aws.kinesis_event(carrier, plain))
    assert lane_of(one) is None and lane_of(two) is None
    assert LANE_ATTRIBUTE not in one.attributes and one.attributes["aws.shard"] == SHARD
    assert lane_of(three) == f"{aws.STREAM_ARN}#lane#{SHARD}"


def test_lanes_can_be_turned_off_for_a_parallelized_mapping() -> None:
    """ParallelizationFactor > 1 splits a shard over concurrent batches: no lane then."""
    payload = aws.kinesis_event(aws.kinesis_record(1, b"{}"))
    [event] = events(payload, lanes=False)
    assert lane_of(event) is None and event.attributes["aws.shard"] == SHARD
    fifo = aws.sqs_event(aws.sqs_record("m1", "{}", group="g", seq=1))
    [message] = events(fifo, lanes=False)
    assert lane_of(message) is None and message.sequence == "m1"


def test_dynamodb_streams_records_name_no_shard_so_no_lane() -> None:
    """A DynamoDB Streams record's eventID is random: the stream alone is no ordered lane."""
    payload = aws.dynamodb_event(aws.dynamodb_record(1, "INSERT", {"pk": {"S": "a"}}))
    [event] = events(payload)
    assert lane_of(event) is None and LANE_ATTRIBUTE not in event.attributes


def test_sqs_fifo_messages_are_on_their_groups_lane_at_their_sequence_number() -> None:
    """Lane: queue ARN + MessageGroupId; position: attributes.SequenceNumber."""
    payload = aws.sqs_event(
        aws.sqs_record("m1", "{}", group="g1", seq=1),
        aws.sqs_record("m2", "{}", group="g2", seq=2),
        aws.sqs_record("m3", "{}", group="g1", seq=3),
    )
    first, second, third = events(payload)
    assert lane_of(first) == f"{aws.FIFO_ARN}#lane#g1" == lane_of(third)
    assert lane_of(second) == f"{aws.FIFO_ARN}#lane#g2"
    number = payload["Records"][0]["attributes"]["SequenceNumber"]
    assert first.sequence == number and position_of(first) == int(number)
    assert first.id == "m1" and first.partition_key == "g1"


def test_standard_and_fair_queues_have_no_lane() -> None:
    """A standard queue is unordered, a fair queue's groups too (no SequenceNumber)."""
    [plain] = events(aws.sqs_event(aws.sqs_record("m1", "{}")))
    assert lane_of(plain) is None
    fair = aws.sqs_record("m2", "{}")
    fair["attributes"]["MessageGroupId"] = "tenant-1"
    [grouped] = events(aws.sqs_event(fair))
    assert lane_of(grouped) is None and grouped.partition_key == "tenant-1"
    unnumbered = aws.sqs_record("m3", "{}", group="g")
    unnumbered["attributes"]["SequenceNumber"] = "not-a-number"
    [broken] = events(aws.sqs_event(unnumbered))
    assert lane_of(broken) is None and broken.sequence == "m3"


def test_a_message_attribute_named_like_the_lane_is_dropped() -> None:
    """Only the decoder puts a message on a lane, never a sender's attribute."""
    record = aws.sqs_record("m1", "{}")
    record["messageAttributes"][LANE_ATTRIBUTE] = {"stringValue": "x", "dataType": "String"}
    [event] = events(aws.sqs_event(record))
    assert LANE_ATTRIBUTE not in event.attributes and event.attributes["tenant"] == "acme"


def test_s3_and_eventbridge_events_are_on_no_lane() -> None:
    """Unordered sources keep per-key markers; their events come from templates alike."""
    [obj] = events(aws.s3_event(aws.s3_record("bkt", "a/b.json", version_id="v1")))
    [bridge] = events(aws.eventbridge_event("e1", {"n": 1}))
    assert lane_of(obj) is None and lane_of(bridge) is None
    assert obj == Event(**{**obj.__dict__})  # built as validating it would build it
    assert bridge == Event(**{**bridge.__dict__})


class Orders:
    def process(self, event: Event) -> Any:
        return json.loads(event.data)


def test_the_runner_settles_a_kinesis_batch_with_one_lane_record() -> None:
    """Write-then-complete: one lane claim per batch, no per-key claim; again: duplicates."""
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    sink = MemorySink(atomic=False)
    pipeline = Pipeline(Orders(), sink, store, clock=clock, retry=RetryPolicy(attempts=1))
    assert pipeline.watermarks
    handler = lambda_handler(pipeline)
    payload = aws.kinesis_event(
        *[aws.kinesis_record(n, json.dumps({"n": n}).encode()) for n in range(50)]
    )
    assert handler(payload, aws.LambdaContext()) == {"batchItemFailures": []}
    assert store.calls["claim"] == 0 and store.calls["claim_lanes"] == 1
    assert list(store.lanes) == [f"{aws.STREAM_ARN}#lane#{SHARD}"]
    assert len(sink) == 50
    writes = len(sink.writes)
    answer = handler(payload, aws.LambdaContext())
    assert answer == {"batchItemFailures": []}
    assert store.calls["claim"] == 0 and len(sink.writes) == writes


def test_a_parallelized_mapping_or_lanes_off_settles_by_per_key_markers(
    monkeypatch: Any,
) -> None:
    """A ParallelizationFactor above 1 (declared, or ONCEFLOW_LANES=off for a mapping
    managed elsewhere) interleaves a shard's batches: no watermark may settle them."""
    import pytest

    from onceflow.adapters.aws.template import FunctionSettings, sam_template
    from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind
    from onceflow.errors import ConfigurationError

    def deployment(factor: int) -> Deployment:
        stream = Resource(ResourceKind.KINESIS_STREAM, "STREAM")
        trigger = Trigger(TriggerKind.KINESIS, stream, parallelization_factor=factor)
        return Deployment(trigger, state=Resource(ResourceKind.DYNAMODB_TABLE, "STATE"))

    payload = aws.kinesis_event(*[aws.kinesis_record(n, b'{"n": 1}') for n in range(5)])

    def claims(handler: Any) -> tuple[int, int]:
        store = MemoryIdempotencyStore(clock=ManualClock())
        pipeline = Pipeline(Orders(), MemorySink(atomic=False), store, clock=store.clock)
        handler._pipeline = lambda: pipeline
        handler(payload, aws.LambdaContext())
        return store.calls.get("claim", 0), store.calls.get("claim_lanes", 0)

    assert claims(lambda_handler(Orders, deployment=deployment(1))) == (0, 1)
    assert claims(lambda_handler(Orders, deployment=deployment(4))) == (1, 0)
    monkeypatch.setenv("ONCEFLOW_LANES", "off")
    assert claims(lambda_handler(Orders, deployment=deployment(1))) == (1, 0)
    monkeypatch.delenv("ONCEFLOW_LANES")
    assert claims(lambda_handler(Orders, lanes=False)) == (1, 0)
    # The template deploys the factor the handler reads.
    doc = sam_template(deployment(4), FunctionSettings(handler="app.handler"))
    [event] = doc["Resources"]["Processor"]["Properties"]["Events"].values()
    assert event["Properties"]["ParallelizationFactor"] == 4
    with pytest.raises(ConfigurationError, match="for stream triggers"):
        Trigger(TriggerKind.SQS, Resource(ResourceKind.SQS_QUEUE, "Q"), parallelization_factor=2)
