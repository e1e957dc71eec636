"""Lambda trigger payloads (Kinesis, SQS, S3, DynamoDB Streams, EventBridge) decoded into Events.

Each platform record becomes an `Event` (or an `InvalidRecord` naming the record and the
cause when it cannot be decoded), paired with the identifier Lambda expects back in a
partial batch response.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from pydantic import ValidationError

from onceflow.adapters.aws.kinesis_aggregation import deaggregate
from onceflow.event import Event
from onceflow.records import InvalidRecord

__all__ = [
    "SUPPORTED_SOURCES",
    "Delivery",
    "DynamoDBChange",
    "Item",
    "S3Object",
    "UnrecognisedEvent",
    "decode",
    "dynamodb_change",
    "s3_object",
]

SUPPORTED_SOURCES = (
    "Kinesis (Records[].eventSource 'aws:kinesis')",
    "SQS standard and FIFO ('aws:sqs'), including S3 notifications delivered through SQS",
    "S3 notifications ('aws:s3')",
    "DynamoDB Streams ('aws:dynamodb')",
    "EventBridge (a single event with 'detail-type'), including S3 'Object Created' events",
)

Record = Event | InvalidRecord


class UnrecognisedEvent(ValueError):
    """A Lambda payload of a shape this adapter does not decode."""


@dataclass(slots=True)
class Item:
    """One platform record: what Lambda calls it, and the ids of the records it became."""

    identifier: str
    """The `itemIdentifier` of a partial batch response (sequence number or message id)."""
    record_ids: list[str]
    group: str | None = None
    """SQS FIFO `MessageGroupId`: a failure fails every later message of the group."""


@dataclass(slots=True)
class Delivery:
    """A decoded Lambda payload: the records for the pipeline and how to answer the platform."""

    kind: str
    """kinesis, dynamodb, sqs, sqs-fifo, s3 or eventbridge."""
    records: list[Record] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    @property
    def partial_response(self) -> bool:
        """Whether Lambda reads a `batchItemFailures` answer (else failures must raise)."""
        return self.kind in {"kinesis", "dynamodb", "sqs", "sqs-fifo"}


def decode(payload: Any) -> Delivery:
    """The records in one Lambda payload; `UnrecognisedEvent` for any other shape."""
    if isinstance(payload, Mapping):
        records = payload.get("Records")
        if isinstance(records, list) and records and isinstance(records[0], Mapping):
            source = records[0].get("eventSource") or records[0].get("EventSource")
            decoder = _BATCH_DECODERS.get(str(source))
            if decoder is not None:
                return decoder(records)
        if "detail-type" in payload and "source" in payload:
            return _eventbridge(payload)
    shape = sorted(payload)[:6] if isinstance(payload, Mapping) else type(payload).__name__
    raise UnrecognisedEvent(
        f"unrecognised Lambda event (top-level {shape}); onceflow decodes: "
        + "; ".join(SUPPORTED_SOURCES)
    )


# -- Kinesis ----------------------------------------------------------------------------


def _stream_record(
    raw: Mapping[str, Any], index: int, service: str, sequence_field: str
) -> tuple[str, Mapping[str, Any], str, str, str]:
    """A stream record's (ARN, body, sequence number, record id, where people find it)."""
    arn = str(raw.get("eventSourceARN", f"aws:{service}"))
    body = raw.get(service) or {}
    seq = str(body.get(sequence_field, ""))
    # eventID is shard + sequence number: unique across the shards of a stream.
    record_id = str(raw.get("eventID") or seq or f"record-{index}")
    return arn, body, seq, record_id, f"{arn} sequence {seq or '?'}"


def _kinesis(records: Sequence[Mapping[str, Any]]) -> Delivery:
    delivery = Delivery("kinesis")
    for index, raw in enumerate(records):
        arn, body, seq, record_id, where = _stream_record(raw, index, "kinesis", "sequenceNumber")
        item = Item(seq or record_id, [])
        delivery.items.append(item)
        try:
            if not seq:
                raise ValueError("the record has no kinesis.sequenceNumber")
            data = base64.b64decode(body.get("data", ""), validate=True)
            user_records = deaggregate(data)
            parts: list[tuple[str | None, bytes]]
            if user_records is None:
                parts, ids = [(body.get("partitionKey"), data)], [record_id]
            else:
                parts = list(user_records)
                # KPL user records share their carrier's sequence number: a failure
                # reports the carrier, and the ones already done come back as duplicates.
                ids = [f"{record_id}:{n}" for n in range(len(parts))]
            for (partition_key, payload), event_id in zip(parts, ids, strict=True):
                event = Event(
                    id=event_id,
                    source=arn,
                    type="aws.kinesis.record",
                    time=_epoch(body.get("approximateArrivalTimestamp")),
                    partition_key=partition_key,
                    sequence=seq,
                    data=payload,
                    attributes=_clean(
                        {
                            "aws.shard": record_id.split(":", 1)[0] if ":" in record_id else None,
                            "aws.region": raw.get("awsRegion"),
                        }
                    ),
                )
                delivery.records.append(event)
                item.record_ids.append(event.id)
        except (binascii.Error, ValueError, TypeError, ValidationError) as exc:
            reason = "data is not valid base64" if isinstance(exc, binascii.Error) else "bad record"
            bad = _invalid(
                (record_id, arn),
                where,
                f"{reason}: {_short(exc)}",
                str(body.get("data", "")).encode(),
                (body.get("partitionKey"), seq),
            )
            # A record that fails half-way through its user records counts as one bad record.
            delivery.records[len(delivery.records) - len(item.record_ids) :] = [bad]
            item.record_ids[:] = [bad.id]
    return delivery


# -- DynamoDB Streams ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DynamoDBChange:
    """One DynamoDB Streams change with its images as Python values (Decimal, bytes, sets)."""

    event_name: str
    """INSERT, MODIFY or REMOVE."""
    keys: dict[str, Any]
    new_image: dict[str, Any] | None
    old_image: dict[str, Any] | None
    sequence_number: str


def dynamodb_change(event: Event) -> DynamoDBChange:
    """The change a DynamoDB Streams event carries, decoded exactly."""
    from onceflow.adapters.aws.dynamodb_types import from_stream_image

    doc = json.loads(event.data)
    body = doc["dynamodb"]
    return DynamoDBChange(
        event_name=doc["eventName"],
        keys=from_stream_image(body.get("Keys")) or {},
        new_image=from_stream_image(body.get("NewImage")),
        old_image=from_stream_image(body.get("OldImage")),
        sequence_number=str(body.get("SequenceNumber", "")),
    )


def _dynamodb(records: Sequence[Mapping[str, Any]]) -> Delivery:
    delivery = Delivery("dynamodb")
    for index, raw in enumerate(records):
        arn, body, seq, record_id, where = _stream_record(raw, index, "dynamodb", "SequenceNumber")
        doc = {"eventName": raw.get("eventName"), "dynamodb": body}
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        record: Record
        try:
            if not seq:
                raise ValueError("the record has no dynamodb.SequenceNumber")
            if raw.get("eventName") not in {"INSERT", "MODIFY", "REMOVE"}:
                raise ValueError(f"unknown eventName {raw.get('eventName')!r}")
            event = Event(
                id=record_id,
                source=arn,
                type=f"aws.dynamodb.{raw['eventName']}",
                time=_epoch(body.get("ApproximateCreationDateTime")),
                # Changes to one item stay in order: the item's key is the lane.
                partition_key=json.dumps(body.get("Keys", {}), sort_keys=True),
                sequence=seq,
                data=data,
                attributes=_clean(
                    {
                        "aws.event_name": raw.get("eventName"),
                        "aws.region": raw.get("awsRegion"),
                        # DynamoDB's own TTL deletes a REMOVE with this principal.
                        "aws.ttl_delete": "true" if _ttl_delete(raw) else None,
                    }
                ),
            )
            dynamodb_change(event)  # every image must decode, or the record is invalid
            record = event
        except Exception as exc:
            record = _invalid(
                (record_id, arn), where, f"undecodable change: {_short(exc)}", data, (None, seq)
            )
        delivery.records.append(record)
        delivery.items.append(Item(seq or record_id, [record_id]))
    return delivery


def _ttl_delete(raw: Mapping[str, Any]) -> bool:
    identity = raw.get("userIdentity") or {}
    return bool(
        identity.get("type") == "Service"
        and identity.get("principalId") == "dynamodb.amazonaws.com"
    )


# -- SQS (and S3 notifications through it) ------------------------------------------------


def _sqs(records: Sequence[Mapping[str, Any]]) -> Delivery:
    fifo = str(records[0].get("eventSourceARN", "")).endswith(".fifo")
    delivery = Delivery("sqs-fifo" if fifo else "sqs")
    for index, raw in enumerate(records):
        arn = str(raw.get("eventSourceARN", "aws:sqs"))
        message_id = str(raw.get("messageId") or f"message-{index}")
        attrs = raw.get("attributes") or {}
        group = attrs.get("MessageGroupId")
        body = raw.get("body")
        where = f"{arn} message {message_id}"
        item = Item(message_id, [], group)
        delivery.items.append(item)
        record: Record
        if not isinstance(body, str):
            bad = _invalid(
                (message_id, arn),
                where,
                "the message has no body",
                b"",
                (group, message_id),
            )
            delivery.records.append(bad)
            item.record_ids.append(bad.id)
            continue
        notices = _s3_inside(body)
        if notices is not None:
            for notice in notices:
                inner = _s3_record(notice, f"{where}, ")
                if isinstance(inner, Event) and _receive_count(attrs) > 1:
                    inner = inner.model_copy(update={"delivery_count": _receive_count(attrs)})
                delivery.records.append(inner)
                item.record_ids.append(inner.id)
            continue
        try:
            record = Event(
                id=message_id,
                source=arn,
                type="aws.sqs.message",
                time=_epoch_ms(attrs.get("SentTimestamp")),
                partition_key=group,
                # Lambda hands a FIFO group over in order already; a message id as the
                # sequence keeps that order (the runner sorts numeric sequences only).
                sequence=message_id,
                data=body.encode("utf-8"),
                attributes=_clean(
                    {
                        **_message_attributes(raw.get("messageAttributes")),
                        "aws.region": raw.get("awsRegion"),
                        "aws.deduplication_id": attrs.get("MessageDeduplicationId"),
                        "aws.sequence_number": attrs.get("SequenceNumber"),
                    }
                ),
                delivery_count=_receive_count(attrs),
            )
        except (ValueError, TypeError, ValidationError) as exc:
            record = _invalid(
                (message_id, arn),
                where,
                f"bad message: {_short(exc)}",
                body.encode("utf-8", "replace"),
                (group, message_id),
            )
        delivery.records.append(record)
        item.record_ids.append(record.id)
    return delivery


def _receive_count(attrs: Mapping[str, Any]) -> int:
    """SQS's `ApproximateReceiveCount`: the platform's count of deliveries (1 if unreadable)."""
    try:
        return max(1, int(attrs.get("ApproximateReceiveCount", 1)))
    except (TypeError, ValueError):
        return 1


def _s3_inside(body: str) -> list[Mapping[str, Any]] | None:
    """The S3 notification records in an SQS body (also wrapped by SNS); None if it is not one."""
    # A cheap look before parsing: SNS wraps the notification as an escaped string.
    if not body.startswith("{") or ("aws:s3" not in body and "s3:TestEvent" not in body):
        return None
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
            doc = json.loads(doc["Message"])  # S3 -> SNS -> SQS
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("Event") == "s3:TestEvent":
        return []  # sent once when the notification is configured: nothing to process
    records = doc.get("Records")
    if (
        isinstance(records, list)
        and records
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:s3" for r in records)
    ):
        return records
    return None


def _message_attributes(attributes: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, attr in (attributes or {}).items():
        if isinstance(attr, Mapping) and attr.get("stringValue") is not None:
            out[name] = str(attr["stringValue"])
    return out


# -- S3 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Object:
    """The object an S3 notification is about, with its key already URL-decoded."""

    bucket: str
    key: str
    event_name: str
    version_id: str | None = None
    sequencer: str | None = None
    size: int | None = None
    etag: str | None = None


def s3_object(event: Event) -> S3Object:
    """The S3 object an S3 event (direct, through SQS or EventBridge) is about."""
    return S3Object(**json.loads(event.data))


def _s3(records: Sequence[Mapping[str, Any]]) -> Delivery:
    delivery = Delivery("s3")
    for record in (_s3_record(raw, "") for raw in records):
        delivery.records.append(record)
        delivery.items.append(Item(record.id, [record.id]))
    return delivery


def _s3_record(raw: Mapping[str, Any], where: str) -> Record:
    s3 = raw.get("s3") or {}
    bucket = str((s3.get("bucket") or {}).get("name", ""))
    obj = s3.get("object") or {}
    encoded = str(obj.get("key", ""))
    name = str(raw.get("eventName", "ObjectCreated:Put"))
    try:
        # Keys arrive form-encoded: "+" is a space, "%2B" a plus, UTF-8 percent escapes.
        key = unquote_plus(encoded, errors="strict")
    except UnicodeDecodeError as exc:
        return _invalid(
            (f"{bucket}/{encoded}", f"arn:aws:s3:::{bucket}"),
            f"{where}s3://{bucket}/{encoded}",
            f"undecodable key: {exc}",
            encoded.encode(),
        )
    return _s3_event(
        S3Object(
            bucket,
            key,
            name,
            obj.get("versionId"),
            obj.get("sequencer"),
            obj.get("size"),
            obj.get("eTag"),
        ),
        raw.get("eventTime"),
        raw.get("awsRegion"),
        f"{where}s3://{bucket}/{encoded}",
    )


# Event kinds named alike by both routes ("ObjectRemoved:Delete" / "Object Deleted").
_VERBS = {"ObjectCreated": "", "ObjectRemoved": "#removed", "ObjectDeleted": "#removed"}


def _s3_event(obj: S3Object, time: Any, region: Any, where: str) -> Record:
    # The same object version (or, unversioned, the same write) is one event however
    # often and by whichever route it is announced.
    # Sequencers are hex, zero-padded and upper-case in notifications but not always in
    # EventBridge: compare them normalised.
    sequencer = (obj.sequencer or "").lstrip("0").upper()
    version = f"v={obj.version_id}" if obj.version_id else f"seq={sequencer}"
    verb = _VERBS.get(obj.event_name.split(":", 1)[0], f"#{obj.event_name}")
    record_id = f"{obj.bucket}/{obj.key}#{version}{verb}"
    source = f"arn:aws:s3:::{obj.bucket}"
    if not obj.bucket or not obj.key or (not obj.version_id and not obj.sequencer):
        return _invalid(
            (record_id, source),
            where,
            "the notification lacks a bucket, key, or versionId/sequencer",
            json.dumps(_s3_doc(obj)).encode(),
        )
    return Event(
        id=record_id,
        source=source,
        type=f"aws.s3.{obj.event_name}",
        time=time or datetime.now(UTC),
        partition_key=f"{obj.bucket}/{obj.key}",
        sequence=None,
        data=json.dumps(_s3_doc(obj), ensure_ascii=False).encode(),
        attributes=_clean(
            {"aws.region": region, "aws.s3.bucket": obj.bucket, "aws.s3.key": obj.key}
        ),
    )


def _s3_doc(obj: S3Object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in S3Object.__slots__}


# -- EventBridge --------------------------------------------------------------------------


def _eventbridge(payload: Mapping[str, Any]) -> Delivery:
    delivery = Delivery("eventbridge")
    event_id = str(payload.get("id") or "")
    source = str(payload.get("source") or "")
    where = f"EventBridge event {event_id or '?'} from {source or '?'}"
    record: Record
    detail = payload.get("detail")
    try:
        if not event_id or not source:
            raise ValueError("the event has no id or source")
        if source == "aws.s3" and isinstance(detail, Mapping) and "object" in detail:
            obj = detail["object"]
            # EventBridge carries S3 keys as they are, not form-encoded.
            s3 = S3Object(
                str((detail.get("bucket") or {}).get("name", "")),
                str(obj.get("key", "")),
                str(payload["detail-type"]).replace(" ", ""),
                obj.get("version-id"),
                obj.get("sequencer"),
                obj.get("size"),
                obj.get("etag"),
            )
            record = _s3_event(s3, payload.get("time"), payload.get("region"), where)
        else:
            record = Event(
                id=event_id,
                source=source,
                type=str(payload["detail-type"]),
                time=payload.get("time") or datetime.now(UTC),
                data=json.dumps(detail, ensure_ascii=False, separators=(",", ":")).encode(),
                attributes=_clean(
                    {
                        "aws.account": payload.get("account"),
                        "aws.region": payload.get("region"),
                        "aws.resources": ",".join(payload.get("resources") or []) or None,
                    }
                ),
            )
    except (ValueError, TypeError, KeyError, ValidationError) as exc:
        record = _invalid(
            (event_id or "eventbridge", source or "aws.events"),
            where,
            f"bad event: {_short(exc)}",
            json.dumps(payload, default=str).encode(),
        )
    delivery.records.append(record)
    delivery.items.append(Item(record.id, [record.id]))
    return delivery


# -- shared -------------------------------------------------------------------------------


def _invalid(
    ids: tuple[str, str],
    where: str,
    reason: str,
    raw: bytes,
    lane: tuple[str | None, Any] = (None, None),
) -> InvalidRecord:
    """An invalid record; `ids` is (id, source), `lane` is (partition key, sequence)."""
    (record_id, source), (partition_key, sequence) = ids, lane
    return InvalidRecord(
        id=record_id,
        source=source,
        reason=f"{where}: {reason}",
        raw=raw,
        locator=where,
        partition_key=partition_key,
        sequence=None if sequence is None else str(sequence),
    )


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


def _clean(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _epoch(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _epoch_ms(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(int(value) / 1000, UTC)


_BATCH_DECODERS: dict[str, Callable[[Sequence[Mapping[str, Any]]], Delivery]] = {
    "aws:kinesis": _kinesis,
    "aws:dynamodb": _dynamodb,
    "aws:sqs": _sqs,
    "aws:s3": _s3,
}
