"""An idempotency store on Azure Cosmos DB for NoSQL."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import anyio.to_thread
from azure.core import MatchConditions
from azure.cosmos import ContainerProxy
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from onceflow import watermarks
from onceflow.adapters.azure.lease_rows import (
    IN_PROGRESS,
    UnansweredClaims,
    completed_by,
    completed_fields,
    contention_policy,
    deliveries_after,
    held_answer,
    released_fields,
    rounds,
)
from onceflow.adapters.azure.table_keys import bounded, encode_part
from onceflow.adapters.azure.throttling import default_retry, listed, send
from onceflow.clock import SystemClock
from onceflow.identity import key_parts
from onceflow.interfaces import Clock
from onceflow.lane_records import ReadModifyWriteLanes
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneRecord,
)
from onceflow.retry import RetryPolicy

__all__ = ["CosmosIdempotencyStore", "cosmos_address", "item_id", "partition_value"]

T = TypeVar("T")
Item = dict[str, Any]

QUERY_IDS = 100  # ids per ARRAY_CONTAINS query
WORKERS = 16  # concurrent point writes per call
ETAG_CACHE = 200_000
LONGEST_ID = 200  # Cosmos ids hold at most 255 characters
LONGEST_PARTITION = 2048
MAX_LANE_ROUNDS = 32  # rereads of a lane item another worker wrote under us
LANE_ID = "lane#"
"""Id prefix of a lane's record item (escaped like every id)."""
"""Bytes of UTF-8 in a partition key value: Cosmos refuses longer ones."""


def item_id(identity: str) -> str:
    """The item id of a key or output id: escaped (no `/ \\ ? #`), hashed when long."""
    return bounded(encode_part(identity), LONGEST_ID)


def partition_value(group: str) -> str:
    """The partition key value of a key's group: itself, or `sha256:<hex>` when too long."""
    encoded = group.encode("utf-8", "surrogatepass")
    if len(encoded) <= LONGEST_PARTITION:
        return group
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def cosmos_address(key: str) -> tuple[str, str]:
    """(partition key value, item id) of `key`: its group (the event source), and its item id."""
    return partition_value(key_parts(key)[0]), item_id(key)


class CosmosIdempotencyStore(ReadModifyWriteLanes):
    """`onceflow.interfaces.IdempotencyStore` on a Cosmos DB container partitioned by `/pk`.

    A claim reads the batch's items in one query per partition (up to 100 ids each),
    then creates the absent ones (a 409 conflict means someone else won) and takes over
    expired ones with `replace_item` guarded by the item's ETag; completion is a
    `replace_item` with the claim's ETag as fence, release an ETag-guarded replace that frees the
    lease and keeps the key's delivery count.
    Point writes of one call run concurrently. Completed items carry `ttl` so a
    container with TTL enabled (`default_ttl=-1`) drops them; state is decided by the
    stored timestamps, never by the TTL sweep. Transactional batches are not used:
    the local test server (@vercel/cosmosdb-server) refuses them, so that path could
    not be tested; every behaviour here was tested against that server. For the same
    reason this store is no `onceflow.interfaces.TransactionalStore` (no `complete_with`):
    its completions cannot commit in one transaction with a sink's writes. A write that
    meets a concurrent one is decided again, up to `retry.attempts` rounds.
    """

    def __init__(
        self,
        container: ContainerProxy,
        *,
        ttl_seconds: float = 86_400.0,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        throttle_retry: RetryPolicy | None = None,
        lane_ttl_seconds: float = watermarks.LANE_TTL_SECONDS,
    ) -> None:
        self.container = container
        self.ttl_seconds = ttl_seconds
        self.lane_ttl_seconds = lane_ttl_seconds
        """How long a lane record outlives its last write (`watermarks.LANE_TTL_SECONDS`:
        past the longest a source can redeliver below its watermark)."""
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or contention_policy()
        """Rounds for one contended key (conflicting writes), and the wait between them."""
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while Cosmos throttles them past its SDK's own 429 retries."""
        self._etags: OrderedDict[str, tuple[str, str, bool]] = OrderedDict()
        """Per key: the token of our lease or completion, the ETag it left, and whether
        it is our completion (a retried `complete` of it is accepted without a write)."""
        self._lock = threading.Lock()
        self._unanswered = UnansweredClaims()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="onceflow-cosmos")

    async def _call(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    # -- the LaneStore protocol (onceflow.watermarks): ReadModifyWriteLanes over this --

    def _lane_rmw(
        self, lane: str, change: Callable[[LaneRecord | None, float], tuple[T, LaneRecord | None]]
    ) -> T:
        """Read a lane's item, `change` it, write the answer guarded by the ETag read (create
        when there was none); when another worker wrote in between, read and decide again."""
        partition, ident = lane_address(lane)
        for _ in range(MAX_LANE_ROUNDS):
            now = self.clock.now()
            # A query, not read_item: the local server answers a missing point read with a 500.
            rows = send(
                self.throttle_retry,
                "a lane read",
                lambda: list(
                    self.container.query_items(
                        "SELECT * FROM c WHERE c.pk = @pk AND c.id = @id",
                        parameters=[
                            {"name": "@pk", "value": partition},
                            {"name": "@id", "value": ident},
                        ],
                        partition_key=partition,
                    )
                ),
            )
            row = rows[0] if rows else None
            answer, written = change(_decode_lane(lane, row, now), now)
            if written is None:
                return answer
            item = _encode_lane(written, partition, ident, self.lane_ttl_seconds)
            try:
                if row is None:
                    send(self.throttle_retry, "a lane write", self.container.create_item, item)
                else:
                    self._replace(ident, item, str(row["_etag"]), "a lane write")
            except (CosmosResourceExistsError, CosmosAccessConditionFailedError):
                continue
            return answer
        raise RuntimeError(f"lane record kept changing under {MAX_LANE_ROUNDS} rounds")

    # -- claim -----------------------------------------------------------------------------

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Lease every free key; see `onceflow.interfaces.IdempotencyStore.claim`."""
        return await self._call(lambda: self._claim(list(keys), lease_seconds))

    def _claim(self, keys: list[str], lease_seconds: float) -> list[Claim]:
        now = self.clock.now()
        rows = self.read(keys)
        answers: dict[str, Claim] = {}
        contested: list[str] = []
        for key in keys:
            row = rows.get(key)
            mine = self._unanswered.adopt(key, row, now)
            if mine is not None and row is not None:
                self._remember(key, mine.token or "", str(row["_etag"]))
                answers[key] = mine
                continue
            held = held_answer(key, row, now)
            if held is not None:
                answers[key] = held
            else:
                contested.append(key)
        claims = self._each(lambda key: self._take(key, rows.get(key), lease_seconds), contested)
        answers.update(zip(contested, claims, strict=True))
        self._unanswered.answered(keys)
        return [answers[key] for key in keys]

    def _take(self, key: str, row: Item | None, lease_seconds: float) -> Claim:
        """Lease one free key, reading it again after each lost race."""
        partition, ident = cosmos_address(key)
        tried: Claim | None = None
        for attempt in rounds(self.retry):
            if attempt > 1:
                row = self._read_one(key)
                if tried is not None and row is not None and row.get("token") == tried.token:
                    # Our write landed but its answer was lost and the SDK's retry met it.
                    self._remember(key, tried.token or "", str(row["_etag"]))
                    return tried
            now = self.clock.now()
            held = held_answer(key, row, now)
            if held is not None:
                return held
            token = uuid.uuid4().hex
            deliveries = deliveries_after(row)
            attempt_claim = Claim(
                key,
                ClaimStatus.NEW,
                token=token,
                lease_expires_at=now + lease_seconds,
                deliveries=deliveries,
            )
            self._unanswered.note(attempt_claim)
            fields = {
                "id": ident,
                "pk": partition,
                "key": key,
                "status": IN_PROGRESS,
                "token": token,
                "lease_expires_at": now + lease_seconds,
                "deliveries": deliveries,
            }
            written: Item
            try:
                if row is None:
                    create = self.container.create_item
                    written = send(self.throttle_retry, "a claim", create, fields)
                else:
                    written = self._replace(ident, fields, str(row["_etag"]), "a claim")
            except (CosmosResourceExistsError, CosmosAccessConditionFailedError):
                tried = attempt_claim
                continue
            except CosmosResourceNotFoundError:
                continue  # released or purged meanwhile: create it next round
            self._remember(key, token, written["_etag"])
            return attempt_claim
        return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=self.clock.now())

    # -- complete and release --------------------------------------------------------------

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds; see the protocol."""
        return await self._call(lambda: self._each(self._complete, completions))

    def _complete(self, completion: Completion) -> bool:
        key, token = completion.key, completion.claim.token
        if not token:
            return False
        partition, ident = cosmos_address(key)
        if self._done(key, token):
            return True  # completed by this handle already: a retried call
        etag = self._cached(key, token)
        for _ in rounds(self.retry):
            if etag is None:
                row = self._read_one(key)
                if completed_by(completion, row):
                    return True  # our own commit, its reply lost: not applied again
                if row is None or row.get("token") != token:
                    return False
                etag = str(row["_etag"])
            now = self.clock.now()
            fields = {
                "id": ident,
                "pk": partition,
                **completed_fields(completion, now, self.ttl_seconds),
                "ttl": int(self.ttl_seconds) + 60,
            }
            try:
                written = self._replace(ident, fields, etag, "a completion")
            except CosmosAccessConditionFailedError:
                etag = None  # our own earlier completion, or a takeover: read and see
                continue
            except CosmosResourceNotFoundError:
                return False
            except Exception:
                # The reply may be lost with the completion applied: the retry reads the
                # item first and finds its own commit, rather than a refused stale ETag.
                self._forget(key)
                raise
            self._remember(key, token, written["_etag"], done=True)
            return True
        return False

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """End leases still held by these claims, keeping each key's delivery count.

        The item stays, free and tokenless, holding the count (less this delivery with
        `refund`): an ETag-guarded replace in place of a delete, the same one request.
        It carries `ttl` like a completed item, so the container's sweep drops it in time.
        Stale claims are ignored.
        """
        held = [c for c in claims if c.status is ClaimStatus.NEW and c.token]
        await self._call(lambda: self._each(lambda claim: self._release(claim, refund), held))

    def _release(self, claim: Claim, refund: bool) -> None:
        partition, ident = cosmos_address(claim.key)
        etag = self._cached(claim.key, claim.token or "")
        if etag is None:
            row = self._read_one(claim.key)
            if row is None or row.get("token") != claim.token or row.get("status") != IN_PROGRESS:
                return
            etag = str(row["_etag"])
        fields = {
            "id": ident,
            "pk": partition,
            **released_fields(claim, refund=refund, now=self.clock.now()),
            "ttl": int(self.ttl_seconds) + 60,
        }
        # A refused replace means the lease moved on: nothing of ours to release.
        with contextlib.suppress(CosmosAccessConditionFailedError, CosmosResourceNotFoundError):
            self._replace(ident, fields, etag, "a release")
        with self._lock:
            self._etags.pop(claim.key, None)

    # -- items -----------------------------------------------------------------------------

    def read(self, keys: Sequence[str]) -> dict[str, Item]:
        """The stored items of these keys, one query per partition and 100 ids."""
        by_partition: dict[str, dict[str, str]] = {}
        for key in dict.fromkeys(keys):
            partition, ident = cosmos_address(key)
            by_partition.setdefault(partition, {})[ident] = key
        found: dict[str, Item] = {}
        for partition, ids in by_partition.items():
            id_list = list(ids)
            for start in range(0, len(id_list), QUERY_IDS):
                chunk = id_list[start : start + QUERY_IDS]
                items = send(
                    self.throttle_retry,
                    "a query",
                    listed,
                    self.container.query_items,
                    "SELECT * FROM c WHERE c.pk = @pk AND ARRAY_CONTAINS(@ids, c.id)",
                    parameters=[
                        {"name": "@pk", "value": partition},
                        {"name": "@ids", "value": chunk},
                    ],
                    partition_key=partition,
                )
                for item in items:
                    owner = ids.get(item["id"])
                    if owner is not None:
                        found[owner] = dict(item)
        return found

    def _replace(self, ident: str, fields: Item, etag: str, what: str) -> Item:
        """An ETag-guarded replace of item `ident`."""
        written: Item = send(
            self.throttle_retry,
            what,
            self.container.replace_item,
            ident,
            fields,
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
        )
        return written

    def _read_one(self, key: str) -> Item | None:
        # A query, not read_item: the local server answers a point read of a missing item
        # with a 500, and a query costs the same on the real service.
        return self.read([key]).get(key)

    def _cached(self, key: str, token: str) -> str | None:
        """The ETag our lease with `token` left on the item, if known and not completed."""
        with self._lock:
            entry = self._etags.get(key)
        return entry[1] if entry and entry[0] == token and not entry[2] else None

    def _each(self, func: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """`func` over `items` concurrently; every call ends before the first error is raised.

        So no write of a failed call is still in flight when the caller retries it.
        """
        futures = [self._pool.submit(func, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]

    def _forget(self, key: str) -> None:
        with self._lock:
            self._etags.pop(key, None)

    def _done(self, key: str, token: str) -> bool:
        with self._lock:
            entry = self._etags.get(key)
        return bool(entry and entry[0] == token and entry[2])

    def _remember(self, key: str, token: str, etag: str, *, done: bool = False) -> None:
        with self._lock:
            self._etags[key] = (token, etag, done)
            self._etags.move_to_end(key)
            while len(self._etags) > ETAG_CACHE:
                self._etags.popitem(last=False)


def lane_address(lane: str) -> tuple[str, str]:
    """(partition key value, item id) of a lane's record: in its source's partition."""
    source, marker, _ = lane.rpartition("#lane#")
    group = source if marker else key_parts(lane)[0]
    return partition_value(group), item_id(LANE_ID + lane)


def _decode_lane(lane: str, row: Item | None, now: float) -> LaneRecord | None:
    """The stored record, or None when absent or past the lane TTL (counted as absent)."""
    if row is None or "state" not in row or float(row["expires"]) <= now:
        return None
    lease = row.get("lease_expires_at")
    return LaneRecord(
        lane,
        watermarks.decode_state(row["state"]),
        row.get("token", ""),
        float(lease) if lease is not None else float("-inf"),
        int(row["version"]),
        float(row["updated_at"]),
    )


def _encode_lane(record: LaneRecord, partition: str, ident: str, ttl_seconds: float) -> Item:
    """The record as an item (no lease field when none is held; `ttl` for the sweep)."""
    item: Item = {
        "id": ident,
        "pk": partition,
        "state": watermarks.encode_state(record.state),
        "token": record.token,
        "version": record.version,
        "updated_at": record.updated_at,
        "expires": record.updated_at + ttl_seconds,
        "ttl": int(ttl_seconds) + 60,
    }
    if record.lease_expires_at != float("-inf"):
        item["lease_expires_at"] = record.lease_expires_at
    return item
