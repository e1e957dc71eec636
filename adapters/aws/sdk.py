"""Where the AWS backend makes boto3 clients, with a clear error when the extra is missing."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread

__all__ = ["ClientOnFirstUse", "boto3_client", "run_blocking"]

MISSING = "the AWS backend needs boto3: pip install 'onceflow[aws]'"

BOUNDED: dict[str, dict[str, Any]] = {
    "dynamodb": {
        "connect_timeout": 5,
        "read_timeout": 10,
        "retries": {"mode": "standard", "total_max_attempts": 3},
    }
}
"""botocore settings for the clients this package makes: its own retries of DynamoDB
(10 attempts, up to ~25 s of sleep, by default) and a 60 s read timeout cannot see an
invocation's deadline, so they stay short; the store's own backoff, which does, retries
throttles. A client you pass in keeps its settings."""


def boto3_client(service: str) -> Any:
    """A boto3 client for `service` configured from the environment (region, credentials)."""
    # Imported here so a handler pays for boto3 only when it builds a client.
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - the dev environment has boto3
        raise ImportError(MISSING) from exc
    make: Any = boto3.client  # the stubs only accept literal service names
    settings = BOUNDED.get(service)
    if settings is None:
        return make(service)
    from botocore.config import Config

    return make(service, config=Config(**settings))


async def run_blocking(call: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking boto3 call in a worker thread so the event loop keeps serving."""
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


class ClientOnFirstUse:
    """A `client` attribute: the client given to the constructor, else one made on first use.

    The owner's constructor stores the given client (or None) as `_client`; a client is
    made only when first needed, so building a store or sink at cold start costs nothing.
    """

    def __init__(self, service: str | None = None) -> None:
        self.service = service

    def __get__(self, owner: Any, owner_type: type | None = None) -> Any:
        if owner is None:
            return self
        client = owner.__dict__.get("_client")
        if client is None:
            client = boto3_client(self.service or owner.service)
            owner.__dict__["_client"] = client
        return client
