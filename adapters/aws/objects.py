"""An object store in one S3 bucket under a prefix, and a view of it pinned to one version.

`S3ObjectStore.pinned` is what the chunked path reads through: every GET and HEAD names
the object version the chunk plan was made from (`VersionId`), or, in an unversioned
bucket, carries `If-Match: <ETag>`, so an object rewritten mid-run fails the read with
`ObjectChanged` instead of mixing bytes of two versions.
"""

from __future__ import annotations

from typing import Any

from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.errors import OnceflowError
from onceflow.records import ObjectInfo

__all__ = ["ObjectChanged", "S3ObjectStore"]

_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_CHANGED_CODES = {"PreconditionFailed", "412"}
_TAKEN_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class ObjectChanged(OnceflowError):
    """The object was rewritten since it was planned: its old version cannot be read."""


class S3ObjectStore:
    """Objects in `bucket` under `prefix`; put-if-absent uses S3's `If-None-Match: *`."""

    client = ClientOnFirstUse("s3")

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        # A prefix names a folder: "lake" and "lake/" mean the same place.
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client
        self._pin: dict[str, str] = {}

    def pinned(self, *, version_id: str | None = None, etag: str | None = None) -> S3ObjectStore:
        """This store with every read of an object pinned: to `version_id`, else to `etag`.

        Reads of a pinned view send `VersionId` (the version stays readable after an
        overwrite) or `If-Match` (an overwrite fails the read with `ObjectChanged`).
        """
        if not version_id and not etag:
            raise ValueError("pin an object read to a version_id or an etag")
        view = S3ObjectStore(self.bucket, self.prefix, client=self.client)
        view._pin = {"VersionId": version_id} if version_id else {"IfMatch": f'"{etag}"'}
        return view

    def _changed(self, path: str) -> ObjectChanged:
        where = f"s3://{self.bucket}/{self._key(path)}"
        return ObjectChanged(
            f"{where} was rewritten since its chunk plan (its ETag is no longer "
            f"{self._pin.get('IfMatch', '?')}): that version can no longer be read; the new "
            "version's own notification runs it"
        )

    def _key(self, path: str) -> str:
        return self.prefix + path.lstrip("/")

    def _info(self, key: str, size: int, etag: str | None, modified: Any) -> ObjectInfo:
        stamp = modified.timestamp() if modified is not None else None
        return ObjectInfo(
            key[len(self.prefix) :], int(size), (etag or "").strip('"') or None, stamp
        )

    async def get(self, path: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when there is none."""
        return await self._get(path, None)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`; `FileNotFoundError` when absent."""
        if end <= start:
            if await self.head(path) is None:
                raise FileNotFoundError(path)
            return b""
        return await self._get(path, f"bytes={start}-{end - 1}")

    async def _get(self, path: str, byte_range: str | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(path), **self._pin}
        if byte_range:
            kwargs["Range"] = byte_range

        def fetch() -> bytes:
            try:
                response = self.client.get_object(**kwargs)
            except self.client.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(path) from exc
            except Exception as exc:
                if _code(exc) in _MISSING_CODES:
                    raise FileNotFoundError(path) from exc
                if self._pin and _code(exc) in _CHANGED_CODES:
                    raise self._changed(path) from exc
                if _code(exc) == "InvalidRange":  # a range past the end reads as empty
                    return b""
                raise
            body: bytes = response["Body"].read()
            return body

        result: bytes = await run_blocking(fetch)
        return result

    async def put(self, path: str, data: bytes) -> None:
        """Create or replace the object."""
        await run_blocking(
            self.client.put_object, Bucket=self.bucket, Key=self._key(path), Body=bytes(data)
        )

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object only if it does not exist; whether this call created it."""

        def put() -> bool:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(path), Body=bytes(data), IfNoneMatch="*"
                )
            except Exception as exc:
                if _code(exc) in _TAKEN_CODES:
                    return False
                raise
            return True

        created: bool = await run_blocking(put)
        return created

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose path starts with `prefix`, sorted by path."""

        def collect() -> list[ObjectInfo]:
            paginator = self.client.get_paginator("list_objects_v2")
            found: list[ObjectInfo] = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    found.append(
                        self._info(
                            item["Key"], item["Size"], item.get("ETag"), item.get("LastModified")
                        )
                    )
            return sorted(found, key=lambda info: info.path)

        listed: list[ObjectInfo] = await run_blocking(collect)
        return listed

    async def delete(self, path: str) -> None:
        """Remove the object; removing an absent object is not an error."""
        await run_blocking(self.client.delete_object, Bucket=self.bucket, Key=self._key(path))

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""
        key = self._key(path)

        def look() -> ObjectInfo | None:
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=key, **self._pin)
            except Exception as exc:
                if _code(exc) in _MISSING_CODES:
                    return None
                if self._pin and _code(exc) in _CHANGED_CODES:
                    raise self._changed(path) from exc
                raise
            return self._info(
                key, response["ContentLength"], response.get("ETag"), response.get("LastModified")
            )

        info: ObjectInfo | None = await run_blocking(look)
        return info
