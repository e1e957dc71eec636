"""Clickstream: validate CSV click events; per-user aggregates come from the exactly-once sink."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from onceflow import Event


class Click(BaseModel):
    """One row of the clickstream CSV (every CSV value arrives as text; pydantic converts it)."""

    event_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    ts: datetime
    page: str = Field(min_length=1)
    duration_ms: int = Field(ge=0)


class ClickProcessor:
    """Validates a click and emits it normalised; a row that does not validate is dead-lettered."""

    def process(self, event: Event) -> Click:
        """The click, typed."""
        return Click.model_validate_json(event.data)
