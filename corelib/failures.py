"""Why an event was handed back for redelivery or dead-lettered: a kind and a sentence.

Behaviour is decided by the kind; the text is for people (logs, dead letters, CLI).
"""

from __future__ import annotations

import builtins
import enum
import functools
import re
import sys
import traceback
import types
from typing import Any, NamedTuple

from onceflow.errors import OnceflowError

__all__ = ["Failure", "FailureKind", "safe_text", "safe_traceback"]


class FailureKind(enum.Enum):
    """What went wrong for one event."""

    # Identity hashing agrees with Enum's identity equality, without Enum's Python-level
    # __hash__ per lookup (`kind in _SUMMARISED`, once per failed event of an outage).
    __hash__ = object.__hash__

    # Handed back for redelivery: nothing was committed for the event.
    LEASED_ELSEWHERE = "leased_elsewhere"
    """Another worker holds the key's live lease."""
    OUT_OF_TIME = "out_of_time"
    """The time budget or deadline ran out before the event was processed."""
    LEASE_LOST = "lease_lost"
    """The lease was taken over before the commit; the other worker commits instead."""
    STORE_FAILED = "store_failed"
    """The idempotency store could not claim or complete the key."""
    SINK_FAILED = "sink_failed"
    """The sink (or the atomic commit) failed after its retries."""
    HELD_FOR_ORDER = "held_for_order"
    """An earlier event of the same ordered lane failed, so this one waits behind it."""
    NO_DEAD_LETTER_SINK = "no_dead_letter_sink"
    """The event should be dead-lettered but the pipeline has no dead-letter sink."""
    DEAD_LETTER_REFUSED = "dead_letter_refused"
    """The dead-letter sink refused or failed to store the letter."""
    NOT_PROCESSED = "not_processed"
    """The event was not reached (the batch stopped before it)."""
    TRANSIENT = "transient"
    """A transient error outlived the in-process retries: an outage, not a poison pill."""
    CIRCUIT_OPEN = "circuit_open"
    """The circuit breaker held the event back during an outage (no delivery charged)."""

    # Dead-lettered: the key is completed as dead-lettered.
    PERMANENT_ERROR = "permanent_error"
    """The processor raised a permanent error (PermanentError, a validation error, ...)."""
    DELIVERIES_EXHAUSTED = "deliveries_exhausted"
    """A transient error kept failing the event until its deliveries reached the limit."""
    INVALID_RECORD = "invalid_record"
    """The raw record could not be decoded into an event."""
    OUTPUT_REJECTED = "output_rejected"
    """The sink can never store one of the event's outputs."""
    UNDELIVERED = "undelivered"
    """The platform will not deliver the event again (an Event Hubs checkpoint moved on)."""

    @property
    def redelivers(self) -> bool:
        """Whether an event that failed this way is handed back for redelivery."""
        return self in _REDELIVER


_REDELIVER = frozenset(
    {
        FailureKind.LEASED_ELSEWHERE,
        FailureKind.OUT_OF_TIME,
        FailureKind.LEASE_LOST,
        FailureKind.STORE_FAILED,
        FailureKind.SINK_FAILED,
        FailureKind.HELD_FOR_ORDER,
        FailureKind.NO_DEAD_LETTER_SINK,
        FailureKind.DEAD_LETTER_REFUSED,
        FailureKind.NOT_PROCESSED,
        FailureKind.TRANSIENT,
        FailureKind.CIRCUIT_OPEN,
    }
)


class Failure(NamedTuple):
    """One event's failure: its kind and a one-line reason naming the event (never its data)."""

    kind: FailureKind
    text: str

    def __str__(self) -> str:
        return self.text


# -- error texts without payload values ---------------------------------------------------
#
# Every reason, log line and dead-letter message that quotes an exception goes through
# `safe_text` (and a dead letter's traceback through `safe_traceback`): they name the
# exception's type and say what went wrong, but never a value read from a payload. The rule,
# by exception:
#
# - onceflow's own errors (`OnceflowError`: `PermanentError`, `DecodeError`, ...): their
#   message as written; onceflow writes none with payload values, and neither may you.
# - pydantic `ValidationError`: per error (at most 10) its location and pydantic's message
#   when that is one of pydantic's own templates (else its error type); a location part that
#   is no field name of any model defined (a dict key: data) is shown as `<key>`. Never the
#   input.
# - `KeyError`: "missing key 'k'" when `k` is a literal (a constant or name) in the code the
#   traceback passed through, such as `body["user"]`; else "missing key (not shown)".
# - `UnicodeError`: the codec, the position and the reason, not the bytes.
# - anything else (`ValueError` from `int()`, `float()`, `Decimal()`, `fromisoformat()`,
#   `json` errors, `TypeError`, ...): its message with every quoted part that is not such a
#   literal or a built-in type's name replaced by `<value>`, every number of three or more
#   digits that is no literal replaced by `<number>`, and anything like an e-mail address
#   by `<value>`. A value a message quotes without quotes (`f"bad customer {name}"`) is not
#   recognised: write such messages without payload values, as onceflow's own are.

_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_NUMBER = re.compile(r"(?<![\w.])\d{3,}")
_EMAIL = re.compile(r"[^\s'\"<>]+@[^\s'\"<>]+")
_BUILTIN_TYPES = frozenset(
    {t.__name__ for t in vars(builtins).values() if isinstance(t, type)} | {"NoneType"}
)


def safe_text(exc: BaseException) -> str:
    """`Type: description` of an exception, without any value read from a payload."""
    name = type(exc).__name__
    if isinstance(exc, OnceflowError):
        return f"{name}: {exc}"
    if _is_validation_error(exc):
        return _validation_text(exc)
    literals = _literals(exc)
    if isinstance(exc, KeyError):
        key = exc.args[0] if len(exc.args) == 1 else None
        if isinstance(key, str | int) and key in literals:
            return f"{name}: missing key {key!r}"
        return f"{name}: missing key (not shown: it is not a literal of the code)"
    if isinstance(exc, UnicodeDecodeError | UnicodeEncodeError):
        return f"{name}: {exc.encoding!r} codec failed at {exc.start}-{exc.end}: {exc.reason}"
    return f"{name}: {_scrub(str(exc), literals)}" if str(exc) else name


def safe_traceback(exc: BaseException) -> str:
    """The exception's traceback (its causes too) with `safe_text` for each message."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(
            "Traceback (most recent call last):\n"
            + "".join(traceback.format_tb(current.__traceback__))
            + safe_text(current)
            + "\n"
        )
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\nwhich was raised while handling:\n".join(reversed(parts))


def _scrub(text: str, literals: frozenset[object]) -> str:
    def quoted(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        if inner in literals or inner in _BUILTIN_TYPES or _is_class_name(inner):
            return match.group(0)
        return "<value>"

    def number(match: re.Match[str]) -> str:
        return match.group(0) if int(match.group(0)) in literals else "<number>"

    return _EMAIL.sub("<value>", _NUMBER.sub(number, _QUOTED.sub(quoted, text)))


def _is_class_name(text: str) -> bool:
    """Whether `text` is `module.Class` of a loaded module (decimal's error texts quote one)."""
    module, _, name = text.rpartition(".")
    return bool(module) and isinstance(getattr(sys.modules.get(module), name, None), type)


def _literals(exc: BaseException) -> frozenset[object]:
    """The constants and names of the code the exception's traceback passed through."""
    found: set[object] = set()
    tb = exc.__traceback__
    while tb is not None:
        _code_literals(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return frozenset(found)


def _code_literals(code: types.CodeType, found: set[object]) -> None:
    found.update(code.co_names, code.co_varnames)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_literals(const, found)
        elif isinstance(const, str | int) and not isinstance(const, bool):
            found.add(const)
        elif isinstance(const, tuple | frozenset):
            found.update(c for c in const if isinstance(c, str | int))


def _is_validation_error(exc: BaseException) -> bool:
    # pydantic is imported only where it is already loaded: a validation error implies it.
    core = sys.modules.get("pydantic_core")
    return core is not None and isinstance(exc, core.ValidationError)


def _validation_text(exc: Any) -> str:
    fields = _field_names()
    known = _pydantic_templates()
    details = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:10]:
        loc = ".".join(
            str(part) if isinstance(part, int) or part in fields else "<key>"
            for part in error["loc"]
        )
        kind = error["type"]
        why = error["msg"] if kind in known else f"invalid ({kind})"
        details.append(f"{loc or '(root)'}: {why}")
    return f"ValidationError: {exc.error_count()} invalid field(s) in {exc.title}: " + "; ".join(
        details
    )


def _field_names() -> frozenset[str]:
    """Every field name and alias of every pydantic model defined so far."""
    models = sys.modules.get("pydantic")
    names: set[str] = set()
    if models is None:
        return frozenset()
    pending = list(models.BaseModel.__subclasses__())
    seen: set[type] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        pending.extend(model.__subclasses__())
        for field_name, info in getattr(model, "model_fields", {}).items():
            names.add(field_name)
            for alias in (info.alias, info.validation_alias):
                if isinstance(alias, str):
                    names.add(alias)
    return frozenset(names)


@functools.cache
def _pydantic_templates() -> frozenset[str]:
    """pydantic's own error types whose messages come from fixed templates.

    `value_error` and `assertion_error` carry a validator's own text, which may quote the
    input; custom error types are unknown: those show their type only.
    """
    from typing import get_args

    from pydantic_core.core_schema import ErrorType

    return frozenset(get_args(ErrorType)) - {
        "value_error",
        "assertion_error",
    }
