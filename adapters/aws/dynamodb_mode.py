"""How the DynamoDB store and sink commit: one mode for both, built by one factory.

    store, sink = dynamodb_pipeline_parts("state", "orders", mode=DynamoDBMode.OPTIMISTIC)
    Pipeline(OrderProcessor(), sink, store)

- `UPSERT`: claims read; outputs, then markers, in BatchWriteItem calls. For outputs
  that are keyed overwrites; the cheapest.
- `OPTIMISTIC`: claims read; one transaction per key, if its record is unchanged since
  the claim. For effects that stay inside DynamoDB.
- `FENCED`: claims read and lease; one transaction per key, if the lease still holds.
  For counters and other non-idempotent writes (`action=`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from onceflow.interfaces import Clock
from onceflow.retry import RetryPolicy

if TYPE_CHECKING:
    from onceflow.adapters.aws.dynamodb_sink import Action, DynamoDBSink, ItemOf
    from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore

__all__ = ["DynamoDBMode", "dynamodb_pipeline_parts"]


class DynamoDBMode(enum.Enum):
    """How a `DynamoDBIdempotencyStore` claims keys and how a `DynamoDBSink` commits."""

    FENCED = "fenced"
    """Claims lease each free key (a conditional write); outputs and markers commit in one
    transaction only while the lease holds. Racing workers never both run an event, and
    non-idempotent writes (`action=` counters) apply once. Passes every store contract."""
    OPTIMISTIC = "optimistic"
    """Claims only read; each key's outputs and marker commit in one transaction only if
    the key's record is still the one read at claim time (`Claim.observed`): the first
    commit wins, a later one writes nothing. Racing workers may both run an event."""
    UPSERT = "upsert"
    """Claims only read; outputs are upserted by `output_id` (BatchWriteItem), then the
    markers. The cheapest; right when every output is a keyed overwrite."""

    @property
    def atomic(self) -> bool:
        """Whether a sink in this mode commits its outputs with the store's markers."""
        return self is not DynamoDBMode.UPSERT

    @property
    def leases(self) -> bool:
        """Whether a store in this mode writes a lease when it claims a key."""
        return self is DynamoDBMode.FENCED


def dynamodb_pipeline_parts(
    state_table: str,
    output_table: str | None = None,
    *,
    mode: DynamoDBMode = DynamoDBMode.FENCED,
    client: Any = None,
    clock: Clock | None = None,
    ttl_seconds: float = 86_400.0,
    action: Action | None = None,
    item: ItemOf | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[DynamoDBIdempotencyStore, DynamoDBSink]:
    """A store on `state_table` and a sink on `output_table` (default: the same) in one mode.

    Refuses, with a `ConfigurationError` naming the fix, what the mode cannot do
    (an `action=` that is not an overwrite needs an atomic mode).
    """
    from onceflow.adapters.aws.dynamodb_sink import DynamoDBSink
    from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore

    store = DynamoDBIdempotencyStore(
        state_table, mode=mode, client=client, clock=clock, ttl_seconds=ttl_seconds, retry=retry
    )
    sink = DynamoDBSink(
        output_table or state_table,
        mode=mode,
        client=client,
        action=action,
        item=item,
        retry=retry,
    )
    return store, sink
