"""Where an idempotency key and its outputs live in an Azure Table: PartitionKey and RowKey.

A key `source#id` is split at its last `#`: the source becomes the PartitionKey, so the
events of one source (one Event Hubs partition, one queue) share a partition and commit
in entity transactions; the id becomes the RowKey. A numeric id (a sequence number) is
zero-padded, so a batch of contiguous sequence numbers is one RowKey range, read with
one query. Table keys may not hold `/ \\ # ?` or control characters, so both parts are
escaped reversibly; parts too long for a key are replaced by their SHA-256.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote, unquote

__all__ = ["MARKER", "OUTPUT", "decode_part", "encode_part", "key_address", "output_address"]

MARKER = "k"
"""RowKey prefix of a key's marker row."""
OUTPUT = "o"
"""RowKey prefix of a sink's output row."""

NUMERIC = "n"
TEXT = "s"
PAD = 20  # int64 sequence numbers have at most 19 digits
LONGEST = 400  # characters; Table keys hold at most 1 KiB


def encode_part(text: str) -> str:
    """`text` with every character a Table key cannot hold escaped as `~XX`."""
    return quote(text, safe="").replace("~", "%7E").replace("%", "~")


def decode_part(encoded: str) -> str:
    """The text `encode_part` escaped."""
    return unquote(encoded.replace("~", "%"))


def _bounded(encoded: str) -> str:
    if len(encoded) <= LONGEST:
        return encoded
    return "h" + hashlib.sha256(encoded.encode()).hexdigest()


def row_id(event_id: str) -> str:
    """The RowKey body for an event id: padded when numeric, escaped otherwise."""
    # Only canonical numbers: "007" padded would collide with "7".
    if (
        event_id.isascii()
        and event_id.isdigit()
        and len(event_id) <= PAD
        and (event_id == "0" or not event_id.startswith("0"))
    ):
        return NUMERIC + event_id.zfill(PAD)
    return TEXT + _bounded(encode_part(event_id))


def key_address(key: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of the marker row for idempotency key `key`."""
    source, _, event_id = key.rpartition("#")
    return _bounded(encode_part(source)), MARKER + row_id(event_id)


def output_address(event_key: str, output_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of an output row: in its event's marker partition."""
    partition, marker = key_address(event_key)
    suffix = output_id[len(event_key) + 1 :] if output_id.startswith(event_key + "#") else ""
    body = marker[len(MARKER) :]
    if suffix:
        return partition, OUTPUT + _bounded(f"{body}|{encode_part(suffix)}")
    return partition, OUTPUT + _bounded(encode_part(output_id))


def numeric_row(row_key: str) -> int | None:
    """The sequence number a marker RowKey holds, or None when its id is not numeric."""
    if row_key.startswith(MARKER + NUMERIC):
        return int(row_key[len(MARKER) + 1 :])
    return None


def marker_row(number: int) -> str:
    """The marker RowKey of numeric id `number`."""
    return MARKER + NUMERIC + str(number).zfill(PAD)
