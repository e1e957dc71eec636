"""`onceflow run`, `onceflow dead-letters` and `onceflow state`: the local backend's commands.

This module wires their arguments; each command lives in a module of its own.
"""

from __future__ import annotations

import argparse
from typing import Any

from onceflow.adapters.local.dead_letter_commands import (
    dead_letters_list,
    dead_letters_replay,
    dead_letters_show,
)
from onceflow.adapters.local.file_records import FORMATS
from onceflow.adapters.local.run_command import run_command
from onceflow.adapters.local.runner import OUTAGE_WAIT
from onceflow.adapters.local.state_command import state_command

__all__ = ["register"]

DEFAULT_STATE = ".onceflow"


def register(subparsers: Any) -> None:
    """Add `run`, `dead-letters` and `state` to the `onceflow` command line."""
    run = subparsers.add_parser(
        "run",
        help="run a processor over local files, each event's effect applied exactly once",
        description="Run MODULE:CLASS over JSON Lines, CSV or Parquet files (or a landing "
        "folder) with SQLite state in --state. Exit status 0 when every event was processed "
        "or was a duplicate, 1 when something was dead-lettered or left failed.",
    )
    run.add_argument("processor", metavar="MODULE:CLASS", help="the processor to run")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        required=True,
        metavar="PATH_OR_GLOB",
        help="a file, a glob (quote it), or a landing folder; repeat for more",
    )
    _state_option(run)
    run.add_argument("--out", metavar="FILE.jsonl", help="also export every output to this file")
    run.add_argument("--ordered", action="store_true", help="keep order within --partition-field")
    run.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="N",
        help="records per batch (default 500; 2000 for the chunks of a large file)",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes; records are split by partition key (else event key), so "
        "per-partition order holds",
    )
    run.add_argument("--shard", type=_shard, help=argparse.SUPPRESS)
    run.add_argument("--report", help=argparse.SUPPRESS)
    run.add_argument("--format", choices=sorted(set(FORMATS.values())), help="override suffix")
    run.add_argument("--id-field", metavar="FIELD", help="take event ids from this field")
    run.add_argument("--partition-field", metavar="FIELD", help="ordering lane per this field")
    run.add_argument(
        "--key-field",
        metavar="PATH",
        help="dedupe on this dotted path into each payload (a business key, e.g. payment.id)",
    )
    run.add_argument(
        "--chunk-size",
        type=_positive,
        metavar="BYTES",
        help="one input file larger than this runs in chunks on --workers (default 64 MiB)",
    )
    run.add_argument("--max-attempts", type=_positive, default=3, metavar="N")
    run.add_argument(
        "--max-deliveries",
        type=_positive,
        default=5,
        metavar="N",
        help="deliveries (of --max-attempts attempts each) before an event that keeps failing "
        "transiently is dead-lettered (default 5)",
    )
    run.add_argument(
        "--cool-down",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="while the downstream is down (the circuit is open), one probe call every S "
        "seconds (default 30)",
    )
    run.add_argument(
        "--outage-wait",
        type=_seconds,
        default=OUTAGE_WAIT,
        metavar="S",
        help=f"hold a batch up to S seconds for a downstream that is down, then stop and leave the "
        f"held-back events for the next run (default {OUTAGE_WAIT:g})",
    )
    run.add_argument("--lease-seconds", type=float, default=300.0, metavar="S")
    run.add_argument(
        "--from-start",
        action="store_true",
        help="read the input from the beginning, ignoring checkpoints (done events are duplicates)",
    )
    run.add_argument("--watch", action="store_true", help="keep polling a landing folder")
    run.add_argument(
        "--keep-files",
        action="store_true",
        help="leave landing-folder files in place instead of moving them to processed/",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.set_defaults(func=run_command)

    letters = subparsers.add_parser(
        "dead-letters", help="list, show or replay dead letters of a local state folder"
    )
    actions = letters.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per dead letter")
    _state_option(listing)
    listing.add_argument("--limit", type=_positive, default=50)
    listing.set_defaults(func=dead_letters_list)
    show = actions.add_parser("show", help="one dead letter in full, with its traceback")
    _state_option(show)
    show.add_argument("key", help="the letter's key (or a unique part of it)")
    show.set_defaults(func=dead_letters_show)
    replay = actions.add_parser(
        "replay",
        help="run dead letters through the processor again, in order, each applied once",
    )
    _state_option(replay)
    replay.add_argument(
        "processor",
        nargs="?",
        metavar="MODULE:CLASS",
        help="the fixed processor (default: the one of the last run)",
    )
    replay.add_argument("--key", action="append", help="replay only these keys (repeatable)")
    replay.add_argument("--max-attempts", type=_positive, default=3, metavar="N")
    replay.add_argument(
        "--max-deliveries",
        type=_positive,
        default=1,
        metavar="N",
        help="deliveries of a replayed event that keeps failing transiently before it is "
        "dead-lettered again; between them the replay waits --retry-wait, doubling "
        "(default 1: a failed event keeps its letter for the next replay)",
    )
    replay.add_argument(
        "--retry-wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait before the second delivery, doubling after (default 1)",
    )
    replay.set_defaults(func=dead_letters_replay)

    state = subparsers.add_parser(
        "state", help="counts by status, oldest lease and checkpoints of a state folder"
    )
    _state_option(state)
    state.add_argument(
        "--purge-expired",
        action="store_true",
        help="first delete completed records older than the TTL (they count as absent anyway)",
    )
    state.set_defaults(func=state_command)


def _state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        "-s",
        default=DEFAULT_STATE,
        metavar="DIR",
        help=f"the state folder (default {DEFAULT_STATE})",
    )


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{text} is not INDEX/COUNT")
    return int(index), int(count)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value
