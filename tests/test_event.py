"""Event: fields, key, payload helpers, and the lossless CloudEvents round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import onceflow.event as event_module
from onceflow import DecodeError, Event, PermanentError
from onceflow.event import EventTemplate

names = st.text(min_size=1, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()),
    json_values.map(lambda v: json.dumps(v, indent=2).encode()),
    st.text(max_size=50).map(str.encode),
)
events = st.builds(
    Event,
    id=names,
    source=names,
    type=names,
    time=st.datetimes(timezones=st.just(UTC)),
    partition_key=st.none() | names,
    sequence=st.none() | st.text(alphabet="0123456789", min_size=1, max_size=40),
    data=payloads,
    attributes=st.dictionaries(st.text(min_size=1, max_size=25), st.text(max_size=20), max_size=5),
    delivery_count=st.integers(1, 50),
)


@given(events)
def test_cloudevent_round_trip_is_lossless(event: Event) -> None:
    assert Event.from_cloudevent(event.to_cloudevent()) == event
    assert Event.from_cloudevent(event.to_cloudevent_json()) == event


def test_json_payload_is_embedded_and_binary_is_base64() -> None:
    as_json = Event(id="1", source="s", data=b'{"a":[1,2]}').to_cloudevent()
    assert as_json["data"] == {"a": [1, 2]}
    assert as_json["datacontenttype"] == "application/json"
    binary = Event(id="1", source="s", data=b"\x00\xff").to_cloudevent()
    assert binary["data_base64"] == "AP8="
    assert "data" not in binary


def test_foreign_cloudevent_with_text_data_and_extensions() -> None:
    event = Event.from_cloudevent(
        {
            "specversion": "1.0",
            "id": "abc",
            "source": "/orders",
            "type": "order.created",
            "datacontenttype": "text/plain",
            "data": "hello",
            "traceparent": "00-1-2-01",
        }
    )
    assert event.data == b"hello"
    assert event.attributes == {"traceparent": "00-1-2-01"}
    assert event.time.tzinfo is not None


def test_from_cloudevent_rejects_other_spec_versions() -> None:
    with pytest.raises(DecodeError, match="specversion"):
        Event.from_cloudevent({"specversion": "0.3", "id": "1", "source": "s", "type": "t"})


def test_key_is_source_and_id() -> None:
    assert Event(id="42", source="arn:aws:sqs:q").key == "arn:aws:sqs:q#42"


def test_event_is_frozen_and_needs_an_id() -> None:
    event = Event(id="1", source="s")
    with pytest.raises(ValidationError):
        event.id = "2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="id"):
        Event(id="", source="s")


def test_naive_time_is_taken_as_utc() -> None:
    naive = Event(id="1", source="s", time=datetime(2026, 1, 2, 3, 4, 5))
    assert naive.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    aware = Event(
        id="1", source="s", time=datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    )
    assert aware.time.utcoffset() == timedelta(hours=2)


def test_payload_helpers_name_the_event_when_they_fail() -> None:
    event = Event(id="7", source="orders.jsonl", data=b"\xff{")
    with pytest.raises(DecodeError, match=r"orders.jsonl#7.*not valid JSON") as caught:
        event.json()
    assert isinstance(caught.value, PermanentError)
    with pytest.raises(DecodeError, match="not valid utf-8"):
        event.text()
    assert Event(id="1", source="s", data=b'{"a": 1}').json() == {"a": 1}
    assert Event(id="1", source="s", data="ü".encode()).text() == "ü"


def test_non_standard_json_constants_travel_as_base64() -> None:
    event = Event(id="1", source="s", data=b'{"a":NaN}')
    doc = event.to_cloudevent()
    assert "data_base64" in doc
    assert Event.from_cloudevent(doc) == event


# Generation is slow on a loaded machine (shared CI cores): that is no fault of the code.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=names,
    type_=names,
    time=st.datetimes(),  # naive ones too: the template takes them as UTC, as Event does
    rows=st.lists(
        st.tuples(
            names,
            payloads,
            st.none() | names,
            st.none() | st.text(alphabet="0123456789", min_size=1, max_size=20),
            st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=3),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_template_events_are_the_events_validation_builds(
    source: str, type_: str, time: datetime, rows: list[tuple[str, bytes, Any, Any, Any]]
) -> None:
    assert event_module._LAID_OUT_AS_EXPECTED, (
        "pydantic's model layout changed: EventTemplate falls back to the slow model_copy"
    )
    template = EventTemplate(source=source, type=type_, time=time)
    assert (template.source, template.type) == (source, type_)
    assert template.time.tzinfo is not None
    made = [template.event(*row) for row in rows]
    for event, (event_id, data, partition_key, sequence, attributes) in zip(
        made, rows, strict=True
    ):
        built = Event(
            id=event_id,
            source=source,
            type=type_,
            time=time,
            partition_key=partition_key,
            sequence=sequence,
            data=data,
            attributes=attributes,
        )
        for name in Event.model_fields:
            assert getattr(event, name) == getattr(built, name), name
        assert event == built and event.key == built.key
        assert event.model_fields_set == built.model_fields_set
        assert event.model_dump_json() == built.model_dump_json()
        assert Event.from_cloudevent(event.to_cloudevent()) == built
        again = event.model_copy(update={"delivery_count": 2})
        assert again.delivery_count == 2 and event.delivery_count == 1
        assert "delivery_count" in again.model_fields_set  # the copy's own fields set...
        with pytest.raises(ValidationError):
            event.delivery_count = 3  # type: ignore[misc]
    # ...and the template's events, which share one, are untouched.
    assert all("delivery_count" not in e.model_fields_set for e in made)


def test_template_defaults_and_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    template = EventTemplate(source="s")
    event = template.event("1", b"x")
    assert event == Event(
        id="1", source="s", time=template.time, partition_key=None, sequence=None, data=b"x"
    )
    assert event.type == "onceflow.event" and event.attributes == {}
    # Should pydantic lay models out differently, the template copies through model_copy.
    monkeypatch.setattr(event_module, "_LAID_OUT_AS_EXPECTED", False)
    slow = template.event("2", b"y", "p", "7", {"a": "b"})
    assert slow == Event(
        id="2",
        source="s",
        time=template.time,
        partition_key="p",
        sequence="7",
        data=b"y",
        attributes={"a": "b"},
    )
