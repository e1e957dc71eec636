"""The in-memory backend: for users' unit tests, with fault injection and a manual clock.

from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, ManualClock, Faults
"""

from onceflow.adapters.memory.faults import Faults
from onceflow.adapters.memory.objects import MemoryObjectStore
from onceflow.adapters.memory.sink import MemorySink
from onceflow.adapters.memory.source import MemorySource
from onceflow.adapters.memory.store import MemoryIdempotencyStore
from onceflow.clock import ManualClock

__all__ = [
    "Faults",
    "ManualClock",
    "MemoryIdempotencyStore",
    "MemoryObjectStore",
    "MemorySink",
    "MemorySource",
]
