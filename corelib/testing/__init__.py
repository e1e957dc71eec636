"""Contract test suites every backend runs, shipped so third-party backends can run them too.

Needs pytest, anyio's pytest plugin and hypothesis (`pip install 'onceflow[dev]'`).
"""

from onceflow.testing.contracts import (
    AtomicSinkContract,
    Capabilities,
    ObjectStoreContract,
    ReadSink,
    SinkContract,
    StoreContract,
)
from onceflow.testing.exactly_once import ExactlyOnceContract, RecordingProcessor

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
