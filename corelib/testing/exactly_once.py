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

__all__ = ["CrashAt", "ExactlyOnceContract", "RecordingProcessor", "expected_outputs"]

LEASE = 30.0


class Flaky(Exception):
    """A transient failure the recording processor raises on purpose."""


@dataclass
class RecordingProcessor:
    """Doubles `n`, emits 0-2 outputs by `n`, fails transiently on request, logs every call."""

    flaky: set[int] = field(default_factory=set)
    calls: list[tuple[str | None, int]] = field(default_factory=list)
    failed_once: set[int] = field(default_factory=set)

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
        if n % 5 == 4:
            return None
        if n % 3 == 0:
            return [{"n": n, "part": 0}, {"n": n, "part": 1}]
        return {"n": n, "double": 2 * n}


def make_events(ns: str, count: int, partitions: int, bad: set[int]) -> list[Event]:
    """`count` events in `partitions` lanes, with sequence numbers; `bad` ones are invalid."""
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
            )
        )
    return events


def expected_outputs(events: Sequence[Event], bad: set[int]) -> dict[str, Any]:
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

    def record(self, name: str, effects: int, deliveries: int) -> None:
        """One plan of `name` passed its check of `effects` events."""
        self.plans[name] += 1
        self.effects[name] += effects
        self.deliveries[name] += deliveries


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
    ) -> tuple[Pipeline, Pipeline]:
        def one(store: IdempotencyStore) -> Pipeline:
            return Pipeline(
                processor,
                sink,
                store,
                dead_letter_sink,
                ordered=ordered,
                retry=RetryPolicy(attempts=3),
                lease_seconds=LEASE,
                clock=clock,
            )

        return one(stores[0]), one(stores[1])

    async def _settle(
        self, pipeline: Pipeline, events: Sequence[Event], clock: ManualClock
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
        events: Sequence[Event],
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

    @pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
    @pytest.mark.parametrize("step", list(Step), ids=[s.value for s in Step])
    @pytest.mark.anyio
    async def test_crash_at_each_step_then_redelivery(
        self,
        step: Step,
        ordered: bool,
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
        events = make_events(ns, 12, 3, bad)
        processor = RecordingProcessor(flaky={5})
        first, second = self._pipelines(
            processor, (store, other_store), sink, dead_letter_sink, clock, ordered
        )
        first.on_step = CrashAt(step)
        assert await deliver(first, events) is None
        # The redelivery comes to the other worker before the crashed one's lease ends:
        # held off where the crash left leases, free to redo the work where none are taken.
        early = await second.process_batch(events)
        held_off = leases_at_claim and step is not Step.AFTER_COMPLETE
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
        taken_over: list[BatchResult] = []
        stalled: list[str] = []

        class Stalls(RecordingProcessor):
            async def process(self, event: Event) -> Any:
                if not stalled:
                    # This worker stalls past its lease; the other one claims and commits all.
                    stalled.append(event.id)
                    clock.advance(LEASE + 1)
                    taken_over.append(await fresh.process_batch(events))
                return await super().process(event)

        stale, _ = self._pipelines(
            Stalls(), (store, other_store), sink, dead_letter_sink, clock, False
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
                PLANS_RUN.record(type(self).__name__, len(events), len(plan))

            anyio.run(main)
            if ordered:
                # Within one delivery, each lane ran in sequence order however it arrived.
                for start, end in itertools.pairwise(marks):
                    lanes: defaultdict[str | None, list[int]] = defaultdict(list)
                    for lane, n in processor.calls[start:end]:
                        lanes[lane].append(n)
                    assert all(seq == sorted(seq) for seq in lanes.values())

        run()
