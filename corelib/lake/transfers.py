"""Many object-store transfers at once, with the first failure raised as itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from onceflow.interfaces import ObjectStore

__all__ = ["get_all", "put_all"]

CONCURRENCY = 16


async def _each(calls: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the calls concurrently; the first error escapes unwrapped, the rest are cancelled."""
    errors: list[BaseException] = []
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def run(call: Callable[[], Awaitable[None]], group: anyio.abc.TaskGroup) -> None:
        try:
            async with limiter:
                await call()
        except Exception as exc:
            errors.append(exc)
            group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        for call in calls:
            group.start_soon(run, call, group)
    if errors:
        raise errors[0]


async def put_all(store: ObjectStore, objects: Sequence[tuple[str, bytes]]) -> None:
    """Put every `(path, body)`; raises the first failure."""

    def put(path: str, body: bytes) -> Callable[[], Awaitable[None]]:
        return lambda: store.put(path, body)

    await _each([put(path, body) for path, body in objects])


async def get_all(store: ObjectStore, paths: Sequence[str]) -> list[bytes]:
    """The objects' bytes, in the order given; raises the first failure."""
    bodies: list[bytes] = [b""] * len(paths)

    def get(index: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            bodies[index] = await store.get(paths[index])

        return call

    await _each([get(i) for i in range(len(paths))])
    return bodies
