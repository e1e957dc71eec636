"""The idempotency store on one DynamoDB table: status, lease, fencing token, TTL, payload hash.

How it claims and completes follows its `DynamoDBMode` (see `dynamodb_mode`):

- `FENCED`: one BatchGetItem per 100 keys finds known keys, then conditional
  TransactWriteItems (100 actions each) lease the free ones. A worker that loses its
  lease cannot commit. Passes every store contract.
- `OPTIMISTIC` and `UPSERT`: the BatchGetItem alone; each NEW claim carries the token it
  read (`Claim.observed`, "" for no record). `OPTIMISTIC` completes only if the record
  is still the one read; `UPSERT` upserts its markers after the outputs (keyed
  overwrites make a repeat harmless).

Deliveries are counted per key (`Claim.deliveries`) in the item's `deliveries` number.
`FENCED` counts at claim time: the lease write sets it one above the count it read,
conditional on the token it read, so a takeover after an expired lease counts too; a
release keeps it, and a refund takes one off. `OPTIMISTIC` and `UPSERT` write nothing at
claim time, so they count failed deliveries when they are released (an ADD on the
key's item; a refund adds nothing): a delivery whose worker died uncounted is the one
thing they miss. A completed marker carries no count, so it starts again after the TTL.

Atomic sinks commit through `complete_with` (the `TransactionalStore` protocol): each
key's marker and the sink's actions for it in one transaction. Events on a watermark lane
commit through `complete_with_lanes` (`TransactionalLaneStore`) instead: no marker each,
their writes go in a chain of transactions with the lane's record (see `_chain`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from onceflow import watermarks
from onceflow.adapters.aws.dynamodb_lanes import (
    chained_put,
    decode_record,
    record_key,
    record_put,
)
from onceflow.adapters.aws.dynamodb_mode import DynamoDBMode
from onceflow.adapters.aws.dynamodb_requests import (
    RETRYABLE_REASONS,
    TRANSACTION_BYTES,
    TRANSACTION_LIMIT,
    DynamoDBUnavailable,
    TransactAction,
    WriteConditionFailed,
    batch_get,
    batch_write,
    chunks,
    default_retry,
    error_code,
    in_parallel,
    retry_after,
    send,
    stored_key,
    transact,
    transact_action,
)
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import Clock
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneClaim,
    LaneCommit,
    LaneRecord,
    LaneRequest,
    LaneState,
    Outcome,
    OutcomeStatus,
)
from onceflow.retry import RetryPolicy

__all__ = ["DynamoDBIdempotencyStore", "create_table"]

T = TypeVar("T")

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
MAX_REREADS = 32
"""Rounds of leasing a key whose record changed under the claim, before giving up."""
MARKER_OVERHEAD = 1_000
"""Bytes of a completion marker besides its key and detail (names, numbers, token)."""
MAX_SENT_LEASES = 10_000
"""Leases of unanswered claims remembered at most (see `_remember_leases`)."""
DELIVERIES = "deliveries"
"""The item's attribute counting the key's deliveries (see the module docstring)."""
LANE_RECORD_BYTES = 40_000
"""Room kept in a lane transaction for the lane's record (its state is bounded at about
21,000 characters: `watermarks.MAX_SETTLED`)."""
LANE_LINK_WRITES = TRANSACTION_LIMIT - 1
"""Writes per link of a chained lane commit besides the lane record (tests lower it to
run the exactly-once plans over chains of many links)."""
MAX_LANE_VERSIONS = 10_000
"""Lane claims whose last written version a store remembers at most (`_lane_versions`)."""


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
        mode: DynamoDBMode = DynamoDBMode.FENCED,
        ttl_seconds: float = 86_400.0,
        key_attribute: str = "pk",
        ttl_attribute: str = "expires_at",
        retry: RetryPolicy | None = None,
        lane_ttl_seconds: float = watermarks.LANE_TTL_SECONDS,
    ) -> None:
        self.table = table
        self.mode = mode
        self.counts_every_delivery = mode.leases
        """`FENCED` counts each claim (refunding hand-backs), so SQS's receive count, which
        includes the breaker's hand-backs, is not needed (`Attempts.deliveries`)."""
        self.clock: Clock = clock or SystemClock()
        self.ttl_seconds = ttl_seconds
        self.lane_ttl_seconds = lane_ttl_seconds
        """How long a lane record outlives its last write (`watermarks.LANE_TTL_SECONDS`:
        past the longest a source can redeliver below its watermark)."""
        self.key_attribute = key_attribute
        self.ttl_attribute = ttl_attribute
        self.retry = retry or default_retry()
        """Request-level retries: unprocessed items, throttled or conflicting transactions."""
        self._client = client
        self._sent_leases: dict[str, str] = {}
        """Tokens of leases whose transaction failed without an answer, by key."""
        self._lane_versions: dict[str, tuple[int, LaneState]] = {}
        """The version and state the last link of a lane claim's chain wrote, by the claim's
        token: a later call of the same claim (the outputs after the letters, a retry
        without the writes refused) goes on from there, leaving out what that state settles,
        without a refused transaction first."""

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
        """Mark keys completed where the fence holds (`UPSERT` mode: always)."""
        if self.mode is not DynamoDBMode.UPSERT:
            return await self.complete_with(completions, {})
        if not completions:
            return []
        now = self.clock.now()
        requests = [
            (self.table, {"PutRequest": {"Item": self._marker(c, now)}}) for c in completions
        ]
        await run_blocking(batch_write, self.client, requests, self.retry)
        return [True] * len(completions)

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """End leases these claims still hold, keeping the delivery count (`refund`: one off).

        Without leases (`OPTIMISTIC`, `UPSERT`) a release is where a failed delivery is
        counted: one ADD per key, none for a refund. Stale claims are left alone.
        """
        if not claims or (refund and not self.mode.leases):
            return
        await run_blocking(self._release, list(claims), refund)

    # -- the LaneStore protocol (onceflow.watermarks) ---------------------------------------

    async def claim_lanes(
        self, requests: Sequence[LaneRequest], lease_seconds: float
    ) -> list[LaneClaim]:
        """Lease each lane's record (`watermarks.take`): a read and a conditional Put per lane."""
        if not requests:
            return []
        result: list[LaneClaim] = await run_blocking(
            self._claim_lanes, list(requests), lease_seconds
        )
        return result

    async def commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        """Write each lane's new state where its fence holds (`watermarks.fence_holds`)."""
        if not commits:
            return []
        result: list[bool] = await run_blocking(self._commit_lanes, list(commits))
        return result

    async def release_lanes(self, claims: Sequence[LaneClaim]) -> None:
        """End leases these claims still hold, charging their range a delivery."""
        if claims:
            await run_blocking(self._release_lanes, list(claims))

    def _lane_rmw(
        self, lane: str, change: Callable[[LaneRecord | None, float], tuple[T, LaneRecord | None]]
    ) -> T:
        """Read a lane's record, `change` it, write the answer conditional on what was read;
        on a condition failure (another worker wrote in between) read and decide again."""
        for _ in range(MAX_REREADS):
            key = record_key(lane, self.key_attribute)
            now = self.clock.now()
            item = send(
                self.client.get_item,
                self.retry,
                TableName=self.table,
                Key=key,
                ConsistentRead=True,
            ).get("Item")
            answer, written = change(decode_record(lane, item, now), now)
            if written is None:
                return answer
            body = record_put(
                self.table,
                written,
                item,
                self.lane_ttl_seconds,
                key_attribute=self.key_attribute,
                ttl_attribute=self.ttl_attribute,
            )
            try:
                send(self.client.put_item, self.retry, **body)
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                continue
            return answer
        raise DynamoDBUnavailable(f"lane record kept changing under {MAX_REREADS} rounds")

    def _claim_lanes(self, requests: list[LaneRequest], lease_seconds: float) -> list[LaneClaim]:
        def claim(request: LaneRequest) -> LaneClaim:
            token = uuid.uuid4().hex
            return self._lane_rmw(
                request.lane,
                lambda stored, now: watermarks.take(
                    stored, request, now=now, lease_seconds=lease_seconds, token=token
                ),
            )

        return in_parallel(claim, requests)

    def _commit_lanes(self, commits: list[LaneCommit]) -> list[bool]:
        def commit(lane_commit: LaneCommit) -> bool:
            def change(stored: LaneRecord | None, now: float) -> tuple[bool, LaneRecord | None]:
                if stored is None or not watermarks.fence_holds(stored, lane_commit):
                    return False, None
                return True, watermarks.commit_record(stored, lane_commit, now=now)

            return self._lane_rmw(lane_commit.claim.lane, change)

        return in_parallel(commit, commits)

    def _release_lanes(self, claims: list[LaneClaim]) -> None:
        def release(claim: LaneClaim) -> None:
            self._lane_rmw(
                claim.lane,
                lambda stored, now: (None, watermarks.release_record(stored, claim, now=now)),
            )

        in_parallel(release, claims)

    # -- the TransactionalStore protocol ----------------------------------------------------

    async def complete_with(
        self,
        completions: Sequence[Completion],
        writes: Mapping[str, Sequence[TransactAction]],
    ) -> list[bool]:
        """Each key's marker and the writes filed under it in one transaction, if its fence holds.

        The fence is the claim's token, or for a claim that leased nothing the record it
        observed. A key's marker and writes never span two transactions (at most 99
        writes per key); keys whose fence failed write nothing, the others commit.
        """
        if not completions:
            return []
        now = self.clock.now()
        groups = [[self._marker_action(c, now), *writes.get(c.key, ())] for c in completions]
        tokens = [c.claim.token or "" for c in completions]
        try:
            accepted: list[bool] = await run_blocking(self._commit, groups, tokens)
        except _Refused as refused:
            # A write's position among the key's writes: the marker is the group's first.
            keys = {completions[g].key: i - 1 for g, i in refused.groups.items()}
            raise WriteConditionFailed(keys) from None
        return accepted

    # -- the TransactionalLaneStore protocol --------------------------------------------------

    async def complete_with_lanes(
        self,
        completions: Sequence[Completion],
        writes: Mapping[str, Sequence[TransactAction]],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """`complete_with` for `completions`, then each lane's commit with the writes filed
        under its keys, in a chain of transactions (`_chain`); per completion and per lane
        commit, whether its fence held. A write whose own condition fails stops its lane
        where it is (still leased) and is named by `WriteConditionFailed` at the end."""
        accepted = await self.complete_with(completions, writes) if completions else []
        if not lanes:
            return accepted, []
        now = self.clock.now()
        refused: dict[str, int] = {}
        lane_ok: list[bool] = await run_blocking(self._chains, list(lanes), writes, now, refused)
        if refused:
            raise WriteConditionFailed(refused)
        return accepted, lane_ok

    def _chains(
        self,
        lanes: list[LaneCommit],
        writes: Mapping[str, Sequence[TransactAction]],
        now: float,
        refused: dict[str, int],
    ) -> list[bool]:
        if len(lanes) == 1:
            return [self._chain(lanes[0], writes, now, refused)]
        return in_parallel(lambda commit: self._chain(commit, writes, now, refused), lanes)

    def _chain(
        self,
        commit: LaneCommit,
        writes: Mapping[str, Sequence[TransactAction]],
        now: float,
        refused: dict[str, int],
    ) -> bool:
        """One lane's commit: its keys' writes in position order, at most 99 actions and
        the lane's record per TransactWriteItems; whether the lane's fence held.

        Link j's record is conditional on the version link j-1 wrote and the claim's token,
        and holds `LaneSettlement.holding(later keys)`: nothing whose writes are in a later
        link is settled, so after a crash between links the next worker processes exactly
        what did not land. Only the last link writes the commit's own state (and ends the
        lease, unless the commit is a link itself). Each transaction has a
        ClientRequestToken (botocore's retry after a lost reply applies it once); a link
        sent again after that window, or by a retried call, fails its condition with the
        record it wrote in hand: the chain goes on from the version found, leaving out
        every key the found state settles (landed).
        """
        claim = commit.claim
        token = claim.token or ""
        positions: Mapping[str, int] = getattr(commit, "positions", {})
        keys = sorted(
            (k for k in commit.keys if writes.get(k)), key=lambda k: (positions.get(k, -1), k)
        )
        groups = {key: list(writes[key]) for key in keys}
        expected = claim.version
        known = self._lane_versions.get(token)
        if known is not None:
            # This claim's chain wrote before (a call that failed or was refused part-way):
            # what its state settles landed, and must not be written again.
            expected = known[0]
            groups = _unsettled(groups, positions, known[1])
        busy_rounds = 0
        for _ in range(len(groups) + MAX_REREADS):
            links = _pack_lane(groups)
            if len(links) > 1 and not all(k in positions for k in groups):
                raise ConfigurationError(
                    f"lane {claim.lane!r}: its writes need {len(links)} transactions, so "
                    "its commit must know each key's position (a watermarks.LaneSettlement)"
                )
            first, later = links[0], {key for link in links[1:] for key in link}
            final = not later
            if final:
                state = commit.state
                ends = not watermarks.keeps_lease(commit)
            else:
                holding = getattr(commit, "holding")  # noqa: B009 - a LaneSettlement's
                state, ends = holding(later), False
            record = watermarks.chained_record(
                claim, state, version=expected + 1, now=now, final=ends
            )
            put = chained_put(
                self.table,
                record,
                expected,
                self.lane_ttl_seconds,
                key_attribute=self.key_attribute,
                ttl_attribute=self.ttl_attribute,
            )
            actions = [put, *(action.request for key in first for action in groups[key])]
            reasons = transact(self.client, actions)
            if reasons is None:
                expected += 1
                self._remember_version(token, expected, record.state)
                for key in first:
                    del groups[key]
                if final:
                    return True
                continue
            head = reasons[0]
            if head.code == "ConditionalCheckFailed":
                stored = decode_record(claim.lane, head.item, now) if head.item else None
                if stored is None or not token or stored.token != token:
                    return False  # taken over (or gone): nothing more of this lane lands
                if stored.version <= expected:
                    return False
                # An earlier send of this chain landed, its answer lost: go on from there.
                expected = stored.version
                self._remember_version(token, expected, stored.state)
                groups = _unsettled(groups, positions, stored.state)
                if not groups and (stored.state.inflight is None or not ends):
                    return True
                continue
            codes = {r.code for r in reasons}
            if codes <= {"None"} | RETRYABLE_REASONS:
                busy_rounds += 1
                stop = retry_after(self.retry, busy_rounds)
                if stop is not None:
                    raise DynamoDBUnavailable(
                        f"could not commit lane {claim.lane!r} to {self.table} {stop}"
                    )
                continue
            if codes <= {"None", "ConditionalCheckFailed"} | RETRYABLE_REASONS:
                # A write's own condition failed: its event can never commit. The lane
                # stops here, leased; the runner sends the rest again without it.
                offset = 1
                for key in first:
                    mine = reasons[offset : offset + len(groups[key])]
                    offset += len(groups[key])
                    for i, reason in enumerate(mine):
                        if reason.code == "ConditionalCheckFailed":
                            refused[key] = i
                            break
                return True
            failed = next(r for r in reasons if r.code != "None")
            raise DynamoDBUnavailable(
                f"lane commit refused by {self.table}: {failed.code} {failed.message}"
            )
        raise DynamoDBUnavailable(f"lane {claim.lane!r} kept changing under its commit")

    def _remember_version(self, token: str, version: int, state: LaneState) -> None:
        if len(self._lane_versions) >= MAX_LANE_VERSIONS:
            self._lane_versions.clear()  # a bound: a forgotten one costs one refused link
        self._lane_versions[token] = (version, state)

    # -- items ------------------------------------------------------------------------------

    def pk(self, key: str) -> str:
        """The partition-key value for an idempotency key (`stored_key`: long ones hashed)."""
        return stored_key(key)

    def _key(self, key: str) -> dict[str, Any]:
        return {self.key_attribute: {"S": self.pk(key)}}

    def _marker(self, completion: Completion, now: float) -> dict[str, Any]:
        """The completed record for `completion`, as a typed item."""
        outcome = completion.outcome
        item: dict[str, Any] = {
            **self._key(completion.key),
            "status": {"S": COMPLETED},
            "token": {"S": completion.claim.token or ""},
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

    def _marker_action(self, completion: Completion, now: float) -> TransactAction:
        """The marker's Put, conditional on the claim's fence: its lease, or what it observed.

        Neither condition holds once the marker is written (a lease is in progress, the
        observed record is replaced by ours), so a commit sent again after its reply was
        lost fails its condition and writes nothing twice; `_commit` recognises our own
        completed marker in the item the failure returns.
        """
        claim = completion.claim
        names = {"#t": "token"}
        values: dict[str, Any] = {}
        if claim.observed is None:
            condition = "#t = :mine AND #s = :busy"
            names["#s"] = "status"
            values = {":mine": {"S": claim.token or ""}, ":busy": {"S": IN_PROGRESS}}
        elif claim.observed == "":
            # No record, or only the delivery count a failed delivery left (no token).
            condition = "attribute_not_exists(#t)"
        else:
            condition = "#t = :seen"
            values[":seen"] = {"S": claim.observed}
        body: dict[str, Any] = {
            "TableName": self.table,
            "Item": self._marker(completion, now),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:
            body["ExpressionAttributeValues"] = values
        # A bound on the marker's size, cheaper than measuring it: fixed attributes, the key
        # twice (the item and its target), a detail of at most 500 characters.
        detail = completion.outcome.detail or ""
        size = MARKER_OVERHEAD + 2 * len(self.pk(completion.key)) * 4 + len(detail) * 4
        return transact_action({"Put": body}, {self.key_attribute}, size)

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
            self.retry,
            key_attribute=self.key_attribute,
        )
        answers: dict[str, Claim] = {}
        free: dict[str, _Seen] = {}  # key -> what its item held (token "" when none)
        for key in keys:
            item = found.get(self.pk(key))
            sent = self._sent_leases.pop(key, None) if self._sent_leases else None
            known = self._own_lease(key, item, sent, now) or self._claim_of(key, item, now)
            if known is not None:
                answers[key] = known
            else:
                free[key] = _seen(item)
        expires = now + lease_seconds
        if not self.mode.leases:
            for key, (seen, counted) in free.items():
                # Nothing is leased: the claim remembers what was read, for a conditional commit.
                answers[key] = Claim(
                    key,
                    ClaimStatus.NEW,
                    token=uuid.uuid4().hex,
                    lease_expires_at=expires,
                    observed=seen,
                    deliveries=counted + 1,
                )
        else:
            answers.update(self._lease(free, now, expires))
        return [answers[key] for key in keys]

    def _lease(self, free: dict[str, _Seen], now: float, expires: float) -> dict[str, Claim]:
        answers: dict[str, Claim] = {}
        sent: dict[str, str] = {}
        try:
            return self._lease_rounds(free, now, expires, answers, sent)
        except Exception:
            # The claim fails, yet leases it wrote (or sent, their reply lost) hold: a claim
            # sent again (the pipeline's retry) must know them for its own, not another's.
            held = {k: c.token for k, c in answers.items() if c.status is ClaimStatus.NEW}
            self._remember_leases({**sent, **{k: t for k, t in held.items() if t}})
            raise

    def _lease_rounds(
        self,
        free: dict[str, _Seen],
        now: float,
        expires: float,
        answers: dict[str, Claim],
        sent: dict[str, str],
    ) -> dict[str, Claim]:
        pending = dict(free)
        busy_rounds = 0
        for _ in range(MAX_REREADS):
            if not pending:
                return answers
            retry: dict[str, _Seen] = {}
            busy = False
            for chunk in chunks(list(pending.items()), TRANSACTION_LIMIT):
                tokens = {key: uuid.uuid4().hex for key, _ in chunk}
                actions = [
                    self._lease_action(key, seen, tokens[key], now, expires) for key, seen in chunk
                ]
                sent.update(tokens)
                reasons = transact(self.client, actions)
                for key in tokens:
                    del sent[key]  # answered: in `answers` when leased
                if reasons is None:
                    for key, (_, counted) in chunk:
                        answers[key] = Claim(
                            key,
                            ClaimStatus.NEW,
                            token=tokens[key],
                            lease_expires_at=expires,
                            deliveries=counted + 1,
                        )
                    continue
                for (key, seen), reason in zip(chunk, reasons, strict=True):
                    if reason.code == "ConditionalCheckFailed":
                        # Someone wrote the row since it was read: judge it as it is now.
                        # (Our own lease, when botocore sent this again after a lost reply.)
                        known = self._own_lease(key, reason.item, tokens[key], now)
                        known = known or self._claim_of(key, reason.item, now)
                        if known is not None:
                            answers[key] = known
                        else:
                            retry[key] = _seen(reason.item)
                    elif reason.code == "None" or reason.code in RETRYABLE_REASONS:
                        busy = busy or reason.code != "None"
                        retry[key] = seen
                    else:
                        raise DynamoDBUnavailable(
                            f"claiming {key!r} in {self.table}: {reason.code} {reason.message}"
                        )
            pending = retry
            if busy:
                busy_rounds += 1
                stop = retry_after(self.retry, busy_rounds)
                if stop is not None:
                    raise DynamoDBUnavailable(
                        f"could not settle claims on {self.table} {stop}: {len(pending)} left"
                    )
        if not pending:
            return answers
        raise DynamoDBUnavailable(f"could not settle claims on {self.table}: {len(pending)} left")

    def _own_lease(
        self, key: str, item: dict[str, Any] | None, token: str | None, now: float
    ) -> Claim | None:
        """The claim of a live lease this store wrote with `token`, if `item` holds it."""
        if item is None or token is None or item.get("token", {}).get("S") != token:
            return None
        if item.get("status", {}).get("S") != IN_PROGRESS:
            return None
        until = float(item["lease_expires_at"]["N"])
        if until <= now:
            return None
        deliveries = int(item.get(DELIVERIES, {}).get("N", "1"))
        return Claim(
            key, ClaimStatus.NEW, token=token, lease_expires_at=until, deliveries=deliveries
        )

    def _remember_leases(self, tokens: Mapping[str, str]) -> None:
        if len(self._sent_leases) + len(tokens) > MAX_SENT_LEASES:
            self._sent_leases.clear()  # a bound, not a cache: an old entry is of no use
        self._sent_leases.update(tokens)

    def _lease_action(
        self, key: str, seen: _Seen, token: str, now: float, expires: float
    ) -> dict[str, Any]:
        observed, counted = seen
        item = {
            **self._key(key),
            "status": {"S": IN_PROGRESS},
            "token": {"S": token},
            "lease_expires_at": {"N": _num(expires)},
            "claimed_at": {"N": _num(now)},
            # One above the count read: the condition on what was read makes this an ADD.
            DELIVERIES: {"N": str(counted + 1)},
            # An abandoned lease is cleaned up by DynamoDB's TTL eventually too.
            self.ttl_attribute: {"N": str(int(expires + self.ttl_seconds))},
        }
        names = {"#t": "token"}
        values: dict[str, Any] | None = None
        if observed:
            condition, values = "#t = :seen", {":seen": {"S": observed}}
        elif counted:
            # Only the count of failed deliveries (a release in another mode): it must hold.
            condition = "attribute_not_exists(#t) AND #d = :counted"
            names["#d"] = DELIVERIES
            values = {":counted": {"N": str(counted)}}
        else:
            condition = "attribute_not_exists(#t)"
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

    # -- commit ---------------------------------------------------------------------------

    def _commit(
        self, groups: Sequence[Sequence[TransactAction]], tokens: Sequence[str]
    ) -> list[bool]:
        """Commit action groups (marker first) in transactions; per group, whether its fence held.

        A group is all-or-nothing and never split across transactions. When a marker's
        condition fails its group is refused, unless the item already is the completed
        marker of the group's own claim (`tokens`): an earlier send of this commit landed
        and only its reply was lost. When the condition of one of a group's own writes
        fails (a user's `stock >= :one`), the group can never commit: the others do, then
        `WriteConditionFailed` names it (by group, the write's position among its writes).
        A round that cancels only because of a settled group always settles it, so only
        throttled or conflicting rounds count against the retry policy.
        """
        accepted: list[bool | None] = [None] * len(groups)
        refused: dict[int, int] = {}
        pending = list(range(len(groups)))
        busy_rounds = 0
        while pending:
            retry: list[int] = []
            busy = False
            for batch in _pack(groups, pending):
                actions = [action.request for g in batch for action in groups[g]]
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
                        accepted[g] = _completed_by(mine[0].item, tokens[g])
                    elif codes <= {"None"} | RETRYABLE_REASONS:
                        busy = busy or codes != {"None"}
                        retry.append(g)
                    elif codes <= {"None", "ConditionalCheckFailed"} | RETRYABLE_REASONS:
                        refused[g] = next(
                            i for i, r in enumerate(mine) if r.code == "ConditionalCheckFailed"
                        )
                    else:
                        i, failed = next((i, r) for i, r in enumerate(mine) if r.code != "None")
                        [body] = groups[g][i].request.values()
                        raise DynamoDBUnavailable(
                            f"commit refused by {body.get('TableName')}: {failed.code} "
                            f"{failed.message}"
                        )
            if busy:
                busy_rounds += 1
                stop = retry_after(self.retry, busy_rounds)
                if stop is not None:
                    raise DynamoDBUnavailable(
                        f"could not commit {len(retry)} groups to {self.table} {stop}"
                    )
            elif len(retry) == len(pending):
                raise DynamoDBUnavailable(f"commit to {self.table} cancelled without a reason")
            pending = retry
        if refused:
            raise _Refused(refused)
        return [bool(a) for a in accepted]

    # -- release --------------------------------------------------------------------------------

    def _release(self, claims: list[Claim], refund: bool) -> None:
        """One UpdateItem per claim, a few at a time (DynamoDB has no batched update)."""
        update = self._end_lease if self.mode.leases else self._count_failure
        claims = [c for c in claims if c.token is not None]
        if len(claims) <= 1:
            for claim in claims:
                update(claim, refund)
            return
        in_parallel(lambda claim: update(claim, refund), claims)

    def _end_lease(self, claim: Claim, refund: bool) -> None:
        """The lease ends (a fresh token fences the old one out); the count stays."""
        expression = "SET #t = :gone, lease_expires_at = :ended"
        values: dict[str, Any] = {
            ":mine": {"S": claim.token or ""},
            ":busy": {"S": IN_PROGRESS},
            ":gone": {"S": "released-" + uuid.uuid4().hex},
            ":ended": {"N": "0"},
        }
        if refund:
            expression += " ADD #d :less"
            values[":less"] = {"N": "-1"}
        self._update(claim, expression, "#t = :mine AND #s = :busy", values)

    def _count_failure(self, claim: Claim, refund: bool) -> None:
        """A failed delivery of a key nothing leases: ADD one to its count, unless it is done.

        The claim's token goes with the count, so an UpdateItem sent again after its reply
        was lost fails its condition instead of counting the delivery twice.
        """
        expires = str(int(self.clock.now() + self.ttl_seconds))  # a dropped key's count goes too
        self._update(
            claim,
            "ADD #d :one SET #x = :ttl, #f = :mine",
            "(attribute_not_exists(#s) OR #s <> :done)"
            " AND (attribute_not_exists(#f) OR #f <> :mine)",
            {
                ":one": {"N": "1"},
                ":done": {"S": COMPLETED},
                ":ttl": {"N": expires},
                ":mine": {"S": claim.token or ""},
            },
        )

    def _update(
        self,
        claim: Claim,
        expression: str,
        condition: str,
        values: dict[str, Any],
    ) -> None:
        attributes = {
            "#t": "token",
            "#s": "status",
            "#d": DELIVERIES,
            "#x": self.ttl_attribute,
            "#f": "counted_by",
        }
        names = {n: a for n, a in attributes.items() if n in expression or n in condition}
        try:
            send(
                self.client.update_item,
                self.retry,
                TableName=self.table,
                Key=self._key(claim.key),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise


_Seen = tuple[str, int]
"""What a claim read on a key's item: its token ("" for none) and its delivery count."""


def _seen(item: dict[str, Any] | None) -> _Seen:
    if item is None:
        return "", 0
    token = item.get("token", {}).get("S", "")
    # A completed marker carries no count: the key starts again once its record expired.
    return token, int(item.get(DELIVERIES, {}).get("N", "0"))


def _completed_by(item: dict[str, Any] | None, token: str) -> bool:
    """Whether `item` is the completed marker a commit of the claim with `token` wrote."""
    if item is None or not token:
        return False
    status, mine = item.get("status", {}).get("S"), item.get("token", {}).get("S")
    return bool(status == COMPLETED and mine == token)


class _Refused(Exception):
    """Groups whose own write's condition failed: group index to the write's position."""

    def __init__(self, groups: dict[int, int]) -> None:
        super().__init__(f"{len(groups)} groups refused")
        self.groups = groups


def _pack(
    groups: Sequence[Sequence[TransactAction]],
    indexes: list[int],
    *,
    limit: int = TRANSACTION_LIMIT,
    budget: int = TRANSACTION_BYTES,
) -> list[list[int]]:
    """Groups into transactions of at most `limit` actions and `budget` bytes, never two
    actions on one item. A group over the budget alone goes in a transaction of its own
    (DynamoDB refuses it, naming the limit; the sink keeps such events out)."""
    batches: list[list[int]] = []
    current: list[int] = []
    count = size = 0
    targets: set[str] = set()
    for g in indexes:
        group = groups[g]
        keys = {action.target for action in group}
        weight = sum(action.size for action in group)
        if current and (count + len(group) > limit or size + weight > budget or keys & targets):
            batches.append(current)
            current, count, size, targets = [], 0, 0, set()
        current.append(g)
        count += len(group)
        size += weight
        targets |= keys
    if current:
        batches.append(current)
    return batches


def _unsettled(
    groups: dict[str, list[TransactAction]], positions: Mapping[str, int], state: LaneState
) -> dict[str, list[TransactAction]]:
    """The groups whose position `state` does not settle (their writes have not landed)."""
    return {
        key: group
        for key, group in groups.items()
        if key not in positions or not watermarks.settles(state, positions[key])
    }


def _pack_lane(
    groups: Mapping[str, Sequence[TransactAction]],
    *,
    limit: int | None = None,
    budget: int = TRANSACTION_BYTES - LANE_RECORD_BYTES,
) -> list[list[str]]:
    """A lane's groups, in their order, into links of at most `limit` actions
    (`LANE_LINK_WRITES`) and `budget` bytes besides the lane record, never two actions on
    one item; at least one link."""
    limit = LANE_LINK_WRITES if limit is None else limit
    links: list[list[str]] = [[]]
    count = size = 0
    targets: set[str] = set()
    for key, group in groups.items():
        mine = {action.target for action in group}
        weight = sum(action.size for action in group)
        if links[-1] and (count + len(group) > limit or size + weight > budget or mine & targets):
            links.append([])
            count, size, targets = 0, 0, set()
        links[-1].append(key)
        count += len(group)
        size += weight
        targets |= mine
    return links


def _num(value: float) -> str:
    return repr(float(value))
