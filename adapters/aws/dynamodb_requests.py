"""Bulk DynamoDB requests with DynamoDB's own limits: chunking, unprocessed retries, cancellations.

These run in a worker thread (boto3 is blocking) and wait with `time.sleep`: the
store's clock is logical time for leases and TTL, which a backoff must not move. Each
retry loop follows the `RetryPolicy` it is given: `attempts` requests in all, its
backoff between them, and none of it past the invocation's deadline
(`onceflow.retry.deadline_in`, which a Lambda handler sets): see `retry_after`.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from onceflow.retry import Backoff, RetryPolicy

__all__ = [
    "BATCH_GET_LIMIT",
    "BATCH_WRITE_LIMIT",
    "THROTTLING_ERRORS",
    "TRANSACTION_BYTES",
    "TRANSACTION_LIMIT",
    "DynamoDBUnavailable",
    "TransactAction",
    "WriteConditionFailed",
    "batch_get",
    "batch_write",
    "chunks",
    "default_retry",
    "error_code",
    "retry_after",
    "send",
    "stored_key",
    "throttling",
    "transact",
    "transact_action",
]

BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
TRANSACTION_LIMIT = 100
TRANSACTION_BYTES = 4_000_000
"""A transaction's budget in request bytes: DynamoDB refuses more than 4 MB of items in one
(4,194,304 bytes); the request's JSON is a little larger than its items, so this is safe."""
MAX_KEY_BYTES = 1024
"""Longer keys are stored by hash (DynamoDB allows 2048 bytes for a partition key)."""
PARALLEL_REQUESTS = 4
"""Independent batch requests in flight at once (boto3 clients are thread-safe)."""
T = TypeVar("T")
RETRYABLE_REASONS = frozenset(
    {
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
        "InternalServerError",
    }
)

THROTTLING_ERRORS = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
"""Error codes of a whole request DynamoDB refused for load: sent again after a backoff."""


def default_retry() -> RetryPolicy:
    """Request-level retries of unprocessed items and throttled or conflicting transactions."""
    return RetryPolicy(attempts=8, backoff=Backoff(base=0.02, cap=1.0))


class DynamoDBUnavailable(RuntimeError):
    """DynamoDB kept refusing part of a request (throttling, conflicts) after every retry."""


class WriteConditionFailed(Exception):
    """The condition of a sink's own write failed: its key's transaction cannot commit, ever.

    `refused` maps each such key to the failed write's position among that key's writes;
    the other keys of the commit were committed. The sink turns it into `OutputRejected`.
    """

    def __init__(self, refused: dict[str, int]) -> None:
        super().__init__(f"the condition of a write failed for {len(refused)} key(s)")
        self.refused = refused


def stored_key(key: str) -> str:
    """The partition-key value for an identity (an event key, an output id): itself, or its
    hash when it is over `MAX_KEY_BYTES` or not valid UTF-8. The store and the sink both
    key items by this, so an identity fits wherever it is stored."""
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        encoded = b""  # a lone surrogate: hashed below, from its surrogatepass bytes
    if encoded and len(encoded) <= MAX_KEY_BYTES:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore `ClientError`, or ''."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def throttling(exc: BaseException) -> bool:
    """Whether `exc` is DynamoDB refusing a request for load (a throttle, not a fault)."""
    return error_code(exc) in THROTTLING_ERRORS


def retry_after(retry: RetryPolicy, attempt: int) -> str | None:
    """Sleep the policy's backoff after failed attempt number `attempt` and return None; or,
    without sleeping, say why not: the policy is spent, or the wait would end past the
    invocation's deadline (the caller gives up, and its events come again)."""
    if retry.exhausted(attempt):
        return f"after {attempt} attempts"
    delay = retry.delay(attempt)
    if retry.too_late(delay):
        return f"at the invocation's deadline, after {attempt} attempts"
    time.sleep(delay)
    return None


def send(call: Callable[..., T], retry: RetryPolicy, /, **kwargs: Any) -> T:
    """`call(**kwargs)`, sent again with the policy's backoff while DynamoDB throttles it."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(**kwargs)
        except Exception as exc:
            if not throttling(exc):
                raise
            stop = retry_after(retry, attempt)
            if stop is not None:
                raise DynamoDBUnavailable(
                    f"DynamoDB throttled the request, given up {stop}: {error_code(exc)}"
                ) from exc


def batch_get(
    client: Any,
    table: str,
    keys: Sequence[dict[str, Any]],
    retry: RetryPolicy,
    *,
    key_attribute: str,
) -> dict[str, dict[str, Any]]:
    """Every existing item among `keys` (typed), by the key attribute's string value."""

    def fetch(chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = list(chunk)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = client.batch_get_item(
                    RequestItems={table: {"Keys": pending, "ConsistentRead": True}}
                )
            except Exception as exc:
                if not throttling(exc):
                    raise
                # Throttled as a whole: every key is still to fetch, after a backoff.
                response = {"UnprocessedKeys": {table: {"Keys": pending}}}
            got.extend(response.get("Responses", {}).get(table, []))
            pending = response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
            if not pending:
                return got
            stop = retry_after(retry, attempt)
            if stop is not None:
                raise DynamoDBUnavailable(
                    f"BatchGetItem on {table}: {len(pending)} keys unprocessed {stop}"
                )

    found: dict[str, dict[str, Any]] = {}
    for items in _each(fetch, list(chunks(keys, BATCH_GET_LIMIT))):
        for item in items:
            found[item[key_attribute]["S"]] = item
    return found


def batch_write(
    client: Any, requests: Sequence[tuple[str, dict[str, Any]]], retry: RetryPolicy
) -> None:
    """`(table, PutRequest/DeleteRequest)` pairs in BatchWriteItem calls of 25, until all land."""

    def write(chunk: Sequence[tuple[str, dict[str, Any]]]) -> None:
        pending: dict[str, list[dict[str, Any]]] = {}
        for table, request in chunk:
            pending.setdefault(table, []).append(request)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = client.batch_write_item(RequestItems=pending)
            except Exception as exc:
                if not throttling(exc):
                    raise
                response = {"UnprocessedItems": pending}  # throttled as a whole
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            stop = retry_after(retry, attempt)
            if stop is not None:
                left = sum(len(v) for v in pending.values())
                raise DynamoDBUnavailable(f"BatchWriteItem: {left} items unprocessed {stop}")

    _each(write, list(chunks(requests, BATCH_WRITE_LIMIT)))


def _each(call: Callable[[Any], T], chunks_: list[Any]) -> list[T]:
    """`call` on every chunk, a few at a time: latency, not throughput, bounds a batch."""
    if len(chunks_) <= 1:
        return [call(chunk) for chunk in chunks_]
    return in_parallel(call, chunks_)


def in_parallel(call: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """`call` on every item in a few threads, each in a copy of the caller's context (so the
    invocation's deadline reaches their retry loops)."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(items))) as pool:
        return list(pool.map(lambda item: context.copy().run(call, item), items))


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one action of a cancelled transaction did not apply."""

    code: str
    """`None` (it was fine, another action failed), `ConditionalCheckFailed`, ..."""
    item: dict[str, Any] | None = None
    """The item as it was, for a failed condition asked to return it."""
    message: str = ""


class TransactAction(NamedTuple):
    """One TransactWriteItems action (typed), with the item it writes.

    The DynamoDB store's transaction vocabulary: an atomic sink hands these to
    `DynamoDBIdempotencyStore.complete_with`, filed by event key.
    """

    request: dict[str, Any]
    """`{"Put": {...}}`, `{"Update": {...}}`, `{"Delete": {...}}` or `{"ConditionCheck": ...}`."""
    target: str
    """The table and key written: two actions on one item may not share a transaction."""
    size: int = 0
    """Its bytes on the wire (as JSON), for packing transactions under `TRANSACTION_BYTES`."""


def transact_action(
    request: dict[str, Any], key_attributes: Collection[str], size: int | None = None
) -> TransactAction:
    """`request` with its target, found by its `Key` or, for a Put, its key attributes, and
    its size (`wire_size`, unless the caller knows a bound)."""
    [body] = request.values()
    key = body.get("Key")
    if key is None:
        item = body.get("Item", {})
        key = {name: item[name] for name in key_attributes if name in item}
    target = f"{body.get('TableName')}|{sorted((k, str(v)) for k, v in key.items())}"
    return TransactAction(request, target, wire_size(request) if size is None else size)


def wire_size(request: dict[str, Any]) -> int:
    """About how many bytes `request` takes in a request's JSON (binaries as base64): at
    least its items' size, which DynamoDB's 4 MB transaction limit counts."""
    text = json.dumps(request, separators=(",", ":"), ensure_ascii=False, default=_base64_length)
    return len(text.encode("utf-8", "surrogatepass"))


def _base64_length(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "=" * ((len(value) + 2) // 3 * 4)
    return str(value)


def request_token(actions: Sequence[dict[str, Any]]) -> str:
    """A ClientRequestToken naming exactly these actions: sending them again is idempotent.

    DynamoDB applies a transaction with a token it saw succeed in the last 10 minutes
    only once, and answers success again; botocore's own retries reuse the token, and so
    does any resend of the same actions (ours, or the pipeline's). Different actions get
    a different token, so a token is never reused for another request.
    """
    text = json.dumps(actions, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:36]


def transact(client: Any, actions: Sequence[dict[str, Any]]) -> list[Reason] | None:
    """One idempotent TransactWriteItems call; None when it committed, else a reason per action."""
    try:
        client.transact_write_items(
            TransactItems=list(actions), ClientRequestToken=request_token(actions)
        )
    except Exception as exc:
        if throttling(exc) or error_code(exc) == "TransactionInProgressException":
            # Refused for load, or the same request is still being applied: retryable.
            return [Reason("ThrottlingError") for _ in actions]
        if error_code(exc) != "TransactionCanceledException":
            raise
        raw = getattr(exc, "response", {}).get("CancellationReasons") or []
        if len(raw) != len(actions):
            # Without per-action reasons nothing can be settled: treat all as retryable.
            return [Reason("TransactionConflict") for _ in actions]
        return [
            Reason(str(r.get("Code", "None")), r.get("Item"), str(r.get("Message", "")))
            for r in raw
        ]
    return None
