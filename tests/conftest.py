"""Shared test configuration: the anyio backend and the loopback servers, started once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import (
    Azurite,
    CosmosServer,
    MotoServer,
    azurite,
    cosmos_server,
    moto_server,
)


@pytest.fixture
def anyio_backend() -> str:
    """Contract tests run on asyncio, the loop Lambda and Functions use."""
    return "asyncio"


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """A moto server (S3, DynamoDB, Kinesis, SQS, EventBridge) on a loopback port."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    """Azurite (Blob, Queue, Table) on loopback ports."""
    try:
        with azurite() as server:
            yield server
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cosmos() -> Iterator[CosmosServer]:
    """A Cosmos DB NoSQL-protocol server on a loopback port."""
    try:
        with cosmos_server() as server:
            yield server
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
