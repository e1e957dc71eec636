"""Exponential backoff with jitter, shared by the runner and every backend."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delay before retry `attempt`: `base * factor**(attempt-1)`, capped, with jitter.

    Jitter keeps the upper half of the window random ("equal jitter"), so workers that
    failed together do not retry together, yet no retry comes sooner than half the delay.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 20.0
    jitter: bool = True
    seed: int | None = None
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        if not self.jitter:
            return ceiling
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)
