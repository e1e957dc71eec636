"""Hive partition labels (`dt=2024-05-01/hr=12`, `country=DE`) computed per row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc

from onceflow.records import Output

__all__ = [
    "EVENT_TIME",
    "HOUR_COLUMNS",
    "Hourly",
    "PartitionSpec",
    "parse_partition",
    "partition_labels",
    "with_event_time",
    "with_hour_columns",
]

EVENT_TIME = "_event_time"
"""`Hourly(EVENT_TIME)` partitions by the time of the event that produced each row."""


@dataclass(frozen=True, slots=True)
class Hourly:
    """Partition by the hour of a timestamp column, or of the event (`EVENT_TIME`), in UTC."""

    field: str = "time"


PartitionSpec = str | Hourly | Sequence[str | Hourly] | None
"""A column name, `Hourly(column)`, or a sequence of them, outermost first."""


def normalise(spec: PartitionSpec) -> tuple[str | Hourly, ...]:
    """The spec as a tuple of parts."""
    if spec is None:
        return ()
    if isinstance(spec, str | Hourly):
        return (spec,)
    return tuple(spec)


def source_columns(parts: Sequence[str | Hourly]) -> list[str]:
    """The columns the partition labels are read from."""
    return [p.field if isinstance(p, Hourly) else p for p in parts]


def partition_labels(table: pa.Table, parts: Sequence[str | Hourly]) -> pa.Array:
    """Each row's partition label (null where a partition column is null)."""
    pieces: list[pa.Array] = []
    for part in parts:
        if isinstance(part, Hourly):
            column = table.column(part.field).combine_chunks()
            if not pa.types.is_timestamp(column.type):
                raise TypeError(f"column {part.field} must be a timestamp to partition by hour")
            if column.type.tz is None:
                column = pc.assume_timezone(column, "UTC")
            pieces.append(pc.strftime(column, format="dt=%Y-%m-%d/hr=%H", locale="C"))
        else:
            values = pc.cast(table.column(part).combine_chunks(), pa.string()).to_pylist()
            # Percent-encode so a value holding `/` or `=` cannot change the path's shape.
            encoded = pa.array([None if v is None else quote(v, safe="") for v in values])
            pieces.append(pc.binary_join_element_wise(f"{part}=", encoded, ""))
    if len(pieces) == 1:
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, "/")


def parse_partition(label: str) -> dict[str, str]:
    """`dt=2024-05-01/hr=12` as `{"dt": "2024-05-01", "hr": "12"}`."""
    out: dict[str, str] = {}
    for piece in label.split("/"):
        if "=" in piece:
            name, _, value = piece.partition("=")
            out[name] = unquote(value)
    return out


def with_event_time(table: pa.Table, outputs: Sequence[Output]) -> tuple[pa.Table, list[str]]:
    """`table` with an `_event_time` column from each output's event; ids whose time is unknown."""
    times = {o.output_id: o.time for o in outputs}
    ids = table.column("_output_id").to_pylist()
    when = pa.array([times.get(i) for i in ids], pa.timestamp("us", tz="UTC"))
    missing = [i for i in ids if times.get(i) is None]
    column = pa.field(EVENT_TIME, when.type, nullable=bool(missing))
    return table.append_column(column, when), missing


HOUR_COLUMNS = ("dt", "hr")


def with_hour_columns(table: pa.Table, field: str) -> pa.Table:
    """`table` with string columns `dt` (`2024-05-01`) and `hr` (`12`) from a timestamp column."""
    column = table.column(field).combine_chunks()
    if column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    day = pc.strftime(column, format="%Y-%m-%d", locale="C")
    hour = pc.strftime(column, format="%H", locale="C")
    return table.append_column("dt", day).append_column("hr", hour)
