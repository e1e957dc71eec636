"""Fault injection for the memory backend and the runner's steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from onceflow.errors import SimulatedCrash
from onceflow.pipeline import Step

__all__ = ["Faults"]


@dataclass
class _Plan:
    remaining: int
    error: BaseException | None


@dataclass
class Faults:
    """Crashes at pipeline steps and transient errors in backend calls, on demand.

    Pass it as `Pipeline(on_step=faults)` to crash at a step, and to the memory store
    and sinks (`faults=`) to make their calls fail:

        faults.crash_at(Step.AFTER_SINK_WRITE)             # the next batch dies there
        faults.fail("sink.write", times=2)                  # two ConnectionErrors
    """

    _crashes: dict[Step, _Plan] = field(default_factory=dict)
    _failures: dict[str, _Plan] = field(default_factory=dict)
    crashed: list[Step] = field(default_factory=list)
    """Steps where a crash was injected, in order."""

    def crash_at(self, step: Step | str, times: int = 1) -> None:
        """Raise `SimulatedCrash` the next `times` times the runner reaches `step`."""
        self._crashes[Step(step)] = _Plan(times, None)

    def fail(self, operation: str, times: int = 1, error: BaseException | None = None) -> None:
        """Make the next `times` calls of `operation` raise `error` (a ConnectionError).

        Operations: `store.claim`, `store.complete`, `store.release`, `sink.write`,
        `sink.write_and_complete`, `objects.put`, `objects.get`.
        """
        self._failures[operation] = _Plan(times, error)

    def clear(self) -> None:
        """Forget every planned fault."""
        self._crashes.clear()
        self._failures.clear()

    def __call__(self, step: Step, keys: Sequence[str]) -> None:
        """The runner's step hook."""
        plan = self._crashes.get(step)
        if plan and plan.remaining > 0:
            plan.remaining -= 1
            self.crashed.append(step)
            raise SimulatedCrash(step.value)

    def check(self, operation: str) -> None:
        """Raise the planned error for `operation`, if one is due."""
        plan = self._failures.get(operation)
        if plan and plan.remaining > 0:
            plan.remaining -= 1
            raise plan.error or ConnectionError(f"injected failure in {operation}")
