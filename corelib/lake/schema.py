"""Arrow schemas for lake sinks, and outputs turned into Arrow tables with refusals named."""

from __future__ import annotations

import datetime as dt
import enum
import operator
import types
import typing
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from onceflow.records import Output

__all__ = ["EVENT_KEY", "META_COLUMNS", "OUTPUT_ID", "arrow_schema", "outputs_to_table"]

OUTPUT_ID = "_output_id"
EVENT_KEY = "_event_key"
META_COLUMNS = (OUTPUT_ID, EVENT_KEY)
"""Columns every lake file carries: they make rewrites recognisable and keys countable."""

_SCALARS: dict[type, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bytes: pa.binary(),
    Decimal: pa.decimal128(38, 9),
    dt.datetime: pa.timestamp("us", tz="UTC"),
    dt.date: pa.date32(),
    uuid.UUID: pa.string(),
}


def arrow_schema(schema: pa.Schema | type[BaseModel]) -> pa.Schema:
    """`schema` itself, or the Arrow schema of a pydantic model's fields.

    Decimal fields with `max_digits` and `decimal_places` become `decimal128(max_digits,
    decimal_places)` (`decimal256` past 38 digits), others `decimal128(38, 9)`; a
    `Literal` takes its values' type, an `Enum` its members' values' type; nested models
    become structs, lists Arrow lists, dicts maps.
    """
    if isinstance(schema, pa.Schema):
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        fields = []
        for name, info in schema.model_fields.items():
            where = f"{schema.__name__}.{name}"
            kind, nullable = _arrow_type(info.annotation, where, info.metadata)
            fields.append(
                pa.field(info.alias or name, kind, nullable=nullable or not info.is_required())
            )
        return pa.schema(fields)
    raise TypeError(f"schema must be a pyarrow.Schema or a pydantic model class, not {schema!r}")


def _arrow_type(
    annotation: Any, where: str, metadata: Sequence[Any] = ()
) -> tuple[pa.DataType, bool]:
    """The Arrow type for a field annotation, and whether it admits None."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: a union of {rest} has no single Arrow type")
        return _arrow_type(rest[0], where, metadata)[0], True
    if origin is typing.Annotated:
        return _arrow_type(args[0], where, [*metadata, *args[1:]])
    if origin is typing.Literal:
        kinds = {_literal_type(a, where) for a in args if a is not None}
        if len(kinds) != 1:
            raise TypeError(f"{where}: a Literal of mixed types has no single Arrow type")
        return kinds.pop(), None in args
    if origin in (list, tuple, set, frozenset, Sequence):
        item = _arrow_type(args[0], where)[0] if args else pa.string()
        return pa.list_(item), False
    if origin is dict:
        key, value = (
            (_arrow_type(a, where)[0] for a in args) if args else (pa.string(), pa.string())
        )
        return pa.map_(key, value), False
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return pa.struct(list(arrow_schema(annotation))), False
        if issubclass(annotation, enum.Enum):
            # Outputs hold an enum's value: the column has the values' type.
            kinds = {_literal_type(m.value, where) for m in annotation}
            if len(kinds) != 1:
                raise TypeError(f"{where}: {annotation.__name__}'s values have mixed types")
            return kinds.pop(), False
        if issubclass(annotation, bool):
            return pa.bool_(), False
        if issubclass(annotation, Decimal):
            return _decimal_type(metadata, where), False
        for python_type, arrow_type in _SCALARS.items():
            if issubclass(annotation, python_type):
                return arrow_type, False
    raise TypeError(f"{where}: no Arrow type for {annotation!r}; pass a pyarrow schema instead")


def _literal_type(value: Any, where: str) -> pa.DataType:
    for python_type in (bool, int, float, str, bytes):
        if isinstance(value, python_type):
            return _SCALARS[python_type]
    raise TypeError(f"{where}: no Arrow type for the literal {type(value).__name__}")


def _decimal_type(metadata: Sequence[Any], where: str) -> pa.DataType:
    """decimal128(precision, scale) from the field's max_digits and decimal_places."""
    digits = places = None
    for item in metadata:
        digits = getattr(item, "max_digits", None) or digits
        found = getattr(item, "decimal_places", None)
        places = found if found is not None else places
    if digits is None and places is None:
        return _SCALARS[Decimal]
    if digits is None:
        raise TypeError(f"{where}: a Decimal with decimal_places needs max_digits too")
    places = 0 if places is None else places
    if not 0 <= places <= digits:
        raise TypeError(f"{where}: decimal_places {places} must lie within max_digits {digits}")
    if digits > 76:
        raise TypeError(f"{where}: Arrow decimals hold at most 76 digits, not {digits}")
    return pa.decimal128(digits, places) if digits <= 38 else pa.decimal256(digits, places)


def outputs_to_table(
    outputs: Sequence[Output], schema: pa.Schema, *, extra: str = "ignore"
) -> tuple[pa.Table, dict[str, str]]:
    """The outputs as a table of `schema` plus the meta columns, and the refused output ids.

    Refusals name the column and the cause; the table holds only the rows that fit.
    """
    # map() with attrgetter keeps these per-row passes in C: they are a tenth of the cost.
    values = list(map(_VALUE, outputs))
    rejected: dict[str, str] = {}
    if set(map(type, values)) != {dict}:
        for output, value in zip(outputs, values, strict=True):
            if type(value) is not dict:
                rejected[output.output_id] = (
                    f"value: expected an object, got {type(value).__name__}"
                )
    if extra == "reject":
        names = set(schema.names)
        for output, value in zip(outputs, values, strict=True):
            if type(value) is dict and (unknown := value.keys() - names):
                rejected.setdefault(
                    output.output_id, f"column {sorted(unknown)[0]}: not in the schema"
                )
    if rejected:
        keep = [i for i, o in enumerate(outputs) if o.output_id not in rejected]
        outputs = [outputs[i] for i in keep]
        values = [values[i] for i in keep]
    refused_before = len(rejected)
    columns = _fast_columns(values, schema)
    if columns is None:
        columns = [
            _column(field, [v.get(field.name) for v in values], outputs, rejected)
            for field in schema
        ]
    if len(rejected) > refused_before:
        # A later column refused rows an earlier column already converted: drop them all.
        mask = pa.array([o.output_id not in rejected for o in outputs])
        columns = [pc.filter(c, mask) for c in columns]
        outputs = [o for o in outputs if o.output_id not in rejected]
    columns.append(pa.array(list(map(_OUTPUT_ID, outputs)), pa.string()))
    columns.append(pa.array(list(map(_EVENT_KEY, outputs)), pa.string()))
    full = schema.append(pa.field(OUTPUT_ID, pa.string(), nullable=False)).append(
        pa.field(EVENT_KEY, pa.string(), nullable=False)
    )
    return pa.Table.from_arrays(columns, schema=full), rejected


_VALUE = operator.attrgetter("value")
_OUTPUT_ID = operator.attrgetter("output_id")
_EVENT_KEY = operator.attrgetter("event_key")

_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


def _fast_columns(values: list[dict[str, Any]], schema: pa.Schema) -> list[Any] | None:
    """Every column converted by Arrow in one pass, or None when any value needs a closer look.

    Times arrive as ISO 8601 text (values are plain data), so temporal columns are read as
    text and cast; anything Arrow refuses, or a null in a non-nullable column, sends the
    batch to the per-value path that names the row and the column.
    """
    text = pa.string()
    reading = pa.schema(
        [pa.field(f.name, text) if _temporal(f.type) else f.with_nullable(True) for f in schema]
    )
    try:
        # One struct conversion in C++: `Table.from_pylist` walks the rows once per column
        # in Python, which costs more than the Parquet encoding. Keys not in the schema are
        # ignored, missing keys read as null, as from_pylist does.
        rows = pa.array(values, pa.struct(list(reading)))
        table = pa.Table.from_struct_array(rows)
        columns = []
        for field, read in zip(schema, table.columns, strict=True):
            column = pc.cast(read, field.type) if _temporal(field.type) else read
            if not field.nullable and column.null_count:
                return None
            columns.append(column.combine_chunks())
    except _CONVERSION_ERRORS:
        return None
    return columns


def _temporal(kind: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(kind) or pa.types.is_date(kind))


def _column(
    field: pa.Field, column: list[Any], outputs: Sequence[Output], rejected: dict[str, str]
) -> pa.Array:
    """One column as Arrow; values that do not convert are refused and stored as null."""
    try:
        array = _convert(column, field.type)
    except _CONVERSION_ERRORS:
        array = None
    if array is None:
        cleaned: list[Any] = []
        for output, value in zip(outputs, column, strict=True):
            try:
                _convert([value], field.type)
            except _CONVERSION_ERRORS as exc:
                rejected.setdefault(
                    output.output_id,
                    f"column {field.name}: {_described(value)} is not {field.type} "
                    f"({type(exc).__name__})",
                )
                cleaned.append(None)
            else:
                cleaned.append(value)
        array = _convert(cleaned, field.type)
    if not field.nullable and array.null_count:
        for output, value in zip(outputs, column, strict=True):
            if value is None:
                rejected.setdefault(
                    output.output_id,
                    f"column {field.name}: missing, and the column is not nullable",
                )
    return array


def _convert(column: list[Any], kind: pa.DataType) -> pa.Array:
    if _temporal(kind) and any(type(v) is str for v in column):
        # Values reach sinks as plain data, so datetimes arrive as ISO 8601 text.
        if not all(v is None or type(v) is str for v in column):
            raise TypeError("a mix of text and other values")
        text = pa.array(column, pa.string())
        if pa.types.is_date(kind):
            return pc.cast(pc.cast(text, pa.timestamp("s")), kind)
        return pc.cast(text, kind)
    return pa.array(column, kind)


def _described(value: Any) -> str:
    """What a refused value is, never what it holds: reasons must carry no payload values."""
    kind = type(value).__name__
    if isinstance(value, str | bytes | list | tuple | dict):
        return f"a {kind} of length {len(value)}"
    return f"a {kind} value"
