"""The request loop every Azure store, sink and object store shares: throttled requests again.

Azure refuses a request for load with 503 Server Busy (`x-ms-error-code: ServerBusy`:
Storage's Blob, Queue and Table services) or 429 Too Many Requests (Cosmos DB, and Table
on Cosmos DB), in both cases before applying it. Cosmos DB also answers a write 449 Retry
With (a transient conflict on the replica, not applied, "safe to retry"), which its Python
SDK raises at once: it is sent again here the same way. The SDKs' own policies retry some of
these (Tables retries 429 and 503; Cosmos retries 429 up to 9 times; Blob and Queue retry
503 but never 429), each with its own budget; what gets past them reaches this loop,
which sends the request again with the `RetryPolicy`'s backoff, waiting at least what
the service asked for (`x-ms-retry-after-ms`, `retry-after-ms` or `Retry-After`), and
never past the invocation's deadline (`onceflow.retry.deadline_in`).

These calls run in worker threads (the SDKs are blocking) and wait with `time.sleep`:
a store's clock is logical time for leases, which a backoff must not move. A throttle
that outlives the policy raises `AzureThrottled`, a transient error: the pipeline's
`backend_retry` tries again, then fails the events for redelivery; it never
dead-letters them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from onceflow.retry import Backoff, RetryPolicy

__all__ = [
    "RETRY_WITH",
    "THROTTLING_STATUSES",
    "AzureThrottled",
    "default_retry",
    "listed",
    "requested_wait",
    "send",
    "throttling",
]

T = TypeVar("T")

THROTTLING_STATUSES = frozenset({429, 503})
"""HTTP statuses Azure answers a request it refused for load with (not applied)."""
RETRY_WITH = 449
"""Cosmos DB's answer to a write it did not apply for a transient conflict: send it again."""
LONGEST_WAIT = 30.0
"""Seconds at most waited for one `Retry-After` (Cosmos's own policy stops at 30 s)."""


class AzureThrottled(RuntimeError):
    """Azure kept throttling a request after every retry (an overload, not a bad event)."""


def default_retry() -> RetryPolicy:
    """Request-level retries of throttled requests: 8 attempts, 50 ms doubling up to 2 s."""
    return RetryPolicy(attempts=8, backoff=Backoff(base=0.05, cap=2.0))


def throttling(exc: BaseException) -> bool:
    """Whether `exc` is an Azure SDK's error for a request refused for load (or Cosmos's
    449 Retry With: refused, not applied, to be sent again)."""
    status = getattr(exc, "status_code", None)
    return status in THROTTLING_STATUSES or status == RETRY_WITH


def requested_wait(exc: BaseException) -> float:
    """Seconds the service asked the client to wait before retrying (0 when it said none)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("x-ms-retry-after-ms", 0.001), ("retry-after-ms", 0.001)):
        value = headers.get(name)
        if value:
            try:
                return min(LONGEST_WAIT, float(value) * scale)
            except ValueError:
                pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value:
        try:
            return min(LONGEST_WAIT, float(value))
        except ValueError:
            return 0.0  # an HTTP date: the backoff decides
    return 0.0


def _code(exc: BaseException) -> str:
    """`ServerBusy (HTTP 503)`: the service's error code and status."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code) or type(exc).__name__
    return f"{code} (HTTP {getattr(exc, 'status_code', '?')})"


def listed(call: Callable[..., Iterable[T]], /, *args: Any, **kwargs: Any) -> list[T]:
    """`list(call(...))`: a paged query read whole, so a throttled page reads it again."""
    return list(call(*args, **kwargs))


def send(retry: RetryPolicy, what: str, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, made again with the policy's backoff while Azure throttles it;
    `what` names the request in the error that ends it."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not throttling(exc):
                raise
            if retry.exhausted(attempt):
                stop = f"after {attempt} attempts"
            else:
                delay = max(retry.delay(attempt), requested_wait(exc))
                if not retry.too_late(delay):
                    time.sleep(delay)
                    continue
                stop = f"at the invocation's deadline, after {attempt} attempts"
            raise AzureThrottled(f"Azure throttled {what}, given up {stop}: {_code(exc)}") from exc
