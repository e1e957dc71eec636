"""The points in a batch's life where a test may inject a crash."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

__all__ = ["Step", "StepHook"]


class Step(enum.Enum):
    """Points in a batch's life where a test may inject a crash."""

    AFTER_CLAIM = "after_claim"
    AFTER_PROCESS = "after_process"
    AFTER_SINK_WRITE = "after_sink_write"
    BEFORE_COMPLETE = "before_complete"
    AFTER_COMPLETE = "after_complete"


StepHook = Callable[[Step, Sequence[str]], None]
"""Called with the step and the keys it concerns; raising from it models a crash there."""
