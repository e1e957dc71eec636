"""moto-facing boto3 clients for the AWS tests."""

from __future__ import annotations

import threading
from typing import Any

from tests.support.proxy import FaultProxy
from tests.support.servers import MotoServer


class SerializedClient:
    """A boto3 client whose requests go to the server one at a time, process-wide.

    moto applies a conditional write or a transaction without any lock (and rolls a
    cancelled transaction back by restoring a copy of the whole table), so concurrent
    requests can both pass one condition or undo each other's writes. Real DynamoDB
    serialises them per item. Workers here still interleave freely between requests.
    """

    _lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("get_") or name == "can_paginate":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def dynamodb_worker_client(moto: MotoServer) -> Any:
    """A new worker's DynamoDB client on the moto server (requests serialised, see above)."""
    return SerializedClient(moto.client("dynamodb"))


def proxied_dynamodb_client(
    moto: MotoServer, proxy: FaultProxy, *, attempts: int = 1, read_timeout: float = 2.0
) -> Any:
    """A DynamoDB client whose requests go through `proxy` to the moto server.

    `attempts` is botocore's own total (1: botocore never retries, so a fault reaches the
    store); short timeouts keep a delayed reply cheap.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=2.0,
        read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
    )
    client = boto3.client(
        "dynamodb",
        endpoint_url=proxy.endpoint,
        region_name=moto.region,
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
        config=config,
    )
    return SerializedClient(client)
