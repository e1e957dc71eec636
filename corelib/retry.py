"""Retry policies: exponential backoff with jitter, and how many attempts to make.

A pipeline holds two, one for events (`Pipeline(retry=...)`) and one for backend calls
(`Pipeline(backend_retry=...)`), with separate attempt counts; every adapter takes a
`RetryPolicy` for its own request-level retries (throttled or unprocessed items).
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Backoff", "RetryPolicy", "deadline_in", "time_left"]

T = TypeVar("T")

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "onceflow_deadline", default=None
)
"""The current invocation's deadline on `time.monotonic()`, None when it has none."""


@contextmanager
def deadline_in(seconds: float | None) -> Iterator[None]:
    """Within the block, retry loops stop waiting `seconds` from now (an earlier one stays).

    Entry points with a deadline (a Lambda invocation's time left) set it; it reaches
    every retry loop below, worker threads included (anyio copies the context), so none
    sleeps past it: a retry that would end after it gives up and its events come again.
    """
    if seconds is None:
        yield
        return
    at = time.monotonic() + seconds
    current = _DEADLINE.get()
    token = _DEADLINE.set(at if current is None else min(at, current))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline (see `deadline_in`), None when there is none."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


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

    def too_late(self, delay: float) -> bool:
        """Whether waiting `delay` before a retry would end past the current deadline."""
        left = time_left()
        return left is not None and delay >= left

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
                delay = self.delay(attempt)
                if self.exhausted(attempt) or isinstance(exc, permanent) or self.too_late(delay):
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                await sleep(delay)

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
                delay = self.delay(attempt)
                if self.exhausted(attempt) or self.too_late(delay):
                    raise
                sleep(delay)
