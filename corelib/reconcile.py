"""Reconciliation: per-window counts kept beside the idempotency state, and the gaps they show.

`count_windows(pipeline, counts)` makes a pipeline write, after every batch, one count row
per time window the batch touched to a `WindowCounts` (memory, the local SQLite state file,
the DynamoDB state table, the Azure state Table or Cosmos container: each backend's
`window_counts.py`). A row carries an attempt identity made once per `process_batch` call
(`attempt_id`), and a backend applies a row once: writing it again (an SDK retry after a
lost reply) changes nothing. Local and memory keep a row per attempt (replaced on a second
write); the cloud backends add it to one item per window and writer that remembers the last
attempt it added. A window's counts are the sum of its rows. The counts:

- `received`: deliveries (a redelivered record counts again);
- `processed`: records whose effect this batch committed; a redelivery of a committed
  record comes back as a duplicate, so `processed` counts each event once, except that a
  worker dying between the commit and the count write loses that batch's row (see
  docs/operations.md, "What is atomic");
- `duplicates`: deliveries skipped because the key was already settled;
- `filtered`: processed records the pipeline's filter dropped (no output);
- `dead_lettered`, `failed` (to be delivered again).

Windows are by processing time (when the batch finished, the default) or by event time
(`Event.time`; records that failed to decode fall back to processing time), of
`seconds` length (hourly by default); rows expire `retention_seconds` after they are
written (35 days by default). `reconcile` compares the totals with what the source held and
with the sink's rows; a gap that duplicates, filtered or dead-lettered records do not
explain is unexplained.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio.to_thread

from onceflow.errors import ConfigurationError
from onceflow.results import BatchResult

if TYPE_CHECKING:
    from onceflow.pipeline import Pipeline

__all__ = [
    "COUNTS",
    "COUNTS_PREFIX",
    "RETENTION_SECONDS",
    "CountRow",
    "Reconciliation",
    "WindowCounts",
    "WindowPolicy",
    "attempt_id",
    "count_windows",
    "reconcile",
    "sum_rows",
    "window_label",
]

logger = logging.getLogger("onceflow.reconcile")

COUNTS = ("received", "processed", "duplicates", "filtered", "dead_lettered", "failed")
"""The counts kept per window, in the order reports show them."""

COUNTS_PREFIX = "counts#"
"""The key prefix of count rows in a shared state table (never an idempotency key's)."""

RETENTION_SECONDS = 35 * 86_400
"""How long count rows are kept by default: a month of windows and a few days to reconcile."""

Counts = dict[tuple[str, int], dict[str, int]]
"""Counts by (pipeline name, window start in epoch seconds)."""


def attempt_id() -> str:
    """A fresh identity for one `process_batch` call's count rows (the only place one is made).

    Random rather than derived from the batch: a platform redelivering the same records
    (a Kinesis retry after the rows were written) is another delivery whose counts add to
    the first's; a content-derived id would let it overwrite them.
    """
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class CountRow:
    """One attempt's counts for one window: the unit a `WindowCounts` applies, once."""

    pipeline: str
    window: int
    """Window start, epoch seconds."""
    batch: str
    """The attempt identity (`attempt_id`): applying the same row again changes nothing."""
    counts: Mapping[str, int]
    written: float
    """Epoch seconds (the pipeline's clock) when the batch finished."""
    expires: float
    """Epoch seconds after which the row no longer counts (and a backend may delete it)."""


class WindowCounts(Protocol):
    """Where per-window counts are kept: beside the idempotency state, in their own rows.

    A backend whose `put` is a network request sets a class attribute `remote = True`, so
    `count_windows` calls it from a worker thread rather than on the event loop.
    """

    def put(self, row: CountRow) -> None:
        """Apply `row`'s counts to its window; applying the same row again changes nothing."""
        ...

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's summed counts (of one pipeline, or all), unexpired rows at `now`."""
        ...


def sum_rows(rows: Iterable[tuple[str, int, Mapping[str, Any]]]) -> Counts:
    """Rows' counts summed per (pipeline, window), in key order; missing counts are 0."""
    found: Counts = {}
    for pipeline, window, counts in rows:
        tally = found.setdefault((pipeline, int(window)), dict.fromkeys(COUNTS, 0))
        for name in COUNTS:
            tally[name] += int(counts.get(name) or 0)
    return dict(sorted(found.items()))


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How records are put in windows (length, which clock decides) and how long rows last."""

    seconds: int = 3600
    by: Literal["processing", "event"] = "processing"
    retention_seconds: float = RETENTION_SECONDS

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ConfigurationError(f"window seconds={self.seconds}: at least 1")
        if self.by not in ("processing", "event"):
            raise ConfigurationError(f"window by={self.by!r}: 'processing' or 'event'")
        if not self.retention_seconds > 0:
            raise ConfigurationError(f"retention_seconds={self.retention_seconds}: above 0")

    def start(self, epoch: float) -> int:
        """The start (epoch seconds) of the window holding `epoch`."""
        return int(epoch // self.seconds) * self.seconds


def window_label(start: int) -> str:
    """A window start as UTC ISO time, to the minute."""
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")


def count_windows(
    pipeline: Pipeline, counts: WindowCounts, policy: WindowPolicy | None = None
) -> Pipeline:
    """`pipeline`, made to write each batch's counts to `counts` (one row per window touched).

    The rows are written after `process_batch` returns, so after its commit: a row that
    cannot be written is logged and counted (`window_counts_lost`), and the batch's result
    stands (failing a committed batch would only redeliver it).
    """
    policy = policy or WindowPolicy()
    filtered = _FilterTally(pipeline.metrics)
    process_batch = pipeline.process_batch
    name = pipeline.name
    remote = bool(getattr(counts, "remote", False))

    def write(rows: list[CountRow]) -> None:
        for row in rows:
            try:
                counts.put(row)
            except Exception as exc:  # the batch committed: its counts are lost, its result stands
                logger.warning(
                    "window counts of pipeline %r, window %s not written: %s",
                    name,
                    window_label(row.window),
                    type(exc).__name__,
                )
                pipeline.metrics.count("window_counts_lost", 1)

    async def counted(records: Iterable[Any], *, deadline: float | None = None) -> BatchResult:
        batch = list(records)
        attempt = attempt_id()
        before = filtered.total
        result = await process_batch(batch, deadline=deadline)
        now = pipeline.clock.now()
        by_window = _tally(batch, result, policy, now)
        dropped = filtered.total - before
        if dropped:
            # The filter counts without ids: its drops go to the window of most processed.
            busiest = max(by_window, key=lambda w: by_window[w]["processed"])
            by_window[busiest]["filtered"] += dropped
        expires = now + policy.retention_seconds
        rows = [
            CountRow(name, window, attempt, {k: v for k, v in tally.items() if v}, now, expires)
            for window, tally in by_window.items()
        ]
        if remote:
            # A cloud backend's write is a blocking request: off the event loop, so other
            # tasks' batches are not held up by it. A local write costs less than the hop.
            await anyio.to_thread.run_sync(write, rows)
        else:
            write(rows)
        return result

    pipeline.process_batch = counted  # type: ignore[method-assign]
    return pipeline


class _FilterTally:
    """Sees the pipeline's `filtered` counts: the filter holds the metrics object it was
    built with, so the count is observed on that object rather than passed anew."""

    def __init__(self, metrics: Any) -> None:
        self.total = 0
        inner: Callable[..., None] = metrics.count

        def count(name: str, value: int = 1) -> None:
            if name == "filtered":
                self.total += value
            inner(name, value)

        # A metrics object with __slots__ refuses the attribute: then no filtered counts.
        with contextlib.suppress(AttributeError):
            metrics.count = count


def _tally(
    batch: list[Any], result: BatchResult, policy: WindowPolicy, now: float
) -> dict[int, Counter[str]]:
    here = policy.start(now)
    by_window: dict[int, Counter[str]] = {}
    if policy.by == "processing":
        by_window[here] = Counter(
            received=len(batch),
            processed=len(result.processed),
            duplicates=len(result.duplicates),
            dead_lettered=len(result.dead_lettered),
            failed=len(result.failed),
        )
        return by_window
    window_of: dict[str, int] = {}
    for record in batch:
        time = getattr(record, "time", None)
        window_of[record.id] = policy.start(time.timestamp()) if time is not None else here
    for record in batch:
        by_window.setdefault(window_of[record.id], Counter())["received"] += 1
    for name, ids in (
        ("processed", result.processed),
        ("duplicates", result.duplicates),
        ("dead_lettered", result.dead_lettered),
        ("failed", result.failed),
    ):
        for event_id in ids:
            by_window.setdefault(window_of.get(event_id, here), Counter())[name] += 1
    return by_window


@dataclass
class Reconciliation:
    """The windows' counts set against the source's and the sink's counts."""

    windows: Counts
    source: int | None = None
    sink_rows: int | None = None
    rows_per_event: int = 1
    totals: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.totals = {name: 0 for name in COUNTS}
        for tally in self.windows.values():
            for name in COUNTS:
                self.totals[name] += tally.get(name, 0)

    @staticmethod
    def window_gap(tally: Mapping[str, int]) -> int:
        """Deliveries of a window with no outcome recorded (0 when every batch settled)."""
        settled = sum(tally.get(n, 0) for n in ("processed", "duplicates", "dead_lettered"))
        return tally.get("received", 0) - settled - tally.get("failed", 0)

    @property
    def source_gap(self) -> int | None:
        """Source records neither processed nor dead-lettered (negative: counted twice).

        A source that repeats a key (a line twice in a file) shows as a gap the duplicates
        explain; so does a redelivery, which is why the duplicates can mask a loss as large.
        """
        if self.source is None:
            return None
        return self.source - self.totals["processed"] - self.totals["dead_lettered"]

    @property
    def sink_gap(self) -> int | None:
        """Rows the processed, unfiltered records should have written but the sink lacks."""
        if self.sink_rows is None:
            return None
        kept = self.totals["processed"] - self.totals["filtered"]
        return kept * self.rows_per_event - self.sink_rows

    @property
    def unexplained(self) -> bool:
        """Whether any gap is left that duplicates, filters and dead letters do not explain."""
        if any(self.window_gap(t) for t in self.windows.values()):
            return True
        return self.unexplained_source != 0 or bool(self.sink_gap)

    @property
    def unexplained_source(self) -> int:
        """The source gap that repeated keys (duplicates) do not explain; 0 when none."""
        gap = self.source_gap
        if gap is None or 0 <= gap <= self.totals["duplicates"]:
            return 0
        return gap if gap < 0 else gap - self.totals["duplicates"]


def reconcile(
    windows: Counts,
    *,
    source: int | None = None,
    sink_rows: int | None = None,
    rows_per_event: int = 1,
) -> Reconciliation:
    """The reconciliation of `windows` against a source count and a sink row count."""
    return Reconciliation(windows, source, sink_rows, rows_per_event)
