"""Reading JSON Lines, CSV and Parquet files as a stream of events, from a saved position.

Every record is read one at a time (memory stays flat however big the file), and a record
that cannot be decoded becomes an `InvalidRecord` whose reason names the file, the line
and the cause, so the runner dead-letters it and the rest of the file goes on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from pydantic_core import from_json

from onceflow.chunks import record_id
from onceflow.event import Event, EventTemplate
from onceflow.records import InvalidRecord
from onceflow.serialization import UnstorableValue, dumps, to_plain

__all__ = ["FORMATS", "FileFormat", "Positioned", "RecordReader", "format_of"]

FileFormat = Literal["jsonl", "csv", "parquet"]
FORMATS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BOM = b"\xef\xbb\xbf"


def format_of(path: Path, given: FileFormat | None = None) -> FileFormat:
    """The file's format: `given`, or guessed from its suffix."""
    if given is not None:
        return given
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(
            f"cannot tell the format of {path.name} from its suffix; name it with --format "
            f"({', '.join(sorted(set(FORMATS.values())))})"
        )
    return found


class Positioned(NamedTuple):
    """One record and where it sits: it starts at `start` and the next one at `end`."""

    record: Event | InvalidRecord
    start: int
    end: int
    line: int
    """The record's 1-based line (JSONL, CSV) or row (Parquet) number."""


@dataclass
class RecordReader:
    """Turns one file into events; ids come from the file's name and line, or from `id_field`."""

    path: Path
    name: str
    """The file's stable name (relative to the input's base folder), used in ids and reasons."""
    fmt: FileFormat
    source: str
    """The events' `source`: with `id_field` the same for every file, so ids dedupe across files."""
    id_field: str | None = None
    partition_field: str | None = None
    ordinal: int = 0
    """The file's place in the input, so sequence numbers order records across files."""
    event_type: str = "onceflow.file.record"
    still_written: bool = False
    """A writer has the file open: a last line without its newline is left unread."""

    def read(self, offset: int = 0, line: int = 0) -> Iterator[Positioned]:
        """Records from byte (or row) `offset`, numbering lines after `line`."""
        if self.fmt == "jsonl":
            return self._jsonl(offset, line)
        if self.fmt == "csv":
            return self._csv(offset, line)
        return self._parquet(offset)

    # -- building records --------------------------------------------------------------------

    def _locator(self, line: int) -> str:
        return f"{self.name}:{line}"

    def _invalid(self, line: int, why: str, raw: bytes) -> InvalidRecord:
        return InvalidRecord(
            id=record_id(self.name, line),
            source=f"file:{self.name}",
            reason=f"{self.name} line {line}: {why}",
            raw=raw,
            locator=self._locator(line),
            attributes={"file": self.name, "line": str(line)},
        )

    def _sequence(self, line: int) -> str:
        # Numeric, so the runner orders a lane by it; a later file's records come after.
        return str(self.ordinal * 1_000_000_000_000 + line)

    def _template(self) -> EventTemplate:
        """What every event of one read shares: source, type and the read's time."""
        return EventTemplate(source=self.source, type=self.event_type, time=datetime.now(UTC))

    def _event(
        self, line: int, data: bytes, fields: Any, raw: bytes, template: EventTemplate
    ) -> Event | InvalidRecord:
        number = str(line)
        event_id = record_id(self.name, line)
        partition = None
        if self.id_field is not None or self.partition_field is not None:
            if not isinstance(fields, dict):
                return self._invalid(line, f"expected a JSON object, found {_kind(fields)}", raw)
            if self.id_field is not None:
                value = fields.get(self.id_field)
                if value is None or value == "" or isinstance(value, dict | list):
                    return self._invalid(
                        line, f"no usable {self.id_field!r} field for the event id", raw
                    )
                event_id = str(value)
                if not _is_text(event_id):
                    return self._invalid(line, _not_text(self.id_field, "event id"), raw)
            if self.partition_field is not None:
                value = fields.get(self.partition_field)
                partition = None if value is None else str(value)
                if partition is not None and not _is_text(partition):
                    return self._invalid(line, _not_text(self.partition_field, "partition"), raw)
        sequence = self._sequence(line) if self.ordinal else number
        return template.event(
            event_id, data, partition, sequence, {"file": self.name, "line": number}
        )

    # -- JSON Lines --------------------------------------------------------------------------

    def _jsonl(self, offset: int, line: int) -> Iterator[Positioned]:
        template = self._template()
        with self.path.open("rb", buffering=1 << 20) as handle:
            handle.seek(offset)
            for raw in handle:
                if self.still_written and not raw.endswith(b"\n"):
                    return  # its writer may not have finished it: left for a later read
                start = offset
                offset += len(raw)
                line += 1
                body = raw.rstrip(b"\r\n")
                if start == 0 and body.startswith(_BOM):
                    body = body[len(_BOM) :]
                try:
                    # pydantic-core's parser checks UTF-8 and JSON in one pass, several times
                    # faster than decode + json.loads. It accepts nothing json.loads rejects,
                    # but rejects a little json.loads accepts (lone surrogate escapes), so a
                    # line it refuses is judged again the old way, which also names the cause.
                    fields = from_json(body)
                except ValueError as exc:
                    if not body or body.isspace():
                        continue
                    judged = _judge_json(body, str(exc))
                    if isinstance(judged, str):
                        yield Positioned(self._invalid(line, judged, body), start, offset, line)
                        continue
                    fields = judged.value
                record = self._event(line, body, fields, body, template)
                yield Positioned(record, start, offset, line)

    # -- CSV ---------------------------------------------------------------------------------

    def _csv(self, offset: int, line: int) -> Iterator[Positioned]:
        template = self._template()
        with self.path.open("rb", buffering=1 << 20) as handle:
            lines = _Lines(handle, 0, 0)
            header = next(csv.reader(lines), None)
            if header is None or lines.bad is not None:
                if offset == 0 and header is not None:
                    why = f"the header row is not valid UTF-8 ({lines.bad})"
                    yield Positioned(self._invalid(1, why, b""), 0, lines.offset, 1)
                return
            header = [h.strip() for h in header]
            if offset > lines.offset:
                handle.seek(offset)
                lines = _Lines(handle, offset, line)
            lines.still_written = self.still_written
            reader = csv.reader(lines)
            start = lines.offset
            while True:
                first_line = lines.line + 1
                lines.bad = None
                try:
                    row = next(reader, None)
                except csv.Error as exc:
                    why = f"not valid CSV ({exc})"
                    yield Positioned(
                        self._invalid(first_line, why, b""), start, lines.offset, first_line
                    )
                    start = lines.offset
                    reader = csv.reader(lines)
                    continue
                if row is None:
                    return
                end = lines.offset
                if lines.bad is not None:
                    why = f"not valid UTF-8 ({lines.bad})"
                    record: Event | InvalidRecord = self._invalid(first_line, why, lines.raw)
                elif not row or (len(row) == 1 and not row[0].strip()):
                    start = end
                    continue  # a blank line
                elif len(row) != len(header):
                    missing = header[len(row) :]
                    why = f"expected {len(header)} columns, found {len(row)}" + (
                        f" (missing {', '.join(missing)})" if missing else ""
                    )
                    record = self._invalid(first_line, why, ",".join(row).encode())
                else:
                    fields = dict(zip(header, row, strict=True))
                    data = dumps(fields).encode()
                    record = self._event(first_line, data, fields, data, template)
                yield Positioned(record, start, end, first_line)
                start = end

    # -- Parquet -----------------------------------------------------------------------------

    def _parquet(self, offset: int) -> Iterator[Positioned]:
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the install
            raise ImportError(
                "reading Parquet needs pyarrow: pip install 'onceflow[parquet]'"
            ) from None
        template = self._template()
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a bad file
            why = f"not a readable Parquet file ({type(exc).__name__}: {exc})"
            yield Positioned(self._invalid(1, why, b""), 0, 1 << 62, 1)
            return
        row = 0
        with parquet:
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if row + rows <= offset:
                    row += rows  # a whole row group before the checkpoint: skip it unread
                    continue
                for batch in parquet.iter_batches(batch_size=4096, row_groups=[group]):
                    for fields in batch.to_pylist():
                        row += 1
                        if row <= offset:
                            continue
                        try:
                            data = dumps(to_plain(fields)).encode()
                        except UnstorableValue as exc:
                            yield Positioned(self._invalid(row, str(exc), b""), row - 1, row, row)
                            continue
                        yield Positioned(
                            self._event(row, data, fields, data, template), row - 1, row, row
                        )


class _Lines:
    """Decoded lines of a binary file for `csv.reader`, keeping count of bytes and lines.

    A line that is not UTF-8 is handed to the reader as an empty line and remembered in
    `bad`, so the row it belonged to becomes an invalid record instead of stopping the file.
    """

    def __init__(self, handle: IO[bytes], offset: int, line: int) -> None:
        self.handle = handle
        self.offset = offset
        self.line = line
        self.bad: str | None = None
        self.raw = b""
        self.still_written = False
        """Stop before a last line without its newline (see `RecordReader.still_written`)."""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        if self.still_written and not raw.endswith(b"\n"):
            raise StopIteration
        start = self.offset
        self.offset += len(raw)
        self.line += 1
        if start == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.bad = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
            self.raw = raw.rstrip(b"\r\n")
            return "\n"


class _Parsed(NamedTuple):
    value: Any


def _judge_json(body: bytes, refusal: str = "") -> _Parsed | str:
    """The line parsed by json.loads, or why it is not JSON (a line's dead-letter reason).

    `refusal` is pydantic-core's error for the line.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at column {exc.start + 1})"
    if "recursion limit" in refusal:
        # Nested deeper than pydantic-core parses (Event.json() could never read it, and
        # json.loads or a dead letter's copy of it may exhaust Python's stack): the line's
        # own permanent fault, not the file's.
        return f"not readable JSON (nested too deeply: {refusal})"
    try:
        return _Parsed(json.loads(text))
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return "not readable JSON (nested too deeply)"


def _is_text(value: str) -> bool:
    """Whether `value` is Unicode text that can be stored (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(field: str, role: str) -> str:
    # A lone surrogate (what JavaScript writes for half an emoji) cannot be stored as text
    # anywhere (SQLite, a terminal, UTF-8 files), so it cannot key an event: the record is
    # refused here, by itself, instead of failing the claim of its whole batch.
    return (
        f"the {field!r} field holds a lone surrogate (not valid Unicode text), "
        f"so it cannot be the {role}"
    )


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
