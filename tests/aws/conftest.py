"""AWS fixtures: boto3 clients on the session moto server, and resources created once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

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
