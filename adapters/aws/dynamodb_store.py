"""The idempotency store on one DynamoDB table: status, lease, fencing token, TTL, payload hash.

Two ways to claim, both exactly-once with `DynamoDBSink`:

- `leases=True` (fenced): one BatchGetItem per 100 keys finds known keys, then
  conditional TransactWriteItems (100 actions each) lease the free ones. A worker
  that loses its lease cannot commit. Passes every store contract.
- `leases=False` (upsert and optimistic): the BatchGetItem alone. Nothing is written
  at claim time; with a non-atomic sink, markers are upserted after the outputs
  (keyed overwrites make a repeat harmless); with an atomic sink, the commit
  transaction is conditional on the row being unchanged since it was read.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from onceflow.adapters.aws.dynamodb_requests import (
    MAX_ROUNDS,
    RETRYABLE_REASONS,
    TRANSACTION_LIMIT,
    DynamoDBUnavailable,
    batch_get,
    batch_write,
    chunks,
    error_code,
    transact,
)
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.clock import SystemClock
from onceflow.interfaces import Clock
from onceflow.records import Claim, ClaimStatus, Completion, Outcome, OutcomeStatus
from onceflow.retry import Backoff

__all__ = ["DynamoDBIdempotencyStore", "create_table"]

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
MAX_KEY_BYTES = 1024
"""Longer keys are stored by hash (DynamoDB allows 2048 bytes for a partition key)."""


def create_table(
    client: Any, name: str, *, key_attribute: str = "pk", ttl_attribute: str | None = "expires_at"
) -> None:
    """Create an on-demand table keyed by one string attribute, with TTL on `ttl_attribute`."""
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key_attribute, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key_attribute, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    if ttl_attribute:
        client.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
        )


class DynamoDBIdempotencyStore:
    """Keys, leases and outcomes as items of one DynamoDB table; bulk requests only."""

    client = ClientOnFirstUse("dynamodb")

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        clock: Clock | None = None,
        ttl_seconds: float = 86_400.0,
        leases: bool = True,
        key_attribute: str = "pk",
        ttl_attribute: str = "expires_at",
        backoff: Backoff | None = None,
    ) -> None:
        self.table = table
        self.clock: Clock = clock or SystemClock()
        self.ttl_seconds = ttl_seconds
        self.leases = leases
        self.key_attribute = key_attribute
        self.ttl_attribute = ttl_attribute
        self.backoff = backoff or Backoff(base=0.02, cap=1.0)
        self._client = client

    # -- the IdempotencyStore protocol -----------------------------------------------------

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Lease every free key; see `onceflow.IdempotencyStore.claim`."""
        if not keys:
            return []
        result: list[Claim] = await run_blocking(
            self._claim, list(keys), lease_seconds, self.clock.now()
        )
        return result

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds (upsert mode: always)."""
        if not completions:
            return []
        now = self.clock.now()
        if not self.leases:
            requests = [
                (self.table, {"PutRequest": {"Item": self.marker(c, now)}}) for c in completions
            ]
            await run_blocking(batch_write, self.client, requests, self.backoff)
            return [True] * len(completions)
        groups = [[self.marker_action(c, now)] for c in completions]
        accepted: list[bool] = await run_blocking(self.commit_groups, groups)
        return accepted

    async def release(self, claims: Sequence[Claim]) -> None:
        """Delete leases these claims still hold; stale ones are left alone."""
        if self.leases and claims:
            await run_blocking(self._release, list(claims))

    # -- items ------------------------------------------------------------------------------

    def pk(self, key: str) -> str:
        """The partition-key value for an idempotency key."""
        if len(key.encode()) <= MAX_KEY_BYTES:
            return key
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    def _key(self, key: str) -> dict[str, Any]:
        return {self.key_attribute: {"S": self.pk(key)}}

    def marker(self, completion: Completion, now: float) -> dict[str, Any]:
        """The completed record for `completion`, as a typed item."""
        outcome = completion.outcome
        item: dict[str, Any] = {
            **self._key(completion.key),
            "status": {"S": COMPLETED},
            "token": {"S": _mine(completion.claim.token)},
            "completed_at": {"N": _num(now)},
            self.ttl_attribute: {"N": str(int(now + self.ttl_seconds))},
            "expires": {"N": _num(now + self.ttl_seconds)},
            "outcome": {"S": outcome.status.value},
            "outputs": {"N": str(outcome.outputs)},
        }
        if outcome.fingerprint is not None:
            item["fingerprint"] = {"S": outcome.fingerprint}
        if outcome.detail is not None:
            item["detail"] = {"S": outcome.detail}
        return item

    def marker_action(self, completion: Completion, now: float) -> dict[str, Any]:
        """A transaction action writing the marker only if this claim's fence still holds."""
        token = completion.claim.token
        condition = "#t = :mine"
        values: dict[str, Any] = {":mine": {"S": _mine(token)}}
        seen = _seen(token)
        if seen == "":
            condition += " OR attribute_not_exists(#k)"
        elif seen is not None:
            condition += " OR #t = :seen"
            values[":seen"] = {"S": seen}
        return {
            "Put": {
                "TableName": self.table,
                "Item": self.marker(completion, now),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#t": "token", "#k": self.key_attribute}
                if "#k" in condition
                else {"#t": "token"},
                "ExpressionAttributeValues": values,
            }
        }

    def _claim_of(self, key: str, item: dict[str, Any] | None, now: float) -> Claim | None:
        """The answer an existing item gives without writing; None when the key is free."""
        if item is None:
            return None
        status = item.get("status", {}).get("S")
        if status == COMPLETED and float(item["expires"]["N"]) > now:
            outcome = Outcome(
                OutcomeStatus(item["outcome"]["S"]),
                int(item.get("outputs", {}).get("N", "0")),
                item.get("fingerprint", {}).get("S"),
                item.get("detail", {}).get("S"),
            )
            return Claim(key, ClaimStatus.COMPLETED, outcome=outcome)
        if status == IN_PROGRESS:
            until = float(item["lease_expires_at"]["N"])
            if until > now:
                return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=until)
        return None

    # -- claim --------------------------------------------------------------------------------

    def _claim(self, keys: list[str], lease_seconds: float, now: float) -> list[Claim]:
        found = batch_get(
            self.client,
            self.table,
            [self._key(k) for k in keys],
            self.backoff,
            key_attribute=self.key_attribute,
        )
        answers: dict[str, Claim] = {}
        free: dict[str, str] = {}  # key -> token seen on its item ("" when absent)
        for key in keys:
            item = found.get(self.pk(key))
            known = self._claim_of(key, item, now)
            if known is not None:
                answers[key] = known
            else:
                free[key] = item["token"]["S"] if item is not None else ""
        expires = now + lease_seconds
        if not self.leases:
            for key, seen in free.items():
                # Nothing is leased: the token remembers what was read, for a conditional commit.
                answers[key] = Claim(
                    key,
                    ClaimStatus.NEW,
                    token=f"{uuid.uuid4().hex}|{seen}",
                    lease_expires_at=expires,
                )
        else:
            answers.update(self._lease(free, now, expires))
        return [answers[key] for key in keys]

    def _lease(self, free: dict[str, str], now: float, expires: float) -> dict[str, Claim]:
        answers: dict[str, Claim] = {}
        pending = dict(free)
        for attempt in range(1, MAX_ROUNDS * 4 + 1):
            if not pending:
                return answers
            retry: dict[str, str] = {}
            busy = False
            for chunk in chunks(list(pending.items()), TRANSACTION_LIMIT):
                tokens = {key: uuid.uuid4().hex for key, _ in chunk}
                actions = [
                    self._lease_action(key, seen, tokens[key], now, expires) for key, seen in chunk
                ]
                reasons = transact(self.client, actions)
                if reasons is None:
                    for key, _ in chunk:
                        answers[key] = Claim(
                            key, ClaimStatus.NEW, token=tokens[key], lease_expires_at=expires
                        )
                    continue
                for (key, seen), reason in zip(chunk, reasons, strict=True):
                    if reason.code == "ConditionalCheckFailed":
                        # Someone wrote the row since it was read: judge it as it is now.
                        known = self._claim_of(key, reason.item, now)
                        if known is not None:
                            answers[key] = known
                        else:
                            retry[key] = reason.item["token"]["S"] if reason.item else ""
                    elif reason.code == "None" or reason.code in RETRYABLE_REASONS:
                        busy = busy or reason.code != "None"
                        retry[key] = seen
                    else:
                        raise DynamoDBUnavailable(
                            f"claiming {key!r} in {self.table}: {reason.code} {reason.message}"
                        )
            pending = retry
            if busy:
                time.sleep(self.backoff.delay(attempt))
        raise DynamoDBUnavailable(f"could not settle claims on {self.table}: {len(pending)} left")

    def _lease_action(
        self, key: str, seen: str, token: str, now: float, expires: float
    ) -> dict[str, Any]:
        item = {
            **self._key(key),
            "status": {"S": IN_PROGRESS},
            "token": {"S": token},
            "lease_expires_at": {"N": _num(expires)},
            "claimed_at": {"N": _num(now)},
            # An abandoned lease is cleaned up by DynamoDB's TTL eventually too.
            self.ttl_attribute: {"N": str(int(expires + self.ttl_seconds))},
        }
        if seen:
            condition, names = "#t = :seen", {"#t": "token"}
            values: dict[str, Any] | None = {":seen": {"S": seen}}
        else:
            condition, names, values = "attribute_not_exists(#k)", {"#k": self.key_attribute}, None
        put: dict[str, Any] = {
            "TableName": self.table,
            "Item": item,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:
            put["ExpressionAttributeValues"] = values
        return {"Put": put}

    # -- commit (shared with the atomic sink) -------------------------------------------------

    def commit_groups(
        self,
        groups: Sequence[Sequence[dict[str, Any]]],
        key_attributes: frozenset[str] = frozenset(),
    ) -> list[bool]:
        """Commit action groups (marker first) in transactions; per group, whether its fence held.

        A group is all-or-nothing and never split across transactions. When a marker's
        condition fails its group is refused; the other groups commit. `key_attributes`
        names the key attributes of other tables the groups write, to keep two actions
        on one item out of one transaction.
        """
        keys = {self.key_attribute, *key_attributes}
        accepted: list[bool | None] = [None] * len(groups)
        pending = list(range(len(groups)))
        for attempt in range(1, MAX_ROUNDS * 4 + 1):
            if not pending:
                break
            retry: list[int] = []
            busy = False
            for batch in _pack(groups, pending, keys):
                actions = [action for g in batch for action in groups[g]]
                reasons = transact(self.client, actions)
                if reasons is None:
                    for g in batch:
                        accepted[g] = True
                    continue
                offset = 0
                for g in batch:
                    mine = reasons[offset : offset + len(groups[g])]
                    offset += len(groups[g])
                    codes = {r.code for r in mine}
                    if mine[0].code == "ConditionalCheckFailed":
                        accepted[g] = False
                    elif codes <= {"None"} | RETRYABLE_REASONS:
                        busy = busy or codes != {"None"}
                        retry.append(g)
                    else:
                        failed = next(r for r in mine if r.code not in {"None"})
                        raise DynamoDBUnavailable(
                            f"commit to {self.table} refused: {failed.code} {failed.message}"
                        )
            pending = retry
            if busy:
                time.sleep(self.backoff.delay(attempt))
        if pending:
            raise DynamoDBUnavailable(f"could not commit {len(pending)} groups to {self.table}")
        return [bool(a) for a in accepted]

    # -- release --------------------------------------------------------------------------------

    def _release(self, claims: list[Claim]) -> None:
        for claim in claims:
            if claim.token is None:
                continue
            try:
                self.client.delete_item(
                    TableName=self.table,
                    Key=self._key(claim.key),
                    ConditionExpression="#t = :mine AND #s = :busy",
                    ExpressionAttributeNames={"#t": "token", "#s": "status"},
                    ExpressionAttributeValues={
                        ":mine": {"S": claim.token},
                        ":busy": {"S": IN_PROGRESS},
                    },
                )
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise


def _pack(
    groups: Sequence[Sequence[dict[str, Any]]], indexes: list[int], key_attributes: set[str]
) -> list[list[int]]:
    """Groups into transactions of at most 100 actions, never two actions on one item."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    targets: set[str] = set()
    for g in indexes:
        keys = {target(action, key_attributes) for action in groups[g]}
        if current and (size + len(groups[g]) > TRANSACTION_LIMIT or keys & targets):
            batches.append(current)
            current, size, targets = [], 0, set()
        current.append(g)
        size += len(groups[g])
        targets |= keys
    if current:
        batches.append(current)
    return batches


def target(action: dict[str, Any], key_attributes: set[str]) -> str:
    """The table and key a transaction action writes (two actions may not share one)."""
    [body] = action.values()
    key = body.get("Key")
    if key is None:
        item = body.get("Item", {})
        key = {name: item[name] for name in key_attributes if name in item}
    return f"{body.get('TableName')}|{sorted((k, str(v)) for k, v in key.items())}"


def _mine(token: str | None) -> str:
    return (token or "").split("|", 1)[0]


def _seen(token: str | None) -> str | None:
    """For an optimistic claim, the token read at claim time ('' for no row); else None."""
    if token is None or "|" not in token:
        return None
    return token.split("|", 1)[1]


def _num(value: float) -> str:
    return repr(float(value))
