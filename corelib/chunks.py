"""Large objects in chunks: a plan of record-aligned byte ranges, and reading one chunk.

A plan is made from the object's size and a few small ranged reads near each boundary,
never by reading the object whole, on any store with `head` and `get_range` (memory,
local disk, S3, Azure Blob). JSON Lines and CSV split at line starts (a CSV's header is
kept in the plan and carried to every chunk); Parquet splits between row groups, read
from its footer; a gzip file is one compressed stream, so it is one chunk read by one
worker (`ChunkPlan.note` says so).

Every record keeps its own line-level id, so one bad line is dead-lettered alone and the
ids do not depend on the chunk size: the object's name and the record's 1-based line (or
Parquet row) number, `record_id`, the same id the unchunked file reader gives. A plan
knows its chunks' first line numbers when it was made with `lines=True` (one streamed
pass over the object counting newlines; CSV always takes it, see below); a plan made
without it names a line by its byte offset instead (`offset_id`). The identities of this
module (`chunk_key`, `object_source`, `record_id`, `offset_id`) are built here and
nowhere else, in the style of `onceflow.identity`.

A CSV record may hold a newline inside a quoted field, so a newline is a record boundary
only outside one. Where a field is quoted is decided as Python's `csv` module reads it
(RFC 4180, not strict, the reader the unchunked path uses): a quote opens a quoted field
only at a field's start, `""` inside one is a quote, and any other quote (`a,b"c`, or
after a closing quote) is an ordinary character. A CSV plan follows that from the
object's start in the same streamed pass (`_CsvScan`), and a chunk reader joins a
record's physical lines by the same rule.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from pydantic_core import from_json

from onceflow.event import Event, EventTemplate
from onceflow.records import InvalidRecord, ObjectInfo
from onceflow.serialization import UnstorableValue, dumps, to_plain
from onceflow.watermarks import LANE_ATTRIBUTE

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Chunk",
    "ChunkFormat",
    "ChunkPlan",
    "ChunkReader",
    "RangedObjects",
    "chunk_format",
    "chunk_key",
    "object_source",
    "object_version",
    "offset_id",
    "plan_chunks",
    "record_id",
]

ChunkFormat = Literal["jsonl", "csv", "parquet"]
DEFAULT_CHUNK_SIZE = 64 << 20
"""64 MiB: a chunk a Lambda or one local worker reads in well under a minute."""

_SUFFIXES: dict[str, ChunkFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_PROBE = 4 << 10  # most lines end within a few KiB; a longer one doubles the probe
_READ_SIZE = 1 << 20
_SCAN_SIZE = 8 << 20  # the line-counting pass: few calls, still a bounded piece


class RangedObjects(Protocol):
    """What planning and reading need of an object store: its `head` and `get_range`."""

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""
        ...

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`."""
        ...


# -- identities ------------------------------------------------------------------------------


def chunk_key(path: str, version: str, index: int) -> str:
    """The exactly-once key of chunk `index` of version `version` of object `path`."""
    return f"chunk:{path}@{version}#{index}"


def object_version(info: ObjectInfo, version: str | None = None) -> str:
    """The version a plan of the object is filed under: `version`, else its etag."""
    return version or info.etag or f"{info.size}-{info.modified}"


def object_source(path: str, version: str) -> str:
    """The `source` of the events read from one version of an object."""
    return f"object:{path}@{version}"


def record_id(name: str, number: int) -> str:
    """A record's id: its file's name and its 1-based line (JSONL, CSV) or row (Parquet).

    The same id whether the file is read whole (`onceflow.adapters.local.file_records`)
    or in chunks, so one bad line is the same dead letter either way.
    """
    return f"{name}:{number}"


def offset_id(name: str, offset: int) -> str:
    """A line's id when its plan was made without counting lines: its byte offset."""
    return f"{name}@{offset}"


# -- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of work: bytes `start` to `end` (Parquet: row groups `start` to `end`)."""

    index: int
    start: int
    end: int
    bytes: int
    """Bytes of the object this chunk covers (Parquet: its row groups' compressed size)."""
    first_row: int = 0
    """Parquet: the object-wide number of the chunk's first row."""
    rows: int | None = None
    """Parquet: the chunk's rows, known from the footer; None for text formats."""
    first_line: int | None = None
    """Text formats: the 1-based line number of the chunk's first line, when the plan
    counted lines (`plan_chunks(lines=True)`); None when it did not."""


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """How one version of one object splits into chunks."""

    path: str
    version: str
    size: int
    fmt: ChunkFormat
    chunk_size: int
    chunks: tuple[Chunk, ...]
    compression: str | None = None
    """"gzip" for a gzip file: one stream, one chunk, read by one worker."""
    header: str | None = None
    """A CSV's header line, given to every chunk's reader."""
    note: str | None = None
    """Why the object was not split, when it was not."""

    def key(self, index: int) -> str:
        """The exactly-once key of chunk `index`."""
        return chunk_key(self.path, self.version, index)

    @property
    def total_bytes(self) -> int:
        """Bytes every chunk together covers."""
        return sum(chunk.bytes for chunk in self.chunks)

    def as_plain(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> ChunkPlan:
        """The plan `as_plain` gave."""
        fields = dict(plain)
        fields["chunks"] = tuple(Chunk(**c) for c in fields["chunks"])
        return cls(**fields)


def chunk_format(path: str, given: ChunkFormat | None = None) -> tuple[ChunkFormat, str | None]:
    """(format, compression) of an object: `given`, or read from its name (`.jsonl.gz`)."""
    lower = path.lower()
    compression = "gzip" if lower.endswith(".gz") else None
    if compression:
        lower = lower[: -len(".gz")]
    if given is not None:
        return given, compression
    for suffix, fmt in _SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt, compression
    raise ValueError(
        f"cannot tell the format of {path} from its name; give it as fmt= "
        f"({', '.join(sorted(set(_SUFFIXES.values())))})"
    )


async def plan_chunks(
    objects: RangedObjects,
    path: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    fmt: ChunkFormat | None = None,
    version: str | None = None,
    lines: bool | None = None,
) -> ChunkPlan:
    """Split object `path` into chunks of about `chunk_size` bytes, at record boundaries.

    Reads the object's size and, near each boundary, a small range to find the next line
    start (Parquet: the footer). With `lines` (the default for CSV, whose boundaries need
    it) it streams the object once in bounded pieces instead, counting newlines (each
    chunk's `first_line`, for line-numbered ids) and, for CSV, quotes (a newline inside a
    quoted field is no boundary). `version` (an S3 version id) defaults to the etag.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: at least 1 byte")
    info = await objects.head(path)
    if info is None:
        raise FileNotFoundError(f"no object {path!r} to plan")
    fmt, compression = chunk_format(path, fmt)
    size = info.size
    version = object_version(info, version)
    # A gzip file under a plain name is still one stream: its first two bytes say so.
    plain = compression is None and size >= 2 and fmt != "parquet"
    if plain and await objects.get_range(path, 0, 2) == _GZIP_MAGIC:
        compression = "gzip"
    common: dict[str, Any] = {
        "path": path,
        "version": version,
        "size": size,
        "fmt": fmt,
        "chunk_size": chunk_size,
    }
    if compression is not None:
        note = "gzip is one compressed stream: one worker reads it from the start"
        header = await _gzip_header(objects, path, size) if fmt == "csv" else None
        chunk = Chunk(0, 0, size, size, first_line=1)
        return ChunkPlan(
            **common, chunks=(chunk,), compression=compression, header=header, note=note
        )
    if fmt == "parquet":
        return ChunkPlan(**common, chunks=await _parquet_chunks(objects, path, size, chunk_size))
    if lines is None:
        lines = fmt == "csv"
    if lines:
        starts, first_lines = await _scan(objects, path, size, chunk_size, csv_quotes=fmt == "csv")
        header = None
        if fmt == "csv":
            raw = await objects.get_range(path, 0, starts[0])
            header = _strip_bom(raw).rstrip(b"\r\n").decode("utf-8", "replace")
        ends = [*starts[1:], size]
        spans = zip(starts, ends, first_lines, strict=True)
        chunks = tuple(Chunk(i, a, b, b - a, first_line=n) for i, (a, b, n) in enumerate(spans))
        return ChunkPlan(**common, chunks=chunks, header=header)
    header = None
    data_start = 0
    if fmt == "csv":
        data_start = await _line_end(objects, path, 0, size)
        raw = await objects.get_range(path, 0, data_start)
        header = _strip_bom(raw).rstrip(b"\r\n").decode("utf-8", "replace")
    starts = [data_start]
    target = data_start + chunk_size
    while target < size:
        boundary = await _line_end(objects, path, target - 1, size)
        if boundary >= size:
            break
        if boundary > starts[-1]:
            starts.append(boundary)
        target = max(boundary, target) + chunk_size
    ends = [*starts[1:], size]
    chunks = tuple(Chunk(i, a, b, b - a) for i, (a, b) in enumerate(zip(starts, ends, strict=True)))
    return ChunkPlan(**common, chunks=chunks, header=header)


async def _scan(
    objects: RangedObjects, path: str, size: int, chunk_size: int, *, csv_quotes: bool
) -> tuple[list[int], list[int]]:
    """Chunk starts and their 1-based first line numbers, from one pass over the object.

    Every boundary is just after a newline at or after its target (and, with `csv_quotes`,
    one that ends a CSV record: not inside a quoted field, see `_CsvScan`). With
    `csv_quotes` the first boundary ends the header record, which chunk 0 starts after.
    """
    starts: list[int] = []
    first_lines: list[int] = []
    # The first boundary: after the CSV header, else the object's start.
    search = 0 if csv_quotes else -1
    if not csv_quotes:
        starts.append(0)
        first_lines.append(1)
        search = chunk_size - 1
    scan = _CsvScan() if csv_quotes else None
    position = newlines = 0
    while position < size and search < size:
        piece = await objects.get_range(path, position, min(size, position + _SCAN_SIZE))
        if not piece:
            raise EOFError(f"{path} ended at byte {position}, before its size {size}")
        length = len(piece)
        at = 0
        while at < length:
            target = max(0, search - position)
            if target >= length:
                if scan is not None:
                    scan.skip(piece, at, length)
                break
            if scan is not None:
                scan.skip(piece, at, target)
                ended = scan.record_end(piece, target, length)
                if ended < 0:
                    break
                found = ended - 1
            else:
                found = piece.find(b"\n", target)
                if found < 0:
                    break
            boundary = position + found + 1
            if boundary >= size and starts:
                search = size
                break
            starts.append(boundary)
            first_lines.append(newlines + piece.count(b"\n", 0, found + 1) + 1)
            search = max(boundary, search + 1) + chunk_size - 1
            at = found + 1
        newlines += piece.count(b"\n")
        position += length
    if not starts:  # a CSV that is all header (or one unfinished record)
        starts, first_lines = [size], [newlines + 1]
    return starts, first_lines


# -- where a CSV record ends, as Python's csv module reads it ---------------------------------

_FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(4)
_QUOTED_TEXT = rb'"[^"]*+(?:""[^"]*+)*+"'  # a quoted field, `""` inside it a quote
_FIELD = rb"(?:[,\n]|[^\",\n][^,\n]*+[,\n])"  # the separator, or text and the separator
_PLAIN_FIELDS = re.compile(rb"(?:" + _QUOTED_TEXT + _FIELD + rb"|" + _FIELD + rb")*+")
"""Whole fields with their separators, from a field's start, at C speed: a quoted field
(`""` inside it a quote, text after its closing quote joining it) or a field of text
(quotes in it are text)."""
_FIELD_END = re.compile(rb"[,\n]")


class _CsvScan:
    """The state of Python's csv reader (excel dialect, not strict) over a byte stream.

    Quotes, commas and newlines are ASCII, never inside a UTF-8 sequence, so the bytes
    give the reader's own decisions. Runs of whole fields go by one regular expression;
    a field cut by the piece's end is stepped through by hand.
    """

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _FIELD_START

    def skip(self, buf: bytes, at: int, end: int) -> None:
        """Read `buf[at:end]`."""
        while at < end:
            state = self.state
            if state in (_FIELD_START, _UNQUOTED):
                # Outside quoted fields only a quote can change anything: go to the next.
                quote = buf.find(b'"', at, end)
                if quote < 0:
                    self.state = _FIELD_START if buf[end - 1] in b",\n" else _UNQUOTED
                    return
                opens = state == _FIELD_START if quote == at else buf[quote - 1] in b",\n"
                if not opens:  # a quote inside an unquoted field: text
                    self.state = _UNQUOTED
                    at = quote + 1
                    continue
                self.state = _FIELD_START
                match = _PLAIN_FIELDS.match(buf, quote, end)
                at = match.end() if match else quote
                if at >= end:
                    return
            at, _ = self._step(buf, at, end)

    def record_end(self, buf: bytes, at: int, end: int) -> int:
        """Read on from `at` to the end of a record; the offset after its newline, or -1."""
        while at < end:
            at, ended = self._step(buf, at, end)
            if ended:
                return at
        return -1

    def line_ends_record(self, line: bytes) -> bool:
        """Read one physical line (without its newline); whether its newline ends a record."""
        buf = line + b"\n"
        self.skip(buf, 0, len(buf) - 1)
        return self.record_end(buf, len(buf) - 1, len(buf)) >= 0

    def _step(self, buf: bytes, at: int, end: int) -> tuple[int, bool]:
        """Read at least one byte of `buf[at:end]`; the offset reached, and whether a
        record ended there (at a newline outside a quoted field)."""
        state = self.state
        if state == _QUOTED:
            found = buf.find(b'"', at, end)
            if found < 0:
                return end, False
            self.state = _QUOTE_IN_QUOTED
            return found + 1, False
        if state in (_FIELD_START, _QUOTE_IN_QUOTED):
            byte = buf[at]
            if byte == 0x22:  # a quote: a quoted field opens, or an escaped quote
                self.state = _QUOTED
                return at + 1, False
            if byte == 0x2C:  # a comma: the next field
                self.state = _FIELD_START
                return at + 1, False
            if byte == 0x0A:
                self.state = _FIELD_START
                return at + 1, True
            self.state = _UNQUOTED  # csv keeps any other byte, quotes included, as text
        sep = _FIELD_END.search(buf, at, end)
        if sep is None:
            return end, False
        self.state = _FIELD_START
        return sep.end(), buf[sep.start()] == 0x0A


async def _line_end(objects: RangedObjects, path: str, position: int, size: int) -> int:
    """The offset just after the first newline at or after `position` (`size` if none)."""
    probe = _PROBE
    while position < size:
        piece = await objects.get_range(path, position, min(size, position + probe))
        found = piece.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(piece)
        if not piece:
            break
        probe = min(probe * 2, 8 << 20)  # a very long line: look further, faster
    return size


async def _gzip_header(objects: RangedObjects, path: str, size: int) -> str:
    """The first line of a gzip CSV, decompressed from its first bytes."""
    inflate = zlib.decompressobj(wbits=31)
    text = b""
    position = 0
    while b"\n" not in text and position < size:
        piece = await objects.get_range(path, position, min(size, position + _PROBE))
        position += len(piece)
        text += inflate.decompress(piece)
        if not piece:
            break
    return _strip_bom(text.split(b"\n", 1)[0]).rstrip(b"\r").decode("utf-8", "replace")


def _strip_bom(raw: bytes) -> bytes:
    return raw[len(_BOM) :] if raw.startswith(_BOM) else raw


# -- Parquet: a file object over ranged reads ------------------------------------------------


class _RangedFile(io.RawIOBase):
    """A seekable read-only file over an object's ranged reads, for pyarrow.

    Used from a worker thread (`anyio.to_thread`): each read calls back into the event
    loop, so pyarrow fetches the footer and the row groups it needs, never the whole object.
    """

    def __init__(self, objects: RangedObjects, path: str, size: int) -> None:
        # pyarrow may read from threads of its own: they reach the loop by its token.
        self.token = anyio.lowlevel.current_token()
        self.objects = objects
        self.path = path
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        if end <= self.position:
            return b""
        data = anyio.from_thread.run(
            self.objects.get_range, self.path, self.position, end, token=self.token
        )
        self.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _parquet_file(file: _RangedFile) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "reading Parquet needs pyarrow: pip install 'onceflow[parquet]'"
        ) from None
    return pq.ParquetFile(file)


async def _parquet_chunks(
    objects: RangedObjects, path: str, size: int, chunk_size: int
) -> tuple[Chunk, ...]:
    file = _RangedFile(objects, path, size)

    def plan() -> tuple[Chunk, ...]:
        metadata = _parquet_file(file).metadata
        chunks: list[Chunk] = []
        first = row = rows = taken = 0
        for group in range(metadata.num_row_groups):
            meta = metadata.row_group(group)
            taken += sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
            rows += meta.num_rows
            if taken >= chunk_size or group == metadata.num_row_groups - 1:
                chunks.append(Chunk(len(chunks), first, group + 1, taken, row, rows))
                first, row, rows, taken = group + 1, row + rows, 0, 0
        return tuple(chunks) or (Chunk(0, 0, 0, 0, 0, 0),)

    return await anyio.to_thread.run_sync(plan)


# -- reading one chunk -----------------------------------------------------------------------

Record = Event | InvalidRecord


@dataclass
class ChunkReader:
    """The records of one chunk, read in bounded pieces, with the chunk's running totals.

    Memory stays at one piece (`read_size`) and one batch whatever the object's size. Ids
    come from the object and the record's line (or row) number, `record_id` (its byte
    offset, `offset_id`, when the plan did not count lines), or from `id_field` with
    `source`. Each event's sequence is that number.
    """

    objects: RangedObjects
    plan: ChunkPlan
    index: int
    source: str | None = None
    """The events' source; default `object_source(path, version)`."""
    id_field: str | None = None
    partition_field: str | None = None
    read_size: int = _READ_SIZE
    event_type: str = "onceflow.object.record"
    on_bytes: Callable[[int], None] | None = None
    """Called with the bytes just read, for progress bars."""
    lane: bool = False
    """Declare the chunk a watermark lane (`onceflow.watermarks.LANE_ATTRIBUTE`): every
    read of a chunk starts at its start and gives its records in increasing position,
    the contract a lane needs, so a runner may settle them by one lane record instead
    of a marker per record."""
    rows: int = 0
    """Records read so far (events and invalid records)."""
    invalid: int = 0
    bytes_read: int = 0
    _digest: Any = field(default_factory=hashlib.sha256)
    _unit: str = field(init=False)
    """What a record's position counts: row, line, or (a plan without line numbers) byte."""
    _shared: dict[str, str] = field(init=False)
    """The attributes every record of the chunk shares (built once: a record copies them)."""

    def __post_init__(self) -> None:
        plan = self.plan
        if plan.fmt == "parquet":
            self._unit = "row"
        else:
            self._unit = "byte" if self.chunk.first_line is None else "line"
        self._shared = {"object": plan.path, "chunk": str(self.index)}
        if self.lane:
            self._shared[LANE_ATTRIBUTE] = f"{plan.version}#{self.index}"

    @property
    def chunk(self) -> Chunk:
        """The chunk being read."""
        return self.plan.chunks[self.index]

    @property
    def checksum(self) -> str:
        """sha256 of the chunk's bytes (Parquet: of its records' data), read so far."""
        return str(self._digest.hexdigest())

    async def batches(self, size: int) -> AsyncIterator[list[Record]]:
        """The chunk's records in batches of at most `size`."""
        batch: list[Record] = []
        async for record in self._records():
            self.rows += 1
            if isinstance(record, InvalidRecord):
                self.invalid += 1
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _records(self) -> AsyncIterator[Record]:
        if self.plan.fmt == "parquet":
            return self._parquet()
        return self._text()

    def _template(self) -> EventTemplate:
        source = self.source or object_source(self.plan.path, self.plan.version)
        return EventTemplate(source=source, type=self.event_type, time=datetime.now(UTC))

    def _counted(self, data: bytes) -> None:
        self._digest.update(data)
        self.bytes_read += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    # -- text formats ------------------------------------------------------------------------

    async def _lines(self) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, line without its newline) of every line starting in the chunk."""
        plan, chunk = self.plan, self.chunk
        pieces = self._gzip_pieces() if plan.compression else self._plain_pieces()
        offset = chunk.start
        carry = b""
        async for piece in pieces:
            lines = (carry + piece).split(b"\n")
            carry = lines.pop()
            for line in lines:
                yield offset, line
                offset += len(line) + 1
        if carry:
            yield offset, carry

    async def _plain_pieces(self) -> AsyncIterator[bytes]:
        chunk, path = self.chunk, self.plan.path
        position = chunk.start
        while position < chunk.end:
            piece = await self.objects.get_range(
                path, position, min(chunk.end, position + self.read_size)
            )
            if not piece:
                raise EOFError(f"{path} ended at byte {position}, before its planned {chunk.end}")
            position += len(piece)
            self._counted(piece)
            yield piece

    async def _gzip_pieces(self) -> AsyncIterator[bytes]:
        inflate = zlib.decompressobj(wbits=31)
        # Each read piece inflates in bounded steps: a highly compressed piece (or a gzip
        # bomb) never has to fit in memory at once.
        limit = 4 * self.read_size
        async for piece in self._plain_pieces():
            data = piece
            while data:
                out = inflate.decompress(data, limit)
                data = inflate.unconsumed_tail
                if inflate.eof:
                    # Concatenated gzip members (what `cat a.gz b.gz` makes) are one file too.
                    data = inflate.unused_data + data
                    inflate = zlib.decompressobj(wbits=31)
                if out:
                    yield out

    async def _text(self) -> AsyncIterator[Record]:
        template = self._template()
        plan = self.plan
        is_csv = plan.fmt == "csv"
        skip_header = is_csv and plan.compression is not None
        header = [h.strip() for h in next(csv.reader([plan.header]))] if plan.header else []
        first = self.chunk.first_line
        number = first if first is not None else 0
        # CSV: the physical lines of a record whose quoted field holds newlines, joined
        # until a newline ends the record (the rule the plan's boundaries follow).
        pending: list[bytes] = []
        started = 0
        scan = _CsvScan()
        async for offset, physical in self._lines():
            position = offset if first is None else number
            number += 1
            line = physical
            if offset == 0:
                line = _strip_bom(line)
                if skip_header:
                    continue
            if is_csv and (pending or b'"' in line):
                if not pending:
                    started = position
                pending.append(line)
                if not scan.line_ends_record(line):
                    continue
                line, position = b"\n".join(pending), started
                pending = []
            body = line[:-1] if line.endswith(b"\r") else line
            if not body.strip():
                continue
            if not is_csv:
                yield self._jsonl(template, position, body)
            elif (record := self._csv(template, position, body, header)) is not None:
                yield record
        if pending:  # a quoted field never closed: it holds the rest, as the csv reader says
            rest = b"\n".join(pending)
            if plan.compression is None and offset + len(physical) < self.chunk.end:
                rest += b"\n"  # the last line's own newline, inside the open field
            if (record := self._csv(template, started, rest, header)) is not None:
                yield record

    def _jsonl(self, template: EventTemplate, offset: int, body: bytes) -> Record:
        try:
            fields = from_json(body)
        except ValueError:
            why = _why_not_json(body)
            if why is None:  # accepted by json.loads after all (a lone surrogate escape)
                fields = json.loads(body)
            else:
                return self._invalid(offset, why, body)
        return self._event(template, offset, body, fields)

    def _csv(
        self, template: EventTemplate, offset: int, body: bytes, header: list[str]
    ) -> Record | None:
        """The record of one CSV row; None for a blank row (`""` alone), as the file reader."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            why = f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at column {exc.start + 1})"
            return self._invalid(offset, why, body)
        try:
            # Not strict, as the unchunked reader: a file reads the same either way.
            row = next(csv.reader([text]), [])
        except csv.Error as exc:
            return self._invalid(offset, f"not valid CSV ({exc})", body)
        if not row or (len(row) == 1 and not row[0].strip()):
            return None
        if len(row) != len(header):
            missing = header[len(row) :]
            why = f"expected {len(header)} columns, found {len(row)}" + (
                f" (missing {', '.join(missing)})" if missing else ""
            )
            return self._invalid(offset, why, body)
        fields = dict(zip(header, row, strict=True))
        return self._event(template, offset, dumps(fields).encode(), fields)

    # -- Parquet -----------------------------------------------------------------------------

    async def _parquet(self) -> AsyncIterator[Record]:
        template = self._template()
        chunk, plan = self.chunk, self.plan
        groups = list(range(chunk.start, chunk.end))
        if not groups:
            return
        opened: list[Iterator[Any]] = []
        file = _RangedFile(self.objects, plan.path, plan.size)

        def next_rows() -> list[dict[str, Any]] | None:
            if not opened:
                parquet = _parquet_file(file)
                opened.append(parquet.iter_batches(batch_size=4096, row_groups=groups))
            batch = next(opened[0], None)
            return None if batch is None else list(batch.to_pylist())

        row = chunk.first_row + 1  # 1-based, as the unchunked reader counts rows
        while (rows := await anyio.to_thread.run_sync(next_rows)) is not None:
            for fields in rows:
                try:
                    data = dumps(to_plain(fields)).encode()
                except UnstorableValue as exc:
                    yield self._invalid(row, str(exc), b"")
                else:
                    self._digest.update(data)
                    yield self._event(template, row, data, fields)
                row += 1
        self.bytes_read = chunk.bytes
        if self.on_bytes is not None:
            self.on_bytes(chunk.bytes)

    # -- building records --------------------------------------------------------------------

    def _id(self, position: int) -> str:
        if self._unit == "byte":
            return offset_id(self.plan.path, position)
        return record_id(self.plan.path, position)

    def _where(self, position: int) -> str:
        return f"{self.plan.path} {self._unit} {position} (chunk {self.index})"

    def _invalid(self, position: int, why: str, raw: bytes) -> InvalidRecord:
        plan = self.plan
        return InvalidRecord(
            id=self._id(position),
            source=self.source or object_source(plan.path, plan.version),
            reason=f"{self._where(position)}: {why}",
            raw=raw,
            locator=self._where(position),
            attributes=self._attributes(position),
        )

    def _attributes(self, position: int) -> dict[str, str]:
        found = self._shared.copy()
        found["offset" if self._unit == "byte" else self._unit] = str(position)
        return found

    def _event(self, template: EventTemplate, position: int, data: bytes, fields: Any) -> Record:
        event_id = self._id(position)
        partition = None
        if self.id_field is not None or self.partition_field is not None:
            if not isinstance(fields, dict):
                return self._invalid(position, "expected a JSON object", data)
            if self.id_field is not None:
                value = fields.get(self.id_field)
                if value is None or value == "" or isinstance(value, dict | list):
                    why = f"no usable {self.id_field!r} field for the event id"
                    return self._invalid(position, why, data)
                event_id = str(value)
            if self.partition_field is not None:
                value = fields.get(self.partition_field)
                partition = None if value is None else str(value)
        return template.event(event_id, data, partition, str(position), self._attributes(position))


def _why_not_json(body: bytes) -> str | None:
    """Why a line is not JSON (its dead-letter reason), or None when json.loads takes it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at column {exc.start + 1})"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    return None
