"""The Lambda entry on the memory backend: decoding, partial batch answers, time guard."""

from __future__ import annotations

import base64
import contextvars
import json
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from onceflow.adapters.aws import (
    BatchFailed,
    UnrecognisedEvent,
    dynamodb_change,
    lambda_handler,
    s3_object,
)
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy


class Recorder:
    """Returns each event's JSON payload; `fail_ids` raise a transient error every time."""

    def __init__(self, clock: ManualClock | None = None, tick: float = 0.0) -> None:
        self.seen: list[Event] = []
        self.clock = clock
        self.tick = tick

    def process(self, event: Event) -> Any:
        self.seen.append(event)
        if self.clock is not None:
            self.clock.advance(self.tick)
        return event.json()


class World:
    """A memory-backed pipeline and its parts."""

    def __init__(self, *, ordered: bool = False, tick: float = 0.0) -> None:
        self.clock = ManualClock()
        self.store = MemoryIdempotencyStore(clock=self.clock)
        self.sink = MemorySink()
        self.letters = MemorySink()
        self.processor = Recorder(self.clock, tick)
        self.pipeline = Pipeline(
            self.processor,
            self.sink,
            self.store,
            self.letters,
            ordered=ordered,
            clock=self.clock,
            retry=RetryPolicy(attempts=1),
        )
        self.handler = lambda_handler(self.pipeline)

    def hold(self, event: Any) -> None:
        """Another worker leases these records' keys, so they fail for redelivery."""
        from onceflow.adapters.aws.decode import decode

        # A held key is a per-key lease: records on a lane (Kinesis shards, FIFO groups)
        # would be settled by their lane's watermark and never look at it, so this world's
        # records go by per-key markers (lanes have their own tests: test_decoder_lanes.py
        # and the lane plans of the exactly-once suite).
        self.handler.lanes = False
        keys = [r.key for r in decode(event).records]
        anyio_run(self.store.handle().claim(keys, 300))

    def letter_messages(self) -> list[str]:
        return [v["message"] for v in self.letters.values()]


def anyio_run(coro: Any) -> Any:
    import anyio

    async def main() -> Any:
        return await coro

    return anyio.run(main)


def failures(answer: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in answer["batchItemFailures"]]


# -- Kinesis ------------------------------------------------------------------------------


def test_kinesis_decodes_and_answers_lowest_failure_first() -> None:
    world = World()
    records = [aws.kinesis_record(i, json.dumps({"n": i}).encode()) for i in range(6)]
    held = aws.kinesis_event(records[4], records[2])
    world.hold(held)
    answer = world.handler(aws.kinesis_event(*reversed(records)), aws.LambdaContext())
    seqs = [r["kinesis"]["sequenceNumber"] for r in records]
    assert failures(answer) == [seqs[2], seqs[4]]
    assert sorted(v["n"] for v in world.sink.values()) == [0, 1, 3, 5]
    event = world.processor.seen[0]
    assert event.source == aws.STREAM_ARN and event.partition_key == "p0"
    assert event.sequence in seqs and event.id.startswith("shardId-000000000000:")


def test_kinesis_redelivery_is_all_duplicates() -> None:
    world = World()
    event = aws.kinesis_event(*[aws.kinesis_record(i, b'{"n": 1}') for i in range(3)])
    assert failures(world.handler(event, aws.LambdaContext())) == []
    assert failures(world.handler(event, aws.LambdaContext())) == []
    assert len(world.processor.seen) == 3


def test_kinesis_bad_payloads_are_dead_lettered_by_arn_and_sequence() -> None:
    world = World()
    good = aws.kinesis_record(1, b'{"ok": true}')
    not_json = aws.kinesis_record(2, b"\x00\xffbinary, not JSON")
    not_base64 = aws.kinesis_record(3, "%%% not base64 %%%")
    answer = world.handler(aws.kinesis_event(good, not_json, not_base64), None)
    assert failures(answer) == []
    messages = world.letter_messages()
    assert len(messages) == 2
    seq2, seq3 = (r["kinesis"]["sequenceNumber"] for r in (not_json, not_base64))
    [json_letter] = [m for m in messages if seq2 in m]
    assert "not valid JSON" in json_letter and aws.STREAM_ARN in json_letter
    [b64_letter] = [m for m in messages if seq3 in m]
    assert "not valid base64" in b64_letter and aws.STREAM_ARN in b64_letter
    assert world.sink.values() == [{"ok": True}]


def test_ordered_kinesis_stops_a_partition_at_its_first_failure() -> None:
    world = World(ordered=True)
    records = [aws.kinesis_record(i, b'{"n": %d}' % i, partition_key=f"p{i % 2}") for i in range(6)]
    world.hold(aws.kinesis_event(records[2]))
    answer = world.handler(aws.kinesis_event(*records), None)
    seqs = [r["kinesis"]["sequenceNumber"] for r in records]
    assert failures(answer) == [seqs[2], seqs[4]]
    assert sorted(v["n"] for v in world.sink.values()) == [0, 1, 3, 5]


# -- SQS ----------------------------------------------------------------------------------


def test_sqs_failures_are_message_ids() -> None:
    world = World()
    messages = [aws.sqs_record(f"m{i}", json.dumps({"n": i}), receive_count=2) for i in range(4)]
    world.hold(aws.sqs_event(messages[1]))
    answer = world.handler(aws.sqs_event(*messages), aws.LambdaContext())
    assert failures(answer) == ["m1"]
    event = world.processor.seen[0]
    assert event.attributes["tenant"] == "acme" and event.delivery_count == 2
    assert event.source == aws.QUEUE_ARN


def test_sqs_message_that_is_not_json_names_the_message_id() -> None:
    world = World()
    answer = world.handler(aws.sqs_event(aws.sqs_record("m-bad", "plain text")), None)
    assert failures(answer) == []
    [message] = world.letter_messages()
    assert "m-bad" in message and aws.QUEUE_ARN in message and "not valid JSON" in message


def test_fifo_fails_every_later_message_of_a_group_after_its_first_failure() -> None:
    world = World(ordered=True)
    messages = [
        aws.sqs_record("a1", '{"n": 1}', group="A", seq=1),
        aws.sqs_record("b1", '{"n": 2}', group="B", seq=2),
        aws.sqs_record("a2", '{"n": 3}', group="A", seq=3),
        aws.sqs_record("b2", '{"n": 4}', group="B", seq=4),
        aws.sqs_record("a3", '{"n": 5}', group="A", seq=5),
    ]
    world.hold(aws.sqs_event(messages[2]))
    answer = world.handler(aws.sqs_event(*messages), None)
    assert failures(answer) == ["a2", "a3"]
    assert sorted(v["n"] for v in world.sink.values()) == [1, 2, 4]


def test_fifo_answer_holds_even_for_an_unordered_pipeline() -> None:
    world = World(ordered=False)
    messages = [aws.sqs_record(f"a{i}", json.dumps({"n": i}), group="A", seq=i) for i in range(3)]
    other = aws.sqs_record("b0", json.dumps({"n": 9}), group="B", seq=9)
    world.hold(aws.sqs_event(messages[0]))
    assert failures(world.handler(aws.sqs_event(*messages, other), None)) == ["a0", "a1", "a2"]


@pytest.mark.parametrize("group", [None, "A"], ids=["standard", "fifo"])
def test_an_sqs_batch_that_failed_entirely_raises_so_the_poller_backs_off(
    group: str | None,
) -> None:
    world = World()
    messages = [aws.sqs_record(f"m{i}", "{}", group=group, seq=i) for i in range(3)]
    world.hold(aws.sqs_event(*messages))
    kind = "sqs" if group is None else "sqs-fifo"
    with pytest.raises(BatchFailed, match=f"all 3 {kind} message"):
        world.handler(aws.sqs_event(*messages), None)
    assert failures(world.handler(aws.sqs_event(*messages, aws.sqs_record("x", "{}")), None)) == [
        "m0",
        "m1",
        "m2",
    ]


def test_the_sqs_receive_count_is_each_events_delivery_count() -> None:
    from onceflow.adapters.aws.decode import decode

    notice = aws.s3_record("bkt", "a.csv", version_id="v1")
    delivery = decode(
        aws.sqs_event(
            aws.sqs_record("m1", "{}", receive_count=4),
            aws.sqs_record("m2", json.dumps({"Records": [notice]}), receive_count=3),
            {**aws.sqs_record("m3", "{}"), "attributes": {"ApproximateReceiveCount": "?"}},
        )
    )
    assert [getattr(r, "delivery_count", None) for r in delivery.records] == [4, 3, 1]


def test_a_transient_failure_on_the_last_receive_is_dead_lettered() -> None:
    clock = ManualClock()
    letters = MemorySink()

    def down(event: Event) -> None:
        raise ConnectionError("database is unreachable")

    pipeline = Pipeline(
        down,
        MemorySink(),
        # A store that misses crashed deliveries (DynamoDB upsert): SQS's count decides.
        MemoryIdempotencyStore(clock=clock, counts_every_delivery=False),
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),
        max_deliveries=5,
        breaker=False,
    )
    handler = lambda_handler(pipeline)
    answer = handler(
        aws.sqs_event(aws.sqs_record("m1", "{}", receive_count=5), aws.sqs_record("m2", "{}")),
        None,
    )
    assert failures(answer) == ["m2"]  # m2 comes again; SQS says m1 came a fifth time
    [letter] = letters.values()
    assert "failed 5 deliveries" in letter["message"]


def test_a_stream_batch_that_failed_entirely_is_answered_not_raised() -> None:
    world = World()
    records = [aws.kinesis_record(i, b"{}") for i in range(3)]
    world.hold(aws.kinesis_event(*records))
    answer = world.handler(aws.kinesis_event(*records), None)
    assert failures(answer) == [r["kinesis"]["sequenceNumber"] for r in records]


# -- S3 -----------------------------------------------------------------------------------


def test_s3_keys_are_url_decoded() -> None:
    world = World()
    encoded = "in+box/a%2Bb/%C3%BCn%C3%AFcode+%E2%9C%93.json"
    answer = world.handler(aws.s3_event(aws.s3_record("bkt", encoded, version_id="v1")), None)
    assert answer["failed"] == 0 and answer["processed"] == 1
    obj = s3_object(world.processor.seen[0])
    assert obj.key == "in box/a+b/ünïcode ✓.json"
    assert obj.bucket == "bkt" and obj.version_id == "v1" and obj.event_name == "ObjectCreated:Put"
    assert world.processor.seen[0].key == "arn:aws:s3:::bkt#bkt/in box/a+b/ünïcode ✓.json#v=v1"


def test_same_object_version_by_any_route_is_processed_once() -> None:
    world = World()
    direct = aws.s3_event(aws.s3_record("bkt", "a+b.csv", version_id="v7"))
    via_sqs = aws.sqs_event(aws.s3_via_sqs("m1", aws.s3_record("bkt", "a+b.csv", version_id="v7")))
    via_bridge = aws.eventbridge_s3_event("eb-1", "bkt", "a b.csv", version_id="v7")
    world.handler(direct, None)
    assert failures(world.handler(via_sqs, None)) == []
    assert world.handler(via_bridge, None)["duplicates"] == 1
    assert len(world.processor.seen) == 1


def test_unversioned_object_by_notification_and_eventbridge_is_one_event() -> None:
    world = World()
    world.handler(aws.s3_event(aws.s3_record("bkt", "a", sequencer="00617F08299329D189")), None)
    bridge = aws.eventbridge_s3_event("eb-9", "bkt", "a")
    bridge["detail"]["object"]["sequencer"] = "617f08299329d189"
    assert world.handler(bridge, None)["duplicates"] == 1


def test_unversioned_writes_are_told_apart_by_sequencer() -> None:
    world = World()
    first = aws.s3_record("bkt", "k", sequencer="0055AED6DCD90281E5")
    second = aws.s3_record("bkt", "k", sequencer="0055AED6DCD90281E6")
    world.handler(aws.s3_event(first), None)
    assert world.handler(aws.s3_event(second, first), None)["processed"] == 1
    assert len(world.processor.seen) == 2


def test_s3_test_event_through_sqs_is_acknowledged() -> None:
    world = World()
    body = json.dumps(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Bucket": "bkt",
            "Time": "2024-01-01T00:00:00Z",
            "RequestId": "x",
            "HostId": "y",
        }
    )
    assert failures(world.handler(aws.sqs_event(aws.sqs_record("t1", body)), None)) == []
    assert world.processor.seen == []


def test_s3_failure_raises_so_lambda_retries_the_invocation() -> None:
    world = World()
    event = aws.s3_event(aws.s3_record("bkt", "x.json", version_id="v1"))
    world.hold(event)
    with pytest.raises(BatchFailed, match="another worker"):
        world.handler(event, None)


# -- DynamoDB Streams ---------------------------------------------------------------------


EVERY_TYPE = {
    "id": {"S": "u1"},
    "n": {"N": "12345678901234567890.000001"},
    "b": {"B": base64.b64encode(b"\x00\xff").decode()},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2.5"]},
    "bs": {"BS": [base64.b64encode(b"x").decode(), base64.b64encode(b"y").decode()]},
    "t": {"BOOL": True},
    "none": {"NULL": True},
    "m": {"M": {"inner": {"L": [{"N": "1"}, {"B": base64.b64encode(b"z").decode()}, {"S": "s"}]}}},
    "empty_l": {"L": []},
}


def test_dynamodb_images_decode_every_type_exactly() -> None:
    world = World()
    keys = {"id": {"S": "u1"}}
    event = aws.dynamodb_event(
        aws.dynamodb_record(1, "INSERT", keys, new_image=EVERY_TYPE),
        aws.dynamodb_record(2, "MODIFY", keys, new_image={"id": {"S": "u1"}}, old_image=EVERY_TYPE),
        aws.dynamodb_record(3, "REMOVE", keys, old_image={"id": {"S": "u1"}}),
    )
    assert failures(world.handler(event, None)) == []
    changes = [dynamodb_change(e) for e in world.processor.seen]
    assert [c.event_name for c in changes] == ["INSERT", "MODIFY", "REMOVE"]
    image = changes[0].new_image
    assert image == {
        "id": "u1",
        "n": Decimal("12345678901234567890.000001"),
        "b": b"\x00\xff",
        "ss": {"a", "b"},
        "ns": {Decimal(1), Decimal("2.5")},
        "bs": {b"x", b"y"},
        "t": True,
        "none": None,
        "m": {"inner": [Decimal(1), b"z", "s"]},
        "empty_l": [],
    }
    assert changes[1].old_image == image and changes[2].new_image is None
    assert changes[0].keys == {"id": "u1"}


def test_dynamodb_failures_by_sequence_number_and_bad_images_dead_lettered() -> None:
    world = World()
    keys = {"id": {"S": "u1"}}
    records = [
        aws.dynamodb_record(i, "INSERT", keys, new_image={"v": {"N": str(i)}}) for i in range(3)
    ]
    records.append(aws.dynamodb_record(9, "INSERT", keys, new_image={"b": {"B": "!!not b64"}}))
    world.hold(aws.dynamodb_event(records[1]))
    answer = world.handler(aws.dynamodb_event(*records), None)
    assert failures(answer) == [records[1]["dynamodb"]["SequenceNumber"]]
    [letter] = world.letter_messages()
    assert aws.TABLE_STREAM_ARN in letter and records[3]["dynamodb"]["SequenceNumber"] in letter


def test_stream_image_matches_what_boto3_serializes() -> None:
    from onceflow.adapters.aws.dynamodb_types import from_wire, to_wire

    value = {"a": Decimal("1.5"), "b": b"\x01", "s": {"x"}, "l": [1, None, True], "f": 0.1}
    wire = {k: to_wire(v) for k, v in value.items()}
    assert wire["f"] == {"N": "0.1"}
    assert wire["a"] == TypeSerializer().serialize(Decimal("1.5"))
    back = from_wire(wire)
    assert back["b"] == b"\x01" and back["f"] == Decimal("0.1") and back["s"] == {"x"}


# -- EventBridge, unknown shapes, time guard, factory ------------------------------------


def test_eventbridge_event() -> None:
    world = World()
    answer = world.handler(aws.eventbridge_event("eb-1", {"order_id": "o1"}), None)
    assert answer == {"processed": 1, "duplicates": 0, "dead_lettered": 0, "failed": 0}
    event = world.processor.seen[0]
    assert event.type == "OrderPlaced" and event.source == "com.example.orders"
    assert event.json() == {"order_id": "o1"} and event.attributes["aws.account"] == "123456789012"


def test_unrecognised_event_lists_the_supported_sources() -> None:
    world = World()
    with pytest.raises(UnrecognisedEvent) as raised:
        world.handler({"Records": [{"eventSource": "aws:sns", "Sns": {}}]}, None)
    text = str(raised.value)
    for name in ("Kinesis", "SQS", "S3", "DynamoDB Streams", "EventBridge"):
        assert name in text
    with pytest.raises(UnrecognisedEvent):
        world.handler("not even a mapping", None)


def test_nothing_starts_when_the_time_left_is_under_the_margin() -> None:
    world = World()
    event = aws.sqs_event(*[aws.sqs_record(f"m{i}", "{}") for i in range(3)])
    with pytest.raises(BatchFailed, match="all 3 sqs message"):  # every message comes back
        world.handler(event, aws.LambdaContext(remaining_ms=1_000))
    assert world.processor.seen == [] and world.store.calls["claim"] == 0


def test_work_stops_at_the_deadline_and_the_rest_comes_back() -> None:
    world = World(tick=4.0)  # each event takes 4 s of the manual clock
    event = aws.sqs_event(*[aws.sqs_record(f"m{i}", "{}") for i in range(5)])
    answer = world.handler(event, aws.LambdaContext(remaining_ms=12_000))  # 9 s usable
    assert failures(answer) == ["m3", "m4"]
    assert len(world.sink.values()) == 3
    assert failures(world.handler(event, aws.LambdaContext())) == []
    assert len(world.processor.seen) == 5


def test_factory_builds_the_pipeline_once() -> None:
    built: list[Pipeline] = []

    def factory() -> Pipeline:
        world = World()
        built.append(world.pipeline)
        return world.pipeline

    handler = lambda_handler(factory)
    assert built == []
    handler(aws.eventbridge_event("e1", {}), None)
    handler(aws.eventbridge_event("e2", {}), None)
    assert len(built) == 1 and handler.pipeline is built[0]


def test_dynamodb_ttl_deletes_are_marked() -> None:
    world = World()
    removed = aws.dynamodb_record(5, "REMOVE", {"id": {"S": "u9"}}, old_image={"id": {"S": "u9"}})
    removed["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    world.handler(aws.dynamodb_event(removed), None)
    assert world.processor.seen[0].attributes["aws.ttl_delete"] == "true"


def test_s3_key_with_a_broken_escape_is_dead_lettered_naming_the_object() -> None:
    world = World()
    answer = world.handler(
        aws.s3_event(aws.s3_record("bkt", "bad%FF%FEkey", version_id="v1")), None
    )
    assert answer["dead_lettered"] == 1
    [letter] = world.letter_messages()
    assert "s3://bkt/bad%FF%FEkey" in letter and "undecodable key" in letter


def _kpl(*records: tuple[str, bytes]) -> bytes:
    """A KPL aggregated record, encoded by hand from the published .proto."""
    import hashlib

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    keys = sorted({k for k, _ in records})
    message = b"".join(field(1, k.encode()) for k in keys)
    for key, data in records:
        inner = varint(1 << 3) + varint(keys.index(key)) + field(3, data)
        message += field(3, inner)
    return b"\xf3\x89\x9a\xc2" + message + hashlib.md5(message).digest()


def test_kpl_aggregated_records_are_split_and_reported_by_their_carrier() -> None:
    from onceflow.adapters.aws.decode import decode

    world = World()
    carrier = aws.kinesis_record(
        1, _kpl(("a", b'{"n": 1}'), ("b", b'{"n": 2}'), ("a", b'{"n": 3}'))
    )
    plain = aws.kinesis_record(2, b'{"n": 4}')
    event = aws.kinesis_event(carrier, plain)
    user_records = decode(event).records[:3]
    assert [(r.partition_key, r.json()["n"]) for r in user_records] == [  # type: ignore[union-attr]
        ("a", 1),
        ("b", 2),
        ("a", 3),
    ]
    anyio_run(world.store.handle().claim([user_records[1].key], 300))  # one is busy elsewhere
    assert failures(world.handler(event, None)) == [carrier["kinesis"]["sequenceNumber"]]
    assert sorted(v["n"] for v in world.sink.values()) == [1, 3, 4]
    world.clock.advance(301)
    again = world.handler(event, None)
    assert failures(again) == []
    assert sorted(v["n"] for v in world.sink.values()) == [1, 2, 3, 4]
    assert [e.json()["n"] for e in world.processor.seen].count(1) == 1


def test_corrupt_kpl_record_is_dead_lettered_once() -> None:
    world = World()
    broken = _kpl(("a", b"{}"))[:-1] + b"\x00"
    answer = world.handler(aws.kinesis_event(aws.kinesis_record(1, broken)), None)
    assert failures(answer) == []
    [letter] = world.letter_messages()
    assert "MD5" in letter


def test_s3_notification_through_sns_then_sqs() -> None:
    world = World()
    message = aws.s3_via_sns("m1", aws.s3_record("bkt", "x%2By.txt", version_id="v3"))
    assert failures(world.handler(aws.sqs_event(message), None)) == []
    assert s3_object(world.processor.seen[0]).key == "x+y.txt"


def test_kpl_partition_key_that_is_not_utf8_is_dead_lettered_without_its_bytes() -> None:
    import hashlib

    world = World()
    good = _kpl(("K", b"{}"))
    message = good[4:-16].replace(b"\x0a\x01K", b"\x0a\x01\xff", 1)
    broken = good[:4] + message + hashlib.md5(message).digest()
    answer = world.handler(aws.kinesis_event(aws.kinesis_record(1, broken)), None)
    assert failures(answer) == []
    [letter] = world.letter_messages()
    assert "KPL partition key is not UTF-8" in letter and "0xff" not in letter


# -- delivery counting through the handler ------------------------------------------------


class Outage:
    """Raises ConnectionError while `down`, and for `flaky` keys once after recovery."""

    def __init__(self) -> None:
        self.down = True
        self.flaky: set[str] = set()

    def process(self, event: Event) -> Any:
        if self.down:
            raise ConnectionError("the database is down")
        if event.id in self.flaky:
            self.flaky.discard(event.id)
            raise ConnectionError("one blip")
        return event.json()


def test_sqs_hand_backs_of_the_breaker_do_not_count_towards_max_deliveries() -> None:
    """SQS's receive count includes every hand-back of an open circuit; the memory store
    counts crashed deliveries and refunds hand-backs, so its count decides."""
    from onceflow.breaker import CircuitBreaker

    clock = ManualClock()
    letters = MemorySink()
    processor = Outage()
    pipeline = Pipeline(
        processor,
        MemorySink(),
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),
        max_deliveries=5,
        breaker=CircuitBreaker(failures=2, ratio=None, cool_down=60.0),
    )
    handler = lambda_handler(pipeline)

    def batch(receives: int, *ids: str) -> dict[str, Any]:
        return aws.sqs_event(*(aws.sqs_record(i, '{"n": 1}', receive_count=receives) for i in ids))

    with pytest.raises(BatchFailed):  # two real failures open the circuit; m3 is held back
        handler(batch(1, "m1", "m2", "m3"), None)
    for receives in range(2, 12):  # the circuit stays open: every message is handed back
        with pytest.raises(BatchFailed):
            handler(batch(receives, "m3"), None)
    clock.advance(61.0)
    processor.down = False
    processor.flaky = {"m3"}
    # m1 is the probe that closes the circuit; m3 then fails once, on its first real try.
    answer = handler(batch(12, "m1", "m3"), None)
    assert failures(answer) == ["m3"]
    assert letters.values() == []
    assert failures(handler(batch(13, "m3"), None)) == []


def test_json_log_lines_carry_the_request_id_function_name_and_cold_start() -> None:
    import logging

    from onceflow.logs import JsonFormatter

    world = World()
    lines: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    logger = logging.getLogger("onceflow")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for n in (1, 2):
            event = aws.sqs_event(aws.sqs_record(f"m{n}", "plain text"))
            world.handler(event, aws.LambdaContext(function_name="orders", aws_request_id=f"r-{n}"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert lines, "the undecodable message is logged"
    first = [line for line in lines if line.get("aws_request_id") == "r-1"]
    second = [line for line in lines if line.get("aws_request_id") == "r-2"]
    assert first and all(line["cold_start"] is True for line in first)
    assert all(line["cold_start"] is False for line in second)
    assert {line["function_name"] for line in lines} == {"orders"}


class _Flaky:
    """Raises a non-Exception once (as Ctrl-C would), then works; sees a context variable."""

    def __init__(self) -> None:
        self.interrupt = True
        self.seen: list[str] = []

    def process(self, event: Event) -> Any:
        self.seen.append(_REQUEST.get())
        _REQUEST.set(event.id)  # set inside one invocation, never seen by the next
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return {"id": event.id}


_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="unset")


def test_invocations_share_one_loop_and_an_interrupted_one_leaves_it_clean() -> None:
    processor = _Flaky()
    sink = MemorySink()
    handler = lambda_handler(Pipeline(processor, sink, MemoryIdempotencyStore(), MemorySink()))
    body = json.dumps({"n": 1})
    with pytest.raises(KeyboardInterrupt):
        handler(aws.sqs_event(aws.sqs_record("m0", body)), aws.LambdaContext())
    # Many small batches on the same thread's loop, one task each, nothing carried over.
    for n in range(1, 30):
        answer = handler(aws.sqs_event(aws.sqs_record(f"m{n}", body)), aws.LambdaContext())
        assert answer == {"batchItemFailures": []}
    assert len(sink) == 29
    assert set(processor.seen) == {"unset"}
