"""Kinesis Producer Library (KPL) aggregated records split into their user records.

An aggregated record is the magic bytes F3 89 9A C2, a protobuf `AggregatedRecord`
and the MD5 of that protobuf. Only the fields the format defines are read, with a
small varint reader: no protobuf runtime is needed for it.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAGIC", "deaggregate"]

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16


def deaggregate(data: bytes) -> list[tuple[str, bytes]] | None:
    """(partition key, data) of each user record; None when `data` is not aggregated.

    Raises `ValueError` for a record that carries the magic bytes but is corrupt.
    """
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _DIGEST:
        return None
    message, digest = data[len(MAGIC) : -_DIGEST], data[-_DIGEST:]
    if hashlib.md5(message, usedforsecurity=False).digest() != digest:
        raise ValueError("KPL aggregated record fails its MD5 check")
    keys: list[str] = []
    records: list[tuple[int, bytes]] = []
    for field, value in _fields(message):
        if field == 1:
            try:
                keys.append(_bytes(value).decode("utf-8"))
            except UnicodeDecodeError:  # its text quotes the bytes: not passed on
                raise ValueError("KPL partition key is not UTF-8") from None
        elif field == 3:
            index, payload = 0, b""
            for inner, inner_value in _fields(_bytes(value)):
                if inner == 1:
                    index = _int(inner_value)
                elif inner == 3:
                    payload = _bytes(inner_value)
            records.append((index, payload))
    try:
        return [(keys[index], payload) for index, payload in records]
    except IndexError:
        raise ValueError("KPL user record names a partition key the table lacks") from None


def _fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """Every (field number, value) of a protobuf message: varints as int, bytes as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(message):
        tag, at = _varint(message, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _varint(message, at)
            fields.append((number, value))
        elif wire == 2:
            size, at = _varint(message, at)
            if at + size > len(message):
                raise ValueError("KPL aggregated record is truncated")
            fields.append((number, message[at : at + size]))
            at += size
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"KPL aggregated record has unknown wire type {wire}")
    return fields


def _varint(message: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(message):
            raise ValueError("KPL aggregated record is truncated")
        byte = message[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("KPL aggregated record has a number where bytes belong")
    return value


def _int(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise ValueError("KPL aggregated record has bytes where a number belongs")
    return value
