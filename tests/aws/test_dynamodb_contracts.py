"""The DynamoDB store and sink against the core contracts, on the moto server, in every mode.

`FENCED` passes every contract as written. `UPSERT` and `OPTIMISTIC` lease nothing at
claim time, and `UPSERT` upserts its markers: they declare it with the capability
fixtures, and the contracts assert the weaker behaviour they promise instead (they count
a failed delivery when it is released, so one whose worker died goes uncounted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import DynamoDBIdempotencyStore, DynamoDBMode, DynamoDBSink
from onceflow.clock import ManualClock
from onceflow.interfaces import Sink
from onceflow.testing import (
    AtomicSinkContract,
    Capabilities,
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

    mode = DynamoDBMode.FENCED
    sink_mode = DynamoDBMode.FENCED
    state_table = "state"
    output_table = "outputs"

    @pytest.fixture
    def store(
        self, dynamodb_client: Any, dynamodb_tables: Tables, clock: ManualClock
    ) -> DynamoDBIdempotencyStore:
        return DynamoDBIdempotencyStore(
            dynamodb_tables(self.state_table),
            mode=self.mode,
            client=dynamodb_client,
            clock=clock,
            ttl_seconds=3600.0,
        )

    @pytest.fixture
    def other_store(
        self, moto: MotoServer, dynamodb_tables: Tables, clock: ManualClock
    ) -> DynamoDBIdempotencyStore:
        # Another worker: its own client (own connection pool) on the same table.
        return DynamoDBIdempotencyStore(
            dynamodb_tables(self.state_table),
            mode=self.mode,
            client=dynamodb_worker_client(moto),
            clock=clock,
            ttl_seconds=3600.0,
        )

    @pytest.fixture
    def sink(self, dynamodb_client: Any, dynamodb_tables: Tables) -> DynamoDBSink:
        return DynamoDBSink(
            dynamodb_tables(self.output_table), mode=self.sink_mode, client=dynamodb_client
        )

    @pytest.fixture
    def dead_letter_sink(self, dynamodb_client: Any, dynamodb_tables: Tables) -> DynamoDBSink:
        return DynamoDBSink(
            dynamodb_tables(f"{self.output_table}-letters"),
            mode=self.sink_mode,
            client=dynamodb_client,
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

    sink_mode = DynamoDBMode.UPSERT
    max_examples = 5


class Upsert(Fenced):
    """No leases; outputs then markers in BatchWriteItem calls."""

    mode = sink_mode = DynamoDBMode.UPSERT
    state_table = "upsert-state"
    output_table = "upsert-outputs"

    @pytest.fixture
    def leases_at_claim(self) -> bool:
        return False

    @pytest.fixture
    def fences_completions(self) -> bool:
        return False

    @pytest.fixture
    def counts_crashed_deliveries(self) -> bool:
        return False


class TestUpsertStore(Upsert, StoreContract):
    pass


class TestUpsertSink(Upsert, SinkContract):
    pass


class TestUpsertExactlyOnce(Upsert, ExactlyOnceContract):
    max_examples = 8


class Optimistic(Upsert):
    """No claim write: the commit transaction is conditional on the record read at claim time."""

    mode = sink_mode = DynamoDBMode.OPTIMISTIC
    state_table = "opt-state"
    output_table = "opt-outputs"

    @pytest.fixture
    def fences_completions(self) -> bool:
        return True


class TestOptimisticAtomicSink(Optimistic, AtomicSinkContract):
    pass


class TestOptimisticExactlyOnce(Optimistic, ExactlyOnceContract):
    max_examples = 8


class TestOptimisticDeliveryCounts(Optimistic, Capabilities):
    """`OPTIMISTIC` lets the first commit win, which neither variant of the takeover
    contract describes, so of the store contract it runs the delivery count."""

    clock = StoreContract.clock
    test_claims_count_deliveries = StoreContract.test_claims_count_deliveries


class ShortLinks:
    """Lane commits chained over links of two outputs each (`LANE_LINK_WRITES`), so the
    lane plans' batches span several transactions: racing workers, lapsed leases and
    crashes meet a chain part-way."""

    lane_examples = 8

    @pytest.fixture(autouse=True)
    def short_links(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from onceflow.adapters.aws import dynamodb_store

        monkeypatch.setattr(dynamodb_store, "LANE_LINK_WRITES", 2)


class TestFencedShortLinksExactlyOnce(ShortLinks, Fenced, ExactlyOnceContract):
    max_examples = 4
    state_table = "links-state"
    output_table = "links-outputs"


class TestOptimisticShortLinksExactlyOnce(ShortLinks, Optimistic, ExactlyOnceContract):
    max_examples = 4
    state_table = "opt-links-state"
    output_table = "opt-links-outputs"
