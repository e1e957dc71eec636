"""Tracing across Kinesis (moto server) and EventBridge (the platform's event shape).

Kinesis: the first pipeline's `KinesisSink` puts its record on a moto stream; the record
is read back and handed to the Kinesis decoder in the Lambda trigger's shape, then to the
second pipeline. EventBridge: the entry the `EventBridgeSink` sends (captured from the
PutEvents call) becomes the event EventBridge delivers to a Lambda target, decoded the
same way (moto does not invoke targets). In both, the second pipeline's event span is the
child of the first one's (OpenTelemetry SDK, in-memory exporter).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from onceflow.adapters.aws import EventBridgeSink, KinesisSink
from onceflow.adapters.aws.decode import decode
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, MemorySource
from onceflow.event import Event
from onceflow.interfaces import Sink
from onceflow.pipeline import Pipeline
from onceflow.runner import run_source
from onceflow.tracing import Tracing
from tests.support.servers import MotoServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def passthrough(event: Event) -> Any:
    return event.json()


class Traced:
    """One provider and exporter for both pipelines."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(tracer_provider=provider)

    async def first(self, sink: Sink) -> None:
        first = Pipeline(passthrough, sink, MemoryIdempotencyStore(), name="first",
                         tracing=self.tracing)  # fmt: skip
        upstream = Event(
            id="e1",
            source="upstream",
            data=json.dumps({"n": 1}).encode(),
            attributes={"traceparent": TRACEPARENT},
        )
        await run_source(first, MemorySource([upstream]))

    async def second(self, payload: dict[str, Any]) -> tuple[Event, MemorySink]:
        delivery = decode(payload)
        [event] = delivery.records
        assert isinstance(event, Event)
        sink = MemorySink()
        second = Pipeline(passthrough, sink, MemoryIdempotencyStore(), name="second",
                          tracing=self.tracing)  # fmt: skip
        result = await second.process_batch(delivery.records)
        assert len(result.processed) == 1
        return event, sink

    def assert_continued(self) -> None:
        spans = {
            (s.attributes or {})["onceflow.pipeline"]: s
            for s in self.exporter.get_finished_spans()
            if s.name == "onceflow process"
        }
        up, down = spans["first"], spans["second"]
        assert up.context is not None and down.context is not None
        assert down.context.trace_id == up.context.trace_id == int(TRACE, 16)
        assert down.parent is not None and down.parent.span_id == up.context.span_id


@pytest.mark.emulator
@pytest.mark.anyio
async def test_a_pipeline_fed_by_a_kinesis_sink_continues_the_trace(moto: MotoServer) -> None:
    traced = Traced()
    kinesis = moto.client("kinesis")
    name = f"trace-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=name)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    await traced.first(KinesisSink(name, client=kinesis))

    shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    [record] = kinesis.get_records(ShardIterator=iterator)["Records"]
    # The record holds the output's value, its trace context leading the object.
    body = json.loads(record["Data"])
    assert list(body) == ["traceparent", "n"] and body["n"] == 1
    payload = {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": record["SequenceNumber"],
                    "data": base64.b64encode(record["Data"]).decode(),
                    "approximateArrivalTimestamp": record[
                        "ApproximateArrivalTimestamp"
                    ].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard}:{record['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda",
                "awsRegion": "us-east-1",
                "eventSourceARN": arn,
            }
        ]
    }
    event, _ = await traced.second(payload)
    assert event.attributes["traceparent"].split("-")[1] == TRACE
    traced.assert_continued()


class CapturingEvents:
    """An EventBridge client that keeps the PutEvents entries."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.entries.extend(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(uuid.uuid4())} for _ in Entries]}


@pytest.mark.anyio
async def test_a_pipeline_fed_by_an_eventbridge_sink_continues_the_trace() -> None:
    traced = Traced()
    client = CapturingEvents()
    await traced.first(EventBridgeSink("bus", source="first.app", client=client))
    [entry] = client.entries
    detail = json.loads(entry["Detail"])
    assert detail["n"] == 1 and next(iter(detail)) == "traceparent"
    # What EventBridge hands a Lambda target for that entry.
    payload = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": entry["DetailType"],
        "source": entry["Source"],
        "account": "123456789012",
        "time": "2026-12-02T20:00:00Z",
        "region": "us-east-1",
        "resources": entry["Resources"],
        "detail": detail,
    }
    event, sink = await traced.second(payload)
    assert event.attributes["traceparent"].split("-")[1] == TRACE
    assert sink.values()[0]["n"] == 1
    traced.assert_continued()


def test_bodies_without_a_leading_traceparent_carry_none() -> None:
    from onceflow.envelopes import leading_traceparent, with_leading_traceparent

    context = {"traceparent": TRACEPARENT}
    assert with_leading_traceparent("[1]", context) == "[1]"
    assert with_leading_traceparent('{"a":1}', {"traceparent": "bogus"}) == '{"a":1}'
    assert leading_traceparent(with_leading_traceparent("{}", context).encode()) == TRACEPARENT
    assert leading_traceparent(b'{"traceparent":"00-zz"}') is None
    assert leading_traceparent(b'{"n":1}') is None
