"""BlobObjectStore against Azurite."""

from __future__ import annotations

import uuid

import pytest

from onceflow.adapters.azure import BlobObjectStore
from onceflow.testing import ObjectStoreContract
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def container_name(azurite_server: Azurite) -> str:
    """One container for the module; the contract's paths are unique per test."""
    name = f"objects-{uuid.uuid4().hex[:8]}"
    BlobObjectStore(name, connection_string=azurite_server.connection_string, create=True)
    return name


class TestBlobObjectStore(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, azurite_server: Azurite, container_name: str) -> BlobObjectStore:
        return BlobObjectStore(container_name, connection_string=azurite_server.connection_string)


class TestPrefixedBlobObjectStore(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, azurite_server: Azurite, container_name: str) -> BlobObjectStore:
        return BlobObjectStore(
            container_name, "lake/root/", connection_string=azurite_server.connection_string
        )


@pytest.mark.anyio
async def test_range_past_the_end_is_empty_like_a_slice(
    azurite_server: Azurite, container_name: str
) -> None:
    store = BlobObjectStore(container_name, connection_string=azurite_server.connection_string)
    path = f"{uuid.uuid4().hex}/r"
    await store.put(path, b"0123")
    assert await store.get_range(path, 2, 100) == b"23"
    assert await store.get_range(path, 10, 20) == b""
    with pytest.raises(FileNotFoundError):
        await store.get_range(f"{path}-absent", 0, 2)


def test_name_without_connection_string_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="connection_string"):
        BlobObjectStore("c")
