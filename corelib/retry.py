"""Retry policies: exponential backoff with jitter, and how many attempts to make.

A pipeline holds two, one for events (`Pipeline(retry=...)`) and one for backend calls
(`Pipeline(backend_retry=...)`), with separate attempt counts; every adapter takes a
`RetryPolicy` for its own request-level retries (throttled or unprocessed items).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Backoff", "RetryPolicy"]

T = TypeVar("T")


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


@dataclass
class RetryPolicy:
    """How many attempts to make, and how long to wait between them."""

    attempts: int = 3
    """Attempts in all, the first included (1 means no retry)."""
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy(attempts={self.attempts}): at least 1 attempt")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return self.backoff.delay(attempt)

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt number `attempt` was the last one allowed."""
        return attempt >= self.attempts

    def delays(self) -> Iterator[float]:
        """The wait before each retry, `attempts - 1` of them, for loops over partial results."""
        for attempt in range(1, self.attempts):
            yield self.delay(attempt)

    async def call(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]],
        permanent: tuple[type[BaseException], ...] = (),
        on_retry: Callable[[int, Exception], None] | None = None,
    ) -> T:
        """`await call()`, retrying other errors than `permanent` ones; the last one escapes."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except Exception as exc:
                if self.exhausted(attempt) or isinstance(exc, permanent):
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                await sleep(self.delay(attempt))

    def call_blocking(
        self,
        call: Callable[[], T],
        *,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """`call()` from blocking code (a worker thread), retrying `retry_on` errors."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except retry_on:
                if self.exhausted(attempt):
                    raise
                sleep(self.delay(attempt))
