"""Opening the SQLite state file: WAL mode, a busy timeout, and one-line errors naming the file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from onceflow.errors import OnceflowError

try:
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False

__all__ = ["Database", "StateError"]


class StateError(OnceflowError):
    """The local state database cannot be used: locked too long, corrupt, or unreadable."""


def _explain(path: Path, exc: sqlite3.Error, busy_timeout: float) -> StateError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StateError(
            f"state database {path} stayed locked by another process for {busy_timeout:g} s; "
            "wait for it to finish or raise the busy timeout"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StateError(
            f"state database {path} is corrupt or not a SQLite file ({text}); "
            "restore it from a backup or point --state at a new folder"
        )
    return StateError(f"state database {path}: {text}")


class Database:
    """One connection to a SQLite file in WAL mode, shared by the stores and sinks of a process.

    Every method that writes runs in one `BEGIN IMMEDIATE` transaction, so two processes on
    the same file serialise their writes instead of interleaving them; a writer waits up to
    `busy_timeout` seconds for the other, then fails with a `StateError` naming the file.

    Writers of this class first queue on an exclusive `flock` of `<file>.writer`, looked
    at every millisecond at most: SQLite's own busy handler sleeps 1, 2, 5, 10, 15... ms
    between tries, so a writer waiting for a 3 ms transaction would often sleep through
    the free lock, and N processes on one file (`onceflow run --workers N`) would spend
    their turns asleep. Other writers of the file still meet the busy handler.
    """

    _shared: weakref.WeakValueDictionary[tuple[str, float, str], Database] = (
        weakref.WeakValueDictionary()
    )
    _shared_lock = threading.Lock()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        synchronous: str = "NORMAL",
    ) -> None:
        self.path = Path(path).resolve()
        self.busy_timeout = busy_timeout
        self.lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write lock is
            # taken before the first read of a transaction (no upgrade deadlocks).
            self.connection = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut may lose the
            # last transactions. FULL when the caller wants that too.
            self.connection.execute(f"PRAGMA synchronous={synchronous}")
            # Copy the log into the database every ~40 MB instead of every ~4 MB: each
            # checkpoint syncs both files, and a page rewritten meanwhile is copied once.
            # Commits still append to the log, so this changes no durability.
            self.connection.execute("PRAGMA wal_autocheckpoint=10000")
            self.connection.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.Error as exc:
            raise _explain(self.path, exc, busy_timeout) from exc
        self.waited = 0.0
        """Seconds this process spent waiting for other writers of the file (the queue)."""
        self.held = 0.0
        """Seconds this process held the file's write lock (its writes' serialized part)."""
        self.held_cpu = 0.0
        """CPU seconds the writing thread spent holding the write lock (what no other writer
        can overlap: the serialized share of a worker is this over its CPU seconds)."""
        self.transactions = 0
        """Write transactions committed or rolled back by this connection."""
        self._queue: int | None = None
        if _HAVE_FCNTL:
            with contextlib.suppress(OSError):  # a read-only folder: the busy handler only
                queue = self.path.with_name(self.path.name + ".writer")
                self._queue = os.open(queue, os.O_CREAT | os.O_RDWR, 0o644)

    @classmethod
    def shared(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        synchronous: str = "NORMAL",
    ) -> Database:
        """The process's one `Database` for `path`, so a sink and a store share a connection."""
        key = (str(Path(path).resolve()), busy_timeout, synchronous)
        with cls._shared_lock:
            found = cls._shared.get(key)
            if found is None:
                found = cls._shared[key] = cls(
                    path, busy_timeout=busy_timeout, synchronous=synchronous
                )
            return found

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error."""
        with self.lock, self._queued():
            conn = self.connection
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _explain(self.path, exc, self.busy_timeout) from exc
            # Timed from the lock taken to the lock given back: what other writers wait for.
            # This thread's CPU only: a chunk worker's reads run on other threads meanwhile.
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.rollback()
                    raise _explain(self.path, exc, self.busy_timeout) from exc
            finally:
                self.held += time.perf_counter() - wall
                self.held_cpu += time.thread_time() - cpu
                self.transactions += 1

    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """Hold the writers' queue lock (when there is one) for one transaction."""
        fd = self._queue
        if fd is None or self.connection.in_transaction:
            yield
            return
        held = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            started = time.monotonic()
            deadline = started + self.busy_timeout
            pause = 50e-6
            while not held:
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # BEGIN IMMEDIATE then waits its own busy timeout, says so
            self.waited += time.monotonic() - started
        try:
            yield
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads outside a write transaction (WAL readers never block)."""
        with self.lock:
            try:
                yield self.connection
            except sqlite3.DatabaseError as exc:
                raise _explain(self.path, exc, self.busy_timeout) from exc

    def ensure(self, *statements: str) -> None:
        """Run schema statements (CREATE ... IF NOT EXISTS) in one transaction."""
        try:
            with self.transaction() as conn:
                for statement in statements:
                    conn.execute(statement)
        except sqlite3.Error as exc:
            raise _explain(self.path, exc, self.busy_timeout) from exc

    def reader(self) -> sqlite3.Connection:
        """A new read-only connection, for long reads that must not hold the shared one."""
        try:
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.busy_timeout
            )
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.Error as exc:
            raise _explain(self.path, exc, self.busy_timeout) from exc
        return conn

    def close(self) -> None:
        """Close the connection (and forget it as the shared one)."""
        with self._shared_lock:
            for key, value in list(self._shared.items()):
                if value is self:
                    del self._shared[key]
        with self.lock:
            self.connection.close()
            if self._queue is not None:
                os.close(self._queue)
                self._queue = None
