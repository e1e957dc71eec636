"""Clickstream into a data lake: raw clicks as hourly Parquet, per-user hourly totals in Delta.

    python -m examples.clickstream.lake --out .lake

1. The CSV's clicks run through `ClickProcessor` into a `ParquetSink` partitioned by the
   click's hour (`.lake/clicks/dt=.../hr=...`), each click exactly once, bad rows
   dead-lettered with their line and cause.
2. Every hour that has ended is closed (`_SUCCESS`) and becomes one event of an ordered
   lane; `HourlyTotals` turns it into per-user rows that a `DeltaSink` appends to
   `.lake/user_hours` with the hour as its transaction version, so a rerun adds nothing.

Run it twice: the second run finds every click and every hour already committed.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import duckdb
from pydantic import BaseModel

from examples.clickstream.processor import Click, ClickProcessor
from onceflow.adapters.local import FileSource, LocalObjectStore
from onceflow.adapters.local.state import LocalState
from onceflow.event import Event
from onceflow.interfaces import ObjectStore
from onceflow.lake import DeltaSink, Hourly, ParquetSink, read_dataset, read_delta
from onceflow.lake.dataset import close_partitions
from onceflow.lake.partitions import parse_partition
from onceflow.pipeline import Pipeline
from onceflow.records import Output
from onceflow.runner import run_source

__all__ = ["HourlyTotals", "UserHour", "run"]

CLICKS = Path(__file__).with_name("clicks.csv")


class UserHour(BaseModel):
    """What one user did in one hour."""

    dt: str
    hr: str
    user_id: str
    clicks: int
    total_ms: int
    pages: int
    hour: int
    """Hours since the epoch: the position of this hour in the ordered lane."""


class HourlyTotals:
    """Turns an `hour closed` event into per-user totals read from the committed raw clicks."""

    def __init__(self, store: ObjectStore, path: str) -> None:
        self.store = store
        self.path = path

    async def process(self, event: Event) -> list[UserHour]:
        """The hour's per-user rows."""
        closed = event.json()
        hour = {"dt": closed["dt"], "hr": closed["hr"]}
        clicks = await read_dataset(self.store, self.path, partitions=hour)
        connection = duckdb.connect()
        connection.register("clicks", clicks)
        rows = connection.execute(
            "SELECT user_id, count(*), sum(duration_ms), count(DISTINCT page) FROM clicks "
            "GROUP BY user_id ORDER BY user_id"
        ).fetchall()
        connection.close()
        return [
            UserHour(
                dt=closed["dt"],
                hr=closed["hr"],
                user_id=user,
                clicks=count,
                total_ms=total,
                pages=pages,
                hour=closed["hour"],
            )
            for user, count, total, pages in rows
        ]


def hour_of(output: Output) -> int:
    """The hour an aggregate row belongs to: the version of its lane's Delta transaction."""
    return int(output.value["hour"])


async def run(out: Path, clicks: Path = CLICKS) -> dict[str, Any]:
    """Both stages; what each one did."""
    out = out.resolve()
    state = LocalState(out / "state")
    store = LocalObjectStore(out)
    try:
        raw = ParquetSink(store, "clicks", schema=Click, partition_by=Hourly("ts"))
        ingest = Pipeline(ClickProcessor(), raw, state.store, state.dead_letters, name="clicks")
        source = FileSource(clicks, state=state.database, id_field="event_id")
        loaded = await run_source(ingest, source, batch_size=500)
        now = datetime.now(UTC)
        await close_partitions(store, "clicks", now=now)
        markers = sorted(i.path for i in await store.list("clicks/") if i.path.endswith("_SUCCESS"))
        hours = []
        for marker in markers:
            label = marker.removeprefix("clicks/").removesuffix("/_SUCCESS")
            values = parse_partition(label)
            start = datetime.strptime(f"{values['dt']} {values['hr']}", "%Y-%m-%d %H")
            hour = int(start.replace(tzinfo=UTC).timestamp() // 3600)
            hours.append(
                Event(
                    id=label,
                    source="clicks-hours",
                    partition_key="hours",
                    sequence=str(hour),
                    data=json.dumps({**values, "hour": hour}).encode(),
                )
            )
        totals = DeltaSink(
            str(out / "user_hours"), schema=UserHour, partition_by=["dt"], sequence_of=hour_of
        )
        aggregate = Pipeline(
            HourlyTotals(store, "clicks"),
            totals,
            state.store,
            state.dead_letters,
            ordered=True,
            name="user-hours",
        )
        summed = await aggregate.process_batch(hours)
        return {
            "clicks": len(loaded.processed),
            "duplicates": len(loaded.duplicates),
            "dead_lettered": len(loaded.dead_lettered),
            "hours": len(summed.processed),
            "hours_already_done": len(summed.duplicates),
        }
    finally:
        state.close()


QUERY = """
SELECT u.dt, u.hr, u.user_id, u.clicks, u.total_ms, count(c.event_id) AS raw_clicks
FROM user_hours u JOIN clicks c USING (dt, hr, user_id)
GROUP BY ALL ORDER BY ALL
"""


def main() -> None:
    """Run both stages and print the DuckDB query over the lake."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".lake"))
    parser.add_argument("--input", type=Path, default=CLICKS)
    args = parser.parse_args()
    print(anyio.run(run, args.out, args.input))
    store = LocalObjectStore(args.out.resolve())
    connection = duckdb.connect()
    connection.register("clicks", anyio.run(read_dataset, store, "clicks"))
    connection.register("user_hours", read_delta(str(args.out.resolve() / "user_hours")))
    for row in connection.execute(QUERY).fetchall():
        print(*row, sep="\t")


if __name__ == "__main__":
    main()
