"""Fixtures of the Azure tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.proxy import FaultProxy
from tests.support.servers import CosmosServer


@pytest.fixture
def cosmos_proxy(cosmos: CosmosServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the Cosmos server."""
    with FaultProxy(int(cosmos.endpoint.rsplit(":", 1)[1])) as proxy:
        yield proxy
