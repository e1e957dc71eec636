"""SQS, Kinesis and EventBridge sinks (sqs_sink, kinesis_sink, eventbridge_sink, send_loop) and
the SQS pull source, on the moto server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import EventBridgeSink, KinesisSink, SendFailed, SQSSink, SQSSource
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.errors import OutputRejected
from onceflow.event import Event
from onceflow.identity import event_key, output_id
from onceflow.pipeline import Pipeline
from onceflow.records import Output
from onceflow.retry import Backoff, RetryPolicy
from onceflow.runner import run_source
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

FAST = RetryPolicy(attempts=8, backoff=Backoff(base=0.001))


def outputs(n: int, ns: str = "") -> list[Output]:
    ns = ns or uuid.uuid4().hex[:8]
    keys = [event_key(ns, f"e{i}") for i in range(n)]
    return [
        Output(output_id(key, 0), key, f"e{i}", 0, {"i": i}, f"p{i % 3}")
        for i, key in enumerate(keys)
    ]


class RefuseOnce:
    """A client proxy whose first call of `method` reports the last entry as refused."""

    def __init__(self, client: Any, method: str, refuse: Callable[[Any, dict[str, Any]], Any]):
        self._client, self._method, self._refuse = client, method, refuse
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def call(**kwargs: Any) -> Any:
            entries = kwargs.get("Entries") or kwargs.get("Records") or []
            self.calls.append(len(entries))
            if len(self.calls) == 1:
                return self._refuse(attr, kwargs)
            return attr(**kwargs)

        return call


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            return got
        got.extend(batch)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)
            ],
        )


@pytest.fixture(scope="module")
def sqs(moto: MotoServer) -> Any:
    return moto.client("sqs")


def queue(sqs: Any, fifo: bool = False) -> str:
    name = f"q-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
    attributes = {"FifoQueue": "true"} if fifo else {}
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


# -- SQSSink --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqs_sink_sends_every_output_once_resending_only_refused_entries(sqs: Any) -> None:
    url = queue(sqs)

    def refuse_last(send: Any, kwargs: dict[str, Any]) -> Any:
        *sent, last = kwargs["Entries"]
        response = send(**{**kwargs, "Entries": sent})
        response["Failed"] = [{"Id": last["Id"], "SenderFault": False, "Code": "Throttled"}]
        return response

    proxy = RefuseOnce(sqs, "send_message_batch", refuse_last)
    outs = outputs(23)
    await SQSSink(url, client=proxy, retry=FAST).write(outs)
    assert proxy.calls == [10, 1, 10, 3]
    got = drain(sqs, url)
    assert sorted(json.loads(m["Body"])["i"] for m in got) == list(range(23))
    ids = {m["MessageAttributes"]["output_id"]["StringValue"] for m in got}
    assert ids == {o.output_id for o in outs}


@pytest.mark.anyio
async def test_sqs_sink_on_fifo_drops_a_rewrite(sqs: Any) -> None:
    url = queue(sqs, fifo=True)
    sink = SQSSink(url, client=sqs)
    outs = outputs(4)
    await sink.write(outs)
    await sink.write(outs)
    assert len(drain(sqs, url)) == 4


@pytest.mark.anyio
async def test_sqs_sink_rejects_oversized_outputs_before_sending(sqs: Any) -> None:
    url = queue(sqs)
    big = Output(output_id("k", 0), "k", "k", 0, {"blob": "x" * 300_000})
    with pytest.raises(OutputRejected) as raised:
        await SQSSink(url, client=sqs).write([*outputs(2), big])
    assert list(raised.value.rejected) == [big.output_id]
    assert drain(sqs, url) == []


@pytest.mark.anyio
async def test_sqs_sink_gives_up_after_its_retry_policy(sqs: Any) -> None:
    url = queue(sqs)
    calls: list[int] = []

    class Refusing:
        def send_message_batch(self, **kwargs: Any) -> Any:
            calls.append(len(kwargs["Entries"]))
            return {"Failed": [{"Id": e["Id"], "SenderFault": False} for e in kwargs["Entries"]]}

    policy = RetryPolicy(attempts=3, backoff=Backoff(base=0.001))
    with pytest.raises(SendFailed, match="after 3 tries"):
        await SQSSink(url, client=Refusing(), retry=policy).write(outputs(2))
    assert calls == [2, 2, 2]


# -- KinesisSink ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_kinesis_sink_resends_only_failed_records(moto: MotoServer) -> None:
    kinesis = moto.client("kinesis")
    stream = f"s-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1})

    def fail_two(put: Any, kwargs: dict[str, Any]) -> Any:
        records = kwargs["Records"]
        response = put(**{**kwargs, "Records": records[:-2]})
        response["Records"] += [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
        ] * 2
        response["FailedRecordCount"] = 2
        return response

    proxy = RefuseOnce(kinesis, "put_records", fail_two)
    await KinesisSink(stream, client=proxy, retry=FAST).write(outputs(600))
    assert proxy.calls == [500, 2, 100]
    shard = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]
    assert sorted(json.loads(r["Data"])["i"] for r in records) == list(range(600))


# -- EventBridgeSink ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_eventbridge_sink_puts_events_resending_only_failed(
    moto: MotoServer, sqs: Any
) -> None:
    events = moto.client("events")
    bus = f"bus-{uuid.uuid4().hex[:8]}"
    events.create_event_bus(Name=bus)
    url = queue(sqs)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["orders"]}))
    events.put_targets(Rule="all", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

    def fail_first(put: Any, kwargs: dict[str, Any]) -> Any:
        _, *rest = kwargs["Entries"]
        response = put(**{**kwargs, "Entries": rest})
        response["Entries"].insert(0, {"ErrorCode": "ThrottlingException", "ErrorMessage": "x"})
        response["FailedEntryCount"] = 1
        return response

    proxy = RefuseOnce(events, "put_events", fail_first)
    sink = EventBridgeSink(bus, source="orders", detail_type="OrderTotal", client=proxy, retry=FAST)
    await sink.write(outputs(12))
    assert proxy.calls == [10, 1, 2]
    delivered = [json.loads(m["Body"]) for m in drain(sqs, url)]
    assert sorted(d["detail"]["i"] for d in delivered) == list(range(12))
    assert {d["detail-type"] for d in delivered} == {"OrderTotal"}


# -- SQSSource ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqs_source_deletes_successes_and_returns_failures(sqs: Any) -> None:
    url = queue(sqs)
    for n in range(5):
        sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"n": n}),
            MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
        )
    sqs.send_message(QueueUrl=url, MessageBody="not json")
    clock = ManualClock()
    store, sink, letters = MemoryIdempotencyStore(clock=clock), MemorySink(), MemorySink()
    source = SQSSource(
        url,
        client=sqs,
        wait_seconds=0,
        stop_when_empty=True,
        retry=RetryPolicy(backoff=Backoff(base=600, jitter=False)),
    )
    seen: list[Event] = []

    def process(event: Event) -> Any:
        seen.append(event)
        if event.json()["n"] == 3:
            raise RuntimeError("downstream is down")
        return event.json()

    # One delivery allowed, so n=3 is dead-lettered after its two in-process attempts.
    pipeline = Pipeline(
        process, sink, store, letters, clock=clock, retry=RetryPolicy(attempts=2), max_deliveries=1
    )
    total = await run_source(pipeline, source, batch_size=50)
    assert sorted(v["n"] for v in sink.values()) == [0, 1, 2, 4]
    assert len(total.dead_lettered) == 2  # "not json", and n=3 after two attempts
    assert seen[0].attributes["tenant"] == "acme" and seen[0].source.startswith("arn:aws:sqs:")
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
    assert left["ApproximateNumberOfMessagesNotVisible"] == "0"


@pytest.mark.anyio
async def test_sqs_source_hides_failed_messages_for_a_backoff(sqs: Any) -> None:
    url = queue(sqs)
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": n}))
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    source = SQSSource(
        url,
        client=sqs,
        wait_seconds=0,
        stop_when_empty=True,
        retry=RetryPolicy(backoff=Backoff(base=600, jitter=False)),
    )
    pipeline = Pipeline(lambda e: e.json(), MemorySink(), store, MemorySink(), clock=clock)
    first = await anext(source.batches(10))
    held = first[1]
    await store.handle().claim([held.key], 300)  # another worker holds this one
    result = await pipeline.process_batch(first)
    assert result.failed == [held.id]
    await source.ack(first, set(result.failed))
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
    assert left["ApproximateNumberOfMessagesNotVisible"] == "1"


@pytest.mark.anyio
async def test_sqs_source_on_fifo_keeps_a_failed_group_back(sqs: Any) -> None:
    url = queue(sqs, fifo=True)
    for n, group in enumerate(["A", "B", "A", "B", "A"]):
        sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"n": n}),
            MessageGroupId=group,
            MessageDeduplicationId=f"d{n}",
        )
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    source = SQSSource(
        url,
        client=sqs,
        wait_seconds=0,
        stop_when_empty=True,
        retry=RetryPolicy(backoff=Backoff(base=600, jitter=False)),
    )
    sink = MemorySink()
    pipeline = Pipeline(lambda e: e.json(), sink, store, MemorySink(), clock=clock, ordered=True)
    # Per-key leases: FIFO groups are lanes now, whose takeover has its own tests.
    pipeline.watermarks = False
    batch = await anext(source.batches(10))
    [second_of_a] = [r for r in batch if isinstance(r, Event) and r.json()["n"] == 2]
    await store.handle().claim([second_of_a.key], 300)  # A's second message is busy elsewhere
    result = await pipeline.process_batch(batch)
    await source.ack(batch, set(result.failed))
    assert sorted(v["n"] for v in sink.values()) == [0, 1, 3]
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessagesNotVisible"] == "2"  # A's second and third


@pytest.mark.anyio
async def test_sqs_source_survives_bodies_that_only_look_like_s3_notifications(sqs: Any) -> None:
    url = queue(sqs)
    s3 = {"bucket": {"name": "b"}, "object": {"key": "k", "sequencer": "01"}}
    broken = [
        {"Records": [{"eventSource": "aws:s3", "s3": "not an object"}]},
        {"Records": [{"eventSource": "aws:s3", "eventTime": "yesterday", "s3": s3}]},
        {"Records": [{"eventSource": "aws:s3", "s3": {**s3, "object": {"key": 7}}}]},
    ]
    plain = [{"Type": "Notification", "TopicArn": "aws:s3", "Message": 42}, {"n": 1}]
    for body in [*broken, *plain]:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    clock = ManualClock()
    sink, letters = MemorySink(), MemorySink()
    source = SQSSource(url, client=sqs, wait_seconds=0, stop_when_empty=True)
    pipeline = Pipeline(
        lambda e: e.json(), sink, MemoryIdempotencyStore(clock=clock), letters, clock=clock
    )
    total = await run_source(pipeline, source, batch_size=10)
    assert len(total.dead_lettered) == 3 and not total.failed
    assert sorted(map(json.dumps, sink.values())) == sorted(map(json.dumps, plain))
    reasons = [letter["message"] for letter in letters.values()]
    assert all("S3 notification record 0" in r or "s3://b/k" in r for r in reasons), reasons
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
    assert left["ApproximateNumberOfMessagesNotVisible"] == "0"
