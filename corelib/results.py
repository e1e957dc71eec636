"""What a batch came to: which events were processed, duplicates, failed or dead-lettered."""

from __future__ import annotations

from dataclasses import dataclass, field

from onceflow.failures import Failure

__all__ = ["BatchResult"]


@dataclass
class BatchResult:
    """What happened to each record of a batch, by event id."""

    processed: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Ids to deliver again: leased elsewhere, out of time, lease lost, or no dead-letter sink."""
    dead_lettered: list[str] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    """Why each failed or dead-lettered id ended that way: a kind and a sentence."""

    @property
    def reasons(self) -> dict[str, str]:
        """The sentence of each failure, by id (for people: logs, messages, reports)."""
        return {event_id: failure.text for event_id, failure in self.failures.items()}

    @property
    def ok(self) -> bool:
        """True when nothing needs delivering again."""
        return not self.failed

    def absorb(self, other: BatchResult) -> None:
        """Add another result's ids and failures to this one, in place."""
        self.processed.extend(other.processed)
        self.duplicates.extend(other.duplicates)
        self.failed.extend(other.failed)
        self.dead_lettered.extend(other.dead_lettered)
        self.failures.update(other.failures)

    def merge(self, other: BatchResult) -> BatchResult:
        """The two results together (for totals over many batches)."""
        return BatchResult(
            processed=self.processed + other.processed,
            duplicates=self.duplicates + other.duplicates,
            failed=self.failed + other.failed,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            failures={**self.failures, **other.failures},
        )
