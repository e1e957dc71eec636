"""AWS fixtures: boto3 clients on the session moto server, and resources created once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.aws.moto_clients import SerializedClient
from tests.support.proxy import FaultProxy
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="session")
def s3_bucket(moto: MotoServer) -> str:
    """One bucket for the whole session; tests use unique paths inside it."""
    name = f"onceflow-{uuid.uuid4().hex[:10]}"
    moto.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_client(moto: MotoServer) -> Any:
    """A boto3 S3 client on the moto server."""
    return moto.client("s3")


@pytest.fixture(scope="session")
def dynamodb_client(moto: MotoServer) -> Any:
    """A boto3 DynamoDB client on the moto server (requests serialised, see below)."""
    return SerializedClient(moto.client("dynamodb"))


@pytest.fixture
def dynamodb_tables(dynamodb_client: Any) -> Callable[[str], str]:
    """Makes (once per name, per test) a table with TTL, keyed by `pk`; returns its name.

    Fresh small tables keep moto fast: it copies every table a transaction touches.
    """
    from onceflow.adapters.aws.dynamodb_store import create_table

    made: dict[str, str] = {}

    def table(name: str) -> str:
        if name not in made:
            made[name] = f"{name}-{uuid.uuid4().hex[:8]}"
            create_table(dynamodb_client, made[name])
        return made[name]

    return table


@pytest.fixture
def moto_proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the moto server (see `tests.support.proxy`); no fault armed."""
    with FaultProxy(urlsplit(moto.endpoint).port or 80) as proxy:
        yield proxy
