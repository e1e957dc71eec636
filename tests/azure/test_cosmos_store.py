"""CosmosIdempotencyStore and CosmosSink against @vercel/cosmosdb-server (plain HTTP)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey

from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore, cosmos_address
from onceflow.clock import ManualClock
from onceflow.interfaces import Sink
from onceflow.testing import ExactlyOnceContract, SinkContract, StoreContract
from tests.support.servers import CosmosServer

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def containers(cosmos: CosmosServer) -> dict[str, ContainerProxy]:
    """Containers for this module, made once: the contracts use unique keys per test."""
    client = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    database = client.create_database_if_not_exists(f"db{uuid.uuid4().hex[:8]}")
    return {
        role: database.create_container(
            role, partition_key=PartitionKey(path="/pk"), default_ttl=-1
        )
        for role in ("keys", "outputs", "letters")
    }


async def read_cosmos_sink(sink: Sink) -> dict[str, Any]:
    assert isinstance(sink, CosmosSink)
    return await sink.contents()


class CosmosFixtures:
    @pytest.fixture
    def store(
        self, containers: dict[str, ContainerProxy], clock: ManualClock
    ) -> CosmosIdempotencyStore:
        return CosmosIdempotencyStore(containers["keys"], clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(
        self, containers: dict[str, ContainerProxy], clock: ManualClock
    ) -> CosmosIdempotencyStore:
        return CosmosIdempotencyStore(containers["keys"], clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_cosmos_sink


class TestCosmosStore(CosmosFixtures, StoreContract):
    pass


class TestCosmosSink(CosmosFixtures, SinkContract):
    @pytest.fixture
    def sink(self, containers: dict[str, ContainerProxy]) -> CosmosSink:
        return CosmosSink(containers["outputs"])


class TestCosmosExactlyOnce(CosmosFixtures, ExactlyOnceContract):
    max_examples = 8

    @pytest.fixture
    def sink(self, containers: dict[str, ContainerProxy]) -> CosmosSink:
        return CosmosSink(containers["outputs"])

    @pytest.fixture
    def dead_letter_sink(self, containers: dict[str, ContainerProxy]) -> CosmosSink:
        return CosmosSink(containers["letters"])


def test_item_ids_hold_no_forbidden_characters() -> None:
    partition, item_id = cosmos_address("s3://bucket/a?b#c\\d")
    assert partition == "s3://bucket/a?b"
    assert not set(item_id) & set("/\\?#")
    assert len(cosmos_address("src#" + "x" * 900)[1]) <= 255
