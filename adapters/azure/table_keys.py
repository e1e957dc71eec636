"""Where an idempotency key and its outputs live in an Azure Table: PartitionKey and RowKey.

A key's group (`onceflow.identity.key_parts`: for a default key, its source) becomes the
PartitionKey, so the events of one source (one Event Hubs partition, one queue) share a
partition and commit in entity transactions; the rest (the event id) becomes the RowKey.
A numeric id (a sequence number) is zero-padded, so a batch of contiguous sequence
numbers is one RowKey range, read with one query. Table keys may not hold `/ \\ # ?` or
control characters, so both parts are escaped reversibly; parts too long for a key are
replaced by their SHA-256. The identities a row also holds as properties (a marker's
`key`, an output's `output_id`, `event_key` and `event_id`) are kept whole up to
`LONGEST_PROPERTY` characters and stored as their SHA-256 beyond it (`stored_identity`):
a string property holds at most 64 KiB, an entity 1 MiB, so a longer key would fail its
whole entity transaction, every time it came again.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from onceflow.identity import key_parts, output_suffix

__all__ = [
    "MARKER",
    "OUTPUT",
    "bounded",
    "encode_part",
    "key_address",
    "marker_row",
    "numeric_row",
    "output_address",
    "stored_identity",
]

MARKER = "k"
"""RowKey prefix of a key's marker row."""
OUTPUT = "o"
"""RowKey prefix of a sink's output row."""

NUMERIC = "n"
TEXT = "s"
PAD = 20  # int64 sequence numbers have at most 19 digits
LONGEST = 400  # characters; Table keys hold at most 1 KiB
LONGEST_PROPERTY = 4096
"""Characters of an identity kept as is in a property (8 KiB of UTF-16 at most)."""


def encode_part(text: str) -> str:
    """`text` with every character a Table key cannot hold escaped as `~XX`."""
    return quote(text, safe="").replace("~", "%7E").replace("%", "~")


def bounded(encoded: str, longest: int = LONGEST) -> str:
    """`encoded` itself when it has at most `longest` characters, else its SHA-256 (`h...`)."""
    if len(encoded) <= longest:
        return encoded
    return "h" + hashlib.sha256(encoded.encode()).hexdigest()


def stored_identity(identity: str) -> str:
    """`identity` itself for a row's property, or `sha256:<hex>` when over `LONGEST_PROPERTY`."""
    if len(identity) <= LONGEST_PROPERTY:
        return identity
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest


def _row_id(event_id: str) -> str:
    """The RowKey body for an event id: padded when numeric, escaped otherwise."""
    # Only canonical numbers: "007" padded would collide with "7".
    if (
        event_id.isascii()
        and event_id.isdigit()
        and len(event_id) <= PAD
        and (event_id == "0" or not event_id.startswith("0"))
    ):
        return NUMERIC + event_id.zfill(PAD)
    return TEXT + bounded(encode_part(event_id))


def key_address(key: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of the marker row for idempotency key `key`."""
    group, rest = key_parts(key)
    return bounded(encode_part(group)), MARKER + _row_id(rest)


def output_address(event_key: str, output_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of an output row: in its event's marker partition."""
    partition, marker = key_address(event_key)
    # Next to its marker's body when the id extends the key (a position, `dead-letter`).
    suffix = output_suffix(output_id, event_key)
    if suffix:
        body = marker[len(MARKER) :]
        return partition, OUTPUT + bounded(f"{body}|{encode_part(suffix)}")
    return partition, OUTPUT + bounded(encode_part(output_id))


def numeric_row(row_key: str) -> int | None:
    """The sequence number a marker RowKey holds, or None when its id is not numeric."""
    if row_key.startswith(MARKER + NUMERIC):
        return int(row_key[len(MARKER) + 1 :])
    return None


def marker_row(number: int) -> str:
    """The marker RowKey of numeric id `number`."""
    return MARKER + NUMERIC + str(number).zfill(PAD)
