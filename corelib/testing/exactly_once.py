"""The runner's exactly-once proof, run against any store and sink.

Hypothesis draws delivery plans (duplicates, reordering, partial batches, two workers,
a crash at any step, leases running out) and the tests assert that every event's
effect is in the sink exactly once, invalid events are dead-lettered exactly once,
nothing is lost, and ordered partitions are processed in sequence.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onceflow.clock import ManualClock
from onceflow.errors import PermanentError, SimulatedCrash
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.identity import dead_letter_id, output_id
from onceflow.interfaces import IdempotencyStore, Sink
from onceflow.pipeline import BatchResult, Pipeline, Step
from onceflow.records import InvalidRecord
from onceflow.retry import RetryPolicy
from onceflow.testing.contracts import Capabilities, ReadSink
from onceflow.watermarks import LANE_ATTRIBUTE

__all__ = [
    "CrashAt",
    "ExactlyOnceContract",
    "RecordingProcessor",
    "Stream",
    "expected_outputs",
    "make_stream",
]

LEASE = 30.0
STUBBORN = 3
"""Calls a stubborn event fails: every attempt of one delivery under `RetryPolicy(3)`."""


class Flaky(Exception):
    """A transient failure the recording processor raises on purpose."""


@dataclass
class RecordingProcessor:
    """Doubles `n`, emits 0-2 outputs by `n`, fails transiently on request, logs every call."""

    flaky: set[int] = field(default_factory=set)
    calls: list[tuple[str | None, int]] = field(default_factory=list)
    failed_once: set[int] = field(default_factory=set)
    stubborn: set[int] = field(default_factory=set)
    """Fail their first `STUBBORN` calls: a whole delivery's attempts, so the batch fails
    half-way and the event comes again."""
    failed_calls: Counter[int] = field(default_factory=Counter)

    async def process(self, event: Event) -> Any:
        """Outputs for one test event."""
        body = event.json()
        n = int(body["n"])
        if body.get("bad"):
            raise PermanentError(f"order {n} is invalid")
        self.calls.append((event.partition_key, n))
        await anyio.lowlevel.checkpoint()
        if n in self.flaky and n not in self.failed_once:
            self.failed_once.add(n)
            raise Flaky(f"transient failure for {n}")
        if n in self.stubborn and self.failed_calls[n] < STUBBORN:
            self.failed_calls[n] += 1
            raise Flaky(f"transient failure {self.failed_calls[n]} for {n}")
        if n % 5 == 4:
            return None
        if n % 3 == 0:
            return [{"n": n, "part": 0}, {"n": n, "part": 1}]
        return {"n": n, "double": 2 * n}


class StallingProcessor(RecordingProcessor):
    """Stalls past its lease at its first event while `other` processes `batch` (and takes
    the keys or lanes over); `taken_over` receives the other worker's result."""

    def __init__(
        self, clock: ManualClock, other: Pipeline, batch: Sequence[Event | InvalidRecord]
    ) -> None:
        super().__init__()
        self.clock, self.other, self.batch = clock, other, list(batch)
        self.taken_over: list[BatchResult] = []
        self.stalled = False

    async def process(self, event: Event) -> Any:
        """Outputs for one test event, after the stall the first time."""
        if not self.stalled:
            self.stalled = True  # before the await: the batch's other events run meanwhile
            self.clock.advance(LEASE + 1)
            self.taken_over.append(await self.other.process_batch(self.batch))
        return await super().process(event)


def make_events(
    ns: str, count: int, partitions: int, bad: set[int], *, lanes: bool = False
) -> list[Event]:
    """`count` events in `partitions` lanes, with sequence numbers; `bad` ones are invalid.

    With `lanes`, each partition is also a watermark lane (`LANE_ATTRIBUTE`): deliver
    such events only as whole lanes, as a shard-ordered source does (see `Stream`).
    """
    events = []
    for n in range(count):
        data = b'{"n":%d,"bad":true}' % n if n in bad else b'{"n":%d}' % n
        if n in bad and n % 2:
            data = b"\xff\xfe not json"
        events.append(
            Event(
                id=f"e{n}",
                source=ns,
                partition_key=f"p{n % partitions}",
                sequence=str(100 + n),
                data=data,
                attributes={LANE_ATTRIBUTE: f"p{n % partitions}"} if lanes else {},
            )
        )
    return events


def expected_outputs(events: Sequence[Event | InvalidRecord], bad: set[int]) -> dict[str, Any]:
    """What one clean run of `RecordingProcessor` leaves in the sink."""
    out: dict[str, Any] = {}
    for n, event in enumerate(events):
        if n in bad or n % 5 == 4:
            continue
        if n % 3 == 0:
            out[output_id(event.key, 0)] = {"n": n, "part": 0}
            out[output_id(event.key, 1)] = {"n": n, "part": 1}
        else:
            out[output_id(event.key, 0)] = {"n": n, "double": 2 * n}
    return out


class CrashAt:
    """A step hook that crashes once at one step."""

    def __init__(self, step: Step | None) -> None:
        self.step = step

    def __call__(self, step: Step, keys: Sequence[str]) -> None:
        """Raise at the planned step, once."""
        if step is self.step:
            self.step = None
            raise SimulatedCrash(step.value)


async def deliver(pipeline: Pipeline, batch: Sequence[Event | InvalidRecord]) -> BatchResult | None:
    """One delivery; None when it crashed."""
    try:
        return await pipeline.process_batch(batch)
    except SimulatedCrash:
        return None
    except BaseExceptionGroup as group:  # a crash inside a task group arrives wrapped
        if group.subgroup(SimulatedCrash) is None:
            raise
        return None


delivery = st.tuples(
    st.lists(st.integers(0, 15), min_size=1, max_size=14),  # which events, in what order
    st.sampled_from([None, *Step]),  # where this delivery crashes
    st.booleans(),  # which worker
    st.booleans(),  # let leases run out before it
)


# -- lane watermarks: sharded streams as Kinesis delivers them ------------------------------

LANE_BASE = 49590338271490256608559692538361571095921575989136588898
"""Where positions start: a Kinesis-sized sequence number (past 64 bits and 38 digits)."""

TOPOLOGIES: dict[str, dict[str, tuple[str, ...]]] = {
    "one": {"s0": ()},
    "two": {"s0": (), "s1": ()},
    # A shard split: the parent ends, then its two children open.
    "split": {"s0": (), "s1": ("s0",), "s2": ("s0",)},
    # A shard merge: two parents end, then the child opens.
    "merge": {"s0": (), "s1": (), "s2": ("s0", "s1")},
}
"""Each shard's parents: a child shard is read only once all its parents are read to the end."""


@dataclass
class Stream:
    """A sharded stream read as Kinesis with Lambda reads it (the source's lane contract).

    Every delivery of a shard is a contiguous run of it starting at or below the shard's
    checkpoint (a retried batch, or one from an older checkpoint); the checkpoint moves to
    the first failed event of a delivery that answered (partial batch response), or past
    its end, and stays where it was when the delivery crashed. Positions are sparse, as
    Kinesis sequence numbers are.
    """

    records: list[Event | InvalidRecord]
    shards: dict[str, list[int]]
    """Each shard's records, as indexes into `records`, in position order."""
    parents: dict[str, tuple[str, ...]]
    checkpoint: dict[str, int] = field(default_factory=dict)

    def finished(self, shard: str) -> bool:
        """Whether the shard was read to its end."""
        return self.checkpoint.get(shard, 0) >= len(self.shards[shard])

    def open(self) -> list[str]:
        """Shards being read now: not finished, every parent finished."""
        return [
            s
            for s in self.shards
            if not self.finished(s) and all(self.finished(p) for p in self.parents[s])
        ]

    def read(self, shard: str, back: int, length: int) -> list[int]:
        """A delivery of `shard`: `length` records from `back` below its checkpoint."""
        start = max(0, self.checkpoint.get(shard, 0) - back)
        return self.shards[shard][start : start + length]

    def answer(self, picked: Sequence[int], result: BatchResult | None) -> None:
        """Move the checkpoints of the shards in `picked` by a delivery's answer."""
        if result is None:
            return  # a crash: the batch comes again from the same checkpoint
        failed = set(result.failed)
        for shard, indexes in self.shards.items():
            run = [i for i in picked if i in set(indexes)]
            if not run:
                continue
            ordered_run = sorted(run, key=indexes.index)
            start = indexes.index(ordered_run[0])
            stop = start + len(ordered_run)
            for offset, i in enumerate(ordered_run):
                if self.records[i].id in failed:
                    stop = start + offset
                    break
            self.checkpoint[shard] = max(self.checkpoint.get(shard, 0), stop)


def make_stream(
    ns: str, topology: str, sizes: Sequence[int], bad: set[int], invalid: set[int]
) -> Stream:
    """Shards of `topology` holding `sizes[i]` records each; `bad` ones fail permanently,
    `invalid` ones arrive as records the decoder could not read (on the lane's position)."""
    parents = TOPOLOGIES[topology]
    records: list[Event | InvalidRecord] = []
    shards: dict[str, list[int]] = {}
    for s, shard in enumerate(parents):
        shards[shard] = []
        for j in range(sizes[s % len(sizes)]):
            n = len(records)
            position = str(LANE_BASE + s * 1_000_000 + j * 7 + (n % 3))
            key = f"{shard}-k{j % 2}"  # two partition keys per shard, as Kinesis hashes them
            lane = {LANE_ATTRIBUTE: shard}
            if n in invalid:
                records.append(
                    InvalidRecord(
                        id=f"e{n}", source=ns, reason="not a record of this stream",
                        raw=b"\x00", locator=f"{shard}:{position}", partition_key=key,
                        sequence=position, attributes=lane,
                    )
                )  # fmt: skip
            else:
                data = b'{"n":%d,"bad":true}' % n if n in bad else b'{"n":%d}' % n
                records.append(
                    Event(
                        id=f"e{n}", source=ns, partition_key=key, sequence=position,
                        data=data, attributes=lane,
                    )
                )  # fmt: skip
            shards[shard].append(n)
    return Stream(records, shards, parents)


lane_delivery = st.tuples(
    # per shard read: which open shard, how far below its checkpoint, how many records
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 6)), max_size=3),
    st.sampled_from([None, *Step]),  # where this delivery crashes
    st.sampled_from(["first", "second", "both"]),  # which worker; both: a duplicate invocation
    st.booleans(),  # let leases run out before it
    st.booleans(),  # interleave the shards' records back to front (the runner sorts a lane)
)


def plan_budget(default: int) -> int:
    """How many delivery plans a contract runs: its own count, or `ONCEFLOW_PLANS` if larger.

    `make soak` sets it per backend to run campaigns far past `make test`'s budget.
    """
    return max(default, int(os.environ.get("ONCEFLOW_PLANS", "0") or 0))


@dataclass
class PlanTally:
    """Plans run and effects checked per contract class, for the soak report."""

    plans: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def record(self, name: str, effects: int, deliveries: int, faults: int = 0) -> None:
        """One plan of `name` passed its check of `effects` events after `faults` faults."""
        self.plans[name] += 1
        self.effects[name] += effects
        self.deliveries[name] += deliveries
        self.faults[name] += faults


def plan_faults(
    plan: Sequence[tuple[list[int], Step | None, bool, bool]], count: int, flaky: set[int]
) -> int:
    """The faults a plan injects: crashes, lapsed leases, worker switches, redeliveries
    and transient failures."""
    seen: set[int] = set()
    faults = sum(n < count for n in flaky)
    previous = False
    for picks, crash, second, expire in plan:
        faults += (crash is not None) + expire + (second != previous)
        previous = second
        for n in picks:
            faults += (n % count) in seen
            seen.add(n % count)
    return faults


PLANS_RUN = PlanTally()
"""Every passing plan of this process; a failing plan raises, so none is lost or doubled."""


class ExactlyOnceContract(Capabilities):
    """The runner's guarantees, held on the backend whose fixtures a subclass supplies.

    Fixtures: `clock` (a ManualClock the stores use), `store` and `other_store` (two
    workers' handles on one state), `sink`, `dead_letter_sink`, `read_sink`; and the
    capabilities `leases_at_claim` and `fences_completions` (see `Capabilities`): a store
    without them still leaves every effect exactly once, but lets a second worker run an
    event the first one holds.
    """

    max_examples = 40
    lane_examples: int | None = None
    """Lane delivery plans per run; None: half of `max_examples` (at least 4), so the
    lane plans add half to a backend's plan budget (`ONCEFLOW_PLANS` raises both)."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        """The clock the stores under test are built with."""
        return ManualClock()

    def _pipelines(
        self,
        processor: RecordingProcessor,
        stores: tuple[IdempotencyStore, IdempotencyStore],
        sink: Sink,
        dead_letter_sink: Sink,
        clock: ManualClock,
        ordered: bool,
        max_deliveries: int = 5,
    ) -> tuple[Pipeline, Pipeline]:
        def one(store: IdempotencyStore) -> Pipeline:
            return Pipeline(
                processor,
                sink,
                store,
                dead_letter_sink,
                ordered=ordered,
                retry=RetryPolicy(attempts=3),
                max_deliveries=max_deliveries,
                lease_seconds=LEASE,
                clock=clock,
            )

        return one(stores[0]), one(stores[1])

    async def _settle(
        self, pipeline: Pipeline, events: Sequence[Event | InvalidRecord], clock: ManualClock
    ) -> BatchResult:
        """Redeliver everything after leases ran out until nothing fails."""
        clock.advance(LEASE + 1)
        result = await pipeline.process_batch(events)
        for _ in range(3):
            if result.ok:
                break
            clock.advance(LEASE + 1)
            result = await pipeline.process_batch([e for e in events if e.id in set(result.failed)])
        return result

    def assert_each_write_once(self, sink: Sink, ns: str) -> None:
        """Backends that can see every write (not just the final state) check none repeated."""

    async def _check(
        self,
        ns: str,
        events: Sequence[Event | InvalidRecord],
        bad: set[int],
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        stored = {k: v for k, v in (await read_sink(sink)).items() if k.startswith(ns)}
        assert stored == expected_outputs(events, bad)
        self.assert_each_write_once(sink, ns)
        self.assert_each_write_once(dead_letter_sink, ns)
        letters = {k: v for k, v in (await read_sink(dead_letter_sink)).items() if k.startswith(ns)}
        assert sorted(letters) == sorted(dead_letter_id(events[n].key) for n in bad)
        for n in bad:
            letter = letters[dead_letter_id(events[n].key)]
            assert events[n].id in letter["message"]
            assert letter["error_type"] in {"PermanentError", "DecodeError"}
            assert letter["event"]["id"] == events[n].id

    @pytest.mark.parametrize("lanes", [False, True], ids=["keys", "lanes"])
    @pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
    @pytest.mark.parametrize("step", list(Step), ids=[s.value for s in Step])
    @pytest.mark.anyio
    async def test_crash_at_each_step_then_redelivery(
        self,
        step: Step,
        ordered: bool,
        lanes: bool,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
        leases_at_claim: bool,
    ) -> None:
        ns = f"crash-{uuid.uuid4().hex[:10]}"
        bad = {2, 7}
        events = make_events(ns, 12, 3, bad, lanes=lanes)
        processor = RecordingProcessor(flaky={5})
        first, second = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered
        )
        first.on_step = CrashAt(step)
        assert await deliver(first, events) is None
        # The redelivery comes to the other worker before the crashed one's lease ends:
        # held off where the crash left leases, free to redo the work where none are taken.
        # A lane's record is leased at claim on every lane store (where the runner uses it).
        early = await second.process_batch(events)
        leased = leases_at_claim or (lanes and bool(getattr(first, "watermarks", False)))
        held_off = leased and step is not Step.AFTER_COMPLETE
        assert bool(early.failed) == held_off
        final = await self._settle(second, events, clock)
        assert final.ok
        await self._check(ns, events, bad, sink, dead_letter_sink, read_sink)

    @pytest.mark.anyio
    async def test_two_workers_racing_apply_each_event_once(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
        leases_at_claim: bool,
    ) -> None:
        ns = f"race-{uuid.uuid4().hex[:10]}"
        events = make_events(ns, 40, 4, set())
        processor = RecordingProcessor()
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered=False
        )
        results: list[BatchResult] = []

        async def run(p: Pipeline, batch: Sequence[Event]) -> None:
            results.append(await p.process_batch(batch))

        async with anyio.create_task_group() as group:
            group.start_soon(run, a, events[:30])
            group.start_soon(run, b, events[10:])
            group.start_soon(run, b, list(reversed(events)))
        processed = [i for r in results for i in r.processed]
        calls = [n for _, n in processor.calls]
        if leases_at_claim:
            assert sorted(processed) == sorted(set(processed))  # nobody processed one twice
            assert sorted(calls) == sorted(set(calls))
        else:
            # Racing workers may both run an event; every event still ran at least once.
            assert set(calls) == set(range(len(events)))
        final = await self._settle(a, events, clock)
        assert final.ok
        await self._check(ns, events, set(), sink, dead_letter_sink, read_sink)

    @pytest.mark.anyio
    async def test_ordered_partition_stops_at_its_first_failure(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
        leases_at_claim: bool,
    ) -> None:
        ns = f"order-{uuid.uuid4().hex[:10]}"
        events = make_events(ns, 9, 3, set())
        processor = RecordingProcessor()
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered=True
        )
        # Another worker holds event 4 (partition p1): p1's later events must wait. A store
        # that leases nothing at claim time holds nothing back, so the lane runs on.
        await other_store.claim([events[4].key], LEASE)
        result = await a.process_batch(list(reversed(events)))
        assert sorted(result.failed) == (["e4", "e7"] if leases_at_claim else [])
        if leases_at_claim:
            assert result.failures["e4"].kind is FailureKind.LEASED_ELSEWHERE
            assert result.failures["e7"].kind is FailureKind.HELD_FOR_ORDER
        assert "e1" in result.processed
        for lane in ("p0", "p1", "p2"):
            seen = [n for p, n in processor.calls if p == lane]
            assert seen == sorted(seen)
        final = await self._settle(b, events, clock)
        assert final.ok
        await self._check(ns, events, set(), sink, dead_letter_sink, read_sink)

    @pytest.mark.anyio
    async def test_worker_that_outlives_its_lease_cannot_commit(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
        fences_completions: bool,
    ) -> None:
        ns = f"stale-{uuid.uuid4().hex[:10]}"
        events = make_events(ns, 6, 2, {3})
        _, fresh = self._pipelines(
            RecordingProcessor(), (store, other_store), sink, dead_letter_sink, clock, False
        )
        # This worker stalls past its lease; the other one claims and commits all.
        stalls = StallingProcessor(clock, fresh, events)
        taken_over = stalls.taken_over
        stale, _ = self._pipelines(
            stalls, (store, other_store), sink, dead_letter_sink, clock, False
        )
        result = await stale.process_batch(events)
        assert len(taken_over[0].processed) == 5 and taken_over[0].dead_lettered == ["e3"]
        if fences_completions:
            assert sorted(result.failed) == sorted(e.id for e in events)
            assert all(f.kind is FailureKind.LEASE_LOST for f in result.failures.values())
        else:
            # An unfenced commit lands as well: the same outputs, overwritten in place.
            assert result.ok
        await self._check(ns, events, {3}, sink, dead_letter_sink, read_sink)

    @pytest.mark.anyio
    async def test_invalid_record_is_dead_lettered_once(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        ns = f"invalid-{uuid.uuid4().hex[:10]}"
        record = InvalidRecord(
            id="r1", source=ns, reason="line 3: not JSON", raw=b"{oops", locator="in.jsonl:3"
        )
        a, b = self._pipelines(
            RecordingProcessor(), (store, other_store), sink, dead_letter_sink, clock, False
        )
        first = await a.process_batch([record])
        again = await b.process_batch([record])
        assert first.dead_lettered == ["r1"] and again.duplicates == ["r1"]
        letters = {k: v for k, v in (await read_sink(dead_letter_sink)).items() if k.startswith(ns)}
        [letter] = letters.values()
        assert "in.jsonl:3" in letter["message"] and "not JSON" in letter["message"]

    def test_any_delivery_plan_applies_each_effect_once(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        @settings(
            max_examples=plan_budget(self.max_examples),
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(
            count=st.integers(1, 16),
            partitions=st.integers(1, 4),
            bad=st.sets(st.integers(0, 15), max_size=3),
            flaky=st.sets(st.integers(0, 15), max_size=3),
            ordered=st.booleans(),
            plan=st.lists(delivery, max_size=6),
        )
        def run(
            count: int,
            partitions: int,
            bad: set[int],
            flaky: set[int],
            ordered: bool,
            plan: list[tuple[list[int], Step | None, bool, bool]],
        ) -> None:
            ns = f"plan-{uuid.uuid4().hex[:10]}"
            bad = {n for n in bad if n < count}
            events = make_events(ns, count, partitions, bad)
            processor = RecordingProcessor(flaky=flaky)
            workers = self._pipelines(
                processor, (store, other_store), sink, dead_letter_sink, clock, ordered
            )
            marks: list[int] = []

            async def main() -> None:
                for picks, crash, second, expire in plan:
                    if expire:
                        clock.advance(LEASE + 1)
                    pipeline = workers[1 if second else 0]
                    pipeline.on_step = CrashAt(crash)
                    marks.append(len(processor.calls))
                    await deliver(pipeline, [events[i % count] for i in picks])
                    pipeline.on_step = None
                marks.append(len(processor.calls))
                final = await self._settle(workers[0], events, clock)
                assert final.ok, final.reasons
                await self._check(ns, events, bad, sink, dead_letter_sink, read_sink)
                PLANS_RUN.record(
                    type(self).__name__, len(events), len(plan), plan_faults(plan, count, flaky)
                )

            anyio.run(main)
            if ordered:
                # Within one delivery, each lane ran in sequence order however it arrived.
                for start, end in itertools.pairwise(marks):
                    lanes: defaultdict[str | None, list[int]] = defaultdict(list)
                    for lane, n in processor.calls[start:end]:
                        lanes[lane].append(n)
                    assert all(seq == sorted(seq) for seq in lanes.values())

        run()

    # -- lane watermarks -------------------------------------------------------------------

    async def _read_to_end(
        self, pipeline: Pipeline, stream: Stream, clock: ManualClock, rounds: int = 12
    ) -> None:
        """Read every open shard from its checkpoint to its end, leases run out first,
        until the stream is read (children open as their parents end)."""
        for _ in range(rounds):
            shards = stream.open()
            if not shards:
                return
            clock.advance(LEASE + 1)
            picked = [i for s in shards for i in stream.read(s, 0, len(stream.shards[s]))]
            stream.answer(picked, await pipeline.process_batch([stream.records[i] for i in picked]))
        assert not stream.open(), f"shards {stream.open()} still fail after {rounds} rounds"

    def test_any_lane_plan_applies_each_effect_once(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        """Shard-ordered deliveries (retries from below the watermark, crashes at every
        step, batches failing half-way, duplicate invocations racing on one lane, lapsed
        leases, shard splits and merges) leave every effect exactly once."""

        lane_examples = self.lane_examples or max(4, self.max_examples // 2)

        @settings(
            max_examples=plan_budget(lane_examples),
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(
            topology=st.sampled_from(sorted(TOPOLOGIES)),
            sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3),
            bad=st.sets(st.integers(0, 20), max_size=2),
            invalid=st.sets(st.integers(0, 20), max_size=1),
            flaky=st.sets(st.integers(0, 20), max_size=3),
            stubborn=st.sets(st.integers(0, 20), max_size=2),
            ordered=st.booleans(),
            plan=st.lists(lane_delivery, max_size=6),
        )
        def run(
            topology: str,
            sizes: list[int],
            bad: set[int],
            invalid: set[int],
            flaky: set[int],
            stubborn: set[int],
            ordered: bool,
            plan: list[tuple[list[tuple[int, int, int]], Step | None, str, bool, bool]],
        ) -> None:
            ns = f"lanes-{uuid.uuid4().hex[:10]}"
            stream = make_stream(ns, topology, sizes, bad - invalid, invalid)
            dead = {n for n in bad | invalid if n < len(stream.records)}
            # One processor per worker: each one's calls must be in order (ordered mode),
            # while two workers of a store that leases nothing at claim may run one event
            # at the same time.
            processors = (
                RecordingProcessor(flaky=flaky, stubborn=stubborn),
                RecordingProcessor(flaky=flaky, stubborn=stubborn),
            )
            # Deliveries are not what this plan counts (a crash charges a whole lane's range).
            pair = (store, other_store), sink, dead_letter_sink, clock, ordered, 50
            workers = (
                self._pipelines(processors[0], *pair)[0],
                self._pipelines(processors[1], *pair)[1],
            )
            marks: list[tuple[int, int]] = []

            async def one(
                pipeline: Pipeline, batch: list[Event | InvalidRecord], crash: Step | None
            ) -> BatchResult | None:
                pipeline.on_step = CrashAt(crash)
                try:
                    return await deliver(pipeline, batch)
                finally:
                    pipeline.on_step = None

            async def main() -> None:
                for reads, crash, who, expire, backwards in plan:
                    if expire:
                        clock.advance(LEASE + 1)
                    shards = stream.open()
                    if not shards:
                        break
                    picked: list[int] = []
                    for which, back, length in reads:
                        shard = shards[which % len(shards)]
                        if not set(stream.shards[shard]) & set(picked):  # one run per shard
                            picked += stream.read(shard, back, length)
                    batch = [stream.records[i] for i in (picked[::-1] if backwards else picked)]
                    marks.append((len(processors[0].calls), len(processors[1].calls)))
                    if who == "both":
                        results: list[BatchResult | None] = []

                        async def invoke(
                            pipeline: Pipeline,
                            crash: Step | None,
                            batch: list[Event | InvalidRecord] = batch,
                            results: list[BatchResult | None] = results,
                        ) -> None:
                            results.append(await one(pipeline, batch, crash))

                        async with anyio.create_task_group() as group:
                            group.start_soon(invoke, workers[0], crash)
                            group.start_soon(invoke, workers[1], None)
                        for result in results:
                            stream.answer(picked, result)
                    else:
                        result = await one(workers[who == "second"], batch, crash)
                        stream.answer(picked, result)
                marks.append((len(processors[0].calls), len(processors[1].calls)))
                await self._read_to_end(workers[0], stream, clock)
                await self._check(ns, stream.records, dead, sink, dead_letter_sink, read_sink)
                # Faults: crashes, lapsed leases, racing invocations, reversed batches,
                # transient and stubborn failures (every delivery re-reads from a checkpoint).
                faults = sum((c is not None) + e + (w == "both") + b for _, c, w, e, b in plan)
                faults += len(flaky) + len(stubborn)
                name = type(self).__name__ + "/lanes"
                PLANS_RUN.record(name, len(stream.records), len(plan), faults)

            anyio.run(main)
            if ordered:
                # Within one delivery, each worker ran each partition key in sequence order.
                for start, end in itertools.pairwise(marks):
                    for worker, processor in enumerate(processors):
                        keys: defaultdict[str | None, list[int]] = defaultdict(list)
                        for key, n in processor.calls[start[worker] : end[worker]]:
                            keys[key].append(n)
                        assert all(seq == sorted(seq) for seq in keys.values())

        run()

    @pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
    @pytest.mark.anyio
    async def test_lane_redelivered_from_below_its_watermark_settles_only_the_rest(
        self,
        ordered: bool,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        """A lane batch failing half-way (a stubborn event), then a redelivery from an
        older checkpoint: what was settled is a duplicate, the rest is processed once."""
        ns = f"lane-{uuid.uuid4().hex[:10]}"
        stream = make_stream(ns, "one", [12], {9}, set())
        processor = RecordingProcessor(stubborn={4})
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered
        )
        first = stream.read("s0", 0, 8)
        result = await a.process_batch([stream.records[i] for i in first])
        stream.answer(first, result)
        # e4 failed; unordered, its successors settled above the gap; ordered, the ones
        # sharing its partition key wait behind it.
        held = {"e6"} if ordered else set()
        assert set(result.failed) == {"e4"} | held
        assert stream.checkpoint["s0"] == 4
        processor.calls.clear()
        again = stream.read("s0", 3, 12)  # from an older checkpoint: e1 .. e11
        result = await b.process_batch([stream.records[i] for i in again])
        stream.answer(again, result)
        assert result.ok, result.reasons
        fresh = {4, 8, 10, 11} | ({6} if ordered else set())
        assert sorted(n for _, n in processor.calls) == sorted(fresh)
        assert set(result.duplicates) == {f"e{i}" for i in again} - {f"e{n}" for n in fresh} - {
            "e9"
        }
        assert result.dead_lettered == ["e9"]
        await self._read_to_end(a, stream, clock)
        await self._check(ns, stream.records, {9}, sink, dead_letter_sink, read_sink)

    @pytest.mark.parametrize("topology", ["split", "merge"])
    @pytest.mark.anyio
    async def test_lane_parents_then_children_after_a_reshard(
        self,
        topology: str,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        """A parent shard's lane is read to its end (its last batch delivered twice), then
        the child lanes from their first record, each its own watermark."""
        ns = f"reshard-{uuid.uuid4().hex[:10]}"
        stream = make_stream(ns, topology, [5, 4, 6], set(), set())
        processor = RecordingProcessor()
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered=True
        )
        parents = [s for s in stream.shards if not stream.parents[s]]
        children = [s for s in stream.shards if stream.parents[s]]
        for parent in parents:
            picked = stream.read(parent, 0, 3)
            stream.answer(picked, await a.process_batch([stream.records[i] for i in picked]))
            rest = stream.read(parent, 1, 10)  # the end of the parent, from one record back
            result = await b.process_batch([stream.records[i] for i in rest])
            assert result.ok and len(result.duplicates) == 1
            stream.answer(rest, result)
        assert stream.open() == children
        picked = [i for s in children for i in stream.read(s, 0, 10)]
        result = await a.process_batch([stream.records[i] for i in picked])
        assert result.ok and not result.duplicates
        stream.answer(picked, result)
        again = await b.process_batch([stream.records[i] for i in picked])
        assert sorted(again.duplicates) == sorted(result.processed)
        assert stream.open() == []
        calls = [n for _, n in processor.calls]
        assert sorted(calls) == list(range(len(stream.records)))
        await self._check(ns, stream.records, set(), sink, dead_letter_sink, read_sink)

    @pytest.mark.anyio
    async def test_two_workers_on_one_lane_process_each_event_once(
        self,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
        leases_at_claim: bool,
        fences_completions: bool,
    ) -> None:
        """Two invocations of one lane batch at once: one holds the lane's lease, the other
        settles nothing; a worker that outlives its lease cannot commit the lane."""
        ns = f"lane-race-{uuid.uuid4().hex[:10]}"
        stream = make_stream(ns, "one", [10], set(), set())
        processor = RecordingProcessor()
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered=False
        )
        batch = [stream.records[i] for i in stream.read("s0", 0, 6)]
        results: list[BatchResult] = []

        async def run(pipeline: Pipeline) -> None:
            results.append(await pipeline.process_batch(batch))

        async with anyio.create_task_group() as group:
            group.start_soon(run, a)
            group.start_soon(run, b)
        # Where the runner keeps the lane's record (write-then-complete sinks), its lease
        # holds the other worker off; per-key markers hold it off where claims lease.
        lanes = bool(getattr(a, "watermarks", False))
        calls = [n for _, n in processor.calls]
        if lanes or leases_at_claim:
            assert sorted(calls) == sorted(set(calls))  # nobody ran one twice
        else:
            assert set(calls) == set(range(6))
        # The rest of the lane on a worker that stalls past its lease while the other one
        # takes the lane over and commits it: the stale commit is refused.
        rest = [stream.records[i] for i in stream.shards["s0"]]
        stalls = StallingProcessor(clock, b, rest)
        taken_over = stalls.taken_over
        clock.advance(LEASE + 1)
        stale, _ = self._pipelines(
            stalls, (store, other_store), sink, dead_letter_sink, clock, ordered=False
        )
        result = await stale.process_batch(rest)
        assert taken_over[0].ok, taken_over[0].reasons
        if lanes or fences_completions:
            assert result.failed and all(
                result.failures[i].kind is FailureKind.LEASE_LOST for i in result.failed
            )
        else:
            assert result.ok  # an unfenced commit lands too: the same outputs, overwritten
        final = await self._settle(a, rest, clock)
        assert final.ok and not final.processed
        await self._check(ns, stream.records, set(), sink, dead_letter_sink, read_sink)

    @pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
    @pytest.mark.anyio
    async def test_a_poison_event_on_a_lane_is_dead_lettered_after_max_deliveries(
        self,
        ordered: bool,
        clock: ManualClock,
        store: IdempotencyStore,
        other_store: IdempotencyStore,
        sink: Sink,
        dead_letter_sink: Sink,
        read_sink: ReadSink,
    ) -> None:
        """A lane keeps the deliveries of an event that fails above its watermark, so a
        poison pill is dead-lettered after `max_deliveries` and the lane moves on."""
        ns = f"lane-poison-{uuid.uuid4().hex[:10]}"
        stream = make_stream(ns, "one", [6], set(), set())
        processor = RecordingProcessor(stubborn={2})
        processor.failed_calls[2] = -100  # fails on every call
        a, b = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered, 3
        )
        for round_ in range(3):
            picked = stream.read("s0", 0, 6)
            result = await (a, b)[round_ % 2].process_batch([stream.records[i] for i in picked])
            stream.answer(picked, result)
            assert ("e2" in result.dead_lettered) == (round_ == 2), (round_, result.reasons)
        assert stream.open() == []
        letters = await read_sink(dead_letter_sink)
        assert [k for k in letters if k.startswith(ns)] == [dead_letter_id(stream.records[2].key)]
        out = {k: v for k, v in (await read_sink(sink)).items() if k.startswith(ns)}
        assert out == expected_outputs(stream.records, {2})
