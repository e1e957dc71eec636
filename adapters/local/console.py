"""What the local commands show: the console, the progress line, the run's summary."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from onceflow.adapters.local.state import LocalState
from onceflow.adapters.local.totals import Tally
from onceflow.cli import CliError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Progress", "console", "printable", "quiet_logs", "red", "run_summary", "short"]


def console(stderr: bool = False) -> Console:
    """A rich console (rich is imported only when a command prints)."""
    try:
        from rich.console import Console
    except ImportError:
        raise CliError("the onceflow commands need rich: pip install 'onceflow[cli]'") from None
    return Console(stderr=stderr, highlight=False)


def quiet_logs(verbose: bool) -> None:
    """Per-event log lines only with --verbose: the summary reports every dead letter."""
    logging.getLogger("onceflow").setLevel(logging.INFO if verbose else logging.ERROR)


class Progress:
    """A rich progress line (events, events/s, failures), or nothing when quiet.

    Called with the tally after each batch; `waiting` says the run is waiting for a
    downstream that is down, and for how many held-back events, until the next batch.
    """

    def __init__(self, *, quiet: bool, total: int | None) -> None:
        self.quiet = quiet
        self.total = total
        self.started = time.perf_counter()
        self.progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[events]:>10,} events"),
            TextColumn("{task.fields[rate]:>9,.0f} events/s"),
            TextColumn("{task.fields[failures]}"),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self._task = self.progress.add_task(
            "running", total=self.total, events=0, rate=0.0, failures="no failures"
        )
        return self

    def __call__(self, tally: Tally, done: int) -> None:
        """Show the totals after a batch."""
        if self.progress is None:
            return
        elapsed = max(1e-9, time.perf_counter() - self.started)
        bad = tally.dead_lettered + len(tally.failed)
        self.progress.update(
            self._task,
            description="running",
            completed=done if self.total else None,
            events=tally.events,
            rate=tally.events / elapsed,
            failures=f"[red]{bad:,} failures[/]" if bad else "no failures",
        )

    def waiting(self, held_back: int, seconds: float) -> None:
        """Say the run waits (up to `seconds`) for the downstream, with `held_back` events."""
        if self.progress is None:
            return
        self.progress.update(
            self._task,
            description="[yellow]waiting for the downstream[/]",
            failures=f"[yellow]{held_back:,} events held back, waiting up to {seconds:g} s[/]",
        )

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_summary(
    out: Console, tally: Tally, wall: float, state: LocalState, *, letters: int | None = None
) -> None:
    """The table at the end of `onceflow run`, the first dead letters and what is left failed.

    `letters` is how many dead letters the state holds in all (this run's and earlier
    runs'), as just exported to the dead-letter file.
    """
    from rich.table import Table

    table = Table(title="onceflow run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("processed", f"{tally.processed:,}")
    table.add_row("duplicates", f"{tally.duplicates:,}")
    table.add_row("failed", red(len(tally.failed)))
    table.add_row("dead-lettered", red(tally.dead_lettered))
    table.add_row("wall time", f"{wall:.2f} s")
    rate = tally.events / wall if wall > 0 else 0.0
    table.add_row("events/s", f"{rate:,.0f}")
    out.print(table)
    if tally.dead_lettered:
        out.print(f"[bold]dead letters[/] ({tally.dead_lettered} this run):")
        for reason in list(tally.reasons.values())[:10]:
            out.print(f"  {short(reason)}", markup=False)  # each reason names its event
        if tally.dead_lettered > 10:
            out.print(f"  ... and {tally.dead_lettered - 10} more")
    if tally.dead_lettered or letters:
        plural = "" if letters == 1 else "s"
        held = "all letters" if letters is None else f"all {letters:,} letter{plural} (every run's)"
        out.print(
            f"  {held}: {state.dead_letters.jsonl_path}  "
            f"(onceflow dead-letters list --state {state.folder})",
            markup=False,
        )
    from rich.markup import escape

    if tally.failed:
        first = "; ".join(f"{k}: {v}" for k, v in list(tally.failed.items())[:3])
        out.print(
            f"[red]{len(tally.failed)} events were left failed[/] and will be read again by the "
            "next run; first: " + escape(printable(first))
        )
    if tally.stopped:
        out.print(f"[red]the run stopped early[/]: {escape(tally.stopped)}")


def red(n: int) -> str:
    """`n` in red when it is not 0."""
    return f"[red]{n:,}[/]" if n else "0"


def short(text: str, limit: int = 160) -> str:
    """`text` cut to `limit` characters, printable (see `printable`)."""
    return printable(text if len(text) <= limit else text[: limit - 1] + "…")


def printable(text: str) -> str:
    """`text` with any lone surrogate written as its escape, so a terminal can show it.

    A lone surrogate (an id or an error message built from broken JSON text) cannot be
    encoded for any terminal; printing it raw would crash the summary.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
