"""Typed processors: the payload parsed into the type `process` is annotated with.

When the first parameter of `process` is annotated with anything but `Event` (a pydantic
model, a dataclass, `list[Payment]`, any type a pydantic `TypeAdapter` accepts), the
pipeline parses each event's payload into it (after the envelope, see
`onceflow.envelopes`), with one `TypeAdapter` built when the pipeline is. A second
positional parameter receives the `Event` itself; `current_event()` gives it too.

A payload that does not fit is dead-lettered at once (`InvalidPayload`, a permanent
error) with one reason per field: its location and the error type, never a value. A
location part that is not a name from the type itself (a key of a dict-typed field, which
is data) shows as `*`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError
from pydantic_core.core_schema import ErrorType

from onceflow.envelopes import Envelope, payload_document
from onceflow.errors import ConfigurationError, PermanentError
from onceflow.event import Event

__all__ = [
    "InvalidPayload",
    "current_event",
    "field_errors",
    "payload_type",
    "typed_process",
]

_CURRENT: contextvars.ContextVar[Event] = contextvars.ContextVar("onceflow_event")

# Error types whose messages quote only the type's own constants (lengths, patterns,
# expected literals). Messages of the others (a validator's own ValueError, a tag found
# in the input) may quote the input, so only their type is shown.
_QUOTES_INPUT = frozenset({"value_error", "assertion_error", "union_tag_invalid"})
_KNOWN_TYPES = frozenset(get_args(ErrorType)) - _QUOTES_INPUT
_MAX_REASONS = 10
# Number text a float does not carry exactly into a Decimal: 16 or more digits (and
# points) in a row, a fraction ending in 0 (its scale), an exponent. Over-matching (digits
# inside a string) only costs the slower exact read.
_FLOAT_LOSES = re.compile(rb"[\d.]{16,}|\.\d*0(?!\d)|\d[eE]").search


class InvalidPayload(PermanentError):
    """An event's payload does not fit the processor's type; the reason names fields only."""

    def __init__(self, message: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = errors
        """(location, error type) per invalid field."""


def current_event() -> Event:
    """The event whose payload the typed processor running now was given."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError("current_event() is only set while a typed processor runs") from None


def payload_type(process: Callable[..., Any]) -> tuple[Any, bool] | None:
    """(the type of `process`'s first parameter, whether it takes the event second), or
    None when it takes the `Event` itself (no annotation, `Event`, `Any`)."""
    target = process
    plain = inspect.isfunction(process) or inspect.ismethod(process)
    if not plain and not isinstance(process, functools.partial):
        target = getattr(process, "__call__", process)  # noqa: B004 - a callable object
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        return None
    first = positional[0]
    if first.annotation is inspect.Parameter.empty:
        return None
    annotation = first.annotation
    if isinstance(annotation, str):  # postponed (`from __future__ import annotations`)
        owner = target.func if isinstance(target, functools.partial) else target
        try:
            hints = typing.get_type_hints(owner, include_extras=True)
        except Exception as exc:
            names = [part.strip().strip("'\"").rsplit(".", 1)[-1] for part in annotation.split("|")]
            if "Event" in names:
                return None
            raise ConfigurationError(
                f"the annotation of {first.name!r} in {getattr(owner, '__qualname__', owner)} "
                f"cannot be resolved ({exc}); import its type where the processor is defined"
            ) from None
        annotation = hints.get(first.name, annotation)
    if annotation is Any or annotation is object:
        return None
    members = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    if any(isinstance(m, type) and issubclass(m, Event) for m in members):
        return None  # `Event`, `Event | InvalidRecord`: the processor takes the event
    return annotation, len(positional) >= 2


def typed_process(
    process: Callable[..., Any], envelope: Envelope | None
) -> Callable[[Event], Any] | None:
    """`process` behind a parse of the payload into its parameter's type, or None when
    it takes the `Event` itself."""
    found = payload_type(process)
    if found is None:
        return None
    annotation, with_event = found
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    except Exception as exc:
        raise ConfigurationError(
            f"{annotation!r} cannot be parsed into by pydantic ({type(exc).__name__}: {exc})"
        ) from None
    parse = _parser(
        adapter,
        envelope,
        _type_name(annotation),
        _schema_names(adapter),
        exact=_holds_decimal(adapter),
    )
    current = _CURRENT
    if inspect.iscoroutinefunction(process):

        async def typed_async(event: Event) -> Any:
            value = parse(event)
            current.set(event)
            return await (process(value, event) if with_event else process(value))

        return typed_async
    if with_event:

        def typed_with_event(event: Event) -> Any:
            current.set(event)
            return process(parse(event), event)

        return typed_with_event

    def typed(event: Event) -> Any:
        current.set(event)
        return process(parse(event))

    return typed


def _parser(
    adapter: TypeAdapter[Any],
    envelope: Envelope | None,
    name: str,
    names: frozenset[str],
    *,
    exact: bool,
) -> Callable[[Event], Any]:
    validate_json = adapter.validate_json
    validate_python = adapter.validate_python

    def parse(event: Event) -> Any:
        payload = event.data if envelope is None else envelope(event)
        try:
            if type(payload) is bytes or type(payload) is str:
                if exact and _FLOAT_LOSES(
                    payload.encode() if isinstance(payload, str) else payload
                ):
                    # pydantic reads a JSON number as a float before making it a Decimal,
                    # which loses digits past the 15th and trailing zeros: such text is
                    # read with exact decimals (a few times slower, so only then).
                    return validate_python(payload_document(payload))
                return validate_json(payload)
            return validate_python(payload)
        except ValidationError as exc:
            # `from None`: the ValidationError's text quotes the input, and a traceback
            # (kept in the dead letter) would carry it with the chained exception.
            raise _invalid(exc, name, names) from None

    return parse


def _invalid(exc: ValidationError, name: str, names: frozenset[str]) -> InvalidPayload:
    errors = field_errors(exc, names)
    shown = "; ".join(f"{loc}: {kind}" + (f" ({msg})" if msg else "") for loc, kind, msg in errors)
    more = exc.error_count() - len(errors)
    tail = f"; and {more} more" if more > 0 else ""
    return InvalidPayload(
        f"the payload does not fit {name}: {exc.error_count()} invalid field(s): {shown}{tail}",
        [(loc, kind) for loc, kind, _ in errors],
    )


def field_errors(exc: ValidationError, names: frozenset[str]) -> list[tuple[str, str, str | None]]:
    """(location, error type, message or None) for the first errors, without input values.

    A location part that is not in `names` (the type's own field names, aliases and
    labels) is data, such as a key of a dict-typed field, and shows as `*`.
    """
    out: list[tuple[str, str, str | None]] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        parts = [
            str(part) if isinstance(part, int) or part in names else "*" for part in error["loc"]
        ]
        kind = error["type"]
        message = error["msg"] if kind in _KNOWN_TYPES else None
        out.append((".".join(parts) or "(root)", kind, message))
        if len(out) == _MAX_REASONS:
            break
    return out


def _schema_names(adapter: TypeAdapter[Any]) -> frozenset[str]:
    """Every string the type's own schema holds (field names, aliases, labels, literals)."""
    found: set[str] = {"[key]"}
    for value in _walk(adapter.core_schema):
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, type):
            found.add(value.__name__)
    return frozenset(found)


def _holds_decimal(adapter: TypeAdapter[Any]) -> bool:
    """Whether the type has a Decimal anywhere (its JSON numbers must be read exactly)."""
    return any(
        isinstance(node, dict) and node.get("type") == "decimal"
        for node in _walk(adapter.core_schema)
    )


def _walk(node: Any) -> Iterator[Any]:
    seen: set[int] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)
