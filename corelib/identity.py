"""Every identity onceflow builds: event keys, output ids, dead-letter ids.

They are built here and nowhere else. Other modules carry them as values (an `Output`
knows its `event_key`); a store that must group keys into partitions asks `key_parts`
here rather than splitting strings itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = [
    "SEPARATOR",
    "dead_letter_id",
    "event_key",
    "event_keys",
    "first_output_id",
    "key_parts",
    "output_id",
    "output_suffix",
]

SEPARATOR = "#"
"""Between a key's parts, and between a key and an output's position."""

DEAD_LETTER = "dead-letter"


class Keyed(Protocol):
    """What a default key is built from: a record's source and id."""

    @property
    def source(self) -> str: ...

    @property
    def id(self) -> str: ...


# The builders below spell SEPARATOR out: they run several times per event, and a literal
# costs nothing where a module global is a lookup each time.


def event_key(source: str, event_id: str) -> str:
    """The default idempotency key of an event: its source and id."""
    return f"{source}#{event_id}"


def event_keys(records: Iterable[Keyed]) -> list[str]:
    """`event_key` of each record, for a whole batch in one call."""
    return [f"{record.source}#{record.id}" for record in records]


def output_id(key: str, index: int) -> str:
    """The id of output number `index` of the event with idempotency key `key`."""
    return f"{key}#{index}"


def first_output_id(key: str) -> str:
    """`output_id(key, 0)`, the common case, without formatting the number."""
    return key + "#0"


def dead_letter_id(key: str) -> str:
    """The id of the dead letter of the event with idempotency key `key`."""
    return f"{key}{SEPARATOR}{DEAD_LETTER}"


def key_parts(key: str) -> tuple[str, str]:
    """(group, rest) of a key: for a default key, its source and its event id.

    For stores that put neighbouring keys in one partition. A custom key without a
    separator is all `rest`, in the group "".
    """
    group, _, rest = key.rpartition(SEPARATOR)
    return group, rest


def output_suffix(output_id: str, event_key: str) -> str | None:
    """What an output id adds to its event's key (a position, `dead-letter`), or None."""
    prefix = event_key + SEPARATOR
    return output_id[len(prefix) :] if output_id.startswith(prefix) else None
