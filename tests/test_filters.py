"""Filters in EventBridge event-pattern syntax: the matcher, and filtered events in a pipeline.

A hypothesis property test holds the compiled matcher to a plain reading of the documented
semantics (the oracle below), operator by operator; the pipeline tests run on memory and
on SQLite.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from onceflow import ConfigurationError, CountingMetrics, Event, Pipeline
from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.filters import Filter

ABSENT = object()


def matches(matcher: Any, value: Any = ABSENT) -> bool:
    doc = {} if value is ABSENT else {"f": value}
    return Filter({"f": [matcher]}).matches(doc)


@pytest.mark.parametrize(
    ("matcher", "value", "expected"),
    [
        ("a", "a", True),
        ("a", "b", False),
        (5, 5.0, True),
        (1, True, False),  # a number never equals a boolean
        (True, True, True),
        (None, None, True),
        (None, ABSENT, False),
        ({"prefix": "ab"}, "abc", True),
        ({"prefix": {"equals-ignore-case": "AB"}}, "abc", True),
        ({"suffix": ".png"}, "x.png", True),
        ({"suffix": {"equals-ignore-case": ".PNG"}}, "x.png", True),
        ({"equals-ignore-case": "ALICE"}, "alice", True),
        ({"wildcard": "dir/*.png"}, "dir/a/b.png", True),
        ({"wildcard": r"a\*b"}, "a*b", True),
        ({"wildcard": r"a\*b"}, "axb", False),
        ({"numeric": [">", 0, "<=", 5]}, 5, True),
        ({"numeric": [">", 0, "<=", 5]}, 0, False),
        ({"numeric": [">", 0]}, "1", False),
        ({"numeric": ["=", 1.5]}, Decimal("1.5"), True),
        ({"exists": True}, None, True),
        ({"exists": True}, ABSENT, False),
        ({"exists": False}, ABSENT, True),
        ({"anything-but": "a"}, "b", True),
        ({"anything-but": ["a", "b"]}, "b", False),
        ({"anything-but": "a"}, ABSENT, False),
        ({"anything-but": {"prefix": "tmp/"}}, "data/x", True),
        ({"anything-but": {"suffix": ".tmp"}}, "x.tmp", False),
        ({"anything-but": {"equals-ignore-case": "X"}}, "x", False),
        ({"anything-but": {"wildcard": "*.tmp"}}, "x.csv", True),
        ("a", ["b", "a"], True),  # an array matches when any element does
        ({"exists": True}, [], True),
    ],
)
def test_documented_examples(matcher: Any, value: Any, expected: bool) -> None:
    assert matches(matcher, value) is expected


def test_nested_objects_or_and_several_members() -> None:
    pattern = Filter(
        {
            "source": ["shop"],
            "data": {"order": {"total": [{"numeric": [">=", 100]}]}},
            "$or": [{"type": ["created"]}, {"data": {"priority": [True]}}],
        }
    )
    doc = {"source": "shop", "type": "created", "data": {"order": {"total": 120}}}
    assert pattern.matches(doc)
    assert not pattern.matches({**doc, "type": "updated"})
    assert pattern.matches({**doc, "type": "updated", "data": {**doc["data"], "priority": True}})
    assert not pattern.matches({**doc, "data": {"order": {"total": 99}}})
    assert not pattern.matches({**doc, "data": {"order": "not an object"}})


@pytest.mark.parametrize(
    "pattern",
    [
        {"f": "not a list"},
        {"f": [{"cidr": "10.0.0.0/24"}]},
        {"f": [{"numeric": [">"]}]},
        {"f": [{"numeric": ["~", 1]}]},
        {"f": [{"exists": "yes"}]},
        {"f": [{"prefix": 1}]},
        {"$or": [{"f": ["a"]}]},
        {"f": [{"anything-but": {"numeric": [">", 1]}}]},
    ],
)
def test_patterns_that_mean_nothing_are_refused_when_built(pattern: Any) -> None:
    with pytest.raises(ConfigurationError):
        Filter(pattern)


# -- the property test: the matcher against the documented semantics ----------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def _glob(pattern: str, text: str) -> bool:
    """Wildcard matching by plain recursion: `*` any run, `\\*` a star, `\\\\` a backslash."""
    if not pattern:
        return not text
    if pattern.startswith(("\\*", "\\\\")):
        return text.startswith(pattern[1]) and _glob(pattern[2:], text[1:])
    if pattern[0] == "*":
        return any(_glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    return bool(text) and text[0] == pattern[0] and _glob(pattern[1:], text[1:])


def _string_op(op: str, arg: Any, v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if isinstance(arg, dict):
        folded = arg["equals-ignore-case"].casefold()
        return (v.casefold().startswith if op == "prefix" else v.casefold().endswith)(folded)
    if op == "prefix":
        return v.startswith(arg)
    if op == "suffix":
        return v.endswith(arg)
    if op == "equals-ignore-case":
        return v.casefold() == arg.casefold()
    return _glob(arg, v)


def _literal(lit: Any, v: Any) -> bool:
    if lit is None or isinstance(lit, bool) or isinstance(v, bool) or v is None:
        return v is lit
    if isinstance(lit, str) or isinstance(v, str):
        return isinstance(lit, str) and isinstance(v, str) and lit == v
    return _is_number(v) and v == lit


def oracle(matcher: Any, value: Any) -> bool:
    """The documented meaning of one matcher against one member (ABSENT when missing)."""
    if isinstance(value, list):
        if not value:
            return isinstance(matcher, dict) and matcher.get("exists") is True
        return any(oracle(matcher, v) for v in value)
    if not isinstance(matcher, dict):
        return value is not ABSENT and _literal(matcher, value)
    ((op, arg),) = matcher.items()
    if op == "exists":
        return (value is not ABSENT) is arg
    if value is ABSENT:
        return False
    if op == "numeric":
        pairs = zip(arg[::2], arg[1::2], strict=True)
        compare = {
            "=": lambda a, b: a == b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        return _is_number(value) and all(compare[o](value, b) for o, b in pairs)
    if op == "anything-but":
        if isinstance(arg, dict):
            ((inner, inner_arg),) = arg.items()
            return isinstance(value, str) and not _string_op(inner, inner_arg, value)
        return not any(_literal(a, value) for a in (arg if isinstance(arg, list) else [arg]))
    return _string_op(op, arg, value)


texts = st.text(alphabet="aAbB*.\\", max_size=5)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0]))
scalars = st.one_of(texts, numbers, st.booleans(), st.none())
values = st.one_of(st.just(ABSENT), scalars, st.lists(scalars, max_size=3))
ops = st.sampled_from(["=", "<", "<=", ">", ">="])
string_ops = st.sampled_from(["prefix", "suffix", "equals-ignore-case", "wildcard"])
matchers = st.one_of(
    scalars,
    st.builds(lambda op, a: {op: a}, string_ops, texts),
    st.builds(
        lambda op, a: {op: {"equals-ignore-case": a}}, st.sampled_from(["prefix", "suffix"]), texts
    ),
    st.builds(
        lambda pairs: {"numeric": [x for pair in pairs for x in pair]},
        st.lists(st.tuples(ops, numbers), min_size=1, max_size=2),
    ),
    st.builds(lambda b: {"exists": b}, st.booleans()),
    st.builds(lambda a: {"anything-but": a}, st.one_of(scalars, st.lists(scalars, max_size=3))),
    st.builds(lambda op, a: {"anything-but": {op: a}}, string_ops, texts),
)


@settings(max_examples=400, deadline=None)
@given(matcher=matchers, value=values)
def test_the_matcher_follows_the_documented_semantics(matcher: Any, value: Any) -> None:
    assert matches(matcher, value) is oracle(matcher, value)


@settings(max_examples=150, deadline=None)
@given(first=matchers, second=matchers, value=values)
def test_a_list_is_any_of_its_matchers_and_or_is_any_of_its_patterns(
    first: Any, second: Any, value: Any
) -> None:
    doc = {} if value is ABSENT else {"f": value}
    either = oracle(first, value) or oracle(second, value)
    assert Filter({"f": [first, second]}).matches(doc) is either
    assert Filter({"$or": [{"f": [first]}, {"f": [second]}]}).matches(doc) is either


# -- filtered events in a pipeline ---------------------------------------------------------


def order(n: int, total: int) -> Event:
    body = {"order": f"o{n}", "total": total}
    return Event(id=f"e{n}", source="shop", type="order.placed", data=json.dumps(body).encode())


BIG_ORDERS = Filter({"type": ["order.placed"], "data": {"total": [{"numeric": [">=", 100]}]}})


def test_events_that_do_not_match_are_completed_as_filtered_and_never_processed() -> None:
    seen: list[str] = []

    def process(event: Event) -> dict[str, str]:
        seen.append(event.id)
        return {"order": event.json()["order"]}

    metrics, sink, store = CountingMetrics(), MemorySink(), MemoryIdempotencyStore()
    pipe = Pipeline(process, sink, store, filter=BIG_ORDERS, metrics=metrics)
    result = pipe.run_batch([order(1, 150), order(2, 20), order(3, 99)])
    assert seen == ["e1"] and sink.values() == [{"order": "o1"}]
    assert sorted(result.processed) == ["e1", "e2", "e3"]
    assert metrics.counters["filtered"] == 2
    again = pipe.run_batch([order(2, 20)])
    assert again.duplicates == ["e2"] and seen == ["e1"]


class Order(BaseModel):
    order: str
    total: int


def test_filters_on_sqlite_with_a_typed_processor(tmp_path: Path) -> None:
    def process(o: Order) -> dict[str, str]:
        return {"order": o.order}

    db = tmp_path / "state.db"
    metrics, sink = CountingMetrics(), SqliteSink(db)
    pipe = Pipeline(process, sink, SqliteIdempotencyStore(db), filter=BIG_ORDERS, metrics=metrics)
    pipe.run_batch([order(1, 150), order(2, 20)])
    assert list(sink.contents().values()) == [{"order": "o1"}]
    assert metrics.counters["filtered"] == 1
    assert pipe.run_batch([order(2, 20)]).duplicates == ["e2"]


def test_an_or_inside_an_or_still_reads_the_payload() -> None:
    nested = Filter(
        {"$or": [{"type": ["x"]}, {"$or": [{"data": {"a": [1]}}, {"data": {"b": [2]}}]}]}
    )
    assert nested.reads_data
    doc = nested.document(Event(id="e", source="s", type="y", data=b'{"b":2}'))
    assert nested.matches(doc)
