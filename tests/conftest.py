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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """With `ONCEFLOW_PLANS` set (`make soak`), the delivery plans each backend passed."""
    import os

    from onceflow.testing.exactly_once import PLANS_RUN

    if not os.environ.get("ONCEFLOW_PLANS") or not PLANS_RUN.plans:
        return
    terminalreporter.section("exactly-once campaign")
    header = ("contract", "plans", "deliveries", "faults", "effects", "lost", "doubled")
    terminalreporter.write_line("{:<44} {:>7} {:>11} {:>8} {:>9} {:>5} {:>8}".format(*header))
    for name, plans in sorted(PLANS_RUN.plans.items()):
        # A plan that lost or doubled an effect fails its check and the run; these passed.
        terminalreporter.write_line(
            f"{name:<44} {plans:>7} {PLANS_RUN.deliveries[name]:>11} {PLANS_RUN.faults[name]:>8} "
            f"{PLANS_RUN.effects[name]:>9} {0:>5} {0:>8}"
        )
