"""Fault injection for the memory backend and the runner's steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from onceflow.errors import SimulatedCrash
from onceflow.pipeline import Step

__all__ = ["OPERATIONS", "Faults"]

OPERATIONS = (
    "objects.get",
    "objects.put",
    "sink.write",
    "sink.write_and_complete",
    "store.claim",
    "store.complete",
    "store.release",
)
"""The backend calls `Faults.fail` can make fail."""

# An atomic memory sink writes its outputs in `write_and_complete`: a planned
# "sink.write" fault fires there too, so a test of a sink outage needs not know the
# commit path the pipeline chose.
_ALSO = {"sink.write_and_complete": ("sink.write_and_complete", "sink.write")}


@dataclass
class _Plan:
    remaining: int
    error: BaseException | None
    planned: int = 0

    def __post_init__(self) -> None:
        self.planned = self.planned or self.remaining


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
    failed: list[str] = field(default_factory=list)
    """Operations where a failure was injected, in order."""

    def crash_at(self, step: Step | str, times: int = 1) -> None:
        """Raise `SimulatedCrash` the next `times` times the runner reaches `step`."""
        try:
            planned = Step(step)
        except ValueError:
            names = ", ".join(s.value for s in Step)
            raise ValueError(f"no pipeline step is called {step!r}: use one of {names}") from None
        self._crashes[planned] = _Plan(times, None)

    def unfired(self) -> list[str]:
        """Planned faults that have not fired yet, e.g. `sink.write (2 of 2 left)`."""
        pending = [
            *((str(step.value), plan) for step, plan in self._crashes.items()),
            *self._failures.items(),
        ]
        return [
            f"{name} ({plan.remaining} of {plan.planned} left)"
            for name, plan in pending
            if plan.remaining > 0
        ]

    def assert_fired(self) -> None:
        """Fail, naming them, if planned faults never fired: the test did not test them."""
        left = self.unfired()
        if left:
            raise AssertionError(
                f"planned faults never fired: {'; '.join(left)}; the code under test never "
                "reached them (is the store or sink built with faults=?)"
            )

    def fail(self, operation: str, times: int = 1, error: BaseException | None = None) -> None:
        """Make the next `times` calls of `operation` raise `error` (a ConnectionError).

        Operations: `store.claim`, `store.complete`, `store.release`, `sink.write` (any
        write of a sink's outputs, atomic ones included), `sink.write_and_complete` (only
        atomic ones), `objects.put`, `objects.get`; any other name is refused.
        """
        if operation not in OPERATIONS:
            raise ValueError(
                f"no backend operation is called {operation!r}: use one of {', '.join(OPERATIONS)}"
            )
        if times < 0:
            raise ValueError(f"times is {times}: plan 0 (none) or more failures")
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
        for name in _ALSO.get(operation, (operation,)):
            plan = self._failures.get(name)
            if plan and plan.remaining > 0:
                plan.remaining -= 1
                self.failed.append(name)
                raise plan.error or ConnectionError(f"injected failure in {name}")
