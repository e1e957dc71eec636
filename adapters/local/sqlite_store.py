"""The idempotency store on SQLite: leases, fencing tokens and TTL in one local file."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import sqlite3
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from onceflow.adapters.local.database import Database, StateError
from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import Clock
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneClaim,
    LaneCommit,
    LaneRecord,
    LaneRequest,
    Outcome,
    OutcomeStatus,
)
from onceflow.watermarks import (
    LANE_TTL_SECONDS,
    commit_record,
    decode_state,
    encode_state,
    fence_holds,
    release_record,
    take,
)

try:
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False

__all__ = ["RowTable", "SqliteIdempotencyStore", "SqliteWrites"]

KEYS_TABLE = "onceflow_keys"
# SQLite's default limit on bound parameters is 32766; stay far below it per statement.
CHUNK = 900
# Completions sharing a token and an outcome go in one statement from this many on.
_GROUPED = 8

_IN_PROGRESS = "in_progress"
_COMPLETED = "completed"
# A released lease keeps its row (for the key's delivery count) with no token and a lease
# that ended long ago: nothing fences with it, and the next claim takes the key at once.
_RELEASED_TOKEN = ""
_LONG_AGO = float("-inf")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    token TEXT NOT NULL,
    owner TEXT,
    lease_expires_at REAL NOT NULL,
    expires_at REAL,
    outcome TEXT,
    outputs INTEGER,
    fingerprint TEXT,
    detail TEXT,
    updated_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID
"""
LANES_TABLE = "onceflow_lanes"
_LANES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {LANES_TABLE} (
    lane TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    lease_expires_at REAL NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT
) WITHOUT ROWID
"""
# Files made before lanes knew their lease's owner lack the column: their leases run out.
_LANE_OWNER_COLUMN = f"ALTER TABLE {LANES_TABLE} ADD COLUMN owner TEXT"
# Files made before delivery counting lack the column; their keys count from 1.
_DELIVERIES_COLUMN = f"ALTER TABLE {KEYS_TABLE} ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 1"


class RowTable(Protocol):
    """A table of the store's database file that writes rows inside the store's transaction."""

    def write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write `rows` through `conn`, whose transaction the store holds."""
        ...


class SqliteWrites(Mapping[str, Sequence[tuple[Any, ...]]]):
    """Rows for one table of the store's file, filed by event key: a SQLite transaction.

    What `SqliteIdempotencyStore.complete_with` commits. Each row carries its event key in
    column `key_column`; the grouping by key is built only if someone reads it, since the
    common case (every fence held) writes all the rows in one call of `table.write_rows`.
    """

    def __init__(
        self, table: RowTable, rows: Sequence[tuple[Any, ...]], *, key_column: int
    ) -> None:
        self.table = table
        self.rows = rows
        self.key_column = key_column
        self._by_key: dict[str, list[tuple[Any, ...]]] | None = None

    def _index(self) -> dict[str, list[tuple[Any, ...]]]:
        if self._by_key is None:
            self._by_key = {}
            column = self.key_column
            for row in self.rows:
                self._by_key.setdefault(row[column], []).append(row)
        return self._by_key

    def __getitem__(self, key: str) -> Sequence[tuple[Any, ...]]:
        return self._index()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def without(self, keys: Collection[str]) -> Sequence[tuple[Any, ...]]:
        """The rows not filed under `keys`, in order."""
        if not keys:
            return self.rows
        column = self.key_column
        return [row for row in self.rows if row[column] not in keys]


class SqliteIdempotencyStore:
    """Keys, leases and outcomes in a SQLite file; safe for many processes on one machine.

    Claims and completions each run in one `BEGIN IMMEDIATE` transaction over the whole
    batch, so the check and the write cannot interleave with another process. State is
    decided by the stored timestamps in this store's `clock`; completed rows older than
    `ttl_seconds` count as absent (`purge_expired` deletes them).

    Each key's row counts its deliveries (`Claim.deliveries`): a release ends the lease but
    keeps the row and its count (less this delivery with `refund=True`), a takeover or a
    claim after a release counts one more, and a completed record that expired starts
    again at 1.

    A lease held by a process that has died is taken over at once rather than after the
    lease runs out: each store holds an exclusive `flock` on its own owner file while it
    lives, and a lease whose owner file can be locked by someone else belongs to a dead
    process. (On systems without `fcntl` leases simply run out.)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_seconds: float = 7 * 86_400.0,
        clock: Clock | None = None,
        busy_timeout: float = 10.0,
        database: Database | None = None,
        detect_dead_owners: bool = True,
        lane_ttl_seconds: float = LANE_TTL_SECONDS,
    ) -> None:
        self.database = database or Database.shared(path, busy_timeout=busy_timeout)
        self.path = self.database.path
        self.ttl_seconds = ttl_seconds
        self.lane_ttl_seconds = lane_ttl_seconds
        """How long a lane record outlives its last write (`watermarks.LANE_TTL_SECONDS`)."""
        self.clock: Clock = clock or SystemClock()
        self.database.ensure(_SCHEMA)
        _add_deliveries_column(self.database)
        self.database.ensure(_LANES_SCHEMA)
        _add_column(self.database, LANES_TABLE, "owner", _LANE_OWNER_COLUMN)
        self._json_each = _has_json_each(self.database)
        self._token_prefix = secrets.token_hex(6)
        self._tokens = itertools.count(1)
        self._owners = _Owners(self.path, enabled=detect_dead_owners)

    def __repr__(self) -> str:
        return f"SqliteIdempotencyStore({str(self.path)!r})"

    def close(self) -> None:
        """Stop being a live lease owner (leases still held become free to take over)."""
        self._owners.close()

    def _token(self) -> str:
        return f"{self._token_prefix}-{next(self._tokens)}"

    # -- the IdempotencyStore protocol -------------------------------------------------------

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Lease every free key; see `onceflow.IdempotencyStore.claim`."""
        if not keys:
            return []
        with self.database.transaction() as conn:
            try:
                return self._claim(conn, keys, lease_seconds)
            except UnicodeEncodeError:
                pass  # a key SQLite cannot store as text: nothing was written for it
            stored = [_storable_key(key) for key in keys]
            claims = self._claim(conn, stored, lease_seconds)
        return [
            claim if claim.key == key else claim._replace(key=key)
            for claim, key in zip(claims, keys, strict=True)
        ]

    def _claim(
        self, conn: sqlite3.Connection, keys: Sequence[str], lease_seconds: float
    ) -> list[Claim]:
        now = self.clock.now()
        expires = now + lease_seconds
        owner = self._owners.me if self._owners.enabled else None
        # One token for the keys leased together: the fence compares key and token, so
        # sharing it loses nothing, and then every row of the batch differs only in its key.
        token = self._token()
        # Most keys of a batch are new: insert them all, and only when some already had a
        # row read those rows back to decide (the ones inserted carry our fresh token).
        array = _json_array(keys) if self._json_each else None
        if array is not None:
            # The keys as one JSON array in one statement: several times cheaper than
            # executemany, which binds six parameters per row.
            inserted = conn.execute(
                f"INSERT OR IGNORE INTO {KEYS_TABLE} "
                "(key, status, token, owner, lease_expires_at, updated_at) "
                f"SELECT value, '{_IN_PROGRESS}', ?, ?, ?, ? FROM json_each(?)",
                (token, owner, expires, now, array),
            ).rowcount
        else:
            inserted = conn.executemany(
                f"INSERT OR IGNORE INTO {KEYS_TABLE} "
                "(key, status, token, owner, lease_expires_at, updated_at) VALUES (?,?,?,?,?,?)",
                [(key, _IN_PROGRESS, token, owner, expires, now) for key in keys],
            ).rowcount
        if inserted == len(keys):
            new = ClaimStatus.NEW
            # Positional: building a thousand named tuples by keyword costs twice as much.
            return [Claim(key, new, token, None, expires) for key in keys]
        rows = _select(conn, keys)
        claims: list[Claim] = []
        takeovers: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for key in keys:
            (status, row_token, row_owner, lease_end, ttl_end, outcome, outputs, fp, detail,
             counted) = rows[key]  # fmt: skip
            if key in seen:
                # Asked twice in one call: the first ask holds the lease, this one waits.
                claims.append(Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=expires))
                continue
            seen.add(key)
            if row_token == token:
                pass  # inserted just now
            elif status == _COMPLETED and (ttl_end is None or ttl_end > now):
                claims.append(
                    Claim(
                        key, ClaimStatus.COMPLETED, outcome=_outcome(outcome, outputs, fp, detail)
                    )
                )
                continue
            elif status == _IN_PROGRESS and lease_end > now and not self._owners.is_dead(row_owner):
                claims.append(Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=lease_end))
                continue
            else:
                # Released, the lease ran out, its owner died (one more delivery each), or
                # the completed record expired (counting starts again).
                deliveries = 1 if status == _COMPLETED else counted + 1
                takeovers.append((key, _IN_PROGRESS, token, owner, expires, now, deliveries))
                claims.append(
                    Claim(
                        key,
                        ClaimStatus.NEW,
                        token=token,
                        lease_expires_at=expires,
                        deliveries=deliveries,
                    )
                )
                continue
            claims.append(Claim(key, ClaimStatus.NEW, token=token, lease_expires_at=expires))
        if takeovers:
            conn.executemany(
                f"INSERT OR REPLACE INTO {KEYS_TABLE} "
                "(key, status, token, owner, lease_expires_at, updated_at, deliveries) "
                "VALUES (?,?,?,?,?,?,?)",
                takeovers,
            )
        return claims

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds."""
        if not completions:
            return []
        with self.database.transaction() as conn:
            return self._complete_any(conn, completions)

    # -- the TransactionalStore protocol -----------------------------------------------------

    async def complete_with(
        self, completions: Sequence[Completion], writes: Mapping[str, Sequence[tuple[Any, ...]]]
    ) -> list[bool]:
        """Complete keys and write the rows filed under them, in one transaction.

        See `onceflow.TransactionalStore.complete_with`. `writes` are `SqliteWrites` (what
        `SqliteSink.write_and_complete` passes): rows for a table of this store's file. A
        key whose fence no longer holds gets none of its rows written.
        """
        if not isinstance(writes, SqliteWrites):
            raise ConfigurationError(
                "a SQLite store commits SqliteWrites (what SqliteSink.write_and_complete "
                f"passes), not {type(writes).__name__}"
            )
        if not completions and not writes.rows:
            return []
        with self.database.transaction() as conn:
            accepted = self._complete_any(conn, completions)
            refused = (
                ()
                if all(accepted)
                else {c.key for c, ok in zip(completions, accepted, strict=True) if not ok}
            )
            rows = writes.without(refused)
            if rows:
                writes.table.write_rows(conn, rows)
        return accepted

    def _complete_any(
        self, conn: sqlite3.Connection, completions: Sequence[Completion]
    ) -> list[bool]:
        """`_complete`, for keys SQLite cannot store as text too (as `claim` stored them)."""
        try:
            return self._complete(conn, completions)
        except UnicodeEncodeError:
            pass  # the statements that ran are repeated with the same values: no harm
        return self._complete(conn, [_stored_completion(c) for c in completions])

    def _complete(self, conn: sqlite3.Connection, completions: Sequence[Completion]) -> list[bool]:
        now = self.clock.now()
        expires = now + self.ttl_seconds
        # The fence is in the WHERE clause: a row whose token changed is not touched. A
        # repeated completion by the same holder matches again and is accepted.
        changed = 0
        singles: list[Completion] = []
        if self._json_each:
            # A batch's keys share their claim's token and mostly one outcome: each such
            # group is one statement over the keys as a JSON array, instead of a row of
            # nine parameters per key.
            groups: dict[tuple[str, Outcome], list[str]] = {}
            for c in completions:
                if c.claim.token is not None:
                    groups.setdefault((c.claim.token, c.outcome), []).append(c.claim.key)
            for (token, outcome), keys in groups.items():
                array = _json_array(keys) if len(keys) >= _GROUPED else None
                if array is None:
                    singles.extend(
                        Completion(Claim(k, ClaimStatus.NEW, token), outcome) for k in keys
                    )
                    continue
                changed += conn.execute(
                    f"UPDATE {KEYS_TABLE} SET status='{_COMPLETED}', expires_at=?, outcome=?, "
                    "outputs=?, fingerprint=?, detail=?, updated_at=? "
                    "WHERE key IN (SELECT value FROM json_each(?)) AND token=?",
                    (
                        expires,
                        outcome.status.value,
                        outcome.outputs,
                        outcome.fingerprint,
                        _detail(outcome.detail),
                        now,
                        array,
                        token,
                    ),
                ).rowcount
        else:
            singles = [c for c in completions if c.claim.token is not None]
        if singles:
            changed += conn.executemany(
                f"UPDATE {KEYS_TABLE} SET status='{_COMPLETED}', expires_at=?, outcome=?, "
                "outputs=?, fingerprint=?, detail=?, updated_at=? WHERE key=? AND token=?",
                [
                    (
                        expires,
                        c.outcome.status.value,
                        c.outcome.outputs,
                        c.outcome.fingerprint,
                        _detail(c.outcome.detail),
                        now,
                        c.claim.key,
                        c.claim.token,
                    )
                    for c in singles
                ],
            ).rowcount
        if changed == len(completions):
            return [True] * len(completions)
        # Some fence did not hold (or a key came twice): tokens do not change on
        # completion, so reading them now tells which rows the update matched.
        tokens = _tokens(conn, [c.key for c in completions])
        return [
            c.claim.token is not None and tokens.get(c.key) == c.claim.token for c in completions
        ]

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """End leases still held by these claims, keeping each key's delivery count.

        See `onceflow.IdempotencyStore.release`; with `refund`, this delivery is taken off
        the count again. A claim whose fence no longer holds changes nothing.
        """
        by_token: dict[str, list[str]] = {}
        for c in claims:
            if c.token is not None and c.token != _RELEASED_TOKEN:
                # Mapped up front: a release is rare (failures), so checking costs little.
                by_token.setdefault(c.token, []).append(_storable_key(c.key))
        if not by_token:
            return
        now = self.clock.now()
        taken = 1 if refund else 0
        update = (
            f"UPDATE {KEYS_TABLE} SET token='{_RELEASED_TOKEN}', owner=NULL, "
            "lease_expires_at=?, updated_at=?, deliveries=deliveries-? "
            f"WHERE status='{_IN_PROGRESS}' AND token=? AND key"
        )
        with self.database.transaction() as conn:
            for token, keys in by_token.items():
                # A batch's claims share a token: one statement over the keys as a JSON array.
                array = _json_array(keys) if self._json_each and len(keys) >= _GROUPED else None
                if array is not None:
                    conn.execute(
                        update + " IN (SELECT value FROM json_each(?))",
                        (_LONG_AGO, now, taken, token, array),
                    )
                else:
                    conn.executemany(
                        update + "=?", [(_LONG_AGO, now, taken, token, key) for key in keys]
                    )

    # -- the LaneStore protocol: one row per lane ------------------------------------------

    def _lane(self, conn: sqlite3.Connection, lane: str, now: float) -> LaneRecord | None:
        row = conn.execute(
            f"SELECT state, token, lease_expires_at, version, updated_at, owner "
            f"FROM {LANES_TABLE} WHERE lane=?",
            (lane,),
        ).fetchone()
        if row is None or row[4] + self.lane_ttl_seconds <= now:
            return None  # absent, or outlived the lanes' TTL
        lease_end = row[2]
        if lease_end > now and self._owners.is_dead(row[5]):
            # Its holder's process is gone: the lease is over now, as for a key
            # (`take` charges the range it held one delivery, as for any crash).
            lease_end = _LONG_AGO
        return LaneRecord(lane, decode_state(row[0]), row[1], lease_end, row[3], row[4])

    def _put_lane(self, conn: sqlite3.Connection, record: LaneRecord) -> None:
        conn.execute(
            f"INSERT OR REPLACE INTO {LANES_TABLE} "
            "(lane, state, token, lease_expires_at, version, updated_at, owner) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                record.lane,
                encode_state(record.state),
                record.token,
                record.lease_expires_at,
                record.version,
                record.updated_at,
                self._owners.me if self._owners.enabled else None,
            ),
        )

    async def claim_lanes(
        self, requests: Sequence[LaneRequest], lease_seconds: float
    ) -> list[LaneClaim]:
        """Lease each lane, in one transaction; see `onceflow.LaneStore.claim_lanes`."""
        claims = []
        with self.database.transaction() as conn:
            now = self.clock.now()
            for request in requests:
                claim, written = take(
                    self._lane(conn, request.lane, now),
                    request,
                    now=now,
                    lease_seconds=lease_seconds,
                    token=self._token(),
                )
                if written is not None:
                    self._put_lane(conn, written)
                claims.append(claim)
        return claims

    async def commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        """Write each lane's state where its fence holds, in one transaction."""
        with self.database.transaction() as conn:
            return self._commit_lanes(conn, commits)

    def _commit_lanes(self, conn: sqlite3.Connection, commits: Sequence[LaneCommit]) -> list[bool]:
        now = self.clock.now()
        accepted = []
        for commit in commits:
            stored = self._lane(conn, commit.claim.lane, now)
            ok = fence_holds(stored, commit)
            if ok and stored is not None:
                self._put_lane(conn, commit_record(stored, commit, now=now))
            accepted.append(ok)
        return accepted

    async def complete_with_lanes(
        self,
        completions: Sequence[Completion],
        writes: Mapping[str, Sequence[tuple[Any, ...]]],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """Complete keys, commit lanes and write the rows of what held, in one transaction."""
        if not isinstance(writes, SqliteWrites):
            raise ConfigurationError(
                f"a SQLite store commits SqliteWrites, not {type(writes).__name__}"
            )
        with self.database.transaction() as conn:
            accepted = self._complete_any(conn, completions) if completions else []
            lane_ok = self._commit_lanes(conn, lanes)
            refused = {c.key for c, ok in zip(completions, accepted, strict=True) if not ok}
            for commit, ok in zip(lanes, lane_ok, strict=True):
                if not ok:
                    refused |= commit.keys
            rows = writes.without(refused)
            if rows:
                writes.table.write_rows(conn, rows)
        return accepted, lane_ok

    async def release_lanes(self, claims: Sequence[LaneClaim]) -> None:
        """End lane leases still held by these claims, in one transaction."""
        if not claims:
            return
        with self.database.transaction() as conn:
            now = self.clock.now()
            for claim in claims:
                written = release_record(self._lane(conn, claim.lane, now), claim, now=now)
                if written is not None:
                    self._put_lane(conn, written)

    # -- inspection and upkeep ---------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many live keys are in progress, succeeded and dead-lettered (expired excluded)."""
        now = self.clock.now()
        with self.database.reading() as conn:
            # A released lease's row only keeps its key's delivery count: not in progress.
            rows = conn.execute(
                f"SELECT status, outcome, count(*) FROM {KEYS_TABLE} "
                "WHERE (status=? AND token != ?) OR (status != ? AND "
                "(expires_at IS NULL OR expires_at > ?)) GROUP BY status, outcome",
                (_IN_PROGRESS, _RELEASED_TOKEN, _IN_PROGRESS, now),
            ).fetchall()
        counts = {"in_progress": 0, "succeeded": 0, "dead_lettered": 0}
        for status, outcome, n in rows:
            counts[_IN_PROGRESS if status == _IN_PROGRESS else str(outcome)] += n
        return counts

    def oldest_lease(self) -> tuple[str, float, float] | None:
        """The in-progress key leased longest ago: (key, leased at, lease expiry), or None."""
        with self.database.reading() as conn:
            row = conn.execute(
                f"SELECT key, updated_at, lease_expires_at FROM {KEYS_TABLE} "
                "WHERE status=? AND token != ? ORDER BY updated_at LIMIT 1",
                (_IN_PROGRESS, _RELEASED_TOKEN),
            ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]), float(row[2]))

    def status(self, key: str) -> ClaimStatus | None:
        """The key's stored status as of now, or None when absent or expired."""
        with self.database.reading() as conn:
            row = conn.execute(
                f"SELECT status, expires_at, token FROM {KEYS_TABLE} WHERE key=?",
                (_storable_key(key),),
            ).fetchone()
        if row is None or (row[0] == _IN_PROGRESS and row[2] == _RELEASED_TOKEN):
            return None
        if row[0] == _COMPLETED:
            return ClaimStatus.COMPLETED if row[1] is None or row[1] > self.clock.now() else None
        return ClaimStatus.IN_PROGRESS

    def reopen_dead_lettered(self, keys: Sequence[str]) -> dict[str, bool]:
        """Free dead-lettered keys so a replay can process them; per key, whether it may run.

        A key that is dead-lettered or unknown may run (its record is deleted); a key that
        succeeded since, or that someone holds a live lease on, may not: replaying it would
        apply its effect twice or race the holder.
        """
        now = self.clock.now()
        verdict: dict[str, bool] = {}
        with self.database.transaction() as conn:
            rows = _select(conn, [_storable_key(key) for key in keys])
            reopen = []
            for key in keys:
                row = rows.get(_storable_key(key))
                if row is None:
                    verdict[key] = True
                    continue
                status, _token, owner, lease_end, ttl_end, outcome = row[:6]
                if status == _COMPLETED:
                    expired = ttl_end is not None and ttl_end <= now
                    verdict[key] = outcome == OutcomeStatus.DEAD_LETTERED.value or expired
                else:
                    verdict[key] = lease_end <= now or self._owners.is_dead(owner)
                if verdict[key]:
                    reopen.append((_storable_key(key),))
            conn.executemany(f"DELETE FROM {KEYS_TABLE} WHERE key=?", reopen)
        return verdict

    def purge_expired(self) -> int:
        """Delete completed records older than the TTL, and delivery counts of leases
        released longer than the TTL ago (keys never delivered again); how many went."""
        now = self.clock.now()
        with self.database.transaction() as conn:
            cursor = conn.execute(
                f"DELETE FROM {KEYS_TABLE} WHERE (status=? AND expires_at <= ?) "
                "OR (status=? AND token=? AND updated_at <= ?)",
                (_COMPLETED, now, _IN_PROGRESS, _RELEASED_TOKEN, now - self.ttl_seconds),
            )
            return cursor.rowcount


def _add_deliveries_column(database: Database) -> None:
    """Give a state file made before delivery counting its `deliveries` column."""
    if _has_deliveries(database):
        return
    try:
        database.ensure(_DELIVERIES_COLUMN)
    except StateError:
        if not _has_deliveries(database):  # else another process added it just now
            raise


def _add_column(database: Database, table: str, column: str, statement: str) -> None:
    """Give a state file made before `column` existed that column of `table`."""
    if _has_column(database, table, column):
        return
    try:
        database.ensure(statement)
    except StateError:
        if not _has_column(database, table, column):  # else another process added it
            raise


def _has_column(database: Database, table: str, column: str) -> bool:
    with database.reading() as conn:
        return column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _has_deliveries(database: Database) -> bool:
    with database.reading() as conn:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({KEYS_TABLE})")}
    return "deliveries" in columns


def _has_json_each(database: Database) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, and in most before)."""
    try:
        with database.reading() as conn:
            conn.execute("SELECT count(*) FROM json_each('[1]')").fetchone()
    except sqlite3.Error:
        return False
    return True


def _json_array(keys: Sequence[str]) -> str | None:
    """The keys as a JSON array for `json_each`, or None when it would not give them back."""
    # ensure_ascii=False: text goes in as it is, and a key SQLite cannot store (a lone
    # surrogate) fails when the statement is bound, as it does one key at a time.
    text = json.dumps(keys if isinstance(keys, list | tuple) else list(keys), ensure_ascii=False)
    # SQLite's JSON functions cut a string at an escaped NUL; such keys go one by one.
    return None if "\\u0000" in text else text


_UNSTORABLE = "\x00utf8-surrogates:"
"""Prefix of a stored key that held a lone surrogate (then written as its bytes in hex)."""


def _storable_key(key: str) -> str:
    """`key` as the store keeps it: itself, or, if it holds a lone surrogate (which SQLite
    cannot store as text), a prefix and its bytes in hex: one stored key per key."""
    if key.isascii():
        return key
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return _UNSTORABLE + key.encode("utf-8", "surrogatepass").hex()
    return key


def _stored_completion(completion: Completion) -> Completion:
    claim = completion.claim
    stored = _storable_key(claim.key)
    if stored == claim.key:
        return completion
    return completion._replace(claim=claim._replace(key=stored))


def _detail(text: str | None) -> str | None:
    """An outcome's detail as SQLite can store it: a lone surrogate becomes its escape."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A dead letter's reason quoting broken text: the reason is for people to read.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _select(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    rows: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT key, status, token, owner, lease_expires_at, expires_at, outcome, outputs, "
            f"fingerprint, detail, deliveries FROM {KEYS_TABLE} WHERE key IN ({marks})",
            chunk,
        ):
            rows[row[0]] = row[1:]
    return rows


def _tokens(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        found.update(
            conn.execute(f"SELECT key, token FROM {KEYS_TABLE} WHERE key IN ({marks})", chunk)
        )
    return found


def _outcome(
    status: str | None, outputs: int | None, fingerprint: str | None, detail: str | None
) -> Outcome:
    try:
        kind = OutcomeStatus(status)
    except ValueError:
        raise StateError(f"unknown outcome {status!r} in the state database") from None
    return Outcome(kind, outputs or 0, fingerprint, detail)


class _Owners:
    """Which lease owners are alive: each live store holds an exclusive flock on its file."""

    def __init__(self, database: Path, *, enabled: bool) -> None:
        self.me = f"{os.getpid()}-{secrets.token_hex(6)}"
        # Without fcntl (Windows) nobody can prove a process dead: leases just run out.
        self.enabled = enabled and _HAVE_FCNTL
        self.folder = database.with_name(database.name + ".owners")
        self._dead: set[str] = set()
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            mine = self.folder / self.me
            fd = os.open(mine, os.O_CREAT | os.O_WRONLY, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock lives as long as this object (or the process): then the file goes.
            self._finalizer = weakref.finalize(self, _let_go, fd, mine)

    def close(self) -> None:
        """Give up the owner lock: this store's remaining leases count as abandoned."""
        if self.enabled:
            self._finalizer()

    def is_dead(self, owner: str | None) -> bool:
        """Whether the lease owner's process is gone (its lock file is free or missing)."""
        if not self.enabled or owner is None or owner == self.me:
            return False
        if owner in self._dead:
            return True
        path = self.folder / owner
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            # Its file was cleaned up after an earlier takeover: the owner is long gone.
            self._dead.add(owner)
            return True
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._dead.add(owner)
        return True


def _let_go(fd: int, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)
