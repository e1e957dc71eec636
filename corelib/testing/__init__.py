"""Contract test suites every backend runs, shipped so third-party backends can run them too.

Needs pytest, anyio's pytest plugin and hypothesis (`pip install 'onceflow[dev]'`). The
names load on first use, so the pytest plugin (`onceflow.testing.plugin`, which every
suite with onceflow installed loads) costs no hypothesis import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.testing.contracts import (
        AtomicSinkContract,
        Capabilities,
        ObjectStoreContract,
        ReadSink,
        SinkContract,
        StoreContract,
    )
    from onceflow.testing.exactly_once import ExactlyOnceContract, RecordingProcessor

_EXPORTS = {
    "AtomicSinkContract": ".contracts",
    "Capabilities": ".contracts",
    "ExactlyOnceContract": ".exactly_once",
    "ObjectStoreContract": ".contracts",
    "ReadSink": ".contracts",
    "RecordingProcessor": ".exactly_once",
    "SinkContract": ".contracts",
    "StoreContract": ".contracts",
}

__all__ = [
    "AtomicSinkContract",
    "Capabilities",
    "ExactlyOnceContract",
    "ObjectStoreContract",
    "ReadSink",
    "RecordingProcessor",
    "SinkContract",
    "StoreContract",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra="dev")
