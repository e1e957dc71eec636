"""The in-memory backend: for users' unit tests, with fault injection and a manual clock.

from adapters.memory import MemoryIdempotencyStore, MemorySink, ManualClock, Faults
"""

from adapters.memory.faults import Faults
from adapters.memory.objects import MemoryObjectStore
from adapters.memory.sink import MemorySink
from adapters.memory.source import MemorySource
from adapters.memory.store import MemoryIdempotencyStore
from corelib.clock import ManualClock

__all__ = [
    "Faults",
    "ManualClock",
    "MemoryIdempotencyStore",
    "MemoryObjectStore",
    "MemorySink",
    "MemorySource",
]
