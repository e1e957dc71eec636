"""Run totals that stay small however long the run: counts, not lists of event ids."""

from __future__ import annotations

from typing import Any

from onceflow.pipeline import BatchResult

__all__ = ["Tally"]

_KEPT_REASONS = 20


class Tally:
    """Totals over a run's batches; an event that failed and later settled counts once."""

    def __init__(self) -> None:
        self.processed = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.failed: dict[str, str] = {}
        """Events failed and not settled since, with why (few: they are redelivered)."""
        self.reasons: dict[str, str] = {}
        """Why the first dead-lettered events were dead-lettered (the rest are in the file)."""
        self.stopped: str | None = None
        """Why the run stopped before the end of its input (a downstream that stayed down)."""

    def add(self, result: BatchResult) -> None:
        """Count one batch."""
        self.processed += len(result.processed)
        self.duplicates += len(result.duplicates)
        self.dead_lettered += len(result.dead_lettered)
        if self.failed:
            for event_id in (*result.processed, *result.duplicates, *result.dead_lettered):
                self.failed.pop(event_id, None)
        failures = result.failures
        for event_id in result.failed:
            failure = failures.get(event_id)
            self.failed[event_id] = failure.text if failure else "not processed"
        for event_id in result.dead_lettered:
            if len(self.reasons) >= _KEPT_REASONS:
                break
            failure = failures.get(event_id)
            self.reasons[event_id] = failure.text if failure else ""

    @property
    def events(self) -> int:
        """Events settled so far."""
        return self.processed + self.duplicates + self.dead_lettered

    def counts(self) -> dict[str, int]:
        """The totals by name."""
        return {
            "processed": self.processed,
            "duplicates": self.duplicates,
            "failed": len(self.failed),
            "dead_lettered": self.dead_lettered,
        }

    def as_plain(self) -> dict[str, Any]:
        """The tally as JSON-ready data (a worker's report to its parent)."""
        return {
            **self.counts(),
            "failed": self.failed,
            "reasons": self.reasons,
            "stopped": self.stopped,
        }

    def add_plain(self, plain: dict[str, Any]) -> None:
        """Add a worker's report."""
        self.processed += int(plain["processed"])
        self.duplicates += int(plain["duplicates"])
        self.dead_lettered += int(plain["dead_lettered"])
        self.failed.update(plain["failed"])
        self.stopped = self.stopped or plain.get("stopped")
        for event_id, reason in plain["reasons"].items():
            if len(self.reasons) < _KEPT_REASONS:
                self.reasons[event_id] = reason
