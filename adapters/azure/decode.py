"""Decoders from Azure Functions trigger payloads to `Event`s (or `InvalidRecord`s)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from pydantic import ValidationError

from onceflow.envelopes import leading_traceparent
from onceflow.event import Event, EventTemplate
from onceflow.records import InvalidRecord
from onceflow.watermarks import LANE_ATTRIBUTE

__all__ = ["decode_blob", "decode_event_hub", "decode_queue_message", "event_hub_context"]

log = logging.getLogger("onceflow.azure")

Record = Event | InvalidRecord


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _clean(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (a broken emoji) becomes its `\\udXXX` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _texts_valid(events: Sequence[func.EventHubEvent], properties: list[Any]) -> bool:
    """Whether the batch's partition keys, offsets and user properties are valid Unicode."""
    try:
        keys = "".join(f"{e.partition_key}{e.offset}" for e in events)
        _ = (keys + json.dumps(properties, ensure_ascii=False)).encode("utf-8")
    except Exception:  # a lone surrogate, or something stranger: escape one by one
        return False
    return True


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cause(exc: BaseException) -> str:
    """What went wrong, in words that quote no payload value (no `str(exc)` of input)."""
    name = type(exc).__name__
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][:1]) or 'value'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)[:3]
        )
        return f"{name}: {fields}"
    if isinstance(exc, UnicodeError):
        return f"{name}: {getattr(exc, 'reason', 'invalid text')}"
    if isinstance(exc, OSError):  # the platform's I/O failed: its words, not the payload
        return f"{name}: {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{name}: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return name


def _metadata(events: Sequence[func.EventHubEvent]) -> Mapping[str, Any]:
    """The batch's trigger metadata, or {} when the worker's copy cannot be read."""
    try:
        metadata = events[0].metadata if events else None
    except Exception as exc:  # one malformed Datum: decode the events without it
        log.warning("the Event Hubs trigger metadata cannot be read: %s", _cause(exc))
        return {}
    return metadata if isinstance(metadata, Mapping) else {}


def event_hub_context(events: Sequence[func.EventHubEvent]) -> dict[str, Any]:
    """The batch's `PartitionContext` (namespace, hub, consumer group, partition id), or {}."""
    context = _metadata(events).get("PartitionContext") or {}
    if isinstance(context, str | bytes):
        try:
            context = json.loads(context)
        except (ValueError, RecursionError) as exc:
            log.warning("the Event Hubs PartitionContext is not JSON: %s", _cause(exc))
            return {}
    return dict(context) if isinstance(context, Mapping) else {}


def _scalar(value: Any, default: str) -> str:
    """A context field as clean text; `default` for a missing, empty or structured one."""
    if value is None or isinstance(value, Mapping | list) or str(value) == "":
        return default
    return _clean(str(value))


def decode_event_hub(
    events: Sequence[func.EventHubEvent],
    *,
    event_hub_name: str,
    consumer_group: str = "$Default",
    namespace: str | None = None,
    key_field: str | None = None,
) -> list[Record]:
    """One record per event of a `cardinality="many"` batch, in delivery order.

    The event's source is `namespace/hub/partition` and its id the sequence number, so
    the idempotency key is `namespace/hub/partition#sequence`; with `key_field` the id
    is that field of the JSON body instead (the source drops the partition, since a
    business key may move between partitions). The ordering lane is the publisher's
    partition key, else the partition. Offset, enqueued time and the user properties
    become attributes. Without `key_field`, and when the trigger names the partition, each
    event is on its partition's watermark lane (`LANE_ATTRIBUTE`, at its sequence number):
    the runner settles a batch with one lane record instead of a marker per event. Total:
    an event that cannot be decoded (a mistyped field, a body
    that is no JSON object with the key field, text that is not valid Unicode) becomes
    an `InvalidRecord` naming it and the cause; the rest of the batch decodes.
    """
    context = event_hub_context(events)
    batch = _Batch(
        hub=_scalar(context.get("EventHubName"), event_hub_name),
        space=_scalar(context.get("FullyQualifiedNamespace"), namespace or "eventhubs"),
        partition=_scalar(context.get("PartitionId"), "unknown"),
        group=_scalar(context.get("ConsumerGroup"), consumer_group),
        key_field=key_field,
        known=[name for name in context if _scalar(context[name], "") != ""],
    )
    properties = _metadata(events).get("PropertiesArray")
    if not isinstance(properties, list):
        properties = []
    # Escaping every text costs a call per property; one check of the batch's texts
    # shows whether any needs it (a lone surrogate in a property or partition key).
    clean = None if _texts_valid(events, properties) else _clean
    records: list[Record] = []
    for index, event in enumerate(events):
        user_props = properties[index] if index < len(properties) else None
        try:
            records.append(batch.decode(event, user_props, clean))
        except Exception as exc:  # a decoder is total: this event, not the batch, is invalid
            records.append(batch.invalid(index, event, _cause(exc)))
    return records


class _Batch:
    """What every event of one Event Hubs batch shares, and how one event decodes."""

    __slots__ = ("fixed", "hub", "key_field", "keyed", "partition", "plain", "source", "space")

    def __init__(
        self,
        *,
        hub: str,
        space: str,
        partition: str,
        group: str,
        key_field: str | None,
        known: Collection[str] = (),
    ) -> None:
        self.hub, self.space, self.partition, self.key_field = hub, space, partition, key_field
        self.source = f"{space}/{hub}/{partition}"
        self.fixed = {
            "eventhub.namespace": space,
            "eventhub.name": hub,
            "eventhub.partition": partition,
            "eventhub.consumer_group": group,
        }
        """The attributes every event of the batch carries."""
        if key_field is None and "PartitionId" in known:
            # The partition's lane (source = namespace/hub/partition): sequence numbers
            # rise along it and a batch is a contiguous run of it from its checkpoint.
            # With a key field the event is known by a business key instead, which may
            # come again at another sequence number: per-key markers then.
            self.fixed[LANE_ATTRIBUTE] = partition
        # Every event of the batch from one template, so none is validated again: the
        # fields `decode` hands over are checked first (or made text) there.
        self.plain = EventTemplate(source=self.source, type="azure.eventhub.event")
        self.keyed = EventTemplate(source=f"{space}/{hub}", type="azure.eventhub.event")

    def locator(self, sequence: object) -> str:
        return (
            f"event hub {self.space}/{self.hub} partition {self.partition} "
            f"sequence number {sequence}"
        )

    def decode(
        self, event: func.EventHubEvent, user_props: Any, clean: Callable[[str], str] | None
    ) -> Record:
        """The event; its texts passed through `clean` first when there is one."""
        sequence: Any = event.sequence_number
        body = event.get_body()
        if not isinstance(body, bytes):
            body = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
        lane = event.partition_key or f"partition-{self.partition}"
        if type(lane) is not str:
            raise TypeError("the partition key is not text")
        if clean is not None:
            lane = clean(lane)
        if not _is_sequence(sequence):
            what = "no sequence number" if sequence is None else "a mistyped sequence number"
            return InvalidRecord(
                id=f"offset-{_clean(str(event.offset))}",
                source=self.source,
                reason=f"{self.locator(_clean(str(sequence)))}: the event carries {what}",
                raw=body,
                locator=self.locator(_clean(str(sequence))),
                partition_key=_clean(lane),
            )
        number = str(sequence) if type(sequence) is int else str(int(sequence))
        attributes: dict[str, str] = {}
        if isinstance(user_props, Mapping) and user_props:
            if clean is None:
                attributes = {str(k): _text(v) for k, v in user_props.items()}
            else:
                attributes = {clean(str(k)): clean(_text(v)) for k, v in user_props.items()}
        # Only the decoder puts an event on a lane: a publisher's property of that name
        # is dropped (it would make a keyed event's position its identity).
        attributes.pop(LANE_ATTRIBUTE, None)
        attributes.update(self.fixed)
        attributes["eventhub.sequence_number"] = number
        offset = event.offset
        if offset is not None:
            attributes["eventhub.offset"] = str(offset) if clean is None else clean(str(offset))
        template, event_id = self.plain, number
        if self.key_field is not None:
            value, problem = _key_value(body, self.key_field)
            if problem:
                locator = self.locator(number)
                return InvalidRecord(
                    id=event_id,
                    source=self.source,
                    reason=f"{locator}: the key field {self.key_field!r} {problem}",
                    raw=body,
                    locator=locator,
                    partition_key=_clean(lane),
                    sequence=number,
                    attributes={_clean(k): _clean(v) for k, v in attributes.items()},
                )
            template, event_id = self.keyed, value
        return template.event(
            event_id, body, lane, number, attributes, time=_aware(event.enqueued_time)
        )

    def invalid(self, index: int, event: func.EventHubEvent, cause: str) -> InvalidRecord:
        """The event as an `InvalidRecord`, from what of it can still be read."""
        sequence = _readable(lambda: event.sequence_number)
        offset = _readable(lambda: event.offset)
        ident = (
            _clean(str(sequence))
            if sequence is not None
            else (f"offset-{_clean(str(offset))}" if offset is not None else f"index-{index}")
        )
        body = _readable(event.get_body)
        lane = _readable(lambda: event.partition_key)
        locator = self.locator(ident)
        return InvalidRecord(
            id=ident,
            source=self.source,
            reason=f"{locator}: the event cannot be decoded ({cause})",
            raw=body if isinstance(body, bytes) else b"",
            locator=locator,
            partition_key=_clean(lane) if isinstance(lane, str) and lane else None,
            sequence=ident if sequence is not None else None,
        )


def _is_sequence(value: Any) -> bool:
    """Whether `value` is a sequence number: a non-negative integer (or its digits)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _readable(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        return None


def _key_value(body: bytes, key_field: str) -> tuple[str, str]:
    """The key field of a JSON body as an event id, or ("", why it cannot be one)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return "", f"cannot be read: the body is not JSON ({_cause(exc)})"
    if not isinstance(document, dict):
        return "", f"cannot be read: the body is a JSON {type(document).__name__}, not an object"
    value = document.get(key_field)
    if value is None or isinstance(value, dict | list) or str(value) == "":
        return "", "is not a non-empty scalar in the JSON body"
    text = str(value)
    if not _valid_text(text):
        return "", "holds text that is not valid Unicode (a lone surrogate)"
    return text, ""


def decode_blob(stream: func.InputStream, *, account: str | None = None) -> Record:
    """The blob as one event: source is the container, id the blob path (and ETag, if known).

    With the ETag in the id, a blob written again under the same name is a new event,
    as S3's versionId is; a blob that cannot be read, or whose trigger object is
    malformed, becomes an `InvalidRecord` naming it and the cause.
    """
    try:
        return _decode_blob(stream, account)
    except Exception as exc:  # a decoder is total
        name = _readable(lambda: stream.name)
        name = _clean(name) if isinstance(name, str) and name else "unknown"
        container, _, path = name.partition("/")
        return InvalidRecord(
            id=path or name,
            source=f"{_clean(account) if account else 'blob'}/{container}",
            reason=f"blob {name}: the trigger's blob cannot be decoded ({_cause(exc)})",
            locator=f"blob {name}",
        )


def _decode_blob(stream: func.InputStream, account: str | None) -> Record:
    name = stream.name or "unknown"
    if not isinstance(name, str):
        raise TypeError("the blob name is not text")
    name = _clean(name)
    uri = stream.uri if isinstance(stream.uri, str) else None
    container, _, path = name.partition("/")
    properties = getattr(stream, "blob_properties", None)
    if not isinstance(properties, Mapping):
        properties = {}
    etag = _clean(str(properties.get("ETag") or properties.get("etag") or "")).strip('"')
    host = account or _account(uri) or "blob"
    source = _clean(f"{host}/{container}")
    event_id = f"{path}@{etag}" if etag else path
    locator = f"blob {name}" + (f" ({_clean(uri)})" if uri else "")
    try:
        data = stream.read()
    except Exception as exc:  # the platform's stream failed: say which blob and why
        return InvalidRecord(
            id=event_id,
            source=source,
            reason=f"{locator} cannot be read: {_cause(exc)}",
            locator=locator,
        )
    if not isinstance(data, bytes):
        raise TypeError("the blob stream returned no bytes")
    length = stream.length
    if length is not None and length != len(data):
        return InvalidRecord(
            id=event_id,
            source=source,
            reason=f"{locator} is {_clean(str(length))} bytes but {len(data)} were read",
            raw=data,
            locator=locator,
        )
    attributes = {"blob.name": name}
    if uri:
        attributes["blob.uri"] = _clean(uri)
    if etag:
        attributes["blob.etag"] = etag
    user_metadata = getattr(stream, "metadata", None)
    if isinstance(user_metadata, Mapping):
        attributes.update(
            {f"meta.{_clean(str(k))}": _clean(_text(v)) for k, v in user_metadata.items()}
        )
    return Event(
        id=event_id,
        source=source,
        type="azure.blob.created",
        data=data,
        attributes=attributes,
    )


def _account(uri: str | None) -> str | None:
    if not uri:
        return None
    # https://acct.blob.core.windows.net/c/p, or Azurite's http://127.0.0.1:10000/acct/c/p
    rest = uri.split("://", 1)[-1]
    host, _, tail = rest.partition("/")
    if host.split(":")[0].replace(".", "").isdigit() or host.startswith("localhost"):
        return tail.split("/", 1)[0] or host
    return host.split(".", 1)[0]


def decode_queue_message(message: func.QueueMessage, *, queue_name: str) -> Record:
    """The message as one event: id is the message id, delivery count the dequeue count.

    A message whose trigger object is malformed becomes an `InvalidRecord` naming it and
    the cause; an unreadable dequeue count reads as 1.
    """
    try:
        return _decode_queue_message(message, queue_name)
    except Exception as exc:  # a decoder is total
        body = _readable(message.get_body)
        raw = body if isinstance(body, bytes) else b""
        ident = _readable(lambda: message.id)
        ident = (
            _clean(ident)
            if isinstance(ident, str) and ident
            else "body-" + hashlib.sha256(raw).hexdigest()[:16]
        )
        return InvalidRecord(
            id=ident,
            source=f"queue/{queue_name}",
            reason=f"queue {queue_name} message {ident}: cannot be decoded ({_cause(exc)})",
            raw=raw,
            locator=f"queue {queue_name} message {ident}",
        )


def _decode_queue_message(message: func.QueueMessage, queue_name: str) -> Record:
    body = message.get_body()
    if not isinstance(body, bytes):
        body = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    source = f"queue/{queue_name}"
    ident = message.id
    if not ident or not isinstance(ident, str):
        return InvalidRecord(
            id="body-" + hashlib.sha256(body).hexdigest()[:16],
            source=source,
            reason=f"queue {queue_name}: a message without an id cannot be processed exactly once",
            raw=body,
            locator=f"queue {queue_name}",
        )
    if not _valid_text(ident):
        ident = _clean(ident)
        return InvalidRecord(
            id=ident,
            source=source,
            reason=f"queue {queue_name} message {ident}: the id is not valid Unicode",
            raw=body,
            locator=f"queue {queue_name} message {ident}",
        )
    return Event(
        id=ident,
        source=source,
        type="azure.queue.message",
        time=_aware(_readable(lambda: message.insertion_time)),
        data=body,
        delivery_count=_dequeues(_readable(lambda: message.dequeue_count)),
        attributes=_queue_attributes(queue_name, ident, body),
    )


def _queue_attributes(queue_name: str, ident: str, body: bytes) -> dict[str, str]:
    """The queue's details, and the `traceparent` a `QueueSink` envelope leads with."""
    attributes = {"queue.name": queue_name, "queue.message_id": ident}
    parent = leading_traceparent(body)  # one prefix comparison when there is none
    if parent is not None:
        attributes["traceparent"] = parent
    return attributes


def _dequeues(value: Any) -> int:
    """The dequeue count as a delivery count; an unreadable one reads as 1."""
    try:
        return max(1, min(int(value or 1), 2**31))
    except (TypeError, ValueError, OverflowError):
        return 1
