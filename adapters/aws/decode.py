"""Lambda trigger payloads (Kinesis, SQS, S3, DynamoDB Streams, EventBridge) decoded into Events.

Each platform record becomes an `Event` (or an `InvalidRecord` naming the record and the
cause when it cannot be decoded), paired with the identifier Lambda expects back in a
partial batch response.

Decoding is total: whatever one record holds (a field missing, mistyped, out of range,
invalid base64, a lone surrogate, nested too deeply to read), that record becomes an
`InvalidRecord` and the rest of the batch decodes; only a payload that is no trigger's
batch at all raises `UnrecognisedEvent`. A cause names the field and what is wrong with
it, never the field's value. An invalid record's `raw` is the platform record as JSON.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard
from urllib.parse import unquote_plus

from onceflow.adapters.aws.kinesis_aggregation import MAGIC, deaggregate
from onceflow.envelopes import leading_traceparent, trace_fields
from onceflow.event import Event, EventTemplate
from onceflow.records import InvalidRecord
from onceflow.watermarks import LANE_ATTRIBUTE

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

_MAX_ID = 2048
"""Longest identity text (id, ARN, sequence number) taken as given; AWS's are far shorter."""
_MAX_SEQUENCE = 129
"""Kinesis sequence numbers have up to 129 digits, DynamoDB Streams' up to 40."""


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

    def add(self, item: Item, records: list[Record]) -> None:
        """One platform record and the records it became."""
        self.items.append(item)
        if len(records) == 1:  # the common case, without a generator
            self.records.append(records[0])
            item.record_ids.append(records[0].id)
        else:
            self.records.extend(records)
            item.record_ids.extend(r.id for r in records)


def decode(payload: Any, *, lanes: bool = True) -> Delivery:
    """The records in one Lambda payload; `UnrecognisedEvent` for any other shape.

    With `lanes` (the default), records of an ordered lane carry `LANE_ATTRIBUTE` and a
    decimal sequence, so the runner settles them with one watermark per lane: a Kinesis
    shard (records that are no KPL aggregate) and an SQS FIFO message group. Pass
    `lanes=False` where a lane's batches are not contiguous runs of it: a Kinesis event
    source mapping with a ParallelizationFactor above 1 (one shard's records split by
    partition key over concurrent batches). DynamoDB Streams records name no shard, so
    they never carry a lane.
    """
    if _is_map(payload):
        records = payload.get("Records")
        if isinstance(records, list) and records:
            source = _batch_source(records)
            if source is not None:
                return _BATCH_DECODERS[source](records, lanes)
        if "detail-type" in payload and "source" in payload:
            return _eventbridge(payload)
    if _is_map(payload):
        names = sorted(ascii(k)[:40] for k in payload)[:6]
        shape = f"top-level members {', '.join(names) or 'none'}"
        if isinstance(payload.get("Records"), list):
            shape += ", Records of no supported eventSource"
    else:
        shape = f"a {type(payload).__name__}"
    raise UnrecognisedEvent(
        f"unrecognised Lambda event ({shape}); onceflow decodes: " + "; ".join(SUPPORTED_SOURCES)
    )


def _batch_source(records: Sequence[Any]) -> str | None:
    """The eventSource of the first record that names a supported one."""
    for raw in records:
        if _is_map(raw):
            source = raw.get("eventSource")
            if type(source) is str and source in _BATCH_DECODERS:
                return source
    return None


# -- reading fields without quoting them ----------------------------------------------------


class _Unreadable(ValueError):
    """A field of a platform record that cannot be read; the text names it, never its value."""


def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether `value` is a mapping; a dict (what Lambda hands over) without the ABC's check."""
    return type(value) is dict or isinstance(value, Mapping)


def _kind(value: Any) -> str:
    """What a value is, in JSON's words, for messages that must not quote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if _is_map(value):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _is_clean(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (no lone surrogate), so every store and sink keeps it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional_text(value: Any, name: str) -> str | None:
    if type(value) is str and value.isascii():
        return value  # the common case, checked first
    if value is None:
        return None
    if type(value) is not str:
        raise _Unreadable(f"{name} is {_kind(value)}, not a string")
    if not _is_clean(value):
        raise _Unreadable(f"{name} is not valid Unicode (it holds a lone surrogate)")
    return value


def _text(value: Any, name: str) -> str:
    if type(value) is str and value and value.isascii():
        return value
    text = _optional_text(value, name)
    if not text:
        raise _Unreadable(f"{name} is missing")
    return text


def _identity(value: Any, name: str) -> str:
    if type(value) is str and 0 < len(value) <= _MAX_ID and value.isascii():
        return value
    text = _text(value, name)
    if len(text) > _MAX_ID:
        raise _Unreadable(f"{name} is longer than {_MAX_ID} characters")
    return text


def _readable_identity(value: Any) -> str | None:
    """The identity text when it can be read, else None (never raises: it names the record)."""
    try:
        return _identity(value, "")
    except _Unreadable:
        return None


def _sequence(value: Any, name: str) -> str:
    if (
        type(value) is str
        and 0 < len(value) <= _MAX_SEQUENCE
        and value.isdigit()
        and value.isascii()
    ):
        return value
    text = _text(value, name)
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_SEQUENCE:
        raise _Unreadable(f"{name} is not a sequence number (up to {_MAX_SEQUENCE} digits)")
    return text


def _readable_sequence(value: Any) -> str | None:
    try:
        return _sequence(value, "")
    except _Unreadable:
        return None


def _optional_object(value: Any, name: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not _is_map(value):
        raise _Unreadable(f"{name} is {_kind(value)}, not an object")
    return value


def _object(value: Any, name: str) -> Mapping[str, Any]:
    found = _optional_object(value, name)
    if found is None:
        raise _Unreadable(f"{name} is missing")
    return found


def _part(value: Any, name: str) -> Mapping[str, Any]:
    """A member object read to name a record: an empty one when it is anything else."""
    part = value.get(name) if _is_map(value) else None
    return part if _is_map(part) else {}


def _seconds(value: Any, name: str) -> datetime:
    """Seconds since the epoch (a missing timestamp reads as now)."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Unreadable(f"{name} is {_kind(value)}, not a number of seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise _Unreadable(f"{name} is not a time since the epoch a datetime can hold") from None


def _milliseconds(value: Any, name: str) -> datetime:
    """Milliseconds since the epoch, as digits (a missing timestamp reads as now)."""
    if value is None:
        return datetime.now(UTC)
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18:
        millis = int(value)
    elif type(value) is int and 0 <= value < 10**18:
        millis = value
    else:
        raise _Unreadable(f"{name} is not a number of milliseconds since the epoch")
    return _seconds(millis / 1000, name)


def _iso_time(value: Any, name: str) -> datetime:
    """An ISO 8601 time (a missing one reads as now)."""
    text = _optional_text(value, name)
    if not text:
        return datetime.now(UTC)
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        raise _Unreadable(f"{name} is not an ISO 8601 time") from None
    return time if time.tzinfo is not None else time.replace(tzinfo=UTC)


def _size(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < 2**63:
        raise _Unreadable(f"{name} is not a size in bytes")
    return value


def _json_bytes(value: Any, name: str) -> bytes:
    """`value` as compact JSON in UTF-8, for an event's data."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise _Unreadable(f"{name} holds NaN or Infinity, which JSON cannot carry") from None
    except TypeError:
        raise _Unreadable(f"{name} holds a value JSON cannot carry") from None
    if text.isascii():
        return text.encode("ascii")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Unreadable(f"{name} is not valid Unicode (it holds a lone surrogate)") from None


def _attributes(values: Mapping[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


class _Templates:
    """One batch's `EventTemplate` per (source, type): its events are built without
    validating each again (every field the decoders hand over is already checked). The
    templates come from `_template`, kept across invocations."""

    __slots__ = ("_by", "_shards", "lanes")

    def __init__(self, *, lanes: bool = True) -> None:
        self._by: dict[tuple[str, str], EventTemplate] = {}
        self._shards: dict[tuple[str | None, str | None, bool], dict[str, str]] = {}
        self.lanes = lanes
        """Whether records of ordered lanes carry `LANE_ATTRIBUTE` (see `decode`)."""

    def attributes(self, shard: str | None, region: str | None, *, lane: bool) -> dict[str, str]:
        """A stream record's attributes, one mapping per shard, region and whether it is on
        its shard's lane (events never change theirs, so the records of one shard share it)."""
        found = self._shards.get((shard, region, lane))
        if found is None:
            on_lane = shard if lane and self.lanes else None
            found = self._shards[shard, region, lane] = _attributes(
                {"aws.shard": shard, "aws.region": region, LANE_ATTRIBUTE: on_lane}
            )
        return found

    def __call__(self, source: str, type: str) -> EventTemplate:
        template = self._by.get((source, type))
        if template is None:
            template = self._by[source, type] = _template(source, type)
        return template


def _cause(exc: Exception) -> str:
    """Why a record could not be decoded, in words that never quote the record."""
    if isinstance(exc, _Unreadable):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to read"
    # Anyone else's message may quote the input (pydantic, int(), fromisoformat): not shown.
    return f"it could not be decoded ({type(exc).__name__})"


def _raw(value: Any) -> bytes:
    """The platform record as JSON, for the dead letter (empty when JSON cannot hold it)."""
    try:
        text = json.dumps(
            value,
            ensure_ascii=False,
            separators=(",", ":"),
            skipkeys=True,
            default=lambda v: f"<{type(v).__name__}>",
        )
    except (RecursionError, ValueError):
        return b""
    return text.encode("utf-8", "backslashreplace")


def _fingerprint(value: Any) -> str:
    """A digest of a record's content, however deeply nested (walked without recursion)."""
    digest = hashlib.sha256()
    stack = [value]
    while stack:
        part = stack.pop()
        if _is_map(part):
            digest.update(b"{%d" % len(part))
            for name, member in part.items():
                stack.extend((member, name))
        elif isinstance(part, list | tuple):
            digest.update(b"[%d" % len(part))
            stack.extend(part)
        elif type(part) is int:
            digest.update(b"i" + hex(part).encode())  # repr() refuses very long integers
        else:
            digest.update(repr(part).encode("utf-8", "backslashreplace") + b"\x00")
    return digest.hexdigest()[:24]


@dataclass(slots=True)
class _Named:
    """How a record is named when it cannot be decoded: as far as its fields are readable."""

    record_id: str | None
    source: str
    where: str
    identifier: str | None = None
    """What Lambda calls it (sequence number or message id), when readable."""
    partition_key: str | None = None
    sequence: str | None = None
    group: str | None = None

    def invalid(self, raw: Any, cause: str) -> tuple[Item, InvalidRecord]:
        """The invalid record for platform record `raw`: one code path for every trigger."""
        # A record with no readable identity is known by its content: a redelivery of it
        # is the same record, another broken record is not.
        record_id = self.record_id or f"unidentified-{_fingerprint(raw)}"
        invalid = InvalidRecord(
            id=record_id,
            source=self.source,
            reason=cause,
            raw=_raw(raw),
            locator=self.where,
            partition_key=self.partition_key,
            sequence=self.sequence,
        )
        return Item(self.identifier or record_id, [], self.group), invalid


Reader = Callable[[Mapping[str, Any]], tuple[Item, list[Record]]]
"""Reads one platform record: its `Item` and what it became; raises when it cannot."""

FastReader = Callable[[Any], bool]
"""Reads one platform record of the common shape in one pass into the delivery, or gives
False (or raises) for any other record, which the `Reader` then reads field by field: it
accepts only records the `Reader` reads without fault, and adds the very same `Item` and
`Event` for them."""


def _each(
    delivery: Delivery,
    records: Sequence[Any],
    read: Reader,
    name: Callable[[Any, int], _Named],
    source: str,
    fast: FastReader | None = None,
) -> Delivery:
    """Decode every record of a batch; one that cannot be decoded becomes an InvalidRecord."""
    items, out = delivery.items, delivery.records
    for index, raw in enumerate(records):
        if fast is not None:
            try:
                if fast(raw):
                    continue
            except Exception:  # whatever it is (a field missing...), the reader names it
                pass
        try:
            if type(raw) is not dict and not _is_map(raw):
                raise _Unreadable(f"the record is {_kind(raw)}, not an object")
            if raw.get("eventSource") != source:
                raise _Unreadable(f"the record's eventSource is not {source}")
            item, got = read(raw)
        except Exception as exc:  # a decoder is total: one record never fails the batch
            # Named only now: the happy path reads each field once.
            item, invalid = name(raw, index).invalid(raw, _cause(exc))
            got = [invalid]
        if len(got) == 1:  # `Delivery.add`, inlined: the common case of every record
            items.append(item)
            record = got[0]
            out.append(record)
            item.record_ids.append(record.id)
        else:
            delivery.add(item, got)
    return delivery


# -- Kinesis and DynamoDB Streams -----------------------------------------------------------


def _stream_named(raw: Any, index: int, service: str, sequence_field: str) -> _Named:
    """A stream record's ARN, sequence number, id and location, as far as they are readable."""
    arn = _readable_identity(raw.get("eventSourceARN")) if _is_map(raw) else None
    seq = _readable_sequence(_part(raw, service).get(sequence_field))
    # eventID is shard + sequence number: unique across the shards of a stream.
    event_id = _readable_identity(raw.get("eventID")) if _is_map(raw) else None
    partition_key = None
    if service == "kinesis":
        partition_key = _readable_identity(_part(raw, service).get("partitionKey"))
    where = f"{arn or f'aws:{service}'} " + (
        f"sequence {seq}" if seq else f"record {index} of the batch (no readable sequence number)"
    )
    return _Named(
        record_id=event_id or seq,
        source=arn or f"aws:{service}",
        where=where,
        identifier=seq,
        partition_key=partition_key,
        sequence=seq,
    )


def _kinesis_named(raw: Any, index: int) -> _Named:
    return _stream_named(raw, index, "kinesis", "sequenceNumber")


def _kinesis_read(templates: _Templates, raw: Mapping[str, Any]) -> tuple[Item, list[Record]]:
    body = _object(raw.get("kinesis"), "kinesis")
    arn = _identity(raw.get("eventSourceARN"), "eventSourceARN")
    seq = _sequence(body.get("sequenceNumber"), "kinesis.sequenceNumber")
    record_id = _identity(raw.get("eventID"), "eventID")
    encoded = body.get("data")
    if type(encoded) is not str:
        raise _Unreadable(f"kinesis.data is {_kind(encoded)}, not base64 text")
    try:
        # What b64decode(validate=True) checks, without its regular expression.
        data = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Unreadable("kinesis.data is not valid base64") from None
    time = _seconds(body.get("approximateArrivalTimestamp"), "kinesis.approximateArrivalTimestamp")
    shard = _kinesis_shard(record_id, seq)
    region = _optional_text(raw.get("awsRegion"), "awsRegion")
    try:
        user_records = deaggregate(data)
    except ValueError as exc:  # its messages name the fault, never the data
        raise _Unreadable(f"kinesis.data: {exc}") from None
    if user_records is None:
        parts = [(_identity(body.get("partitionKey"), "kinesis.partitionKey"), data)]
        ids = [record_id]
        # On its shard's lane: the source is the stream's ARN, so the lane is ARN + shard.
        attributes = templates.attributes(shard, region, lane=True)
    else:
        parts = user_records
        # KPL user records share their carrier's sequence number: a failure reports the
        # carrier, and the ones already done come back as duplicates. Sharing a position,
        # they are on no lane: each keeps its own per-key marker.
        ids = [f"{record_id}:{n}" for n in range(len(parts))]
        attributes = templates.attributes(shard, region, lane=False)
    event = templates(arn, "aws.kinesis.record").event
    if len(parts) == 1:  # the common case, without a generator
        [(partition_key, payload)] = parts
        # The common case (no leading traceparent) costs one startswith, no call.
        traced = attributes if not payload.startswith(_TRACED) else _traced(attributes, payload)
        return Item(seq, []), [event(ids[0], payload, partition_key, seq, traced, time=time)]
    return Item(seq, []), [
        # User records of one carrier share its attributes: events never change them.
        event(event_id, payload, partition_key, seq, _traced(attributes, payload), time=time)
        for (partition_key, payload), event_id in zip(parts, ids, strict=True)
    ]


_TRACED = b'{"traceparent":"'
"""How a body that leads with its trace context starts (`onceflow.envelopes`)."""


def _traced(attributes: dict[str, str], payload: bytes) -> dict[str, str]:
    """The record's attributes with the `traceparent` its body leads with, if any."""
    parent = leading_traceparent(payload)  # one prefix comparison when there is none
    return attributes if parent is None else {**attributes, "traceparent": parent}


def _kinesis_shard(event_id: str, seq: str) -> str | None:
    """The shard of a Kinesis record, from Lambda's `eventID` (`<shard id>:<sequence>`).

    The one place a shard id is read out of a string: a Kinesis record in a Lambda event
    carries its shard in no field of its own (`eventSourceARN` is the stream). Only an
    `eventID` ending in the record's own sequence number names a shard; any other names
    none, and the record is on no lane.
    """
    shard, colon, tail = event_id.rpartition(":")
    return shard if colon and shard and tail == seq else None


def _kinesis_fast(templates: _Templates, delivery: Delivery) -> FastReader:
    """One batch's reader of plain Kinesis records (no KPL aggregate, no leading trace
    context, every field present, of the expected type and ASCII): `_kinesis_read`'s checks
    in one pass, each stream's template looked up once, and a time shared by the records
    that arrived at the same moment (datetimes are immutable)."""
    builders: dict[str, Callable[..., Event]] = {}
    attributes = templates.attributes
    add_item, add_record = delivery.items.append, delivery.records.append
    a2b, fromtimestamp = binascii.a2b_base64, datetime.fromtimestamp
    last: list[Any] = [None, None]  # the last arrival timestamp and its datetime

    def read(raw: Any) -> bool:
        if type(raw) is not dict or raw["eventSource"] != "aws:kinesis":
            return False
        body = raw["kinesis"]
        arn = raw["eventSourceARN"]
        if type(body) is not dict or type(arn) is not str:
            return False
        event = builders.get(arn)
        if event is None:
            if not (0 < len(arn) <= _MAX_ID and arn.isascii()):
                return False
            event = builders[arn] = templates(arn, "aws.kinesis.record").event
        seq = body["sequenceNumber"]
        record_id = raw["eventID"]
        key = body["partitionKey"]
        encoded = body["data"]
        region = raw["awsRegion"]
        stamp = body["approximateArrivalTimestamp"]
        if not (
            type(seq) is str
            and 0 < len(seq) <= _MAX_SEQUENCE
            and seq.isdigit()
            and seq.isascii()
            and type(record_id) is str
            and 0 < len(record_id) <= _MAX_ID
            and record_id.isascii()
            and type(key) is str
            and 0 < len(key) <= _MAX_ID
            and key.isascii()
            and type(encoded) is str
            and type(region) is str
            and region.isascii()
            and (type(stamp) is float or type(stamp) is int)
        ):
            return False
        data = a2b(encoded, strict_mode=True)  # raises for bad base64: the reader names it
        if data.startswith(MAGIC) or data.startswith(_TRACED):
            return False
        if stamp == last[0]:
            time = last[1]
        else:
            time = last[1] = fromtimestamp(stamp, UTC)
            last[0] = stamp
        shard, colon, tail = record_id.rpartition(":")
        on = attributes(shard if colon and shard and tail == seq else None, region, lane=True)
        add_record(event(record_id, data, key, seq, on, time=time))
        add_item(Item(seq, [record_id]))
        return True

    return read


def _kinesis(records: Sequence[Any], lanes: bool = True) -> Delivery:
    templates = _Templates(lanes=lanes)
    delivery = Delivery("kinesis")
    read = functools.partial(_kinesis_read, templates)
    fast = _kinesis_fast(templates, delivery)
    return _each(delivery, records, read, _kinesis_named, "aws:kinesis", fast)


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


def _dynamodb_named(raw: Any, index: int) -> _Named:
    return _stream_named(raw, index, "dynamodb", "SequenceNumber")


_CHANGES = ("INSERT", "MODIFY", "REMOVE")


def _dynamodb_read(templates: _Templates, raw: Mapping[str, Any]) -> tuple[Item, list[Record]]:
    body = _object(raw.get("dynamodb"), "dynamodb")
    arn = _identity(raw.get("eventSourceARN"), "eventSourceARN")
    seq = _sequence(body.get("SequenceNumber"), "dynamodb.SequenceNumber")
    record_id = _identity(raw.get("eventID"), "eventID")
    name = raw.get("eventName")
    if type(name) is not str or name not in _CHANGES:
        raise _Unreadable("eventName is not INSERT, MODIFY or REMOVE")
    keys = _object(body.get("Keys"), "dynamodb.Keys")
    for which in ("Keys", "NewImage", "OldImage"):
        _check_image(body.get(which), f"dynamodb.{which}")
    time = _seconds(body.get("ApproximateCreationDateTime"), "dynamodb.ApproximateCreationDateTime")
    region = _optional_text(raw.get("awsRegion"), "awsRegion")
    data = _json_bytes({"eventName": name, "dynamodb": body}, "the change")
    return Item(seq, []), [
        templates(arn, f"aws.dynamodb.{name}").event(
            record_id,
            data,
            # Changes to one item stay in order: the item's key is the lane (ASCII JSON).
            json.dumps(keys, sort_keys=True),
            seq,
            _attributes(
                {
                    "aws.event_name": name,
                    "aws.region": region,
                    # DynamoDB's own TTL deletes a REMOVE with this principal.
                    "aws.ttl_delete": "true" if _ttl_delete(raw) else None,
                }
            ),
            time=time,
        )
    ]


def _check_image(image: Any, name: str) -> None:
    """Raise naming the first attribute of a stream image that does not decode."""
    from onceflow.adapters.aws.dynamodb_types import from_stream_image

    if _optional_object(image, name) is None:
        return
    try:
        from_stream_image(image)
    except Exception:
        for attribute, typed in image.items():
            try:
                from_stream_image({attribute: typed})
            except Exception:
                label = ascii(attribute)[:66] if isinstance(attribute, str) else "?"
                raise _Unreadable(
                    f"{name} attribute {label} is not a DynamoDB typed value"
                ) from None
        raise _Unreadable(f"{name} is not a DynamoDB image") from None


def _dynamodb(records: Sequence[Any], lanes: bool = True) -> Delivery:
    # No lane: a DynamoDB Streams record names its stream (eventSourceARN) but not its
    # shard (eventID is a random identifier), and the shards of one stream are read in
    # parallel, so the stream alone is no ordered lane.
    read = functools.partial(_dynamodb_read, _Templates(lanes=False))
    return _each(Delivery("dynamodb"), records, read, _dynamodb_named, "aws:dynamodb")


def _ttl_delete(raw: Mapping[str, Any]) -> bool:
    identity = raw.get("userIdentity")
    return bool(
        _is_map(identity)
        and identity.get("type") == "Service"
        and identity.get("principalId") == "dynamodb.amazonaws.com"
    )


# -- SQS (and S3 notifications through it) ------------------------------------------------


def _sqs_named(raw: Any, index: int) -> _Named:
    fields = raw if _is_map(raw) else {}
    arn = _readable_identity(fields.get("eventSourceARN"))
    message_id = _readable_identity(fields.get("messageId"))
    group = _readable_identity(_part(raw, "attributes").get("MessageGroupId"))
    where = f"{arn or 'aws:sqs'} " + (
        f"message {message_id}" if message_id else f"record {index} of the batch (no messageId)"
    )
    return _Named(
        record_id=message_id,
        source=arn or "aws:sqs",
        where=where,
        identifier=message_id,
        partition_key=group,
        sequence=message_id,
        group=group,
    )


def _sqs_read(templates: _Templates, raw: Mapping[str, Any]) -> tuple[Item, list[Record]]:
    arn = _identity(raw.get("eventSourceARN"), "eventSourceARN")
    message_id = _identity(raw.get("messageId"), "messageId")
    attrs = _optional_object(raw.get("attributes"), "attributes") or {}
    group = _optional_text(attrs.get("MessageGroupId"), "attributes.MessageGroupId")
    body = raw.get("body")
    if type(body) is not str:
        raise _Unreadable("the message has no body" if body is None else "body is not a string")
    if not _is_clean(body):
        raise _Unreadable("body is not valid Unicode (it holds a lone surrogate)")
    notices = _s3_inside(body)
    if notices is not None:
        count = _receive_count(attrs)
        found: list[Record] = []
        for n, notice in enumerate(notices):
            where = f"{arn} message {message_id}, "
            inner = _s3_record(templates, notice, n, where, (f"{message_id}#s3-{n}", arn))
            if isinstance(inner, Event) and count > 1:
                inner = inner.model_copy(update={"delivery_count": count})
            found.append(inner)
        return Item(message_id, [], group), found
    attributes = _sqs_attributes(raw, attrs)
    # Lambda hands a FIFO group over in order already; a message id as the sequence
    # keeps that order (the runner sorts numeric sequences only). A FIFO message with its
    # group's SequenceNumber is on the group's lane (queue ARN + group), at that number.
    sequence = message_id
    # A fair (standard) queue's messages have groups too, but no order: only a .fifo.
    if group and templates.lanes and arn.endswith(".fifo"):
        number = attributes.get("aws.sequence_number")
        if number is not None and _readable_sequence(number) is not None:
            sequence = number
            attributes[LANE_ATTRIBUTE] = group
    return Item(message_id, [], group), [
        templates(arn, "aws.sqs.message").event(
            message_id,
            body.encode("utf-8"),
            group,
            sequence,
            attributes,
            time=_milliseconds(attrs.get("SentTimestamp"), "attributes.SentTimestamp"),
            delivery_count=_receive_count(attrs),
        )
    ]


def _sqs_attributes(raw: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, str]:
    """A message's attributes and the queue's own details that onceflow passes on."""
    out = _message_attributes(raw.get("messageAttributes"))
    if LANE_ATTRIBUTE in out:
        del out[LANE_ATTRIBUTE]  # only the decoder puts a message on a lane
    region = _optional_text(raw.get("awsRegion"), "awsRegion")
    if region is not None:
        out["aws.region"] = region
    if "MessageDeduplicationId" in attrs or "SequenceNumber" in attrs:  # FIFO queues only
        dedup = _optional_text(
            attrs.get("MessageDeduplicationId"), "attributes.MessageDeduplicationId"
        )
        if dedup is not None:
            out["aws.deduplication_id"] = dedup
        number = _optional_text(attrs.get("SequenceNumber"), "attributes.SequenceNumber")
        if number is not None:
            out["aws.sequence_number"] = number
    return out


def _sqs_fast(templates: _Templates, delivery: Delivery) -> FastReader:
    """One batch's reader of plain SQS messages (a standard queue's, every field present,
    no message attributes, an ASCII body that is no S3 notification): `_sqs_read`'s checks
    in one pass, each queue's template looked up once, one attributes mapping per region,
    and a time shared by the messages sent in the same millisecond."""
    builders: dict[str, Callable[..., Event]] = {}
    regions: dict[str, dict[str, str]] = {}
    add_item, add_record = delivery.items.append, delivery.records.append
    fromtimestamp = datetime.fromtimestamp
    last: list[Any] = [None, None]  # the last SentTimestamp and its datetime

    def read(raw: Any) -> bool:
        if type(raw) is not dict or raw["eventSource"] != "aws:sqs":
            return False
        arn = raw["eventSourceARN"]
        attrs = raw["attributes"]
        if type(arn) is not str or type(attrs) is not dict:
            return False
        event = builders.get(arn)
        if event is None:
            if not (0 < len(arn) <= _MAX_ID and arn.isascii()):
                return False
            event = builders[arn] = templates(arn, "aws.sqs.message").event
        message_id = raw["messageId"]
        body = raw["body"]
        region = raw["awsRegion"]
        sent = attrs["SentTimestamp"]
        if not (
            type(message_id) is str
            and 0 < len(message_id) <= _MAX_ID
            and message_id.isascii()
            and type(body) is str
            and body.isascii()
            and not raw["messageAttributes"]
            and type(raw["messageAttributes"]) is dict
            and type(region) is str
            and region.isascii()
            and type(sent) is str
            and len(sent) <= 18
            and sent.isdigit()
            and sent.isascii()
            and "MessageGroupId" not in attrs
            and "MessageDeduplicationId" not in attrs
            and "SequenceNumber" not in attrs
        ):
            return False
        if body.startswith("{") and ("aws:s3" in body or "s3:TestEvent" in body):
            return False
        if sent == last[0]:
            time = last[1]
        else:
            time = last[1] = fromtimestamp(int(sent) / 1000, UTC)
            last[0] = sent
        on = regions.get(region)
        if on is None:
            on = regions[region] = {"aws.region": region}
        add_record(
            event(
                message_id,
                body.encode("utf-8"),
                None,
                message_id,
                on,
                time=time,
                delivery_count=_receive_count(attrs),
            )
        )
        add_item(Item(message_id, [message_id]))
        return True

    return read


def _sqs(records: Sequence[Any], lanes: bool = True) -> Delivery:
    arns = (
        r.get("eventSourceARN") for r in records if _is_map(r) and r.get("eventSource") == "aws:sqs"
    )
    fifo = next((a for a in arns if type(a) is str), "").endswith(".fifo")
    templates = _Templates(lanes=lanes)
    delivery = Delivery("sqs-fifo" if fifo else "sqs")
    read = functools.partial(_sqs_read, templates)
    return _each(delivery, records, read, _sqs_named, "aws:sqs", _sqs_fast(templates, delivery))


def _receive_count(attrs: Mapping[str, Any]) -> int:
    """SQS's `ApproximateReceiveCount`: the platform's count of deliveries (1 if unreadable)."""
    value = attrs.get("ApproximateReceiveCount", 1)
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 9:
        return max(1, int(value))
    if type(value) is int and 1 <= value < 10**9:
        return value
    return 1


def _s3_inside(body: str) -> list[Any] | None:
    """The S3 notification records in an SQS body (also wrapped by SNS); None if it is not one."""
    # A cheap look before parsing: SNS wraps the notification as an escaped string.
    if not body.startswith("{") or ("aws:s3" not in body and "s3:TestEvent" not in body):
        return None
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
            doc = json.loads(doc["Message"])  # S3 -> SNS -> SQS
    except (ValueError, TypeError, RecursionError):
        return None  # not JSON a notification is written in: the user's own message
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
    if not attributes and (attributes is None or _is_map(attributes)):
        return out  # the common case: Lambda hands over an empty object
    for name, member in (_optional_object(attributes, "messageAttributes") or {}).items():
        label = _optional_text(name, "a messageAttributes name")
        attr = _object(member, "a messageAttributes member")
        value = _optional_text(attr.get("stringValue"), "a messageAttributes stringValue")
        if label and value is not None:
            out[label] = value
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


def _s3(records: Sequence[Any], lanes: bool = True) -> Delivery:
    delivery = Delivery("s3")
    templates = _Templates(lanes=False)  # S3 notifications are unordered: no lane
    for index, raw in enumerate(records):
        record = _s3_record(templates, raw, index, "", None)
        delivery.add(Item(record.id, []), [record])
    return delivery


def _s3_record(
    templates: Callable[[str, str], EventTemplate],
    raw: Any,
    index: int,
    where: str,
    fallback: tuple[str, str] | None,
) -> Record:
    """One S3 notification record; `fallback` is the (id, source) to name a broken one by."""
    here = f"{where}S3 notification record {index}"
    s3 = _part(raw, "s3")
    bucket = _readable_identity(_part(s3, "bucket").get("name"))
    encoded = _readable_identity(_part(s3, "object").get("key"))
    if bucket and encoded:
        here = f"{where}s3://{bucket}/{encoded}"
    try:
        if not _is_map(raw):
            raise _Unreadable(f"the record is {_kind(raw)}, not an object")
        if raw.get("eventSource") != "aws:s3":
            raise _Unreadable("the record's eventSource is not aws:s3")
        s3 = _object(raw.get("s3"), "s3")
        bucket = _identity(_object(s3.get("bucket"), "s3.bucket").get("name"), "s3.bucket.name")
        obj = _object(s3.get("object"), "s3.object")
        encoded = _identity(obj.get("key"), "s3.object.key")
        try:
            # Keys arrive form-encoded: "+" is a space, "%2B" a plus, UTF-8 percent escapes.
            key = unquote_plus(encoded, errors="strict")
        except UnicodeDecodeError:
            raise _Unreadable(
                "s3.object.key is an undecodable key: its percent escapes are not UTF-8"
            ) from None
        found = S3Object(
            bucket,
            key,
            _optional_text(raw.get("eventName"), "eventName") or "ObjectCreated:Put",
            _optional_text(obj.get("versionId"), "s3.object.versionId"),
            _optional_text(obj.get("sequencer"), "s3.object.sequencer"),
            _size(obj.get("size"), "s3.object.size"),
            _optional_text(obj.get("eTag"), "s3.object.eTag"),
        )
        return _s3_event(
            templates,
            found,
            _iso_time(raw.get("eventTime"), "eventTime"),
            _optional_text(raw.get("awsRegion"), "awsRegion"),
        )
    except Exception as exc:  # one notification never fails the others
        record_id, source = fallback or (None, f"arn:aws:s3:::{bucket}" if bucket else "aws:s3")
        return _Named(record_id, source, here).invalid(raw, _cause(exc))[1]


# Event kinds named alike by both routes ("ObjectRemoved:Delete" / "Object Deleted").
_VERBS = {"ObjectCreated": "", "ObjectRemoved": "#removed", "ObjectDeleted": "#removed"}


def _s3_event(
    templates: Callable[[str, str], EventTemplate],
    obj: S3Object,
    time: datetime,
    region: str | None,
) -> Event:
    if not obj.version_id and not obj.sequencer:
        raise _Unreadable("the notification has neither a versionId nor a sequencer")
    # The same object version (or, unversioned, the same write) is one event however
    # often and by whichever route it is announced.
    # Sequencers are hex, zero-padded and upper-case in notifications but not always in
    # EventBridge: compare them normalised.
    sequencer = (obj.sequencer or "").lstrip("0").upper()
    version = f"v={obj.version_id}" if obj.version_id else f"seq={sequencer}"
    verb = _VERBS.get(obj.event_name.split(":", 1)[0], f"#{obj.event_name}")
    return templates(f"arn:aws:s3:::{obj.bucket}", f"aws.s3.{obj.event_name}").event(
        f"{obj.bucket}/{obj.key}#{version}{verb}",
        json.dumps(_s3_doc(obj), ensure_ascii=False).encode(),
        f"{obj.bucket}/{obj.key}",
        None,
        _attributes({"aws.region": region, "aws.s3.bucket": obj.bucket, "aws.s3.key": obj.key}),
        time=time,
    )


def _s3_doc(obj: S3Object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in S3Object.__slots__}


# -- EventBridge --------------------------------------------------------------------------


def _eventbridge(payload: Mapping[str, Any]) -> Delivery:
    delivery = Delivery("eventbridge")
    event_id = _readable_identity(payload.get("id"))
    source = _readable_identity(payload.get("source"))
    named = _Named(
        record_id=event_id,
        source=source or "aws.events",
        where=f"EventBridge event {event_id or '(no readable id)'} from {source or '?'}",
    )
    record: Record
    try:
        record = _eventbridge_read(payload)
    except Exception as exc:  # the one event becomes a dead letter, never an escape
        record = named.invalid(payload, _cause(exc))[1]
    delivery.add(Item(record.id, []), [record])
    return delivery


def _eventbridge_read(payload: Mapping[str, Any]) -> Record:
    event_id = _identity(payload.get("id"), "id")
    source = _identity(payload.get("source"), "source")
    detail_type = _text(payload.get("detail-type"), "detail-type")
    time = _iso_time(payload.get("time"), "time")
    region = _optional_text(payload.get("region"), "region")
    detail = payload.get("detail")
    if source == "aws.s3" and _is_map(detail) and "object" in detail:
        obj = _object(detail.get("object"), "detail.object")
        bucket = _object(detail.get("bucket"), "detail.bucket")
        # EventBridge carries S3 keys as they are, not form-encoded.
        s3 = S3Object(
            _identity(bucket.get("name"), "detail.bucket.name"),
            _identity(obj.get("key"), "detail.object.key"),
            detail_type.replace(" ", ""),
            _optional_text(obj.get("version-id"), "detail.object.version-id"),
            _optional_text(obj.get("sequencer"), "detail.object.sequencer"),
            _size(obj.get("size"), "detail.object.size"),
            _optional_text(obj.get("etag"), "detail.object.etag"),
        )
        return _s3_event(_template, s3, time, region)
    resources = payload.get("resources") or []
    if not isinstance(resources, list):
        raise _Unreadable(f"resources is {_kind(resources)}, not an array")
    names = [_text(r, "a resources member") for r in resources]
    return _template(source, detail_type).event(
        event_id,
        _json_bytes(detail, "detail"),
        attributes=_attributes(
            {
                "aws.account": _optional_text(payload.get("account"), "account"),
                "aws.region": region,
                "aws.resources": ",".join(names) or None,
                **(trace_fields(detail) if _is_map(detail) and "traceparent" in detail else {}),
            }
        ),
        time=time,
    )


@functools.lru_cache(maxsize=256)
def _template(source: str, type: str) -> EventTemplate:
    """The template of events from `source` of `type`, kept across invocations: a warm
    container validates it once, not once per batch (S3 and EventBridge deliver one event
    per invocation). Every decoder gives each event its own time."""
    return EventTemplate(source=source, type=type)


_BATCH_DECODERS: dict[str, Callable[[Sequence[Any], bool], Delivery]] = {
    "aws:kinesis": _kinesis,
    "aws:dynamodb": _dynamodb,
    "aws:sqs": _sqs,
    "aws:s3": _s3,
}
