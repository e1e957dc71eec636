"""The package's public names, and that importing it pays for no SDK."""

from __future__ import annotations

import subprocess
import sys

import onceflow.adapters.azure

AZURE_API = [
    "BatchFailed", "BlobObjectStore", "BlobTrigger", "CosmosIdempotencyStore", "CosmosSink",
    "EventHubSink", "EventHubTrigger", "FunctionHandler", "QueueSink", "QueueTrigger",
    "TableIdempotencyStore", "TableSink", "blob_stream", "decode_blob", "decode_event_hub",
    "decode_queue_message", "event_hub_batch", "function_app", "invocation_context",
    "queue_message",
]  # fmt: skip


def test_the_package_exports_exactly_its_api_sorted() -> None:
    assert onceflow.adapters.azure.__all__ == AZURE_API == sorted(AZURE_API)
    assert sorted(dir(onceflow.adapters.azure)) == AZURE_API


def test_every_exported_name_resolves() -> None:
    for name in onceflow.adapters.azure.__all__:
        value = getattr(onceflow.adapters.azure, name)
        assert value is not None and getattr(value, "__name__", name) == name


def test_importing_the_package_imports_no_azure_sdk() -> None:
    code = (
        "import sys, onceflow.adapters.azure, onceflow; "
        "print(sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_function_app_is_the_function_whatever_was_imported_first() -> None:
    code = (
        "from onceflow.adapters.azure import EventHubTrigger; "
        "from onceflow.adapters.azure import function_app; "
        "print(callable(function_app) and function_app.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "function_app"
