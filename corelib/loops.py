"""One event loop per worker thread for `Pipeline.run_batch`, made once and closed cleanly.

Building an event loop for every batch (what `anyio.run` does) costs more than a small
batch's work, and so does `asyncio.Runner.run`, which installs and restores a SIGINT
handler around every call: several times a batch of ten SQS messages' own work. A
thread's first `run_batch` makes a loop that later calls on that thread reuse, each one
task on it; the loop is closed when the thread ends or, for the main thread, at exit.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

__all__ = ["run_on_thread_loop"]

T = TypeVar("T")


class _Holder:
    """Holds a thread's loop; when the thread ends it is collected and closes the loop."""

    def __init__(self) -> None:
        # The loop is never made the thread's current loop, so closing it from the thread
        # that collects the holder (or at exit) changes no thread's event-loop setting.
        import asyncio  # on first use: importing onceflow costs no event loop machinery

        self.loop = asyncio.new_event_loop()
        weakref.finalize(self, _close, self.loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """What `asyncio.Runner.close` does: cancel what is left, finish generators, close."""
    import asyncio

    if loop.is_closed() or loop.is_running():
        return
    try:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


_local = threading.local()


def run_on_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on this thread's own event loop (made on first use).

    Each call gets a copy of the caller's context variables, as `asyncio.run` gives. When
    the call is interrupted (Ctrl-C, a signal's exception), its task is cancelled and run
    to its end before the exception goes on, so the next call starts on a clean loop.
    """
    holder: _Holder | None = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _Holder()
    loop = holder.loop
    task = loop.create_task(coro, context=contextvars.copy_context())
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            # The first exception is the one that goes on; the task's own end is dropped.
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise
