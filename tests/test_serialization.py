"""Turning processor results into plain, storable values."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from onceflow.serialization import UnstorableValue, dumps, to_plain


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(BaseModel):
    name: str
    price: Decimal
    when: datetime


def test_plain_dict_is_returned_as_is() -> None:
    value = {"a": 1, "b": "x", "c": None, "d": True}
    assert to_plain(value) is value


def test_finite_floats_and_decimals_keep_a_dict_or_list_as_is() -> None:
    value = {"a": 1.5, "b": Decimal("2.25"), "c": "x"}
    assert to_plain(value) is value
    items = [1, 2.5, Decimal("3"), None, "s"]
    assert to_plain(items) is items
    assert to_plain((1, 2.5)) == [1, 2.5]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("inf")}, r"\$\.a is inf"),
        ({"a": 1.0, "b": float("-inf")}, r"\$\.b is -inf"),
        ([1.0, float("nan")], r"\$\[1\] is nan"),
        ({"l": [Decimal("NaN")]}, r"\$\.l\[0\] is NaN"),
    ],
)
def test_non_finite_numbers_are_refused_where_they_are(value: object, where: str) -> None:
    with pytest.raises(UnstorableValue, match=where):
        to_plain(value)


def test_rich_values_become_plain() -> None:
    value = {
        "model": Model(name="n", price=Decimal("1.10"), when=datetime(2026, 1, 1, tzinfo=UTC)),
        "point": Point(1, 2),
        "color": Color.RED,
        "id": uuid.UUID(int=1),
        "day": date(2026, 1, 2),
        "tags": {"b", "a"},
        "pair": (1, 2),
        3: "int key",
    }
    plain = to_plain(value)
    assert sorted(plain.pop("tags")) == ["a", "b"]
    assert plain == {
        "model": {"name": "n", "price": Decimal("1.10"), "when": "2026-01-01T00:00:00+00:00"},
        "point": {"x": 1, "y": 2},
        "color": "red",
        "id": "00000000-0000-0000-0000-000000000001",
        "day": "2026-01-02",
        "pair": [1, 2],
        "3": "int key",
    }


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("nan")}, r"\$\.a is nan"),
        ({"a": [1, object()]}, r"\$\.a\[1\] is a object"),
        ({(1, 2): 1}, "key of type tuple"),
        ({"d": Decimal("Infinity")}, "Infinity"),
    ],
)
def test_unstorable_values_name_where_they_are(value: object, where: str) -> None:
    with pytest.raises(UnstorableValue, match=where):
        to_plain(value)


def test_dumps_handles_decimals_and_bytes() -> None:
    assert dumps({"a": Decimal("2"), "b": Decimal("1.5"), "c": b"\x00"}) == (
        '{"a":2,"b":1.5,"c":"AA=="}'
    )
