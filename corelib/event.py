"""The immutable envelope every source produces, and its CloudEvents 1.0 form."""

from __future__ import annotations

import base64
import json as _json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import from_json

from onceflow.errors import DecodeError
from onceflow.identity import event_key

__all__ = ["Event", "EventTemplate"]

# CloudEvents context attributes this envelope maps to its own fields; any other
# top-level member of a CloudEvent is an extension and becomes an attribute.
_CE_OWN = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "partitionkey",
        "sequence",
        "deliverycount",
        "onceflowattrs",
    }
)
# Extension names are limited by the spec to lower-case letters and digits.
_CE_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_JSON_TYPES = ("application/json", "text/json")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One event as delivered by a source: identity, ordering lane, payload and metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64")

    id: str = Field(min_length=1, description="Unique within `source`.")
    source: str = Field(min_length=1, description="Where the event comes from (ARN, URI, path).")
    type: str = "onceflow.event"
    time: datetime = Field(default_factory=_utcnow)
    partition_key: str | None = None
    sequence: str | None = None
    data: bytes = b""
    attributes: Mapping[str, str] = Field(default_factory=dict)
    delivery_count: int = Field(default=1, ge=1)

    @field_validator("time")
    @classmethod
    def _aware_time(cls, value: datetime) -> datetime:
        # A naive timestamp from a source is taken as UTC rather than as local time.
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @property
    def key(self) -> str:
        """The default idempotency key: `source` and `id`."""
        return event_key(self.source, self.id)

    def json(self) -> Any:  # type: ignore[override]
        """The payload parsed as JSON; raises `DecodeError` naming the event when it is not."""
        try:
            # pydantic-core's parser: the same results as json.loads, several times faster.
            return from_json(self.data)
        except ValueError as exc:
            raise DecodeError(f"event {self.key}: data is not valid JSON ({exc})") from exc

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text; raises `DecodeError` naming the event when it is not."""
        try:
            return self.data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DecodeError(f"event {self.key}: data is not valid {encoding} ({exc})") from exc

    def to_cloudevent(self) -> dict[str, Any]:
        """This event as a CloudEvents 1.0 structured-mode JSON document."""
        doc: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.isoformat(),
        }
        embedded = _embeddable_json(self.data)
        if embedded is not _NOT_JSON:
            doc["datacontenttype"] = "application/json"
            doc["data"] = embedded
        elif self.data:
            doc["data_base64"] = base64.b64encode(self.data).decode("ascii")
        if self.partition_key is not None:
            doc["partitionkey"] = self.partition_key
        if self.sequence is not None:
            doc["sequence"] = self.sequence
        if self.delivery_count != 1:
            doc["deliverycount"] = self.delivery_count
        leftovers: dict[str, str] = {}
        for name, value in self.attributes.items():
            if _CE_EXTENSION_NAME.match(name) and name not in _CE_OWN:
                doc[name] = value
            else:
                leftovers[name] = value
        if leftovers:
            # Names the spec forbids as extensions still have to survive the round trip.
            doc["onceflowattrs"] = _json.dumps(leftovers, sort_keys=True)
        return doc

    def to_cloudevent_json(self) -> str:
        """This event as CloudEvents 1.0 structured JSON text."""
        return _json.dumps(self.to_cloudevent(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_cloudevent(cls, doc: Mapping[str, Any] | str | bytes) -> Event:
        """An event from a CloudEvents 1.0 structured JSON document (mapping or text)."""
        if isinstance(doc, str | bytes):
            doc = _json.loads(doc)
            if not isinstance(doc, Mapping):
                raise DecodeError("a CloudEvent must be a JSON object")
        if doc.get("specversion") != "1.0":
            raise DecodeError(f"unsupported CloudEvents specversion {doc.get('specversion')!r}")
        if "data_base64" in doc:
            data = base64.b64decode(doc["data_base64"], validate=True)
        elif "data" in doc:
            value = doc["data"]
            content_type = str(doc.get("datacontenttype", "application/json"))
            if isinstance(value, str) and not _is_json_type(content_type):
                data = value.encode("utf-8")
            else:
                data = _dump_compact(value)
        else:
            data = b""
        attributes: dict[str, str] = {}
        if "onceflowattrs" in doc:
            attributes.update(_json.loads(doc["onceflowattrs"]))
        for name, value in doc.items():
            if name not in _CE_OWN:
                attributes[name] = value if isinstance(value, str) else _json.dumps(value)
        fields: dict[str, Any] = {
            "id": doc.get("id"),
            "source": doc.get("source"),
            "type": doc.get("type"),
            "data": data,
            "attributes": attributes,
            "partition_key": doc.get("partitionkey"),
            "sequence": None if doc.get("sequence") is None else str(doc["sequence"]),
            "delivery_count": int(doc.get("deliverycount", 1)),
        }
        if doc.get("time"):
            fields["time"] = doc["time"]
        return cls.model_validate(fields)


class EventTemplate:
    """Builds the events of one read that share `source`, `type` and `time`, fast.

    For decoders turning many records into events: `event(...)` gives exactly the event
    `Event(id=..., source=..., type=..., time=..., partition_key=..., sequence=...,
    data=..., attributes=...)` would build, fields set included, without validating it
    again. Validating an `Event` costs more than the rest of reading a record (the aware
    `time` and the `attributes` mapping most); the template is validated once.

    The per-event values are taken as given, so they must have their types: `event_id` a
    non-empty `str`, `data` `bytes`, `partition_key` and `sequence` `str` or None,
    `attributes` a `dict` of `str` to `str` that is not changed afterwards (it is kept,
    not copied). Anything less certain goes through `Event(...)`.
    """

    __slots__ = ("_counted_fields_set", "_fields_set", "_template", "_values")

    def __init__(
        self, *, source: str, type: str = "onceflow.event", time: datetime | None = None
    ) -> None:
        self._template = Event(
            id="template",
            source=source,
            type=type,
            time=time if time is not None else _utcnow(),
            partition_key=None,
            sequence=None,
            data=b"",
            attributes={},
        )
        self._values = dict(self._template.__dict__)
        # The events of one template share one fields set: events are frozen, so pydantic
        # never changes it in place (`model_copy` copies it first), and one object fewer
        # per event spares the garbage collector a few percent of a long read.
        self._fields_set = set(self._template.model_fields_set)
        self._counted_fields_set = self._fields_set | {"delivery_count"}

    @property
    def source(self) -> str:
        """The events' `source`."""
        return self._template.source

    @property
    def type(self) -> str:
        """The events' `type`."""
        return self._template.type

    @property
    def time(self) -> datetime:
        """The events' `time` (timezone-aware)."""
        return self._template.time

    def event(
        self,
        event_id: str,
        data: bytes,
        partition_key: str | None = None,
        sequence: str | None = None,
        attributes: dict[str, str] | None = None,
        *,
        time: datetime | None = None,
        delivery_count: int = 1,
    ) -> Event:
        """The event with these fields and the template's source, type and time.

        `time` (timezone-aware) replaces the template's for records that carry their own,
        and `delivery_count` (at least 1) is the platform's count of deliveries.
        """
        # A copy and item stores: cheaper than a dict display that unpacks the template.
        values = self._values.copy()
        values["id"] = event_id
        values["partition_key"] = partition_key
        values["sequence"] = sequence
        values["data"] = data
        values["attributes"] = {} if attributes is None else attributes
        if time is not None:
            values["time"] = time
        fields_set = self._fields_set
        if delivery_count != 1:
            values["delivery_count"] = delivery_count
            fields_set = self._counted_fields_set
        if not _LAID_OUT_AS_EXPECTED:
            return self._template.model_copy(update=values)
        # What pydantic's own `BaseModel.__copy__` does: a new instance given its field
        # dict, its fields set, and no extra or private values. `model_copy(update=...)`
        # does the same through `copy.copy` of each part, three times slower.
        event = _new_event(Event)
        _set(event, "__dict__", values)
        # The slots' own setters: no attribute lookup by name on the class for each one.
        _set_fields_set(event, fields_set)
        _set_extra(event, None)
        _set_private(event, None)
        return event


# Whether pydantic lays models out as `EventTemplate.event` assumes; when a pydantic release
# changes that, the template falls back to `model_copy` (tests/test_event.py says so).
_LAID_OUT_AS_EXPECTED = (
    BaseModel.__slots__
    == ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    and not Event.__private_attributes__
    and Event.model_config.get("extra") != "allow"
)
FIELDS_IN_DICT = _LAID_OUT_AS_EXPECTED
"""Whether an Event keeps its field values in its instance `__dict__`, as pydantic lays it
out: the runner then reads several fields through one attribute lookup (every lookup on a
model goes through pydantic's `__getattr__` hook, several times a plain one's cost)."""
_new_event = Event.__new__
_set = object.__setattr__


def _slot_setter(name: str) -> Any:
    """The setter of BaseModel's slot `name` (the template uses it only when laid out so)."""
    slot = BaseModel.__dict__.get(name) if _LAID_OUT_AS_EXPECTED else None
    if slot is None:
        return lambda event, value: _set(event, name, value)
    return slot.__set__


_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")

_NOT_JSON = object()


def _is_json_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


def _dump_compact(value: Any) -> bytes:
    return _json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: such payloads travel as data_base64.
    raise ValueError(f"{name} is not JSON")


def _embeddable_json(data: bytes) -> Any:
    """The parsed payload when embedding it as JSON gives back the very same bytes."""
    if not data or data[:1] not in b'{["':
        # Scalars are left out on purpose: "1" and "1.0" are different bytes.
        return _NOT_JSON
    try:
        value = _json.loads(data, parse_constant=_refuse_constant)
        # A lone surrogate escape parses but cannot be encoded again: such a payload
        # travels as data_base64 (exactly its bytes), as does one nested too deeply.
        return value if _dump_compact(value) == data else _NOT_JSON
    except (ValueError, UnicodeError, RecursionError):
        return _NOT_JSON
