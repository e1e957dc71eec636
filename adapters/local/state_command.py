"""`onceflow state`: counts by status, the oldest lease, checkpoints and the last run."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from onceflow.adapters.local.command_inputs import open_state
from onceflow.adapters.local.console import console

__all__ = ["state_command"]


def state_command(args: argparse.Namespace) -> int:
    """`onceflow state`."""
    from rich.table import Table

    out = console()
    state = open_state(args.state, create=False)
    try:
        if args.purge_expired:
            out.print(f"purged {state.store.purge_expired():,} expired records")
        counts = state.store.counts()
        oldest = state.store.oldest_lease()
        marks = state.checkpoints.latest(5)
        outputs = state.sink.count()
        letters = state.dead_letters.count()
        runs = state.runs(limit=1)
    finally:
        state.close()
    table = Table(title=f"onceflow state in {args.state}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("succeeded", f"{counts['succeeded']:,}")
    table.add_row("dead-lettered", f"{counts['dead_lettered']:,}")
    table.add_row("in progress", f"{counts['in_progress']:,}")
    table.add_row("outputs stored", f"{outputs:,}")
    table.add_row("dead letters stored", f"{letters:,}")
    if oldest is not None:
        key, leased_at, expires = oldest
        now = time.time()
        table.add_row(
            "oldest lease",
            f"{key} (taken {now - leased_at:,.0f} s ago, "
            + (f"expires in {expires - now:,.0f} s)" if expires > now else "expired)"),
        )
    else:
        table.add_row("oldest lease", "none")
    for mark in marks:
        where = "finished" if mark.finished else f"line {mark.line:,} (byte {mark.offset:,})"
        table.add_row("checkpoint", f"{mark.name}: {where} at {_when(mark.updated_at)}")
    if not marks:
        table.add_row("checkpoint", "none")
    if runs:
        run = runs[0]
        done = _when(run.finished_at) if run.finished_at else "did not finish"
        table.add_row(
            "last run",
            f"#{run.id} {run.processor} started {_when(run.started_at)}, ended {done}: "
            + ", ".join(f"{k} {v:,}" for k, v in run.counts.items()),
        )
    out.print(table)
    return 0


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
