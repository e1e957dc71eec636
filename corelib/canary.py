"""The mark of a canary event: `onceflow canary` sets it, processors and sinks may read it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onceflow.event import Event

__all__ = ["CANARY", "is_canary"]

CANARY = "onceflow.canary"
"""The event attribute marking a canary (its value: the canary's id); traced outputs keep it."""


def is_canary(event: Event) -> bool:
    """Whether the event is a canary `onceflow canary` sent (skip side effects on it, say)."""
    return CANARY in event.attributes
