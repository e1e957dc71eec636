"""What only the SQLite state can get wrong: locks, corruption, dead lease owners, processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from onceflow.adapters.local import Database, SqliteIdempotencyStore, SqliteSink, StateError
from onceflow.adapters.local.sqlite_store import SqliteWrites
from onceflow.clock import ManualClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import TransactionalStore
from onceflow.records import ClaimStatus, Completion, Outcome, OutcomeStatus, Output


@pytest.mark.anyio
async def test_locked_database_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteIdempotencyStore(db, busy_timeout=0.2, database=Database(db, busy_timeout=0.2))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StateError, match=r"state\.db stayed locked by another process"):
            await store.claim(["k"], 30)
        assert time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StateError, match=r"state\.db is corrupt or not a SQLite file"):
        SqliteIdempotencyStore(db, database=Database(db))


_HOLDER = textwrap.dedent(
    """
    import sys, anyio
    from onceflow.adapters.local import SqliteIdempotencyStore
    store = SqliteIdempotencyStore(sys.argv[1])
    anyio.run(store.claim, ["held"], 3600.0)
    print("claimed", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.anyio
async def test_lease_of_a_killed_process_is_taken_over_at_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        store = SqliteIdempotencyStore(db, database=Database(db))
        [alive] = await store.claim(["held"], 30)
        assert alive.status is ClaimStatus.IN_PROGRESS  # its owner still runs
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        [taken] = await store.claim(["held"], 30)
        assert taken.status is ClaimStatus.NEW  # an hour-long lease, but its owner is dead
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout:
            holder.stdout.close()
        if holder.stdin:
            holder.stdin.close()


def _claim_all(db: str, keys: list[str]) -> list[str]:
    async def run() -> list[str]:
        store = SqliteIdempotencyStore(db, database=Database(db))
        claims = await store.claim(keys, 60)
        won = [c for c in claims if c.status is ClaimStatus.NEW]
        done = [Completion(c, Outcome(OutcomeStatus.SUCCEEDED, 1)) for c in won]
        assert all(await store.complete(done))
        return [c.key for c in won]

    return anyio.run(run)


def test_processes_racing_on_one_file_never_share_a_key(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    SqliteIdempotencyStore(db, database=Database(db)).close()
    keys = [f"k{i}" for i in range(300)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        won = pool.starmap(_claim_all, [(db, keys[i:] + keys[:i]) for i in (0, 75, 150, 225)])
    flat = [k for w in won for k in w]
    assert sorted(flat) == sorted(keys)


@pytest.mark.anyio
async def test_sink_on_another_file_does_not_commit_with_the_store(tmp_path: Path) -> None:
    store = SqliteIdempotencyStore(tmp_path / "a.db")
    assert SqliteSink(tmp_path / "a.db").commits_with(store)
    assert not SqliteSink(tmp_path / "b.db").commits_with(store)
    with pytest.raises(Exception, match="table name"):
        SqliteSink(tmp_path / "a.db", table="x; drop")


@pytest.mark.anyio
async def test_counts_oldest_lease_and_purge(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SqliteIdempotencyStore(tmp_path / "s.db", clock=clock, ttl_seconds=100)
    claims = await store.claim(["a", "b", "c"], 30)
    await store.complete([Completion(claims[0], Outcome(OutcomeStatus.SUCCEEDED, 1))])
    await store.complete([Completion(claims[1], Outcome(OutcomeStatus.DEAD_LETTERED))])
    assert store.counts() == {"in_progress": 1, "succeeded": 1, "dead_lettered": 1}
    oldest = store.oldest_lease()
    assert oldest is not None and oldest[0] == "c"
    clock.advance(101)
    assert store.counts()["succeeded"] == 0  # expired: counts as absent
    assert store.purge_expired() == 2
    assert store.status("a") is None and store.status("c") is ClaimStatus.IN_PROGRESS


@pytest.mark.anyio
@pytest.mark.parametrize("json_each", [True, False])
async def test_batch_claims_and_completions_keep_their_fences(
    tmp_path: Path, json_each: bool
) -> None:
    # Keys leased together share a token and complete in one statement per outcome; the
    # fence still holds key by key, and a key asked twice in one call is leased once.
    clock = ManualClock()
    store = SqliteIdempotencyStore(tmp_path / "s.db", clock=clock)
    other = SqliteIdempotencyStore(
        tmp_path / "s.db", clock=clock, database=Database(tmp_path / "s.db")
    )
    store._json_each = other._json_each = json_each
    keys = [f"k'\"{n}é" for n in range(20)]
    claims = await store.claim([*keys, keys[0]], 30)
    assert [c.status for c in claims] == [ClaimStatus.NEW] * 20 + [ClaimStatus.IN_PROGRESS]
    clock.advance(31)
    stolen = await other.claim(keys[5:7], 30)  # the lease ran out: another worker takes two
    assert all(c.status is ClaimStatus.NEW for c in stolen)
    done = Outcome(OutcomeStatus.SUCCEEDED, 1)
    dead = Outcome(OutcomeStatus.DEAD_LETTERED, 0, detail="bad")
    completions = [Completion(c, dead if n == 3 else done) for n, c in enumerate(claims[:20])]
    accepted = await store.complete(completions)
    assert accepted == [n not in (5, 6) for n in range(20)]
    assert await other.complete([Completion(c, done) for c in stolen]) == [True, True]
    assert store.counts() == {"in_progress": 0, "succeeded": 19, "dead_lettered": 1}
    again = await store.claim(keys, 30)
    assert all(c.status is ClaimStatus.COMPLETED for c in again)
    assert again[3].outcome == dead and again[0].outcome == done
    # SQLite's JSON functions cut strings at NUL: such keys still come back whole.
    odd = ["nul\x00key", "nul\x00"] + [f"m{n}" for n in range(10)]
    odd_claims = await store.claim(odd, 30)
    assert all(c.status is ClaimStatus.NEW for c in odd_claims)
    assert await store.complete([Completion(c, done) for c in odd_claims]) == [True] * 12
    assert store.status("nul\x00key") is ClaimStatus.COMPLETED and store.status("nul") is None


@pytest.mark.anyio
async def test_many_outputs_keep_first_write_order_and_last_value(tmp_path: Path) -> None:
    # Outputs go in a hundred rows per statement, the rest one by one; a repeated id
    # inside one statement or across them overwrites the value and keeps its place.
    sink = SqliteSink(tmp_path / "s.db")

    def output(n: int, value: object) -> Output:
        return Output(f"k{n}#0", f"k{n}", str(n), 0, value)

    first = [output(n, {"n": n}) for n in range(250)]
    again = [output(n, {"n": n, "again": True}) for n in (5, 150, 249)]
    await sink.write([*first[:120], output(7, [1.5]), *first[120:], *again])
    assert [output_id for output_id, _, _ in sink.rows()] == [o.output_id for o in first]
    contents = sink.contents()
    assert contents["k7#0"] == [1.5] and contents["k8#0"] == {"n": 8}
    assert all(contents[f"k{n}#0"] == {"n": n, "again": True} for n in (5, 150, 249))


@pytest.mark.anyio
async def test_complete_with_writes_only_the_rows_of_keys_whose_fence_held(
    tmp_path: Path,
) -> None:
    # The one seam between the SQLite sinks and the store: a table's rows filed by event key.
    db = tmp_path / "state.db"
    store = SqliteIdempotencyStore(db, clock=ManualClock())
    outputs = SqliteSink(db, "outputs")
    assert isinstance(store, TransactionalStore)
    mine, lost = await store.claim(["a", "b"], 30)
    await store.release([lost])
    [taken] = await SqliteIdempotencyStore(db, database=Database(db)).claim(["b"], 30)
    assert taken.status is ClaimStatus.NEW
    done = Outcome(OutcomeStatus.SUCCEEDED, 2)
    rows = [
        (f"{key}#{n}", key, key, n, None, f'{{"n":{n}}}', 1.0) for key in ("a", "b") for n in (0, 1)
    ]
    writes = SqliteWrites(outputs, rows, key_column=1)
    assert dict(writes) == {"a": rows[:2], "b": rows[2:]}  # the Mapping view, by event key
    accepted = await store.complete_with([Completion(mine, done), Completion(lost, done)], writes)
    assert accepted == [True, False]
    assert outputs.contents() == {"a#0": {"n": 0}, "a#1": {"n": 1}}
    assert store.status("a") is ClaimStatus.COMPLETED
    assert await store.complete_with([], SqliteWrites(outputs, [], key_column=1)) == []
    with pytest.raises(ConfigurationError, match="commits SqliteWrites"):
        await store.complete_with([], {"a": rows[:1]})


@pytest.mark.anyio
async def test_a_state_file_from_before_delivery_counting_gains_the_column(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)
    old.execute(
        "CREATE TABLE onceflow_keys (key TEXT PRIMARY KEY, status TEXT NOT NULL, token TEXT NOT "
        "NULL, owner TEXT, lease_expires_at REAL NOT NULL, expires_at REAL, outcome TEXT, "
        "outputs INTEGER, fingerprint TEXT, detail TEXT, updated_at REAL NOT NULL) WITHOUT ROWID"
    )
    old.execute("INSERT INTO onceflow_keys VALUES ('k', 'in_progress', 't', NULL, 0, NULL, NULL, "
                "NULL, NULL, NULL, 0)")  # fmt: skip
    old.commit()
    old.close()
    store = SqliteIdempotencyStore(db, clock=ManualClock(100.0), database=Database(db))
    [claim] = await store.claim(["k"], 30)  # its lease ran out: a takeover
    assert claim.status is ClaimStatus.NEW and claim.deliveries == 2


@pytest.mark.anyio
async def test_a_batch_released_together_keeps_its_counts_in_one_statement(tmp_path: Path) -> None:
    clock = ManualClock(1_000.0)
    store = SqliteIdempotencyStore(tmp_path / "state.db", clock=clock)
    keys = [f"k{i}" for i in range(50)]
    first = await store.claim(keys, 30)
    await store.release(first[:40])
    await store.release(first[40:], refund=True)
    assert store.counts()["in_progress"] == 0 and store.oldest_lease() is None
    assert store.status("k0") is None  # released: nobody holds it
    again = await store.claim(keys, 30)
    assert [c.deliveries for c in again] == [2] * 40 + [1] * 10
    await store.release(first)  # stale: the fence no longer holds, nothing changes
    assert store.counts()["in_progress"] == 50
    await store.release(again)
    clock.advance(store.ttl_seconds + 1)
    assert store.purge_expired() == 50  # counts of keys never delivered again go in time
