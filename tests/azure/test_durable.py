"""Large blobs on Durable Functions: the orchestrator and its chunk activities.

Twice over. Through the library's real replay engine (`df.Orchestrator.create`, as the
Functions worker calls it), the extension's part played by `Extension`: the history
written turn by turn, so the actions (one turn fanning out every chunk with its retry
options), replay determinism and the library's own retry timers are exercised. And
the orchestrator is driven by the durable library's own unit-test support
(`azure.durable_functions.testing.orchestrator_generator_wrapper`, which replays a
generator the way the extension does: each task's result is sent back, a failed task's
error thrown back in). The context hands out the library's `TaskBase` objects whose
values come from running the real activities against Azurite Blob, with ranged reads.
Not exercised: the Durable Functions extension and its task hub (no local emulator
runs them); retries are counted by the context here as the extension would run them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import azure.durable_functions as df
import pytest
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType
from azure.durable_functions.models.Task import TaskBase
from azure.durable_functions.testing import orchestrator_generator_wrapper

from onceflow import Event, Pipeline
from onceflow.adapters.azure.durable import (
    CHUNK,
    DEAD_LETTER,
    FAN_IN,
    PLAN,
    DurableChunks,
    instance_id,
)
from onceflow.adapters.azure.objects import BlobObjectStore, ObjectChanged
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.chunks import chunk_key
from onceflow.fan_in import ChunkLedger, chunk_of
from onceflow.identity import dead_letter_id
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


class Doubler:
    def __init__(self) -> None:
        self.broken: set[int] = set()

    def process(self, event: Event) -> dict[str, int]:
        n = event.json()["n"]
        if n in self.broken:
            raise ConnectionError("the downstream is unreachable")
        return {"n": n, "double": 2 * n}


class _Failed(TaskBase):  # type: ignore[misc]  # the library ships no types
    """A task that failed: reading its result raises, as the replay engine makes it do."""

    @property
    def result(self) -> Any:
        raise self._error

    @result.setter
    def result(self, value: Any) -> None:
        if isinstance(value, Exception):
            self._error = value


class Context:
    """The orchestration context's calls, each answered by running the real activity."""

    def __init__(self, chunks: DurableChunks, blob: dict[str, Any]) -> None:
        self.blob = blob
        self.activities: dict[str, Callable[[Any], Any]] = {
            "onceflow_plan": chunks.plan,
            CHUNK: chunks.chunk,
            "onceflow_fan_in": chunks.fan_in,
            "onceflow_dead_letter": chunks.dead_letter,
        }
        self.calls: list[str] = []

    def get_input(self, expected_type: type | None = None) -> dict[str, Any]:
        return self.blob

    def _task(self, name: str, item: Any, attempts: int = 1) -> TaskBase:
        for attempt in range(1, attempts + 1):
            self.calls.append(name)
            try:
                value = self.activities[name](item)
            except Exception as exc:
                if attempt == attempts:
                    failed = _Failed(len(self.calls), [])
                    failed.set_value(is_error=True, value=exc)
                    return failed
            else:
                task = TaskBase(len(self.calls), [])
                task.set_value(is_error=False, value=value)
                return task
        raise AssertionError("unreachable")

    def call_activity(self, name: str, input_: Any = None, **typed: Any) -> TaskBase:
        return self._task(name, input_)

    def call_activity_with_retry(
        self, name: str, retry: Any, input_: Any = None, **typed: Any
    ) -> TaskBase:
        return self._task(name, input_, retry.max_number_of_attempts)

    def task_all(self, tasks: list[TaskBase]) -> TaskBase:
        for task in tasks:
            if isinstance(task, _Failed):
                return task
        done = TaskBase(0, [])
        done.set_value(is_error=False, value=[t.result for t in tasks])
        return done


def orchestrate(chunks: DurableChunks, blob: dict[str, Any]) -> tuple[Any, Context]:
    context = Context(chunks, blob)
    *_, result = orchestrator_generator_wrapper(chunks.orchestrate(context))
    return result, context


@pytest.fixture
def landing(azurite_server: Azurite) -> BlobObjectStore:
    name = f"landing-{uuid.uuid4().hex[:8]}"
    return BlobObjectStore(name, connection_string=azurite_server.connection_string, create=True)


def test_fan_out_to_chunks_then_fan_in_writes_the_manifest(landing: BlobObjectStore) -> None:
    lines = [json.dumps({"n": i}) for i in range(6_000)] + ["{broken"]
    anyio.run(landing.put, "in/orders.jsonl", ("\n".join(lines) + "\n").encode())
    processor, sink, letters = Doubler(), MemorySink(), MemorySink()
    clock = ManualClock()  # the backoff between deliveries passes at once
    pipeline = Pipeline(
        processor, sink, MemoryIdempotencyStore(clock=clock), letters,
        breaker=False, max_deliveries=100, clock=clock,
    )  # fmt: skip
    chunks = DurableChunks(
        pipeline, landing.container.container_name, objects=landing, chunk_size=10_000,
        attempts=2, first_retry_ms=1,
    )  # fmt: skip
    processor.broken = {5_999}  # the last chunk cannot commit: it is retried, then missing
    result, context = orchestrate(chunks, {"path": "in/orders.jsonl"})
    plan = chunks.plan({"path": "in/orders.jsonl"})
    last = plan["chunks"][-1]
    assert result == {"complete": False, "missing": [last]}
    assert context.calls.count(CHUNK) == len(plan["chunks"]) + 1  # the last one twice
    folder = chunks._ledger().folder("in/orders.jsonl", plan["version"])
    letter = json.loads(anyio.run(landing.get, f"{folder}/dead-letters/{last:05d}.json"))
    # The pipeline's own letter, in its sink too: the chunk, never its records.
    key = chunk_key("in/orders.jsonl", plan["version"], last)
    assert letter == letters.contents()[dead_letter_id(key)] and letter["key"] == key
    assert "ChunkIncomplete" in letter["message"]
    assert chunk_of(letter) == {
        "container": landing.container.container_name, "key": "in/orders.jsonl",
        "version": plan["version"], "index": last,
    }  # fmt: skip
    assert anyio.run(landing.head, f"{folder}/_SUCCESS") is None
    # Fixed downstream, run again: only the missing chunk is read.
    processor.broken = set()
    result, context = orchestrate(chunks, {"path": "in/orders.jsonl"})
    assert result["complete"] and result["rows"] == 6_001 and result["invalid"] == 1
    assert anyio.run(landing.head, f"{folder}/_SUCCESS") is not None
    # The chunk's letter stays (the sink's tooling removes it), beside the bad line's.
    assert sorted(v["n"] for v in sink.values()) == list(range(6_000)) and len(letters) == 2


def test_the_blueprint_registers_the_orchestrator_activities_and_trigger() -> None:
    chunks = DurableChunks(lambda: Pipeline(Doubler(), store=MemoryIdempotencyStore()), "landing")
    app = df.DFApp()
    app.register_functions(chunks.blueprint(trigger_path="landing/{name}"))
    names = {f.get_function_name() for f in app.get_functions()}
    assert {"onceflow_chunked", "onceflow_plan", CHUNK, "onceflow_fan_in"} <= names
    assert "onceflow_chunked_landed" in names
    assert instance_id("landing/a b.jsonl", "0x1") == instance_id("landing/a b.jsonl", "0x1")
    assert instance_id("landing/a b.jsonl", "0x1") != instance_id("landing/a b.jsonl", "0x2")


# -- the library's own replay engine, the extension's part played here --------------------------


class Extension:
    """Plays the Durable Functions extension for the library's real replay engine.

    Each turn the orchestrator runs from the start through `df.Orchestrator.create`'s
    handle (what the Functions worker calls) on the history JSON the extension hands
    over; the actions it answers are run as the real activities, and their results are
    written into the history as the extension writes them (TaskScheduled and
    TaskCompleted or TaskFailed; a retry's TimerCreated and TimerFired, then the task
    scheduled again), task ids numbered in the order the library numbers them.
    """

    NOW = "2026-12-03T00:00:00.000000Z"

    def __init__(self, chunks: DurableChunks, blob: dict[str, Any]) -> None:
        self.orchestrator = df.Orchestrator.create(chunks.orchestrate)
        self.activities = Context(chunks, blob).activities
        self.blob = blob
        self.history: list[dict[str, Any]] = []
        self.next_id = 0
        self.turns: list[list[dict[str, Any]]] = []
        """The new actions of each turn."""
        self.calls: list[str] = []

    def _event(self, kind: HistoryEventType, event_id: int = -1, **fields: Any) -> None:
        self.history.append(
            {"EventType": int(kind), "EventId": event_id, "IsPlayed": False,
             "Timestamp": self.NOW, **fields}
        )  # fmt: skip

    def _episode(self) -> None:
        for event in self.history:
            event["IsPlayed"] = True
        if self.history:
            self._event(HistoryEventType.ORCHESTRATOR_COMPLETED)
        self._event(HistoryEventType.ORCHESTRATOR_STARTED)

    def _schedule(self, action: dict[str, Any]) -> int:
        task_id = self.next_id
        self.next_id += 1
        self._event(HistoryEventType.TASK_SCHEDULED, task_id, Name=action["functionName"])
        return task_id

    def _run(self, task_id: int, action: dict[str, Any]) -> None:
        attempts = action.get("retryOptions", {}).get("maxNumberOfAttempts", 1)
        item = json.loads(action["input"]) if action.get("input") is not None else None
        for attempt in range(1, attempts + 1):
            self.calls.append(action["functionName"])
            try:
                value = self.activities[action["functionName"]](item)
            except Exception as exc:
                self._event(
                    HistoryEventType.TASK_FAILED, TaskScheduledId=task_id,
                    Reason=f"{type(exc).__name__}: {exc}", Details="",
                )  # fmt: skip
                if "retryOptions" not in action:
                    return
                # The library waits out one timer after every failure, the last one too.
                timer = self.next_id
                self.next_id += 1
                self._event(HistoryEventType.TIMER_CREATED, timer, FireAt=self.NOW)
                self._event(HistoryEventType.TIMER_FIRED, TimerId=timer, FireAt=self.NOW)
                if attempt < attempts:
                    task_id = self._schedule(action)
            else:
                result = json.dumps(value)
                self._event(HistoryEventType.TASK_COMPLETED, TaskScheduledId=task_id, Result=result)
                return

    def run(self) -> dict[str, Any]:
        """Turns until the orchestration is done; its state's output."""
        self._episode()
        self._event(HistoryEventType.EXECUTION_STARTED, Name="onceflow_chunked", Version="")
        seen = 0
        for _ in range(20):
            body = {"history": self.history, "instanceId": "i-1", "isReplaying": False,
                    "parentInstanceId": None, "input": json.dumps(self.blob)}  # fmt: skip
            state = json.loads(self.orchestrator(json.dumps(body)))
            assert state.get("error") is None, state["error"]
            if state["isDone"]:
                output: dict[str, Any] = state["output"]
                return output
            actions = [a for group in state["actions"] for a in group]
            # Replayed from the start, it asks again for everything it asked before.
            assert actions[:seen] == [a for turn in self.turns for a in turn]
            new = actions[seen:]
            assert new, "the orchestrator waits for nothing"
            seen = len(actions)
            self.turns.append(new)
            self._episode()
            ids = [self._schedule(action) for action in new]
            for task_id, action in zip(ids, new, strict=True):
                self._run(task_id, action)
        raise AssertionError("the orchestration never finished")


# azure-functions-durable 1.7 sets call_activity_with_retry's expected_type on the retry
# wrapper, not on the task whose completion it decodes: a retried activity's result is
# decoded without it (plain JSON, so it decodes the same, strict typing or not).
@pytest.mark.filterwarnings(
    "ignore:azure.functions df_loads was called without expected_type:DeprecationWarning"
)
def test_the_replay_engine_fans_out_in_one_turn_retries_and_fans_in(
    landing: BlobObjectStore,
) -> None:
    lines = [json.dumps({"n": i}) for i in range(3_000)]
    anyio.run(landing.put, "in/replayed.jsonl", ("\n".join(lines) + "\n").encode())
    processor, sink = Doubler(), MemorySink()
    clock = ManualClock()
    pipeline = Pipeline(
        processor, sink, MemoryIdempotencyStore(clock=clock), MemorySink(),
        breaker=False, max_deliveries=100, clock=clock,
    )  # fmt: skip
    chunks = DurableChunks(
        pipeline, landing.container.container_name, objects=landing, chunk_size=8_000,
        attempts=3, first_retry_ms=5,
    )  # fmt: skip
    processor.broken = {2_999}
    extension = Extension(chunks, {"path": "in/replayed.jsonl"})
    result = extension.run()
    plan_turn, fan_out, fan_in, dead_letter = extension.turns
    assert [a["functionName"] for a in plan_turn] == [PLAN]
    # Every chunk asked for at once, each with the retry options the extension runs.
    count = len(fan_out)
    assert count > 3 and {a["functionName"] for a in fan_out} == {CHUNK}
    assert [json.loads(a["input"])["index"] for a in fan_out] == list(range(count))
    assert {json.dumps(a["retryOptions"], sort_keys=True) for a in fan_out} == {
        json.dumps({"firstRetryIntervalInMilliseconds": 5, "maxNumberOfAttempts": 3})
    }
    assert [a["functionName"] for a in fan_in] == [FAN_IN]
    assert [a["functionName"] for a in dead_letter] == [DEAD_LETTER]
    assert json.loads(dead_letter[0]["input"])["chunks"] == [count - 1]
    assert "ChunkIncomplete" in json.loads(dead_letter[0]["input"])["error"]
    assert result == {"complete": False, "missing": [count - 1]}
    assert extension.calls.count(CHUNK) == count + 2  # the last chunk: three attempts
    # Downstream fixed, started again: only the missing chunk runs, then the manifest.
    processor.broken = set()
    again = Extension(chunks, {"path": "in/replayed.jsonl"})
    done = again.run()
    assert done["complete"] and done["rows"] == 3_000
    assert len(again.turns) == 3 and again.calls.count(CHUNK) == count
    assert sorted(v["n"] for v in sink.values()) == list(range(3_000))


def test_a_blob_rewritten_mid_run_fails_its_chunks_clearly(landing: BlobObjectStore) -> None:
    data = ("\n".join(json.dumps({"n": i}) for i in range(3_000)) + "\n").encode()
    anyio.run(landing.put, "in/rewritten.jsonl", data)
    sink = MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), MemorySink())
    chunks = DurableChunks(
        pipeline, landing.container.container_name, objects=landing, chunk_size=8_000
    )
    plan = chunks.plan({"path": "in/rewritten.jsonl"})
    item = {"path": plan["path"], "version": plan["version"]}
    first = chunks.chunk({**item, "index": 0})
    anyio.run(landing.put, "in/rewritten.jsonl", data.replace(b'"n": 3', b'"n": 9'))
    with pytest.raises(ObjectChanged, match="rewritten since its chunk plan") as caught:
        chunks.chunk({**item, "index": 1})
    assert '"n"' not in str(caught.value)
    assert len(sink) == first["rows"]  # nothing of the new version was applied
    assert not chunks.fan_in(item)["complete"]


def test_the_landing_trigger_ignores_the_ledgers_own_blobs(landing: BlobObjectStore) -> None:
    pipeline = Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), MemorySink())
    chunks = DurableChunks(pipeline, landing.container.container_name, objects=landing)
    assert chunks.ledger_file("_onceflow/chunked/in%2Fa.jsonl/0x1/plan.json")
    assert not chunks.ledger_file("in/a.jsonl")
    elsewhere = BlobObjectStore(landing.container, "ledgers/")
    chunks = DurableChunks(
        pipeline, landing.container.container_name, objects=landing,
        ledger=ChunkLedger(elsewhere),
    )  # fmt: skip
    assert chunks.ledger_file("ledgers/_onceflow/chunked/in%2Fa.jsonl/0x1/plan.json")
    assert not chunks.ledger_file("_onceflow/chunked/in%2Fa.jsonl/0x1/plan.json")
    other = BlobObjectStore(
        f"{landing.container.container_name}-x", connection_string="UseDevelopmentStorage=true"
    )
    chunks.ledger = ChunkLedger(other)
    assert not chunks.ledger_file("_onceflow/chunked/in%2Fa.jsonl/0x1/plan.json")
