"""An idempotency store on Azure Table storage (or Azure Cosmos DB for Table)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio.to_thread
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow import watermarks
from onceflow.adapters.azure.lease_rows import (
    COMPLETED,
    IN_PROGRESS,
    UnansweredClaims,
    completed_by,
    completed_fields,
    contention_policy,
    deliveries_after,
    held_answer,
    lapsed_since,
    released_fields,
    rounds,
)
from onceflow.adapters.azure.table_keys import (
    MARKER,
    key_address,
    marker_row,
    numeric_row,
    stored_identity,
)
from onceflow.adapters.azure.table_lanes import LANE, record_address
from onceflow.adapters.azure.table_lanes import decode_record as decode_lane
from onceflow.adapters.azure.table_lanes import encode_record as encode_lane
from onceflow.adapters.azure.table_transactions import MAX_OPERATIONS, Group, Operation, submit
from onceflow.adapters.azure.throttling import default_retry, listed, send
from onceflow.clock import SystemClock
from onceflow.interfaces import Clock
from onceflow.lane_records import ReadModifyWriteLanes
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneRecord,
)
from onceflow.retry import RetryPolicy

__all__ = ["TableIdempotencyStore"]

T = TypeVar("T")

OR_LIMIT = 14  # Azure Table filters allow 15 comparisons; one is the PartitionKey
DENSE = 2.0  # read a numeric RowKey range when it holds at most this many rows per key
ETAG_CACHE = 200_000
MAX_LANE_ROUNDS = 32  # rereads of a lane row another worker wrote under us

Entity = dict[str, Any]


def _if_match(etag: str) -> dict[str, Any]:
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


class TableIdempotencyStore(ReadModifyWriteLanes):
    """`onceflow.interfaces.TransactionalStore` on one Azure Table, in bulk entity transactions.

    One marker entity per key (see `onceflow.adapters.azure.table_keys` for its address). A claim
    reads the batch's markers (one RowKey range query when the ids are contiguous
    sequence numbers, else OR-queries of 14 keys), then creates or ETag-guarded updates
    the free ones in entity transactions of up to 100 operations per partition. The
    ETag each write left is kept in this handle, so `complete` and `release` are
    conditional writes with no read first; a 409/412 isolates that one key and decides
    it again, up to `retry.attempts` rounds (then the key is answered IN_PROGRESS, or its
    completion refused). Expiry follows the stored timestamps in the store's clock; Table
    storage has no TTL, so `purge` deletes expired rows on demand.

    `complete_with` commits each key's marker with writes filed under it (entity
    operations: `("upsert", entity, {"mode": UpdateMode.REPLACE})`, as `TableSink` files
    its outputs) in one entity transaction of the marker's partition.
    """

    def __init__(
        self,
        table: TableClient | str,
        *,
        connection_string: str | None = None,
        ttl_seconds: float = 86_400.0,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        throttle_retry: RetryPolicy | None = None,
        create: bool = False,
        lane_ttl_seconds: float = watermarks.LANE_TTL_SECONDS,
    ) -> None:
        if isinstance(table, str):
            if connection_string is None:
                raise ValueError(
                    f"TableIdempotencyStore({table!r}) needs connection_string= or a TableClient"
                )
            table = TableServiceClient.from_connection_string(connection_string).get_table_client(
                table
            )
        self.table = table
        self.ttl_seconds = ttl_seconds
        self.lane_ttl_seconds = lane_ttl_seconds
        """How long a lane record outlives its last write (`watermarks.LANE_TTL_SECONDS`:
        past the longest a source can redeliver below its watermark)."""
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or contention_policy()
        """Rounds for one contended key (conflicting writes), and the wait between them."""
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while the service throttles them (`throttling.send`)."""
        self._etags: OrderedDict[tuple[str, str], tuple[str, str, bool]] = OrderedDict()
        """Per row: the token of our lease or completion, the ETag it left, and whether
        it is our completion (a retried `complete` of it is accepted without a write)."""
        self._etag_lock = threading.Lock()
        self._unanswered = UnansweredClaims()
        if create:
            with contextlib.suppress(ResourceExistsError):
                send(self.throttle_retry, "a table creation", table.create_table)

    def shares_table(self, table: TableClient) -> bool:
        """Whether `table` is this store's table (same account endpoint and name)."""
        return bool(
            table.url.rstrip("/") == self.table.url.rstrip("/")
            and table.table_name == self.table.table_name
        )

    async def _call(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    # -- the LaneStore protocol (onceflow.watermarks): ReadModifyWriteLanes over this --

    def _lane_rmw(
        self, lane: str, change: Callable[[LaneRecord | None, float], tuple[T, LaneRecord | None]]
    ) -> T:
        """Read a lane's row, `change` it, write the answer guarded by the ETag read (create
        when there was none); when another worker wrote in between, read and decide again."""
        pk, rk = record_address(lane)
        for _ in range(MAX_LANE_ROUNDS):
            now = self.clock.now()
            try:
                row = send(self.throttle_retry, "a lane read", self.table.get_entity, pk, rk)
            except ResourceNotFoundError:
                row = None
            answer, written = change(decode_lane(lane, row, now), now)
            if written is None:
                return answer
            entity = encode_lane(written, self.lane_ttl_seconds)
            try:
                if row is None:
                    send(self.throttle_retry, "a lane write", self.table.create_entity, entity)
                else:
                    send(
                        self.throttle_retry,
                        "a lane write",
                        self.table.update_entity,
                        entity,
                        mode=UpdateMode.REPLACE,
                        **_if_match(str(row.metadata["etag"])),
                    )
            except (ResourceExistsError, ResourceModifiedError):
                continue
            return answer
        raise RuntimeError(f"lane record kept changing under {MAX_LANE_ROUNDS} rounds")

    # -- claim -----------------------------------------------------------------------------

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Lease every free key; see `onceflow.interfaces.IdempotencyStore.claim`."""
        return await self._call(lambda: self._claim(list(keys), lease_seconds))

    def _claim(self, keys: list[str], lease_seconds: float) -> list[Claim]:
        now = self.clock.now()
        addresses = {key: key_address(key) for key in keys}
        rows = self.read(list(addresses.values()))
        answers: dict[str, Claim] = {}
        groups: list[Group] = []
        for key, address in addresses.items():
            claim, operation = self._decide(key, address, rows.get(address), now, lease_seconds)
            if operation is None:
                answers[key] = claim
            else:
                self._unanswered.note(claim)
                groups.append(Group(address[0], [operation], tag=claim))
        submit(self.table, groups, self.throttle_retry)
        for group in groups:
            claim = group.tag
            if group.conflict is None:
                self._remember(addresses[claim.key], claim.token, group.etags[0])
                answers[claim.key] = claim
            else:
                answers[claim.key] = self._claim_one(
                    claim.key, addresses[claim.key], lease_seconds, attempted=claim
                )
        self._unanswered.answered(keys)
        return [answers[key] for key in keys]

    def _decide(
        self,
        key: str,
        address: tuple[str, str],
        row: Entity | None,
        now: float,
        lease_seconds: float,
    ) -> tuple[Claim, Operation | None]:
        """The answer for one key given its stored row, and the write a NEW answer needs."""
        mine = self._unanswered.adopt(key, row, now)
        if mine is not None:
            assert row is not None
            self._remember(address, mine.token, _etag(row))
            return mine, None
        held = held_answer(key, row, now)
        if held is not None:
            return held, None
        token = uuid.uuid4().hex
        expires = now + lease_seconds
        deliveries = deliveries_after(row)
        entity: Entity = {
            "PartitionKey": address[0],
            "RowKey": address[1],
            "key": stored_identity(key),
            "status": IN_PROGRESS,
            "token": token,
            "lease_expires_at": expires,
            "deliveries": deliveries,
        }
        claim = Claim(
            key, ClaimStatus.NEW, token=token, lease_expires_at=expires, deliveries=deliveries
        )
        if row is None:
            return claim, ("create", entity)
        return claim, ("update", entity, {"mode": UpdateMode.REPLACE, **_if_match(_etag(row))})

    def _claim_one(
        self,
        key: str,
        address: tuple[str, str],
        lease_seconds: float,
        attempted: Claim | None = None,
    ) -> Claim:
        """Decide one contended key alone, reading it again after each lost race."""
        for _ in rounds(self.retry):
            row = self._get(address)
            if attempted is not None and row is not None and row.get("token") == attempted.token:
                # Our write landed but its answer was lost and the SDK's retry met it.
                self._remember(address, attempted.token, _etag(row))
                return attempted
            claim, operation = self._decide(key, address, row, self.clock.now(), lease_seconds)
            if operation is None:
                return claim
            self._unanswered.note(claim)
            try:
                if operation[0] == "create":
                    written = send(
                        self.throttle_retry, "a claim", self.table.create_entity, operation[1]
                    )
                else:
                    written = send(
                        self.throttle_retry,
                        "a claim",
                        self.table.update_entity,
                        operation[1],
                        **operation[2],
                    )
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                attempted = claim
                continue
            self._remember(address, claim.token, written["etag"])
            return claim
        # Still contended after several rounds: someone else is writing it right now.
        return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=self.clock.now())

    # -- complete and release --------------------------------------------------------------

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds; see the protocol."""
        return await self._call(lambda: self._complete_with(list(completions), {}))

    async def complete_with(
        self, completions: Sequence[Completion], writes: Mapping[str, Sequence[Operation]]
    ) -> list[bool]:
        """Complete keys whose fence holds, each in one transaction with `writes[key]`.

        See `onceflow.interfaces.TransactionalStore`. A key whose fence does not hold
        writes nothing. A key with 100 writes or more cannot fit one entity transaction:
        its writes go first, in pieces, and the marker last, so the marker never says done
        before they are all written (not atomic: a refused marker leaves those upserts).
        """
        return await self._call(lambda: self._complete_with(list(completions), writes))

    def _completion_entity(self, completion: Completion, now: float) -> Entity:
        partition, row_key = key_address(completion.key)
        return {
            "PartitionKey": partition,
            "RowKey": row_key,
            **completed_fields(completion, now, self.ttl_seconds),
            "key": stored_identity(completion.key),
        }

    def _complete_with(
        self, completions: list[Completion], writes: Mapping[str, Sequence[Operation]]
    ) -> list[bool]:
        now = self.clock.now()
        accepted = [self._done(c) for c in completions]
        etags: list[str | None] = [
            None if done else self._known(c) for c, done in zip(completions, accepted, strict=True)
        ]
        unknown = [i for i, etag in enumerate(etags) if etag is None and not accepted[i]]
        if unknown:
            rows = self.read([key_address(completions[i].key) for i in unknown])
            for i in unknown:
                row = rows.get(key_address(completions[i].key))
                accepted[i] = completed_by(completions[i], row)
                etags[i] = None if accepted[i] else self._holding_etag(completions[i], row)
        pending = [i for i, etag in enumerate(etags) if etag is not None]
        for _ in rounds(self.retry):
            groups = []
            for i in pending:
                completion = completions[i]
                etag = etags[i]
                assert etag is not None
                marker = (
                    "update",
                    self._completion_entity(completion, now),
                    {"mode": UpdateMode.REPLACE, **_if_match(etag)},
                )
                filed = writes.get(completion.key, ())
                # Too big for one transaction: writes first, so the marker never says
                # done before they are all written (the runner's write-then-complete).
                ops = [marker, *filed] if len(filed) < MAX_OPERATIONS else [*filed, marker]
                groups.append(Group(key_address(completion.key)[0], ops, tag=i))
            try:
                submit(self.table, groups, self.throttle_retry)
            except Exception:
                # The reply may be lost with the commit applied: a retry reads the rows
                # first (one query) and finds its own commit, instead of meeting a
                # refused ETag in every transaction, one key at a time.
                self._forget([key_address(completions[g.tag].key) for g in groups])
                raise
            pending = []
            for group in groups:
                i = group.tag
                if group.conflict is None:
                    accepted[i] = True
                    count = len(group.operations)
                    marker_at = 0 if count <= MAX_OPERATIONS else count - 1
                    self._remember(
                        key_address(completions[i].key),
                        completions[i].claim.token or "",
                        group.etags[marker_at],
                        done=True,
                    )
                else:
                    # The ETag moved: our own earlier completion (its reply lost), or a
                    # takeover. Read and see; our own commit is not applied again.
                    row = self._get(key_address(completions[i].key))
                    if completed_by(completions[i], row):
                        accepted[i] = True
                        continue
                    etags[i] = self._holding_etag(completions[i], row)
                    if etags[i] is not None:
                        pending.append(i)
            if not pending:
                break
        return accepted

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """End leases still held by these claims, keeping each key's delivery count.

        The marker stays, free and tokenless, holding the count (less this delivery with
        `refund`): an ETag-guarded replace in place of a delete, the same one operation.
        Stale claims are ignored.
        """
        await self._call(lambda: self._release(list(claims), refund))

    def _release(self, claims: list[Claim], refund: bool) -> None:
        held = [c for c in claims if c.status is ClaimStatus.NEW and c.token]
        etags = {c.key: self._cached(key_address(c.key), c.token or "") for c in held}
        unknown = [c for c in held if etags[c.key] is None]
        if unknown:
            rows = self.read([key_address(c.key) for c in unknown])
            for c in unknown:
                row = rows.get(key_address(c.key))
                if (
                    row is not None
                    and row.get("status") == IN_PROGRESS
                    and row.get("token") == c.token
                ):
                    etags[c.key] = _etag(row)
        groups = []
        now = self.clock.now()
        for c in held:
            etag = etags[c.key]
            if etag is None:
                continue
            partition, row_key = key_address(c.key)
            entity = {
                "PartitionKey": partition,
                "RowKey": row_key,
                **released_fields(c, refund=refund, now=now),
                "key": stored_identity(c.key),
            }
            update = ("update", entity, {"mode": UpdateMode.REPLACE, **_if_match(etag)})
            groups.append(Group(partition, [update], tag=c))
        # A conflict means the lease moved on: nothing to release.
        submit(self.table, groups, self.throttle_retry)
        self._forget([key_address(c.key) for c in held])

    # -- rows ------------------------------------------------------------------------------

    def read(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Entity]:
        """The stored rows at these addresses, in as few queries as their layout allows."""
        found: dict[tuple[str, str], Entity] = {}
        wanted = set(addresses)
        by_partition: dict[str, list[str]] = {}
        for partition, row_key in dict.fromkeys(addresses):
            by_partition.setdefault(partition, []).append(row_key)
        for partition, row_keys in by_partition.items():
            for query, parameters in _queries(partition, row_keys):
                page = self._query(query, parameters)
                for entity in page:
                    address = (partition, entity["RowKey"])
                    if address in wanted:
                        found[address] = dict(entity) | {"__etag": entity.metadata["etag"]}
        return found

    def _query(self, query: str, parameters: dict[str, Any]) -> list[Any]:
        """Every entity `query` matches (read again whole while it is throttled)."""
        entities: list[Any] = send(
            self.throttle_retry,
            "a query",
            listed,
            self.table.query_entities,
            query,
            parameters=parameters,
        )
        return entities

    def _get(self, address: tuple[str, str]) -> Entity | None:
        try:
            entity = send(self.throttle_retry, "a read", self.table.get_entity, *address)
        except ResourceNotFoundError:
            return None
        return dict(entity) | {"__etag": entity.metadata["etag"]}

    def _holding_etag(self, completion: Completion, row: Entity | None) -> str | None:
        """The row's ETag when the completion's token still holds it, else None."""
        if row is None or not completion.claim.token or row.get("token") != completion.claim.token:
            return None
        return _etag(row)

    def _known(self, completion: Completion) -> str | None:
        return self._cached(key_address(completion.key), completion.claim.token or "")

    def _cached(self, address: tuple[str, str], token: str) -> str | None:
        """The ETag our lease with `token` left on the row, if known and not completed."""
        with self._etag_lock:
            entry = self._etags.get(address)
        return entry[1] if entry and entry[0] == token and not entry[2] else None

    def _done(self, completion: Completion) -> bool:
        """Whether this handle already committed `completion` (a retried call)."""
        with self._etag_lock:
            entry = self._etags.get(key_address(completion.key))
        return bool(
            entry and completion.claim.token and entry[0] == completion.claim.token and entry[2]
        )

    def _forget(self, addresses: Sequence[tuple[str, str]]) -> None:
        with self._etag_lock:
            for address in addresses:
                self._etags.pop(address, None)

    def _remember(
        self, address: tuple[str, str], token: str | None, etag: str | None, *, done: bool = False
    ) -> None:
        if not token or not etag:
            return
        with self._etag_lock:
            self._etags[address] = (token, etag, done)
            self._etags.move_to_end(address)
            while len(self._etags) > ETAG_CACHE:
                self._etags.popitem(last=False)

    async def purge(self, *, partition: str | None = None) -> int:
        """Delete completed rows past their TTL, leases ended a TTL ago, and lane records
        past the lane TTL (Table storage has no TTL of its own); how many went.

        A lease that ended (released, or its holder gone) is kept for `ttl_seconds` more:
        its row holds the key's delivery count, which recognises a poison pill.
        """
        return await self._call(lambda: self._purge(partition))

    def _purge(self, partition: str | None) -> int:
        now = self.clock.now()
        query = f"RowKey ge '{MARKER}' and RowKey lt '{chr(ord(MARKER) + 1)}'"
        parameters: dict[str, Any] = {}
        if partition is not None:
            query = "PartitionKey eq @p and " + query
            parameters["p"] = partition
        groups = []
        for entity in self._query(query, parameters):
            done = entity.get("status") == COMPLETED and float(entity.get("expires_at", 0)) <= now
            lapsed = (
                entity.get("status") == IN_PROGRESS
                and lapsed_since(entity) + self.ttl_seconds <= now
            )
            if done or lapsed:
                address = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
                groups.append(
                    Group(
                        entity["PartitionKey"],
                        [("delete", address, _if_match(str(entity.metadata["etag"])))],
                    )
                )
        lanes = f"RowKey ge '{LANE}' and RowKey lt '{chr(ord(LANE) + 1)}' and expires le @now"
        if partition is not None:
            lanes = "PartitionKey eq @p and " + lanes
        for entity in self._query(lanes, {**parameters, "now": now}):
            address = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
            groups.append(
                Group(
                    entity["PartitionKey"],
                    [("delete", address, _if_match(str(entity.metadata["etag"])))],
                )
            )
        submit(self.table, groups, self.throttle_retry)
        return sum(1 for g in groups if g.conflict is None)


def _queries(partition: str, row_keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Filters that together return at least the rows `row_keys` in `partition`."""
    numbers = [numeric_row(r) for r in row_keys]
    dense = [n for n in numbers if n is not None]
    queries: list[tuple[str, dict[str, Any]]] = []
    rest = [r for r, n in zip(row_keys, numbers, strict=True) if n is None]
    if len(dense) > OR_LIMIT and max(dense) - min(dense) + 1 <= DENSE * len(dense):
        queries.append(
            (
                "PartitionKey eq @p and RowKey ge @lo and RowKey le @hi",
                {"p": partition, "lo": marker_row(min(dense)), "hi": marker_row(max(dense))},
            )
        )
    else:
        rest = row_keys
    for start in range(0, len(rest), OR_LIMIT):
        chunk = rest[start : start + OR_LIMIT]
        clauses = " or ".join(f"RowKey eq @r{i}" for i in range(len(chunk)))
        parameters: dict[str, Any] = {"p": partition}
        parameters.update({f"r{i}": r for i, r in enumerate(chunk)})
        # The SDK substitutes parameters between spaces only, hence "( ... )".
        queries.append((f"PartitionKey eq @p and ( {clauses} )", parameters))
    return queries


def _etag(row: Entity) -> str:
    return str(row["__etag"])
