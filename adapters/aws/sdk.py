"""Where the AWS backend makes boto3 clients, with a clear error when the extra is missing."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread

__all__ = ["boto3_client", "run_blocking"]

MISSING = "the AWS backend needs boto3: pip install 'onceflow[aws]'"


def boto3_client(service: str) -> Any:
    """A boto3 client for `service` configured from the environment (region, credentials)."""
    # Imported here so a handler pays for boto3 only when it builds a client.
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - the dev environment has boto3
        raise ImportError(MISSING) from exc
    make: Any = boto3.client  # the stubs only accept literal service names
    return make(service)


async def run_blocking(call: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking boto3 call in a worker thread so the event loop keeps serving."""
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))
