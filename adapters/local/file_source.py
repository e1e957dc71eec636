"""Pull-mode sources over local files: a file or glob (`FileSource`) and a landing folder."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat as stat_module
import time
import zlib
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from onceflow.adapters.local.checkpoints import (
    Checkpoint,
    Checkpoints,
    Generations,
    shard_checkpoint,
)
from onceflow.adapters.local.database import Database
from onceflow.adapters.local.file_records import FileFormat, Positioned, RecordReader, format_of
from onceflow.event import Event
from onceflow.records import InvalidRecord

__all__ = ["DirectorySource", "FileSource", "Redelivery"]

Record = Event | InvalidRecord
_HEAD_BYTES = 4096


@dataclass(slots=True)
class _File:
    """One input file being read, and what of it is settled."""

    key: str
    """The checkpoint name."""
    reader: RecordReader
    head: str
    settled: tuple[int, int] = (0, 0)
    """(offset, line) up to which every record is done."""
    pending: dict[int, Positioned] = field(default_factory=dict)
    """Failed records waiting for redelivery, by start offset."""
    drained: bool = False


class Redelivery(list[Record]):
    """A batch of records that failed earlier in the run, delivered again after a pass.

    The runner of a file source (`run_files`) delivers such a batch's failures again a
    few more times; any other consumer may treat it as an ordinary batch.
    """


class _FilesSource:
    """What both file sources share: reading, batching, acking, checkpoints, handing back.

    A record that fails (another worker's live lease, a lost lease) waits until the pass
    over the files is done and is then handed back once, in input order, as a
    `Redelivery`; the checkpoint never moves past the first record still unsettled, so
    whatever is left is read again by the next run. With `ordered`, a failed record holds
    back the later records of its partition until it settles.
    """

    def __init__(
        self,
        *,
        state: Database | str | os.PathLike[str] | None,
        shard: tuple[int, int] | None = None,
        ordered: bool = False,
    ) -> None:
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard[0]}/{shard[1]} is not one of 0..{shard[1] - 1}")
        self.shard = shard
        """(index, count): read only the records of worker `index` of `count`."""
        self.ordered = ordered
        """Once a record fails, later records of its partition wait behind it."""
        self._blocked: set[str] = set()
        database = state if state is None or isinstance(state, Database) else Database.shared(state)
        self.database = database
        self.checkpoints = Checkpoints(database) if database is not None else None
        self._open: dict[str, _File] = {}
        self._batch: tuple[Sequence[Record], list[tuple[_File, list[Positioned]]]] | None = None
        """The batch handed out and not acked yet, with its records' positions file by file."""
        self.stopped = False
        self.bytes_read = 0
        """Bytes (rows, for Parquet) read so far this run, for progress bars."""

    # -- subclasses say which files there are -----------------------------------------------

    watch = False
    poll_seconds = 1.0

    def _next_files(self) -> Iterator[tuple[str, RecordReader]]:
        raise NotImplementedError

    def _on_finished(self, file: _File) -> None:
        """Called once a file is read to the end and every record of it is settled."""

    def _finish_files(self) -> bool:
        """Whether a fully settled file is marked finished (not read again unless it grows)."""
        return False

    def _grows(self) -> bool:
        """Whether a finished file that grew since is read on from where it ended."""
        return False

    def _already_finished(self, file: _File) -> None:
        """Called for a file found finished by an earlier run (a crash may have come between)."""

    # -- the Source protocol -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the current batch (the rest is read again by the next run)."""
        self.stopped = True

    async def batches(self, max_size: int) -> AsyncIterator[Sequence[Record]]:
        """Batches of at most `max_size` records, every file in turn, then what failed."""
        while not self.stopped:
            async for batch in self._pass(max_size):
                yield batch
            for redelivery in self._hand_back(max_size):
                if self.stopped:
                    return
                yield redelivery
            if not self.watch:
                return
            await anyio.sleep(self.poll_seconds)

    async def _pass(self, max_size: int) -> AsyncIterator[Sequence[Record]]:
        # A batch remembers its records' positions as one list per file it spans (not a
        # tuple per record), so settling a batch without failures only looks at its end.
        records: list[Record] = []
        where: list[tuple[_File, list[Positioned]]] = []
        done_bytes = self.bytes_read
        shard = self.shard
        for key, reader in self._next_files():
            if self.stopped:
                return
            file = self._start(key, reader)
            if file is None:
                continue
            items: list[Positioned] = []
            where.append((file, items))
            for item in reader.read(*file.settled):
                record = item.record
                if shard is not None and _shard_of(record, shard[1]) != shard[0]:
                    continue  # another worker's record
                if self.ordered and record.partition_key in self._blocked:
                    # An earlier record of this lane failed: this one waits behind it.
                    file.pending[item.start] = item
                    continue
                records.append(record)
                items.append(item)
                if len(records) >= max_size:
                    self._batch = (records, where)
                    self.bytes_read = done_bytes + item.end
                    yield records
                    records, items = [], []
                    where = [(file, items)]
                    if self.stopped:
                        return
            # A file its writer still holds open is never read to its end: not finished.
            file.drained = not reader.still_written
            done_bytes += reader.path.stat().st_size if reader.path.exists() else 0
            self.bytes_read = done_bytes
            if not records:
                self._settle_files([file])
        if records:
            self._batch = (records, where)
            yield records

    def _hand_back(self, max_size: int) -> Iterator[Redelivery]:
        """The records waiting after a pass, in input order, each delivered once more.

        With `ordered`, a lane whose record is still failed after its redelivery (the ack
        blocks it again) keeps its later records waiting: they are not handed out.
        """
        waiting = [(f, p) for f in self._open.values() for p in f.pending.values()]
        waiting.sort(key=lambda fp: (fp[0].reader.ordinal, fp[1].start))
        self._blocked.clear()
        position = 0
        while position < len(waiting):
            chunk: dict[str, tuple[_File, list[Positioned]]] = {}
            batch = Redelivery()
            while position < len(waiting) and len(batch) < max_size:
                file, item = waiting[position]
                position += 1
                if not (self.ordered and item.record.partition_key in self._blocked):
                    chunk.setdefault(file.key, (file, []))[1].append(item)
                    batch.append(_again(item.record))
            if not batch:
                return
            self._batch = (batch, list(chunk.values()))
            yield batch

    async def ack(self, batch: Sequence[Record], failed_ids: Collection[str]) -> None:
        """Settle the batch: its records are done except `failed_ids`, which come again later."""
        if self._batch is None or self._batch[0] is not batch:
            raise RuntimeError("ack() for a batch this source did not just hand out")
        _, where = self._batch
        self._batch = None
        touched: list[_File] = []
        for file, items in where:
            if not items:
                continue
            touched.append(file)
            if failed_ids:
                for item in items:
                    record = item.record
                    if record.id in failed_ids:
                        file.pending[item.start] = item
                        if self.ordered and record.partition_key is not None:
                            self._blocked.add(record.partition_key)
                    else:
                        file.pending.pop(item.start, None)
                        if item.end > file.settled[0]:
                            file.settled = (item.end, item.line)
                continue
            # Nothing failed: every record is done, and a file's records come in offset
            # order, so its settled position is its last record's end.
            if file.pending:
                for item in items:
                    file.pending.pop(item.start, None)
            last = items[-1]
            if last.end > file.settled[0]:
                file.settled = (last.end, last.line)
        self._settle_files(touched)

    # -- bookkeeping -------------------------------------------------------------------------

    def _start(self, key: str, reader: RecordReader) -> _File | None:
        if self.shard is not None:
            key = shard_checkpoint(key, *self.shard)
        known = self._open.get(key)
        if known is not None:
            # Read again in this run (it grew, or its writer let go): on from where it is.
            known.reader, known.drained = reader, False
            return known
        saved = self.checkpoints.get(key) if self.checkpoints else None
        file = _File(key, reader, _head(reader.path))
        if saved is not None and _same_head(reader.path, saved.head):
            if saved.finished and self._finish_files() and not self._grew(reader, saved):
                self._already_finished(file)
                return None
            file.settled = (saved.offset, saved.line)
        # A file whose first bytes changed was replaced: it is read again from the start,
        # and its records that were done before come back as duplicates.
        self._open[key] = file
        return file

    def _grew(self, reader: RecordReader, saved: Checkpoint) -> bool:
        return (
            self._grows()
            and reader.fmt != "parquet"  # a Parquet checkpoint counts rows, not bytes
            and reader.path.exists()
            and reader.path.stat().st_size > saved.offset
        )

    def _settle_files(self, files: list[_File]) -> None:
        marks: list[Checkpoint] = []
        for file in files:
            if file.pending:
                first = min(file.pending.values(), key=lambda p: p.start)
                offset, line = first.start, first.line - 1
            else:
                offset, line = file.settled
            finished = file.drained and not file.pending
            marks.append(
                Checkpoint(file.key, offset, line, file.head, finished and self._finish_files())
            )
            if finished:
                del self._open[file.key]
        if self.checkpoints is not None:
            self.checkpoints.save(marks)
        for file in files:
            if file.drained and not file.pending:
                self._on_finished(file)


class FileSource(_FilesSource):
    """JSON Lines, CSV or Parquet records from one file or a glob, resuming at a checkpoint.

    Event ids are stable across runs: `<file>:<line>` with `source` `file:<file>` (the path
    relative to the input's base folder), or the value of `id_field` with one `source` for
    every file, so a record repeated anywhere in the input is a duplicate.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        state: Database | str | os.PathLike[str] | None = None,
        fmt: FileFormat | None = None,
        id_field: str | None = None,
        partition_field: str | None = None,
        source: str | None = None,
        shard: tuple[int, int] | None = None,
        ordered: bool = False,
    ) -> None:
        super().__init__(state=state, shard=shard, ordered=ordered)
        patterns = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.files = _expand([os.fspath(p) for p in patterns])
        self.fmt = fmt
        self.id_field = id_field
        self.partition_field = partition_field
        self.source = source or ("files" if id_field else None)
        for path, _ in self.files:
            format_of(path, fmt)  # fail now, not half-way, on a file of unknown format

    def _next_files(self) -> Iterator[tuple[str, RecordReader]]:
        for ordinal, (path, name) in enumerate(self.files):
            reader = RecordReader(
                path,
                name,
                format_of(path, self.fmt),
                self.source or f"file:{name}",
                id_field=self.id_field,
                partition_field=self.partition_field,
                ordinal=ordinal,
            )
            yield f"file:{name}", reader


class DirectorySource(_FilesSource):
    """A landing folder: each new file is read once, then optionally moved to `processed/`.

    A file is new when its identity is: its path, size and modification time
    (`identity="stat"`), or its content hash (`identity="hash"`, so a file landed twice is
    read once). With `watch=True` the folder is polled until `stop()`; files modified less
    than `settle_seconds` ago are left for the next poll, as they may still be written.

    With `identity="stat"` a file that grows keeps its generation (the first identity it
    was seen with, while its first bytes stay the same), so its event keys stay those of
    its path and line and a durable offset says how far it is read: only appended lines
    are new (`move_to=None` keeps files in place and reads on as they grow). A file that
    some process still holds open for writing (seen in `/proc` on Linux; elsewhere one
    modified less than `settle_seconds` ago) is read up to its last complete line and is
    neither finished nor moved: its unfinished last line and whatever follows are read
    once the writer lets go. `identity="hash"` reads only files no writer holds.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        state: Database | str | os.PathLike[str] | None = None,
        pattern: str = "*",
        fmt: FileFormat | None = None,
        id_field: str | None = None,
        partition_field: str | None = None,
        identity: str = "stat",
        move_to: str | None = "processed",
        watch: bool = False,
        poll_seconds: float = 1.0,
        settle_seconds: float = 1.0,
        shard: tuple[int, int] | None = None,
        ordered: bool = False,
    ) -> None:
        super().__init__(state=state, shard=shard, ordered=ordered)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"landing folder {self.folder} does not exist")
        if identity not in ("stat", "hash"):
            raise ValueError("identity must be 'stat' or 'hash'")
        self.pattern = pattern
        self.fmt = fmt
        self.id_field = id_field
        self.partition_field = partition_field
        self.identity = identity
        self.move_to = move_to
        self.watch = watch
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds if watch else 0.0
        self.generations = Generations(self.database) if self.database is not None else None
        self._generation_here: dict[str, tuple[str, str]] = {}
        """Generations by name when there is no state file: (generation, head)."""
        self._seen: set[tuple[str, str]] = set()
        """(name, identity) of files read while no writer held them: nothing more to read."""
        self._names: dict[str, tuple[str, str]] = {}
        """Checkpoint key of each file being read: (its name, its generation)."""
        self._ordinal = 0

    def _finish_files(self) -> bool:
        return True

    def _grows(self) -> bool:
        return self.identity == "stat"

    def _scan(self) -> list[tuple[str, RecordReader]]:
        found = []
        now = time.time()
        writers: _Writers | None = None
        for path in sorted(self.folder.glob(self.pattern)):
            if not path.is_file() or path.name.startswith("."):
                continue
            name = _storable_name(path.relative_to(self.folder).as_posix())
            if self.move_to and name.startswith(f"{self.move_to}/"):
                continue
            stat = path.stat()
            if now - stat.st_mtime < self.settle_seconds:
                continue
            try:
                fmt = format_of(path, self.fmt)
            except ValueError:
                continue  # not a data file (a README, a lock file)
            ident = (
                _digest(path) if self.identity == "hash" else f"{stat.st_size}-{stat.st_mtime_ns}"
            )
            if (name, ident) in self._seen:
                continue
            if writers is None:
                writers = _Writers(self.settle_seconds, now)  # one look at /proc per scan
            still_written = writers.holding(path, stat)
            if self.identity == "hash":
                if still_written:
                    continue  # its hash is not its identity yet
                generation = ident
            else:
                generation = self._generation(name, path, ident)
            if not still_written:
                self._seen.add((name, ident))
            key = f"landing:{name}@{generation}"
            self._ordinal += 1
            reader = RecordReader(
                path,
                name,
                fmt,
                # The generation is part of the source, so a new file under an old name has
                # new event keys, and the same file read again (or grown) the same ones.
                key,
                id_field=self.id_field,
                partition_field=self.partition_field,
                ordinal=self._ordinal,
                still_written=still_written,
            )
            if self.id_field:
                reader.source = "landing"
            self._names[key] = (name, generation)
            found.append((key, reader))
        return found

    def _generation(self, name: str, path: Path, ident: str) -> str:
        """The generation of the file now under `name`: the one it had while it only grew."""
        head = _head(path)
        if self.generations is None:
            known = self._generation_here.get(name)
            if known is not None and _same_head(path, known[1]):
                return known[0]
            self._generation_here[name] = (ident, head)
            return ident
        known = self.generations.get(name)
        if known is not None and _same_head(path, known[1]):
            return known[0]
        # New, or replaced (its first bytes changed): a new generation, keyed by the
        # identity it has now (what a state file from before generations keyed it by).
        return self.generations.settle(
            name, ident, head, replacing=None if known is None else known[0]
        )

    def _next_files(self) -> Iterator[tuple[str, RecordReader]]:
        yield from self._scan()

    def _already_finished(self, file: _File) -> None:
        # Finished by a run that stopped before moving it away: move it now.
        self._on_finished(file)

    def _on_finished(self, file: _File) -> None:
        if not self.move_to:
            return
        target = self.folder / self.move_to / file.reader.path.relative_to(self.folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # The same name landed before: keep both, this one tagged with its identity.
            ident = file.key.rsplit("@", 1)[-1]
            target = target.with_name(f"{target.stem}.{ident}{target.suffix}")
        if file.reader.path.exists():
            shutil.move(file.reader.path, target)
        name, generation = self._names.get(file.key, (file.reader.name, ""))
        if self.generations is not None and generation:
            self.generations.forget(name, generation)  # the next file of this name is new
        self._generation_here.pop(name, None)


class _Writers:
    """Which files some process holds open for writing, from one look at `/proc`.

    Where `/proc` cannot tell (not Linux), a file modified less than `settle_seconds`
    ago counts as still written (the scan skips such files anyway).
    """

    def __init__(self, settle_seconds: float, now: float) -> None:
        self.settle_seconds = settle_seconds
        self.now = now
        self._open: set[tuple[int, int]] | None = None
        self._looked = False

    def holding(self, path: Path, stat: os.stat_result) -> bool:
        """Whether the file at `path` (with `stat`) may still be written."""
        if not self._looked:
            self._open = _open_for_writing()
            self._looked = True
        if self._open is None:
            return self.now - stat.st_mtime < self.settle_seconds
        return (stat.st_dev, stat.st_ino) in self._open


_WRITING = os.O_WRONLY | os.O_RDWR


def _open_for_writing() -> set[tuple[int, int]] | None:
    """(device, inode) of every file a process on this machine holds open for writing,
    or None when `/proc` does not say (not Linux)."""
    if not os.path.isdir("/proc/self/fdinfo"):
        return None
    found: set[tuple[int, int]] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                target = os.stat(f"{folder}/{fd}")
                if not stat_module.S_ISREG(target.st_mode):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as info:
                    flags = int(info.read().split(b"flags:", 1)[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if flags & _WRITING:
                found.add((target.st_dev, target.st_ino))
    return found


def _shard_of(record: Record, count: int) -> int:
    """Which of `count` workers owns the record: by partition key (keeping each lane's order
    in one worker), else by event key."""
    lane = record.partition_key if record.partition_key is not None else record.key
    return zlib.crc32(lane.encode("utf-8", "surrogatepass")) % count


def _again(record: Record) -> Record:
    if isinstance(record, Event):
        return record.model_copy(update={"delivery_count": record.delivery_count + 1})
    return record


def _expand(patterns: list[str]) -> list[tuple[Path, str]]:
    """(path, stable name) for every file the patterns match, sorted by name.

    Names are relative to the inputs' common folder (the folder part of a glob before its
    first wildcard, or a file's folder), so `a/x.jsonl` and `b/x.jsonl` given together
    are `a/x.jsonl` and `b/x.jsonl`, never the same name (which would make their events
    the same events).
    """
    bases: list[Path] = []
    found: dict[Path, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            bases.append(Path(_static_prefix(pattern)).resolve())
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise FileNotFoundError(f"no file matches {pattern!r}")
        else:
            path = Path(pattern)
            if path.is_dir():
                raise IsADirectoryError(
                    f"{pattern} is a folder; give a file or a glob such as '{pattern}/*.jsonl'"
                )
            if not path.exists():
                raise FileNotFoundError(f"input file {pattern} does not exist")
            bases.append(path.parent.resolve())
            matches = [path]
        for match in matches:
            if not os.access(match, os.R_OK):
                raise PermissionError(f"input file {match} is not readable")
            found.setdefault(match.resolve(), None)
    common = Path(os.path.commonpath(bases))
    named = [(path, _storable_name(path.relative_to(common).as_posix())) for path in found]
    return sorted(named, key=lambda pair: pair[1])


def _storable_name(name: str) -> str:
    """A file's name as ids, checkpoints and reasons carry it: text that can be stored.

    A name that is not UTF-8 on disk comes from the OS with its bad bytes as lone
    surrogates; they are written as `\\xNN` instead (the file is still opened by its path).
    """
    if name.isascii():
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _static_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    if len(fixed) == len(parts):
        fixed = fixed[:-1]
    return str(Path(*fixed)) if fixed else "."


def _head(path: Path) -> str:
    """`<n>:<hash of the first n bytes>`, to recognise the file after it grew."""
    with path.open("rb") as handle:
        start = handle.read(_HEAD_BYTES)
    return f"{len(start)}:{hashlib.blake2b(start, digest_size=8).hexdigest()}"


def _same_head(path: Path, saved: str) -> bool:
    size, _, digest = saved.partition(":")
    if not size.isdigit():
        return False
    with path.open("rb") as handle:
        start = handle.read(int(size))
    return len(start) == int(size) and hashlib.blake2b(start, digest_size=8).hexdigest() == digest


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]
