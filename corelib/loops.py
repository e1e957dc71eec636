"""One event loop per worker thread for `Pipeline.run_batch`, made once and closed cleanly.

Building an event loop for every batch (what `anyio.run` does) costs more than a small
batch's work. A thread's first `run_batch` makes an asyncio runner that later calls on that
thread reuse; it is closed when the thread ends or, for the main thread, at exit.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["run_on_thread_loop"]

T = TypeVar("T")


class _Holder:
    """Holds a thread's runner; when the thread ends it is collected and closes the runner."""

    def __init__(self) -> None:
        # The loop is never made the thread's current loop, so closing it from the thread
        # that collects the holder (or at exit) changes no thread's event-loop setting.
        import asyncio  # on first use: importing onceflow costs no event loop machinery

        self.runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        weakref.finalize(self, self.runner.close)


_local = threading.local()


def run_on_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on this thread's own event loop (made on first use).

    Each call gets a copy of the caller's context variables, as `asyncio.run` gives.
    """
    holder: _Holder | None = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _Holder()
    return holder.runner.run(_boxed(coro), context=contextvars.copy_context()).value


class _Box(Generic[T]):
    """A result with a short repr. On the main thread `asyncio.Runner.run` ends with
    `signal.getsignal(SIGINT)`, which formats its handler (bound to the task) into an
    error message it drops, and with it the task's result: a whole `BatchResult`."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<result>"


async def _boxed(coro: Coroutine[Any, Any, T]) -> _Box[T]:
    return _Box(await coro)
