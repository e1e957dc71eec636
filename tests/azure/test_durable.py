"""Large blobs on Durable Functions: the orchestrator and its chunk activities.

The orchestrator is driven by the durable library's own unit-test support
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
import pytest
from azure.durable_functions.models.Task import TaskBase
from azure.durable_functions.testing import orchestrator_generator_wrapper

from onceflow import Event, Pipeline
from onceflow.adapters.azure.durable import CHUNK, DurableChunks, instance_id
from onceflow.adapters.azure.objects import BlobObjectStore
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
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

    def get_input(self) -> dict[str, Any]:
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

    def call_activity(self, name: str, input_: Any = None) -> TaskBase:
        return self._task(name, input_)

    def call_activity_with_retry(self, name: str, retry: Any, input_: Any = None) -> TaskBase:
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
    assert letter["chunk"] == last and "ChunkIncomplete" in letter["error"]
    assert anyio.run(landing.head, f"{folder}/_SUCCESS") is None
    # Fixed downstream, run again: only the missing chunk is read.
    processor.broken = set()
    result, context = orchestrate(chunks, {"path": "in/orders.jsonl"})
    assert result["complete"] and result["rows"] == 6_001 and result["invalid"] == 1
    assert anyio.run(landing.head, f"{folder}/_SUCCESS") is not None
    assert sorted(v["n"] for v in sink.values()) == list(range(6_000)) and len(letters) == 1


def test_the_blueprint_registers_the_orchestrator_activities_and_trigger() -> None:
    import azure.durable_functions as df

    chunks = DurableChunks(lambda: Pipeline(Doubler(), store=MemoryIdempotencyStore()), "landing")
    app = df.DFApp()
    app.register_functions(chunks.blueprint(trigger_path="landing/{name}"))
    names = {f.get_function_name() for f in app.get_functions()}
    assert {"onceflow_chunked", "onceflow_plan", CHUNK, "onceflow_fan_in"} <= names
    assert "onceflow_chunked_landed" in names
    assert instance_id("landing/a b.jsonl", "0x1") == instance_id("landing/a b.jsonl", "0x1")
    assert instance_id("landing/a b.jsonl", "0x1") != instance_id("landing/a b.jsonl", "0x2")
