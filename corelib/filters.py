"""Content filters in EventBridge event-pattern syntax: events that do not match are skipped.

`Pipeline(filter=Filter(pattern))` completes an event that does not match as filtered: its
key is marked done with no outputs (a redelivery is a duplicate), the `filtered` counter
counts it, and the processor never sees it.

A pattern is matched against this document of the event (`data` is parsed, after the
envelope, only when the pattern names it)::

    {"id": ..., "source": ..., "type": ..., "partition_key": ..., "attributes": {...},
     "data": <the payload, JSON numbers as exact decimals>}

The syntax and its meaning, as in EventBridge:

- an object matches when every member of the pattern matches the member of the same
  name; a pattern member is an object (matched one level down) or a list of matchers,
  of which any one must match; when the event's value is a list, any element may match;
- a matcher is a literal (`"a"`, `5`, `true`, `null`: equal, with numbers compared as
  numbers and never equal to booleans), or one of
  `{"prefix": s}`, `{"suffix": s}` (both also as `{"prefix": {"equals-ignore-case": s}}`),
  `{"equals-ignore-case": s}`, `{"wildcard": "a*b"}` (`*` is any run of characters,
  `\\*` a star, `\\\\` a backslash), `{"numeric": [">", 0, "<=", 5]}` (`=`, `<`, `<=`,
  `>`, `>=`; numbers only), `{"exists": true}` / `{"exists": false}` (a member holding
  null exists), and
  `{"anything-but": x}` where x is a literal, a list of literals, or a prefix, suffix,
  equals-ignore-case or wildcard matcher: the member exists and matches none of them;
- `"$or": [pattern, ...]` beside other members matches when any of its patterns does.

Only `exists: false` matches a member that is absent. (EventBridge's `cidr` matcher is
not supported; a pattern using it is refused when the filter is built.)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from onceflow.envelopes import Envelope, payload_document
from onceflow.errors import ConfigurationError
from onceflow.event import Event
from onceflow.interfaces import Metrics

__all__ = ["Filter"]

_ABSENT = object()
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}
_STRING_OPERATORS = ("prefix", "suffix", "equals-ignore-case", "wildcard")

Matcher = Callable[[Any], bool]
"""Whether one value (or `_ABSENT`) matches."""


def _is_number(value: Any) -> bool:
    return type(value) in (int, float, Decimal)


class Filter:
    """An EventBridge-style event pattern, compiled once; `matches` tests a document."""

    def __init__(self, pattern: Mapping[str, Any]) -> None:
        if not isinstance(pattern, Mapping):
            raise ConfigurationError("a filter pattern is a JSON object (a dict)")
        self.pattern = pattern
        self._match = _compile_object(pattern, "$")
        self.reads_data = _names_data(pattern)

    def __repr__(self) -> str:
        return f"Filter({self.pattern!r})"

    def matches(self, document: Any) -> bool:
        """Whether `document` (plain data) matches the pattern."""
        return self._match(document)

    def document(self, event: Event, envelope: Envelope | None = None) -> dict[str, Any]:
        """The document of `event` that patterns are matched against."""
        doc: dict[str, Any] = {
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "partition_key": event.partition_key,
            "attributes": dict(event.attributes),
        }
        if self.reads_data:
            doc["data"] = payload_document(event.data if envelope is None else envelope(event))
        return doc

    def guard(
        self, call: Callable[[Event], Any], *, envelope: Envelope | None, metrics: Metrics
    ) -> Callable[[Event], Any]:
        """`call` for the events that match; the others produce nothing and are counted."""
        match, document = self._match, self.document

        if inspect.iscoroutinefunction(call):

            async def filtered_async(event: Event) -> Any:
                if not match(document(event, envelope)):
                    metrics.count("filtered")
                    return None
                return await call(event)

            return filtered_async

        def filtered(event: Event) -> Any:
            if not match(document(event, envelope)):
                metrics.count("filtered")
                return None
            return call(event)

        return filtered


def _names_data(pattern: Mapping[str, Any]) -> bool:
    """Whether the pattern, or any of its `$or` alternatives, looks at the payload."""
    return "data" in pattern or any(
        isinstance(p, Mapping) and _names_data(p) for p in pattern.get("$or", ())
    )


def _compile_object(pattern: Mapping[str, Any], where: str) -> Matcher:
    members: list[tuple[str, Matcher]] = []
    alternatives: list[Matcher] = []
    for name, sub in pattern.items():
        at = f"{where}.{name}"
        if name == "$or":
            if not isinstance(sub, list) or len(sub) < 2:
                raise ConfigurationError(f"{at}: $or takes a list of at least two patterns")
            alternatives = [_compile_object(_object(p, at), at) for p in sub]
        elif isinstance(sub, Mapping):
            members.append((name, _nested(_compile_object(sub, at))))
        elif isinstance(sub, list):
            members.append((name, _any_of([_compile_matcher(m, at) for m in sub])))
        else:
            raise ConfigurationError(f"{at}: a pattern member is an object or a list of matchers")

    def match(value: Any) -> bool:
        if not isinstance(value, Mapping):
            return False
        for name, member in members:
            if not member(value.get(name, _ABSENT)):
                return False
        return not alternatives or any(alt(value) for alt in alternatives)

    return match


def _object(pattern: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(pattern, Mapping):
        raise ConfigurationError(f"{where}: each pattern of $or is an object")
    return pattern


def _nested(match: Matcher) -> Matcher:
    def nested(value: Any) -> bool:
        if isinstance(value, list):
            return any(match(v) for v in value)
        return match(value)

    return nested


def _any_of(matchers: list[Matcher]) -> Matcher:
    def any_of(value: Any) -> bool:
        if isinstance(value, list):
            # An array in the event matches when any of its elements does.
            return any(m(v) for v in value for m in matchers) or any(
                m(_EMPTY) for m in matchers if not value
            )
        return any(m(value) for m in matchers)

    return any_of


_EMPTY = object()
"""An empty array: present (for `exists`), but no value to compare."""


def _compile_matcher(spec: Any, where: str) -> Matcher:
    if spec is None or isinstance(spec, str | bool) or _is_number(spec):
        return _literal(spec)
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigurationError(f"{where}: a matcher is a literal or an object of one operator")
    ((op, arg),) = spec.items()
    if op in _STRING_OPERATORS:
        test = _string_test(op, arg, where)
        return lambda v: type(v) is str and test(v)
    if op == "numeric":
        return _numeric(arg, where)
    if op == "exists":
        if not isinstance(arg, bool):
            raise ConfigurationError(f"{where}: exists takes true or false")
        return (lambda v: v is not _ABSENT) if arg else (lambda v: v is _ABSENT)
    if op == "anything-but":
        return _anything_but(arg, where)
    raise ConfigurationError(f"{where}: unsupported matcher {op!r}")


def _literal(expected: Any) -> Matcher:
    if expected is None:
        return lambda v: v is None
    if isinstance(expected, bool):
        return lambda v: type(v) is bool and v is expected
    if isinstance(expected, str):
        return lambda v: type(v) is str and v == expected
    return lambda v: _is_number(v) and v == expected


def _string_test(op: str, arg: Any, where: str) -> Callable[[str], bool]:
    if op in ("prefix", "suffix") and isinstance(arg, Mapping):
        if list(arg) != ["equals-ignore-case"] or not isinstance(arg["equals-ignore-case"], str):
            raise ConfigurationError(f"{where}: {op} takes a string or equals-ignore-case")
        folded = arg["equals-ignore-case"].casefold()
        if op == "prefix":
            return lambda v: v.casefold().startswith(folded)
        return lambda v: v.casefold().endswith(folded)
    if not isinstance(arg, str):
        raise ConfigurationError(f"{where}: {op} takes a string")
    if op == "prefix":
        return lambda v: v.startswith(arg)
    if op == "suffix":
        return lambda v: v.endswith(arg)
    if op == "equals-ignore-case":
        folded = arg.casefold()
        return lambda v: v.casefold() == folded
    return _wildcard(arg).fullmatch  # type: ignore[return-value]


def _wildcard(text: str) -> re.Pattern[str]:
    parts, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "*\\":
            parts.append(re.escape(text[i + 1]))
            i += 2
            continue
        parts.append(".*" if char == "*" else re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _numeric(arg: Any, where: str) -> Matcher:
    if not isinstance(arg, list) or not arg or len(arg) % 2:
        raise ConfigurationError(f"{where}: numeric takes [op, number, ...] pairs")
    tests: list[tuple[Callable[[Any, Any], bool], Any]] = []
    for op, bound in zip(arg[::2], arg[1::2], strict=True):
        if op not in _COMPARISONS or not _is_number(bound) or isinstance(bound, bool):
            raise ConfigurationError(f"{where}: numeric comparison {op!r} {bound!r} is not valid")
        tests.append((_COMPARISONS[op], bound))
    return lambda v: _is_number(v) and all(test(v, bound) for test, bound in tests)


def _anything_but(arg: Any, where: str) -> Matcher:
    if isinstance(arg, Mapping):
        if len(arg) != 1 or next(iter(arg)) not in _STRING_OPERATORS:
            raise ConfigurationError(
                f"{where}: anything-but takes literals or a prefix, suffix, "
                "equals-ignore-case or wildcard matcher"
            )
        ((op, inner),) = arg.items()
        test = _string_test(op, inner, where)
        return lambda v: type(v) is str and not test(v)
    values = arg if isinstance(arg, list) else [arg]
    for value in values:
        if not (value is None or isinstance(value, str | bool) or _is_number(value)):
            raise ConfigurationError(f"{where}: anything-but takes literals")
    literals = [_literal(v) for v in values]
    return lambda v: v is not _ABSENT and v is not _EMPTY and not any(m(v) for m in literals)
