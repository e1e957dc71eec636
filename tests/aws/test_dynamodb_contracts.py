"""The DynamoDB store and sink against the core contracts, on the moto server.

Fenced (leases + atomic sink) passes every contract. Upsert (no leases, BatchWriteItem)
passes the sink and exactly-once contracts; the tests that assume a lease it does not
take are skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws.dynamodb_sink import DynamoDBSink
from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.interfaces import Sink
from onceflow.testing import (
    AtomicSinkContract,
    ExactlyOnceContract,
    SinkContract,
    StoreContract,
)
from tests.aws.moto_clients import dynamodb_worker_client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

Tables = Callable[[str], str]


async def read_dynamodb(sink: Sink) -> dict[str, Any]:
    assert isinstance(sink, DynamoDBSink)
    return sink.read_all()


class Fenced:
    """Leases and fencing tokens; outputs and markers in one transaction."""

    leases = True
    atomic = True
    state_table = "state"
    output_table = "outputs"

    @pytest.fixture
    def store(
        self, dynamodb_client: Any, dynamodb_tables: Tables, clock: ManualClock
    ) -> DynamoDBIdempotencyStore:
        return DynamoDBIdempotencyStore(
            dynamodb_tables(self.state_table),
            client=dynamodb_client,
            clock=clock,
            ttl_seconds=3600.0,
            leases=self.leases,
        )

    @pytest.fixture
    def other_store(
        self, moto: MotoServer, dynamodb_tables: Tables, clock: ManualClock
    ) -> DynamoDBIdempotencyStore:
        # Another worker: its own client (own connection pool) on the same table.
        return DynamoDBIdempotencyStore(
            dynamodb_tables(self.state_table),
            client=dynamodb_worker_client(moto),
            clock=clock,
            ttl_seconds=3600.0,
            leases=self.leases,
        )

    @pytest.fixture
    def sink(self, dynamodb_client: Any, dynamodb_tables: Tables) -> DynamoDBSink:
        return DynamoDBSink(
            dynamodb_tables(self.output_table), client=dynamodb_client, atomic=self.atomic
        )

    @pytest.fixture
    def dead_letter_sink(self, dynamodb_client: Any, dynamodb_tables: Tables) -> DynamoDBSink:
        return DynamoDBSink(
            dynamodb_tables(f"{self.output_table}-letters"),
            client=dynamodb_client,
            atomic=self.atomic,
        )

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_dynamodb


class TestFencedStore(Fenced, StoreContract):
    pass


class TestFencedSink(Fenced, SinkContract):
    pass


class TestFencedAtomicSink(Fenced, AtomicSinkContract):
    pass


class TestFencedExactlyOnce(Fenced, ExactlyOnceContract):
    max_examples = 8
    state_table = "eo-state"
    output_table = "eo-outputs"


class TestFencedPlainSinkExactlyOnce(Fenced, ExactlyOnceContract):
    """Leases with a sink that cannot join the transaction: write, then fenced complete."""

    atomic = False
    max_examples = 5


NO_LEASE = "upsert mode takes no lease at claim time: a second worker is not held off"


class Upsert(Fenced):
    """No leases; outputs then markers in BatchWriteItem calls."""

    leases = False
    atomic = False
    state_table = "upsert-state"
    output_table = "upsert-outputs"


class TestUpsertSink(Upsert, SinkContract):
    pass


class TestUpsertExactlyOnce(Upsert, ExactlyOnceContract):
    max_examples = 8

    @pytest.mark.anyio
    async def test_crash_at_each_step_then_redelivery(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(f"{NO_LEASE}, so the early redelivery this test expects to fail succeeds")

    @pytest.mark.anyio
    async def test_two_workers_racing_apply_each_event_once(
        self, *args: Any, **kwargs: Any
    ) -> None:
        pytest.skip(
            f"{NO_LEASE}: racing workers may both run the processor (the outputs "
            "still land once, as keyed overwrites)"
        )

    @pytest.mark.anyio
    async def test_worker_that_outlives_its_lease_cannot_commit(
        self, *args: Any, **kwargs: Any
    ) -> None:
        pytest.skip(
            f"{NO_LEASE} and upserts its markers unconditionally: the slow worker's "
            "commit lands too, as an identical overwrite"
        )

    @pytest.mark.anyio
    async def test_ordered_partition_stops_at_its_first_failure(
        self, *args: Any, **kwargs: Any
    ) -> None:
        pytest.skip(f"{NO_LEASE}: another worker's claim holds nothing back")


class Optimistic(Upsert):
    """No claim write: the commit transaction is conditional on the row read at claim time."""

    atomic = True
    state_table = "opt-state"
    output_table = "opt-outputs"


class TestOptimisticAtomicSink(Optimistic, AtomicSinkContract):
    @pytest.mark.anyio
    async def test_stale_token_writes_nothing_for_its_key(self, *args: Any, **kwargs: Any) -> None:
        pytest.skip(
            f"{NO_LEASE}; the conditional commit refuses the second writer instead "
            "(see test_dynamodb_counts.py)"
        )


class TestOptimisticExactlyOnce(Optimistic, TestUpsertExactlyOnce):
    # The conditional commit refuses a worker whose read went stale: this one holds.
    test_worker_that_outlives_its_lease_cannot_commit = (
        ExactlyOnceContract.test_worker_that_outlives_its_lease_cannot_commit
    )
