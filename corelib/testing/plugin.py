"""onceflow's pytest plugin (entry point `pytest11`): fixtures for users' own tests.

Installed with onceflow, it gives every test suite:

- `onceflow_clock`: a `ManualClock` at 0; `advance(seconds)` moves it.
- `onceflow_faults`: a `Faults` plan; the test fails if a planned fault never fired.
- `onceflow_pipeline`: a factory, `onceflow_pipeline(processor, **pipeline_options)`,
  returning a `MemoryPipeline`: a `Pipeline` on the memory backend wired to that clock
  and those faults, with its `store`, `sink` and `dead_letters` at hand.

    def test_orders(onceflow_pipeline, onceflow_faults):
        run = onceflow_pipeline(OrderProcessor())
        onceflow_faults.fail("sink.write")
        assert run.pipeline.run_batch(events).processed == ["1"]

Trigger payloads come from `onceflow.adapters.aws.testing` (every Lambda trigger) and
`onceflow.adapters.azure.testing` (Event Hubs, Blob, Queue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from onceflow.adapters.memory import (
        Faults,
        ManualClock,
        MemoryIdempotencyStore,
        MemorySink,
    )
    from onceflow.pipeline import Pipeline

__all__ = ["MemoryPipeline", "onceflow_clock", "onceflow_faults", "onceflow_pipeline"]


@dataclass
class MemoryPipeline:
    """A pipeline on the memory backend and the parts a test looks at."""

    pipeline: Pipeline
    store: MemoryIdempotencyStore
    sink: MemorySink
    dead_letters: MemorySink
    clock: ManualClock
    faults: Faults


@pytest.fixture
def onceflow_clock() -> ManualClock:
    """A manual clock at time 0, shared by the `onceflow_pipeline` parts."""
    from onceflow.clock import ManualClock

    return ManualClock()


@pytest.fixture
def onceflow_faults() -> Iterator[Faults]:
    """A fault plan; at the end of the test, every planned fault must have fired."""
    from onceflow.adapters.memory import Faults

    faults = Faults()
    yield faults
    faults.assert_fired()


@pytest.fixture
def onceflow_pipeline(
    onceflow_clock: ManualClock, onceflow_faults: Faults
) -> Callable[..., MemoryPipeline]:
    """Builds a memory-backed pipeline for a processor: `onceflow_pipeline(processor, ...)`.

    `atomic=False` makes the sink write, then complete (the path of sinks outside the
    store); other keywords go to `Pipeline`.
    """
    from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
    from onceflow.pipeline import Pipeline

    def build(processor: Any, *, atomic: bool = True, **options: Any) -> MemoryPipeline:
        store = MemoryIdempotencyStore(clock=onceflow_clock, faults=onceflow_faults)
        sink = MemorySink(atomic=atomic, faults=onceflow_faults)
        letters = MemorySink(faults=onceflow_faults)
        options.setdefault("clock", onceflow_clock)
        options.setdefault("on_step", onceflow_faults)
        pipeline = Pipeline(processor, sink, store, letters, **options)
        return MemoryPipeline(pipeline, store, sink, letters, onceflow_clock, onceflow_faults)

    return build
