"""The Event Hubs decoder puts a partition's events on its watermark lane."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum

from onceflow.adapters.azure.decode import decode_event_hub
from onceflow.adapters.azure.testing import HUB, NAMESPACE, event_hub_batch
from onceflow.event import Event
from onceflow.records import InvalidRecord
from onceflow.watermarks import LANE_ATTRIBUTE, lane_of, position_of


def decoded(batch: Any, **options: Any) -> list[Event]:
    found = decode_event_hub(batch, event_hub_name=HUB, **options)
    assert all(isinstance(r, Event) for r in found)
    return found  # type: ignore[return-value]


def test_events_are_on_their_partitions_lane_at_their_sequence_number() -> None:
    """Lane: namespace/hub/partition; position: the sequence number."""
    first, second = decoded(event_hub_batch([b"{}", b"{}"], partition="3", first_sequence=7))
    assert first.attributes[LANE_ATTRIBUTE] == "3"
    assert lane_of(first) == f"{NAMESPACE}/{HUB}/3#lane#3" == lane_of(second)
    assert (position_of(first), position_of(second)) == (7, 8)
    # The publisher's partition key stays the ordering key; the lane is the partition.
    [keyed] = decoded(event_hub_batch([b"{}"], partition="3", partition_keys=["user-1"]))
    assert keyed.partition_key == "user-1" and lane_of(keyed) == lane_of(first)


def test_partitions_are_separate_lanes() -> None:
    [zero] = decoded(event_hub_batch([b"{}"], partition="0"))
    [one] = decoded(event_hub_batch([b"{}"], partition="1"))
    assert lane_of(zero) != lane_of(one)


def test_a_key_field_keeps_per_key_markers() -> None:
    """A business key may come again at another sequence number: no lane for it."""
    body = json.dumps({"order_id": "A-1"}).encode()
    [event] = decoded(event_hub_batch([body]), key_field="order_id")
    assert event.id == "A-1" and event.source == f"{NAMESPACE}/{HUB}"
    assert lane_of(event) is None and LANE_ATTRIBUTE not in event.attributes


def test_a_publishers_property_named_like_the_lane_is_dropped() -> None:
    """Only the decoder puts an event on a lane: a keyed event stays off every lane."""
    body = json.dumps({"order_id": "A-1"}).encode()
    batch = event_hub_batch([body], properties=[{LANE_ATTRIBUTE: "forged"}])
    [event] = decoded(batch, key_field="order_id")
    assert lane_of(event) is None
    [plain] = decoded(event_hub_batch([body], partition="2", properties=[{LANE_ATTRIBUTE: "x"}]))
    assert plain.attributes[LANE_ATTRIBUTE] == "2"


def test_a_batch_without_its_partition_context_is_on_no_lane() -> None:
    """Without the partition id every partition would share one lane: none then."""
    system = [{"SequenceNumber": 5, "Offset": "1", "EnqueuedTimeUtc": "2026-01-01T00:00:00"}]
    metadata = {"SystemPropertiesArray": Datum(json.dumps(system), "json")}
    data = Datum(SimpleNamespace(bytes=[b"{}"]), "collection_bytes")
    batch = EventHubTriggerConverter.decode(data, trigger_metadata=metadata)
    [event] = decoded(batch)
    assert event.source.endswith("/unknown") and lane_of(event) is None


def test_events_are_built_as_validating_them_would_build_them() -> None:
    """The template's events equal `Event(...)` of the same fields."""
    batch = event_hub_batch(
        [b'{"n":1}', b"{}"], partition_keys=["k", None], properties=[{"kind": "a"}, {}]
    )
    for event in decoded(batch):
        assert event == Event(**event.__dict__)
        assert event.time.tzinfo is not None


def test_a_partition_key_that_is_not_text_is_an_invalid_record() -> None:
    """The template validates nothing again, so the decoder checks the partition key."""
    [event] = event_hub_batch([b"{}"])
    object.__setattr__(event, "_EventHubEvent__partition_key", 12)
    [record] = decode_event_hub([event], event_hub_name=HUB)
    assert isinstance(record, InvalidRecord) and "TypeError" in record.reason
