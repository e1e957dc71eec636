"""Behaviour every idempotency store, sink and object store must have, as pytest classes.

A backend's test module subclasses a contract and defines the fixtures it names:

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self, clock): return MyStore(table, clock=clock, ttl_seconds=3600)
        @pytest.fixture
        def other_store(self, clock): return MyStore(table, clock=clock, ttl_seconds=3600)

Capability fixtures have defaults here that a backend overrides to state honestly what
it can do: `ttl_seconds`, `batch_size`, `concurrent_claimers`, and the guarantees in
`Capabilities` (`leases_at_claim`, `fences_completions`). Where a capability is off the
tests assert the weaker behaviour the backend promises instead, never skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from onceflow.clock import ManualClock
from onceflow.identity import output_id
from onceflow.interfaces import AtomicSink, IdempotencyStore, LaneStore, ObjectStore, Sink
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneCommit,
    LaneRequest,
    LaneState,
    Outcome,
    OutcomeStatus,
    Output,
)
from onceflow.watermarks import LANE_TTL_SECONDS

__all__ = [
    "AtomicSinkContract",
    "Capabilities",
    "LaneStoreContract",
    "ObjectStoreContract",
    "ReadSink",
    "SinkContract",
    "StoreContract",
]

ReadSink = Callable[[Sink], Awaitable[dict[str, Any]]]
"""Reads everything a sink holds now, as `{output_id: value}`."""

LEASE = 30.0


def unique(prefix: str = "k") -> str:
    """A key no other test or run has used: tests share one backend."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def succeeded(claim: Claim, outputs: int = 1, fingerprint: str | None = "fp") -> Completion:
    """A completion of `claim` as succeeded."""
    return Completion(claim, Outcome(OutcomeStatus.SUCCEEDED, outputs, fingerprint))


def output(key: str, index: int, value: Any, event_id: str | None = None) -> Output:
    """An output of the event with key `key` (and id `event_id`, default the key) at `index`."""
    return Output(output_id(key, index), key, key if event_id is None else event_id, index, value)


class Capabilities:
    """The guarantees a store gives, as fixtures; a backend overrides those it lacks."""

    @pytest.fixture
    def leases_at_claim(self) -> bool:
        """Whether `claim` leases a NEW key, so that another worker gets IN_PROGRESS.

        Off for a store that only reads at claim time (DynamoDB `UPSERT` and
        `OPTIMISTIC`): every live claim is NEW, racing workers may both process an
        event, and exactly-once rests on the commit.
        """
        return True

    @pytest.fixture
    def counts_crashed_deliveries(self) -> bool:
        """Whether a delivery whose worker died (no release) still counts as one.

        Off for a store that writes nothing at claim time and counts failed deliveries
        when they are released (DynamoDB `UPSERT` and `OPTIMISTIC`).
        """
        return True

    @pytest.fixture
    def fences_completions(self) -> bool:
        """Whether `complete` refuses a claim whose fence no longer holds.

        Off for a store that upserts its markers (DynamoDB `UPSERT`): every completion
        is accepted and the last one wins, which keyed overwrites make harmless.
        """
        return True


class StoreContract(Capabilities):
    """Claim, complete and release semantics, leases, fencing and TTL."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        """The clock the stores under test are built with."""
        return ManualClock()

    @pytest.fixture
    def ttl_seconds(self) -> float:
        """The TTL the stores under test are built with."""
        return 3600.0

    @pytest.fixture
    def batch_size(self) -> int:
        """A batch larger than the backend's per-request limit."""
        return 250

    @pytest.fixture
    def concurrent_claimers(self) -> int:
        """How many workers race for one key."""
        return 8

    @pytest.mark.anyio
    async def test_new_key_is_leased_with_a_token(
        self, store: IdempotencyStore, clock: ManualClock
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        assert claim.key == key
        assert claim.status is ClaimStatus.NEW
        assert claim.token
        assert claim.lease_expires_at == pytest.approx(clock.now() + LEASE, abs=1)

    @pytest.mark.anyio
    async def test_live_lease_is_in_progress_for_another_worker(
        self, store: IdempotencyStore, other_store: IdempotencyStore, leases_at_claim: bool
    ) -> None:
        key = unique()
        [mine] = await store.claim([key], LEASE)
        [theirs] = await other_store.claim([key], LEASE)
        assert mine.status is ClaimStatus.NEW
        if leases_at_claim:
            assert theirs.status is ClaimStatus.IN_PROGRESS
            assert theirs.token is None
        else:  # nothing held the key: the other worker's claim is NEW too, with its own token
            assert theirs.status is ClaimStatus.NEW
            assert theirs.token and theirs.token != mine.token

    @pytest.mark.anyio
    async def test_completed_key_returns_its_outcome(
        self, store: IdempotencyStore, other_store: IdempotencyStore
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        outcome = Outcome(OutcomeStatus.DEAD_LETTERED, 0, "abc123", "ValueError: no")
        assert await store.complete([Completion(claim, outcome)]) == [True]
        [again] = await other_store.claim([key], LEASE)
        assert again.status is ClaimStatus.COMPLETED
        assert again.outcome == outcome

    @pytest.mark.anyio
    async def test_repeated_completion_by_the_holder_is_accepted(
        self, store: IdempotencyStore
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        assert await store.complete([succeeded(claim)]) == [True]
        assert await store.complete([succeeded(claim)]) == [True]

    @pytest.mark.anyio
    async def test_completion_without_a_claim_is_refused(
        self, store: IdempotencyStore, fences_completions: bool
    ) -> None:
        ghost = Claim(unique(), ClaimStatus.NEW, token="not-a-real-token")
        assert await store.complete([succeeded(ghost)]) == [not fences_completions]
        [claim] = await store.claim([ghost.key], LEASE)
        if fences_completions:
            assert claim.status is ClaimStatus.NEW
        else:  # an upserted marker: the key is completed all the same
            assert claim.status is ClaimStatus.COMPLETED

    @pytest.mark.anyio
    async def test_expired_lease_is_taken_over_with_a_new_token(
        self, store: IdempotencyStore, other_store: IdempotencyStore, clock: ManualClock
    ) -> None:
        key = unique()
        [stale] = await store.claim([key], LEASE)
        clock.advance(LEASE + 1)
        [fresh] = await other_store.claim([key], LEASE)
        assert fresh.status is ClaimStatus.NEW
        assert fresh.token != stale.token

    @pytest.mark.anyio
    async def test_stale_worker_cannot_complete_after_takeover(
        self,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        clock: ManualClock,
        fences_completions: bool,
    ) -> None:
        key = unique()
        [stale] = await store.claim([key], LEASE)
        clock.advance(LEASE + 1)
        [fresh] = await other_store.claim([key], LEASE)
        # Without a fence the stale completion lands too, and the last one wins.
        assert await store.complete([succeeded(stale, outputs=7)]) == [not fences_completions]
        assert await other_store.complete([succeeded(fresh, outputs=2)]) == [True]
        [seen] = await store.claim([key], LEASE)
        assert seen.status is ClaimStatus.COMPLETED
        assert seen.outcome is not None and seen.outcome.outputs == 2

    @pytest.mark.anyio
    async def test_expired_but_untaken_lease_still_completes(
        self, store: IdempotencyStore, clock: ManualClock
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        clock.advance(LEASE + 1)
        assert await store.complete([succeeded(claim)]) == [True]

    @pytest.mark.anyio
    async def test_release_frees_the_key_at_once(
        self, store: IdempotencyStore, other_store: IdempotencyStore, fences_completions: bool
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        await store.release([claim])
        [again] = await other_store.claim([key], LEASE)
        assert again.status is ClaimStatus.NEW
        assert await store.complete([succeeded(claim)]) == [not fences_completions]

    @pytest.mark.anyio
    async def test_stale_release_leaves_the_new_lease(
        self,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        clock: ManualClock,
        leases_at_claim: bool,
    ) -> None:
        key = unique()
        [stale] = await store.claim([key], LEASE)
        clock.advance(LEASE + 1)
        [fresh] = await other_store.claim([key], LEASE)
        await store.release([stale])
        [third] = await store.claim([key], LEASE)
        # Without leases there is no lease to leave: the key stays free for anyone.
        assert third.status is (ClaimStatus.IN_PROGRESS if leases_at_claim else ClaimStatus.NEW)
        assert await other_store.complete([succeeded(fresh)]) == [True]

    @pytest.mark.anyio
    async def test_claims_count_deliveries(
        self,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        clock: ManualClock,
        counts_crashed_deliveries: bool,
    ) -> None:
        key = unique()
        [first] = await store.claim([key], LEASE)
        assert first.deliveries == 1
        await store.release([first])
        [second] = await other_store.claim([key], LEASE)
        assert second.deliveries == 2
        await other_store.release([second], refund=True)  # handed back unprocessed
        [third] = await store.claim([key], LEASE)
        assert third.deliveries == 2
        clock.advance(LEASE + 1)  # its holder died without a word
        [fourth] = await other_store.claim([key], LEASE)
        assert fourth.deliveries == (3 if counts_crashed_deliveries else 2)
        await other_store.complete([succeeded(fourth)])
        [done] = await store.claim([key], LEASE)
        assert done.status is ClaimStatus.COMPLETED

    @pytest.mark.anyio
    async def test_completed_record_expires_after_ttl(
        self, store: IdempotencyStore, clock: ManualClock, ttl_seconds: float
    ) -> None:
        key = unique()
        [claim] = await store.claim([key], LEASE)
        await store.complete([succeeded(claim)])
        clock.advance(ttl_seconds - 5)
        [kept] = await store.claim([key], LEASE)
        assert kept.status is ClaimStatus.COMPLETED
        clock.advance(10)
        [gone] = await store.claim([key], LEASE)
        assert gone.status is ClaimStatus.NEW

    @pytest.mark.anyio
    async def test_large_mixed_batch_in_one_call(
        self,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        batch_size: int,
        leases_at_claim: bool,
    ) -> None:
        keys = [unique(f"b{i}") for i in range(batch_size)]
        done, busy = keys[:3], keys[3:6]
        claims = await store.claim(done, LEASE)
        assert await store.complete([succeeded(c) for c in claims]) == [True] * 3
        await other_store.claim(busy, LEASE)
        result = await store.claim(keys, LEASE)
        assert [c.key for c in result] == keys
        busy_status = ClaimStatus.IN_PROGRESS if leases_at_claim else ClaimStatus.NEW
        assert [c.status for c in result[:6]] == [ClaimStatus.COMPLETED] * 3 + [busy_status] * 3
        assert all(c.status is ClaimStatus.NEW for c in result[6:])
        accepted = await store.complete([succeeded(c) for c in result[6:]])
        assert accepted == [True] * (batch_size - 6)

    @pytest.mark.anyio
    async def test_keys_with_any_characters(self, store: IdempotencyStore) -> None:
        base = unique()
        keys = [
            f"{base}/s3://bucket/a b+c/ünïcode/Ω.json#v1",
            f"{base}#arn:aws:kinesis:eu-west-1:1:stream/x#4960",
            f"{base}:" + "x" * 400,
            f"{base}?q='\"%20\\",
        ]
        claims = await store.claim(keys, LEASE)
        assert [c.status for c in claims] == [ClaimStatus.NEW] * len(keys)
        assert await store.complete([succeeded(c) for c in claims]) == [True] * len(keys)
        assert [c.status for c in await store.claim(keys, LEASE)] == [ClaimStatus.COMPLETED] * len(
            keys
        )

    @pytest.mark.anyio
    async def test_concurrent_claimers_have_exactly_one_winner(
        self,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        concurrent_claimers: int,
        leases_at_claim: bool,
    ) -> None:
        key = unique()
        results: list[Claim] = []

        async def race(worker: IdempotencyStore) -> None:
            results.extend(await worker.claim([key], LEASE))

        async with anyio.create_task_group() as group:
            for n in range(concurrent_claimers):
                group.start_soon(race, store if n % 2 else other_store)
        winners = [c for c in results if c.status is ClaimStatus.NEW]
        # Without leases nobody is held off: every claimer gets the key, each its own token.
        assert len(winners) == (1 if leases_at_claim else concurrent_claimers)
        assert len({c.token for c in winners}) == len(winners)
        assert len(results) == concurrent_claimers


class LaneStoreContract:
    """Lane watermark records: leases, fencing, lost replies, takeovers and TTL.

    Needs fixtures `store` and `other_store` (two workers' handles on one backend), both
    `LaneStore`s built with the `clock` fixture and a TTL of at least an hour, and the
    default lane TTL (`watermarks.LANE_TTL_SECONDS`).
    """

    @pytest.fixture
    def clock(self) -> ManualClock:
        """The clock the stores under test are built with."""
        return ManualClock()

    @pytest.mark.anyio
    async def test_a_new_lane_is_leased_and_its_commit_is_read_back(
        self, store: LaneStore, other_store: LaneStore
    ) -> None:
        lane = unique("lane")
        big = 10**60
        [claim] = await store.claim_lanes([LaneRequest(lane, big + 1, big + 9)], LEASE)
        assert claim.status is ClaimStatus.NEW and claim.token
        assert claim.state.watermark == -1
        state = LaneState(big + 9, ((big + 20, big + 30),), ((big + 15, 2),))
        assert await store.commit_lanes([LaneCommit(claim, state)]) == [True]
        # A lost reply: the same commit again is accepted, and changes nothing.
        assert await store.commit_lanes([LaneCommit(claim, state)]) == [True]
        [seen] = await other_store.claim_lanes([LaneRequest(lane, big + 10, big + 40)], LEASE)
        assert seen.status is ClaimStatus.NEW and seen.token != claim.token
        assert seen.state._replace(inflight=None) == state

    @pytest.mark.anyio
    async def test_two_workers_one_lane_only_the_holder_commits(
        self, store: LaneStore, other_store: LaneStore, clock: ManualClock
    ) -> None:
        lane = unique("lane")
        [a] = await store.claim_lanes([LaneRequest(lane, 1, 5)], LEASE)
        [b] = await other_store.claim_lanes([LaneRequest(lane, 1, 5)], LEASE)
        assert a.status is ClaimStatus.NEW and b.status is ClaimStatus.IN_PROGRESS
        clock.advance(LEASE + 1)  # a's lease lapses: b takes over, a's range is charged
        [b] = await other_store.claim_lanes([LaneRequest(lane, 1, 5)], LEASE)
        assert b.status is ClaimStatus.NEW
        assert b.state.crashed == ((1, 5, 1),)
        assert await store.commit_lanes([LaneCommit(a, LaneState(5))]) == [False]
        assert await other_store.commit_lanes([LaneCommit(b, LaneState(5))]) == [True]
        [c] = await store.claim_lanes([LaneRequest(lane, 6, 9)], LEASE)
        assert c.status is ClaimStatus.NEW and c.state.watermark == 5

    @pytest.mark.anyio
    async def test_a_release_frees_the_lane_and_charges_its_range(
        self, store: LaneStore, other_store: LaneStore
    ) -> None:
        lane = unique("lane")
        [a] = await store.claim_lanes([LaneRequest(lane, 3, 7)], LEASE)
        await store.release_lanes([a])
        await store.release_lanes([a])  # stale: nothing more
        [b] = await other_store.claim_lanes([LaneRequest(lane, 3, 7)], LEASE)
        assert b.status is ClaimStatus.NEW and b.state.crashed == ((3, 7, 1),)

    @pytest.mark.anyio
    async def test_a_claim_of_settled_positions_writes_nothing(
        self, store: LaneStore, other_store: LaneStore
    ) -> None:
        """A redelivered batch of duplicates costs a read: the record's version stays."""
        lane = unique("lane")
        [a] = await store.claim_lanes([LaneRequest(lane, 10, 50)], LEASE)
        state = LaneState(30, ((40, 50),), ((35, 1),))
        assert await store.commit_lanes([LaneCommit(a, state)]) == [True]
        requests = [
            LaneRequest(lane, 5, 30),  # at or below the watermark
            LaneRequest(lane, 42, 48),  # inside a settled interval above a gap
            LaneRequest(lane, 20, 50, (20, 30, 40, 50)),  # positions that skip the gap
        ]
        versions = set()
        for request in requests:
            [done] = await other_store.claim_lanes([request], LEASE)
            assert done.status is ClaimStatus.COMPLETED and done.token is None, request
            assert done.state == state
            versions.add(done.version)
        assert len(versions) == 1
        # Another worker's live lease does not hide what is settled.
        [b] = await store.claim_lanes([LaneRequest(lane, 20, 50)], LEASE)
        assert b.status is ClaimStatus.NEW and b.version > versions.pop()
        [c] = await other_store.claim_lanes([LaneRequest(lane, 1, 25)], LEASE)
        assert c.status is ClaimStatus.COMPLETED

    @pytest.mark.anyio
    async def test_a_lane_outlives_the_key_ttl_until_the_lane_ttl(
        self, store: LaneStore, other_store: LaneStore, clock: ManualClock
    ) -> None:
        """A source redelivers below a watermark for as long as it keeps the lane (a
        Kinesis stream up to 365 days): the record outlives keys, expiring by its own TTL."""
        lane = unique("lane")
        [a] = await store.claim_lanes([LaneRequest(lane, 1, 9)], LEASE)
        assert await store.commit_lanes([LaneCommit(a, LaneState(9))]) == [True]
        clock.advance(30 * 86_400.0)
        [kept] = await other_store.claim_lanes([LaneRequest(lane, 1, 9)], LEASE)
        assert kept.status is ClaimStatus.COMPLETED and kept.state.watermark == 9
        clock.advance(LANE_TTL_SECONDS)
        [gone] = await other_store.claim_lanes([LaneRequest(lane, 1, 9)], LEASE)
        assert gone.status is ClaimStatus.NEW and gone.state.watermark == -1

    @pytest.mark.anyio
    async def test_many_lanes_in_one_call_in_order(self, store: LaneStore) -> None:
        lanes = [unique("lane") for _ in range(30)]
        claims = await store.claim_lanes([LaneRequest(lane, 1, 2) for lane in lanes], LEASE)
        assert [c.lane for c in claims] == lanes
        commits = [LaneCommit(c, LaneState(2)) for c in claims]
        assert await store.commit_lanes(commits) == [True] * 30


class SinkContract:
    """Writes land, and writing an `output_id` again overwrites it."""

    @pytest.mark.anyio
    async def test_written_outputs_can_be_read(self, sink: Sink, read_sink: ReadSink) -> None:
        key = unique("src#e")
        outs = [output(key, 0, {"a": 1}), output(key, 1, {"b": "two"})]
        await sink.write(outs)
        stored = await read_sink(sink)
        assert stored[output_id(key, 0)] == {"a": 1}
        assert stored[output_id(key, 1)] == {"b": "two"}

    @pytest.mark.anyio
    async def test_rewrite_overwrites_by_output_id(self, sink: Sink, read_sink: ReadSink) -> None:
        key = unique("src#e")
        await sink.write([output(key, 0, {"v": 1})])
        await sink.write([output(key, 0, {"v": 2})])
        stored = await read_sink(sink)
        assert [oid for oid in stored if oid.startswith(key)] == [output_id(key, 0)]
        assert stored[output_id(key, 0)] == {"v": 2}

    @pytest.mark.anyio
    async def test_json_values_round_trip(self, sink: Sink, read_sink: ReadSink) -> None:
        key = unique("src#e")
        value = {
            "s": "ünïcode ✓",
            "i": 12345678901,
            "neg": -3,
            "f": 1.5,
            "t": True,
            "n": None,
            "l": [1, "two", {"three": 3}],
            "m": {"nested": {"deep": [True, False]}},
        }
        await sink.write([output(key, 0, value)])
        assert (await read_sink(sink))[output_id(key, 0)] == value

    @pytest.mark.anyio
    async def test_empty_write_is_a_no_op(self, sink: Sink) -> None:
        await sink.write([])

    @pytest.mark.anyio
    async def test_large_batch_in_one_call(self, sink: Sink, read_sink: ReadSink) -> None:
        base = unique("src#e")
        outs = [output(f"{base}{i}", 0, {"i": i}) for i in range(600)]
        await sink.write(outs)
        stored = await read_sink(sink)
        assert all(stored[o.output_id] == {"i": i} for i, o in enumerate(outs))


class AtomicSinkContract(Capabilities):
    """Outputs and completion markers commit together, fenced by the claim's token."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        """The clock the store under test is built with."""
        return ManualClock()

    @pytest.mark.anyio
    async def test_commits_with_its_store(self, sink: AtomicSink, store: IdempotencyStore) -> None:
        assert sink.commits_with(store)

    @pytest.mark.anyio
    async def test_outputs_and_markers_commit_together(
        self, sink: AtomicSink, store: IdempotencyStore, read_sink: ReadSink
    ) -> None:
        key = unique("src#e")
        [claim] = await store.claim([key], LEASE)
        outs = [output(key, 0, {"x": 1}), output(key, 1, {"x": 2})]
        assert await sink.write_and_complete(store, outs, [succeeded(claim, 2)]) == [True]
        stored = await read_sink(sink)
        assert stored[output_id(key, 0)] == {"x": 1} and stored[output_id(key, 1)] == {"x": 2}
        [after] = await store.claim([key], LEASE)
        assert after.status is ClaimStatus.COMPLETED

    @pytest.mark.anyio
    async def test_stale_token_writes_nothing_for_its_key(
        self,
        sink: AtomicSink,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        read_sink: ReadSink,
        clock: ManualClock,
        leases_at_claim: bool,
        fences_completions: bool,
    ) -> None:
        stale_key, fresh_key = unique("src#s"), unique("src#f")
        [stale] = await store.claim([stale_key], LEASE)
        clock.advance(LEASE + 1)
        [taken] = await other_store.claim([stale_key], LEASE)
        [fresh] = await store.claim([fresh_key], LEASE)
        outs = [output(stale_key, 0, {"who": "stale"}), output(fresh_key, 0, {"who": "fresh"})]
        accepted = await sink.write_and_complete(store, outs, [succeeded(stale), succeeded(fresh)])
        stored = await read_sink(sink)
        assert stored[output_id(fresh_key, 0)] == {"who": "fresh"}
        if leases_at_claim:
            assert accepted == [False, True]
            assert output_id(stale_key, 0) not in stored
            assert await other_store.complete([succeeded(taken)]) == [True]
        else:
            # The takeover wrote nothing, so the first commit wins and the later one is
            # refused (or, without fenced completions, lands as a repeat).
            assert accepted == [True, True]
            assert stored[output_id(stale_key, 0)] == {"who": "stale"}
            assert await other_store.complete([succeeded(taken)]) == [not fences_completions]

    @pytest.mark.anyio
    async def test_completion_without_outputs(
        self, sink: AtomicSink, store: IdempotencyStore
    ) -> None:
        key = unique("src#e")
        [claim] = await store.claim([key], LEASE)
        assert await sink.write_and_complete(store, [], [succeeded(claim, 0)]) == [True]
        [after] = await store.claim([key], LEASE)
        assert after.status is ClaimStatus.COMPLETED


class ObjectStoreContract:
    """Get, put, put-if-absent, ranges, listing and deletes over paths."""

    @pytest.mark.anyio
    async def test_put_then_get(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/a/b.bin"
        data = bytes(range(256)) * 4
        await object_store.put(path, data)
        assert await object_store.get(path) == data

    @pytest.mark.anyio
    async def test_missing_object_is_file_not_found(self, object_store: ObjectStore) -> None:
        with pytest.raises(FileNotFoundError):
            await object_store.get(f"{unique('d')}/nothing")
        assert await object_store.head(f"{unique('d')}/nothing") is None

    @pytest.mark.anyio
    async def test_put_replaces(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/x"
        await object_store.put(path, b"one")
        await object_store.put(path, b"two")
        assert await object_store.get(path) == b"two"

    @pytest.mark.anyio
    async def test_put_if_absent_creates_once(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/once"
        assert await object_store.put_if_absent(path, b"first") is True
        assert await object_store.put_if_absent(path, b"second") is False
        assert await object_store.get(path) == b"first"

    @pytest.mark.anyio
    async def test_get_range(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/r"
        await object_store.put(path, b"0123456789")
        assert await object_store.get_range(path, 2, 5) == b"234"

    @pytest.mark.anyio
    async def test_list_by_prefix_sorted(self, object_store: ObjectStore) -> None:
        base = unique("d")
        for name in ["b/2", "a/1", "b/1", "c"]:
            await object_store.put(f"{base}/{name}", name.encode())
        listed = await object_store.list(f"{base}/b/")
        assert [i.path for i in listed] == [f"{base}/b/1", f"{base}/b/2"]
        assert [i.size for i in listed] == [3, 3]
        everything = await object_store.list(f"{base}/")
        assert len(everything) == 4

    @pytest.mark.anyio
    async def test_delete_is_idempotent(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/gone"
        await object_store.put(path, b"x")
        await object_store.delete(path)
        await object_store.delete(path)
        assert await object_store.head(path) is None

    @pytest.mark.anyio
    async def test_head_reports_size(self, object_store: ObjectStore) -> None:
        path = f"{unique('d')}/h"
        await object_store.put(path, b"12345")
        info = await object_store.head(path)
        assert info is not None and info.size == 5 and info.path == path
