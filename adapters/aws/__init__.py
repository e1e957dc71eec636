"""The AWS backend: Lambda entry, decoders, DynamoDB store and sink, S3, SQS, Kinesis, EventBridge.

Names load on first use, so importing this package costs nothing until one is touched:

    from adapters.aws import lambda_handler, DynamoDBIdempotencyStore, S3ObjectStore
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.aws.s3_objects import S3ObjectStore

__all__ = [
    "S3ObjectStore",
]

# Public name -> module that defines it; the module is imported when the name is first used.
_EXPORTS: dict[str, str] = {
    "S3ObjectStore": "adapters.aws.s3_objects",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapters.aws' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
