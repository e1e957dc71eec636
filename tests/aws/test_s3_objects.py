"""S3ObjectStore against the object-store contract, on the moto server."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.adapters.aws import S3ObjectStore
from onceflow.testing import ObjectStoreContract

pytestmark = pytest.mark.emulator


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, s3_bucket: str, s3_client: Any) -> S3ObjectStore:
        return S3ObjectStore(s3_bucket, prefix="contract", client=s3_client)


@pytest.mark.anyio
async def test_put_if_absent_is_enforced_by_s3(s3_bucket: str, s3_client: Any) -> None:
    """The server, not a client-side check, refuses the second create."""
    store = S3ObjectStore(s3_bucket, prefix="cond/", client=s3_client)
    assert await store.put_if_absent("x", b"1")
    with pytest.raises(Exception) as raised:
        s3_client.put_object(Bucket=s3_bucket, Key="cond/x", Body=b"2", IfNoneMatch="*")
    assert "PreconditionFailed" in str(raised.value)


@pytest.mark.anyio
async def test_prefix_is_hidden_from_paths(s3_bucket: str, s3_client: Any) -> None:
    store = S3ObjectStore(s3_bucket, prefix="/hidden/", client=s3_client)
    await store.put("a b/ü.txt", b"x")
    assert [i.path for i in await store.list("a b/")] == ["a b/ü.txt"]
    assert s3_client.get_object(Bucket=s3_bucket, Key="hidden/a b/ü.txt")["Body"].read() == b"x"
    assert await store.get_range("a b/ü.txt", 5, 9) == b""
