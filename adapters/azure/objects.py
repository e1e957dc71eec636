"""An object store on Azure Blob Storage: one container, paths under an optional prefix.

`BlobObjectStore.pinned` is what the chunked path reads through: every read carries
`If-Match: <ETag>` of the blob version planned, so a blob rewritten mid-run fails the
read with `ObjectChanged` instead of mixing bytes of two versions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient

from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.errors import OnceflowError
from onceflow.records import ObjectInfo
from onceflow.retry import RetryPolicy

__all__ = ["BlobObjectStore", "ObjectChanged"]

T = TypeVar("T")


class ObjectChanged(OnceflowError):
    """The blob was rewritten since it was planned: its old version cannot be read."""


class BlobObjectStore:
    """`onceflow.interfaces.ObjectStore` on one Blob container, every path under `prefix`.

    Writes are single-shot block-blob uploads, so a reader sees the whole old or the whole
    new blob; `put_if_absent` is an upload with `If-None-Match: *`. The SDK is synchronous
    (its async flavour needs aiohttp), so each call runs in a worker thread.
    """

    def __init__(
        self,
        container: ContainerClient | str,
        prefix: str = "",
        *,
        connection_string: str | None = None,
        create: bool = False,
        throttle_retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(container, str):
            if connection_string is None:
                raise ValueError(
                    f"BlobObjectStore({container!r}) needs connection_string= or a ContainerClient"
                )
            service = BlobServiceClient.from_connection_string(connection_string)
            container = service.get_container_client(container)
        self.container = container
        self.prefix = prefix
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while Blob storage throttles them (the SDK never retries a 429)."""
        self._pin: dict[str, Any] = {}
        if create:
            with contextlib.suppress(ResourceExistsError):
                send(self.throttle_retry, "a container creation", container.create_container)

    def pinned(self, etag: str) -> BlobObjectStore:
        """This store with every read sent `If-Match: etag`: a rewritten blob fails to read."""
        view = BlobObjectStore(self.container, self.prefix, throttle_retry=self.throttle_retry)
        view._pin = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        return view

    def _changed(self, path: str) -> ObjectChanged:
        return ObjectChanged(
            f"blob {self._name(path)!r} was rewritten since its chunk plan (its ETag is no "
            f"longer {self._pin['etag']}): that version can no longer be read; the new "
            "version's own trigger runs it"
        )

    def _name(self, path: str) -> str:
        return self.prefix + path

    async def _call(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(send, self.throttle_retry, "a blob request", func)

    async def get(self, path: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when there is none."""
        blob = self.container.get_blob_client(self._name(path))
        try:
            return await self._call(lambda: blob.download_blob(**self._pin).readall())
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(f"no blob {self._name(path)!r}") from exc
        except ResourceModifiedError as exc:
            raise self._changed(path) from exc

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`; `FileNotFoundError` when absent."""
        blob = self.container.get_blob_client(self._name(path))
        if end <= start:
            if await self.head(path) is None:
                raise FileNotFoundError(f"no blob {self._name(path)!r}")
            return b""
        try:
            return await self._call(
                lambda: blob.download_blob(offset=start, length=end - start, **self._pin).readall()
            )
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(f"no blob {self._name(path)!r}") from exc
        except ResourceModifiedError as exc:
            raise self._changed(path) from exc
        except HttpResponseError as exc:
            if exc.status_code == 416:  # start at or past the end: an empty slice, like bytes[a:b]
                return b""
            raise

    async def put(self, path: str, data: bytes) -> None:
        """Create or replace the object."""
        blob = self.container.get_blob_client(self._name(path))
        await self._call(lambda: blob.upload_blob(bytes(data), overwrite=True))

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object only if it does not exist; whether this call created it."""
        blob = self.container.get_blob_client(self._name(path))
        try:
            await self._call(
                lambda: blob.upload_blob(bytes(data), overwrite=True, if_none_match="*")
            )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose path starts with `prefix`, sorted by path."""
        cut = len(self.prefix)

        def listing() -> list[ObjectInfo]:
            return [
                ObjectInfo(
                    b.name[cut:],
                    int(b.size),
                    b.etag,
                    b.last_modified.timestamp() if b.last_modified else None,
                )
                for b in self.container.list_blobs(name_starts_with=self._name(prefix))
            ]

        return sorted(await self._call(listing), key=lambda info: info.path)

    async def delete(self, path: str) -> None:
        """Remove the object; removing an absent object is not an error."""
        blob = self.container.get_blob_client(self._name(path))
        with contextlib.suppress(ResourceNotFoundError):
            await self._call(blob.delete_blob)

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""
        blob = self.container.get_blob_client(self._name(path))
        try:
            props = await self._call(lambda: blob.get_blob_properties(**self._pin))
        except ResourceNotFoundError:
            return None
        except ResourceModifiedError as exc:
            raise self._changed(path) from exc
        modified = props.last_modified.timestamp() if props.last_modified else None
        return ObjectInfo(path, int(props.size), props.etag, modified)
