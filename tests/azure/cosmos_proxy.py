"""A Cosmos database whose containers the store (and optionally the sink) reach through the
fault proxy (`cosmos_proxy` in conftest.py), for the lost-reply, throttling and wire-fault
tests."""

from __future__ import annotations

import uuid
from typing import Any

from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey

from tests.support.proxy import FaultProxy
from tests.support.servers import CosmosServer

ROLES = ("keys", "outputs")


def proxied_database(
    cosmos: CosmosServer, proxy: FaultProxy, **options: Any
) -> tuple[DatabaseProxy, DatabaseProxy]:
    """A new database with `keys` and `outputs` containers (TTL on): its handle through the
    proxy (a client built with `options`, e.g. `read_timeout`), and a direct one."""
    direct = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    name = f"db{uuid.uuid4().hex[:8]}"
    database = direct.create_database(name)
    for role in ROLES:
        database.create_container(role, partition_key=PartitionKey(path="/pk"), default_ttl=-1)
    client = CosmosClient(
        proxy.endpoint, credential=cosmos.key, enable_endpoint_discovery=False, **options
    )
    return client.get_database_client(name), database


def proxied_containers(
    cosmos: CosmosServer, proxy: FaultProxy, *, outputs_through_proxy: bool
) -> tuple[ContainerProxy, ContainerProxy]:
    """A new database's `keys` container through the proxy, and its `outputs` one."""
    proxied, database = proxied_database(cosmos, proxy)
    outputs = proxied if outputs_through_proxy else database
    return proxied.get_container_client("keys"), outputs.get_container_client("outputs")
