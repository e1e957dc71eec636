"""Decoders from Azure Functions trigger payloads to `Event`s (or `InvalidRecord`s)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from onceflow.event import Event
from onceflow.records import InvalidRecord

__all__ = ["decode_blob", "decode_event_hub", "decode_queue_message", "event_hub_context"]

log = logging.getLogger("onceflow.azure")

Record = Event | InvalidRecord


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_hub_context(events: Sequence[func.EventHubEvent]) -> dict[str, Any]:
    """The batch's `PartitionContext` (namespace, hub, consumer group, partition id), or {}."""
    metadata = events[0].metadata if events else None
    context = (metadata or {}).get("PartitionContext") or {}
    if isinstance(context, str):
        context = json.loads(context)
    return dict(context)


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
    become attributes.
    """
    context = event_hub_context(events)
    hub = str(context.get("EventHubName") or event_hub_name)
    space = str(context.get("FullyQualifiedNamespace") or namespace or "eventhubs")
    partition = str(context.get("PartitionId", "unknown"))
    group = str(context.get("ConsumerGroup") or consumer_group)
    metadata = (events[0].metadata if events else None) or {}
    properties = metadata.get("PropertiesArray") or []
    records: list[Record] = []
    for index, event in enumerate(events):
        sequence = event.sequence_number
        locator = f"event hub {space}/{hub} partition {partition} sequence number {sequence}"
        body = event.get_body()
        lane = event.partition_key or f"partition-{partition}"
        if sequence is None:
            records.append(
                InvalidRecord(
                    id=f"offset-{event.offset}",
                    source=f"{space}/{hub}/{partition}",
                    reason=f"{locator}: the event carries no sequence number",
                    raw=body,
                    locator=locator,
                    partition_key=lane,
                )
            )
            continue
        user_props = properties[index] if index < len(properties) else {}
        attributes = {str(k): _text(v) for k, v in (user_props or {}).items()}
        attributes.update(
            {
                "eventhub.namespace": space,
                "eventhub.name": hub,
                "eventhub.partition": partition,
                "eventhub.consumer_group": group,
                "eventhub.sequence_number": str(sequence),
            }
        )
        if event.offset is not None:
            attributes["eventhub.offset"] = str(event.offset)
        source, event_id = f"{space}/{hub}/{partition}", str(sequence)
        if key_field is not None:
            try:
                value = json.loads(body)[key_field]
                if value is None or isinstance(value, dict | list) or str(value) == "":
                    raise KeyError(key_field)
            except (ValueError, KeyError, TypeError) as exc:
                records.append(
                    InvalidRecord(
                        id=event_id,
                        source=source,
                        reason=(
                            f"{locator}: the key field {key_field!r} is not a non-empty scalar "
                            f"in the JSON body ({type(exc).__name__}: {exc})"
                        ),
                        raw=body,
                        locator=locator,
                        partition_key=lane,
                        sequence=str(sequence),
                        attributes=attributes,
                    )
                )
                continue
            source, event_id = f"{space}/{hub}", str(value)
        records.append(
            Event(
                id=event_id,
                source=source,
                type="azure.eventhub.event",
                time=_aware(event.enqueued_time),
                partition_key=lane,
                sequence=str(sequence),
                data=body,
                attributes=attributes,
            )
        )
    return records


def decode_blob(stream: func.InputStream, *, account: str | None = None) -> Record:
    """The blob as one event: source is the container, id the blob path (and ETag, if known).

    With the ETag in the id, a blob written again under the same name is a new event,
    as S3's versionId is; a blob that cannot be read becomes an `InvalidRecord`.
    """
    name = stream.name or "unknown"
    container, _, path = name.partition("/")
    properties: Mapping[str, Any] = getattr(stream, "blob_properties", None) or {}
    etag = str(properties.get("ETag") or properties.get("etag") or "").strip('"')
    host = account or _account(stream.uri) or "blob"
    source = f"{host}/{container}"
    event_id = f"{path}@{etag}" if etag else path
    locator = f"blob {name}" + (f" ({stream.uri})" if stream.uri else "")
    try:
        data = stream.read()
    except Exception as exc:  # the platform's stream failed: say which blob and why
        return InvalidRecord(
            id=event_id,
            source=source,
            reason=f"{locator} cannot be read: {type(exc).__name__}: {exc}",
            locator=locator,
        )
    if stream.length is not None and stream.length != len(data):
        return InvalidRecord(
            id=event_id,
            source=source,
            reason=f"{locator} is {stream.length} bytes but {len(data)} were read",
            raw=data,
            locator=locator,
        )
    attributes = {"blob.name": name}
    if stream.uri:
        attributes["blob.uri"] = stream.uri
    if etag:
        attributes["blob.etag"] = etag
    user_metadata: Mapping[str, Any] = getattr(stream, "metadata", None) or {}
    attributes.update({f"meta.{k}": str(v) for k, v in user_metadata.items()})
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
    """The message as one event: id is the message id, delivery count the dequeue count."""
    body = message.get_body()
    source = f"queue/{queue_name}"
    if not message.id:
        return InvalidRecord(
            id="body-" + hashlib.sha256(body).hexdigest()[:16],
            source=source,
            reason=f"queue {queue_name}: a message without an id cannot be processed exactly once",
            raw=body,
            locator=f"queue {queue_name}",
        )
    dequeues = getattr(message, "dequeue_count", None) or 1
    return Event(
        id=message.id,
        source=source,
        type="azure.queue.message",
        time=_aware(getattr(message, "insertion_time", None)),
        data=body,
        delivery_count=max(1, int(dequeues)),
        attributes={"queue.name": queue_name, "queue.message_id": message.id},
    )
