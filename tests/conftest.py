"""Shared test configuration: the anyio backend and the loopback servers, started once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def _tally() -> dict[str, dict[str, int]]:
    """This process's passing plans per contract, as plain counters."""
    from onceflow.testing.exactly_once import PLANS_RUN

    return {
        name: {
            "plans": plans,
            "deliveries": PLANS_RUN.deliveries[name],
            "faults": PLANS_RUN.faults[name],
            "effects": PLANS_RUN.effects[name],
        }
        for name, plans in PLANS_RUN.plans.items()
    }


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its plans to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["onceflow_plans"] = _tally()


def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller adds a finished xdist worker's plans to its own tally."""
    from onceflow.testing.exactly_once import PLANS_RUN

    for name, row in getattr(node, "workeroutput", {}).get("onceflow_plans", {}).items():
        PLANS_RUN.plans[name] += row["plans"]
        PLANS_RUN.deliveries[name] += row["deliveries"]
        PLANS_RUN.faults[name] += row["faults"]
        PLANS_RUN.effects[name] += row["effects"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """With `ONCEFLOW_PLANS` set (`make soak`), the delivery plans each contract passed;
    with `ONCEFLOW_SOAK_REPORT` also, they are added to that file (`tests/support/soak.py`)."""
    import os

    if (
        not os.environ.get("ONCEFLOW_PLANS")
        or getattr(terminalreporter.config, "workeroutput", None) is not None
    ):
        return
    tally = _tally()
    if not tally:
        return
    from tests.support.soak import add_to_report, table_lines

    terminalreporter.section("exactly-once campaign")
    for line in table_lines(tally):
        terminalreporter.write_line(line)
    if report := os.environ.get("ONCEFLOW_SOAK_REPORT"):
        add_to_report(report, tally)
