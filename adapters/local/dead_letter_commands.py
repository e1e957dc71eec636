"""`onceflow dead-letters list | show | replay`: the dead letters of a local state folder."""

from __future__ import annotations

import argparse
import base64
import json
import time
from typing import Any

import anyio

from onceflow.adapters.local.command_inputs import load_processor, open_state
from onceflow.adapters.local.console import console, quiet_logs, short
from onceflow.adapters.local.state import LocalState
from onceflow.adapters.local.totals import Tally
from onceflow.cli import CliError
from onceflow.event import Event
from onceflow.identity import dead_letter_id
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy

__all__ = ["dead_letters_list", "dead_letters_replay", "dead_letters_show"]

_REPLAY_BATCH = 500


def dead_letters_list(args: argparse.Namespace) -> int:
    """`onceflow dead-letters list`."""
    from rich.table import Table

    out = console()
    letters = _letters(args.state)
    if not letters:
        out.print(f"no dead letters in {args.state}")
        return 0
    table = Table(title=f"{len(letters)} dead letters in {args.state}", title_justify="left")
    table.add_column("key", overflow="fold", max_width=32)
    table.add_column("where", overflow="fold", max_width=24)
    table.add_column("cause", overflow="fold")
    for letter in letters[: args.limit]:
        table.add_row(
            str(letter.get("key", "?")), _where(letter), short(str(letter.get("message", "")), 200)
        )
    out.print(table)
    if len(letters) > args.limit:
        out.print(f"... {len(letters) - args.limit} more (--limit)")
    return 0


def dead_letters_show(args: argparse.Namespace) -> int:
    """`onceflow dead-letters show KEY`."""
    out = console()
    letters = _letters(args.state)
    exact = [letter for letter in letters if letter.get("key") == args.key]
    found = exact or [letter for letter in letters if args.key in str(letter.get("key", ""))]
    if not found:
        raise CliError(f"no dead letter with key {args.key!r} in {args.state}")
    if len(found) > 1:
        keys = ", ".join(str(letter.get("key")) for letter in found[:5])
        raise CliError(f"{args.key!r} matches {len(found)} dead letters ({keys}); give more of it")
    letter = dict(found[0])
    trace = letter.pop("traceback", "")
    out.print_json(json.dumps(letter, ensure_ascii=False))
    if trace:
        out.print("[bold]traceback[/]")
        out.print(trace, markup=False)
    return 0


def dead_letters_replay(args: argparse.Namespace) -> int:
    """`onceflow dead-letters replay`: the exit status."""
    quiet_logs(args.verbose)
    out = console()
    state = open_state(args.state, create=False)
    try:
        spec = args.processor or _last_processor(state)
        processor = load_processor(spec)
        letters = state.dead_letters.letters()
        if args.key:
            wanted = set(args.key)
            letters = [letter for letter in letters if letter.get("key") in wanted]
        if not letters:
            out.print("no dead letters to replay")
            return 0
        verdict = state.store.reopen_dead_lettered([str(letter["key"]) for letter in letters])
        settled = [str(letter["key"]) for letter in letters if not verdict[str(letter["key"])]]
        runnable = [letter for letter in letters if verdict[str(letter["key"])]]
        events = [_replayed_event(letter) for letter in runnable]
        pipeline = Pipeline(
            processor,
            state.sink,
            state.store,
            state.dead_letters,
            max_deliveries=args.max_deliveries,
            ordered=True,  # per-key order: a lane per partition key, in sequence order
            retry=RetryPolicy(attempts=args.max_attempts),
            name=spec,
        )
        tally = Tally()
        by_id = {
            event.id: str(letter["key"]) for event, letter in zip(events, runnable, strict=True)
        }
        pending = _in_lane_order(events)
        for delivery in range(1, args.max_deliveries + 1):
            if delivery > 1:
                time.sleep(args.retry_wait * 2 ** (delivery - 2))
            failed, processed = _replay_once(pipeline, pending, tally)
            settled += [by_id[i] for i in processed if i in by_id]
            pending = [event for event in pending if event.id in failed]
            if not pending:
                break
        # A replayed key that succeeded now (or had before) no longer needs its letter.
        state.dead_letters.delete([dead_letter_id(key) for key in settled])
        state.dead_letters.export()
        out.print(
            f"replayed {len(events)} dead letters: {tally.processed} processed, "
            f"{tally.dead_lettered} dead-lettered again, {len(tally.failed)} failed"
            + (
                f"; {len(letters) - len(runnable)} had already succeeded"
                if len(runnable) < len(letters)
                else ""
            )
        )
    finally:
        state.close()
    return 0 if not tally.failed and not tally.dead_lettered else 1


def _replay_once(
    pipeline: Pipeline, events: list[Event], tally: Tally
) -> tuple[set[str], list[str]]:
    """One delivery of `events`, in batches; the ids to deliver again, and those processed.

    A lane (partition key) with an event still to come again holds its later events back,
    also in later batches, so no event of a key is applied before an earlier one.
    """
    failed: set[str] = set()
    processed: list[str] = []
    held: set[str] = set()
    for start in range(0, len(events), _REPLAY_BATCH):
        batch = events[start : start + _REPLAY_BATCH]
        runnable = [e for e in batch if e.partition_key is None or e.partition_key not in held]
        for event in batch:
            if event.partition_key is not None and event.partition_key in held:
                failed.add(event.id)
                tally.failed[event.id] = "held behind an earlier event of its key"
        result = anyio.run(pipeline.process_batch, runnable)
        tally.add(result)
        processed += result.processed
        failed.update(result.failed)
        held.update(e.partition_key for e in runnable if e.id in failed and e.partition_key)
    return failed, processed


def _in_lane_order(events: list[Event]) -> list[Event]:
    """`events` with each partition key's events in sequence order, whatever the batches."""

    def position(indexed: tuple[int, Event]) -> tuple[str, int, int]:
        index, event = indexed
        seq = event.sequence
        number = int(seq) if seq is not None and seq.isascii() and seq.isdigit() else -1
        return (event.partition_key or "", number, index)

    keyed = [(i, e) for i, e in enumerate(events) if e.partition_key is not None]
    ordered = iter(e for _, e in sorted(keyed, key=position))
    return [next(ordered) if e.partition_key is not None else e for e in events]


def _letters(state_dir: str) -> list[dict[str, Any]]:
    """The dead letters kept in a state folder."""
    state = open_state(state_dir, create=False)
    try:
        return state.dead_letters.letters()
    finally:
        state.close()


def _where(letter: dict[str, Any]) -> str:
    event = letter.get("event") or {}
    if event.get("locator"):
        return str(event["locator"])
    if "file" in event and "line" in event:
        return f"{event['file']}:{event['line']}"
    return str(event.get("sequence") or "")


def _last_processor(state: LocalState) -> str:
    runs = state.runs(limit=1)
    if not runs:
        raise CliError(
            f"no run recorded in {state.folder}; name the processor: replay MODULE:CLASS"
        )
    return runs[0].processor


def _replayed_event(letter: dict[str, Any]) -> Event:
    """The dead-lettered event, rebuilt with the same id and source (so the same key)."""
    doc = letter.get("event") or {}
    try:
        if "specversion" in doc:
            event = Event.from_cloudevent(doc)
            return event.model_copy(update={"delivery_count": event.delivery_count + 1})
        # An input record that could not be decoded: the processor gets its raw bytes.
        raw = doc.get("raw") or b""
        data = raw if isinstance(raw, bytes) else base64.b64decode(str(raw))
        return Event(
            id=str(doc["id"]),
            source=str(doc["source"]),
            data=data,
            partition_key=doc.get("partition_key"),
            sequence=doc.get("sequence"),
            attributes=doc.get("attributes") or {},
        )
    except (KeyError, ValueError) as exc:
        raise CliError(f"dead letter {letter.get('key')!r} holds no usable event: {exc}") from exc
