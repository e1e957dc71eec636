"""Processors the command-line tests load by MODULE:CLASS."""

from __future__ import annotations

import os
import time
from typing import Any

from onceflow import Event, PermanentError

CALLS: list[str] = []


class Doubler:
    """Doubles `n`; an event with `"bad": true` is refused unless ONCEFLOW_TEST_FIXED is set."""

    def process(self, event: Event) -> dict[str, Any]:
        """The doubled value."""
        body = event.json()
        CALLS.append(event.id)
        if body.get("bad") and not os.environ.get("ONCEFLOW_TEST_FIXED"):
            raise PermanentError(f"n={body['n']} is marked bad")
        return {"n": body["n"], "double": 2 * body["n"]}


class Broken:
    """Cannot even be created."""

    def __init__(self) -> None:
        raise RuntimeError("no configuration found")


class NoSetup(Doubler):
    """Its setup fails, as with a database that cannot be reached."""

    def setup(self) -> None:
        """Fail."""
        raise RuntimeError("cannot reach the pricing service")


NOT_A_PROCESSOR = 42


class Unreachable:
    """Writes through a downstream that goes down after `OUTAGE["after"]` good calls, for
    `OUTAGE["seconds"]` of wall time; `OUTAGE["poison"]` ids always fail (transiently)."""

    def process(self, event: Event) -> dict[str, Any]:
        """The event's `n` and partition, once the downstream answers."""
        if event.id in OUTAGE["poison"]:
            raise ValueError("this order breaks the downstream's parser")
        now = time.monotonic()
        if OUTAGE["down_from"] is None and OUTAGE["good"] >= OUTAGE["after"]:
            OUTAGE["down_from"] = now
        down_from = OUTAGE["down_from"]
        if down_from is not None and now < down_from + OUTAGE["seconds"]:
            raise ConnectionError("database is unreachable")
        OUTAGE["good"] += 1
        return {"n": event.json()["n"], "lane": event.partition_key}


OUTAGE: dict[str, Any] = {}


def reset_outage(*, after: int, seconds: float, poison: set[str] | None = None) -> None:
    """Set up `Unreachable`'s downstream for a run."""
    OUTAGE.update(after=after, seconds=seconds, poison=poison or set(), good=0, down_from=None)


class Echo:
    """Returns the event's JSON body as it is (lone surrogates included)."""

    def process(self, event: Event) -> Any:
        """The body."""
        return event.json()


REPLAY: dict[str, Any] = {"fail_once": set(), "always": set(), "applied": []}


class FlakyReplay:
    """Fails transiently the first call of `REPLAY["fail_once"]` ids and every call of
    `REPLAY["always"]` ids; records the ids it applied, in order."""

    def process(self, event: Event) -> dict[str, Any]:
        """The event's `n`."""
        if event.id in REPLAY["always"]:
            raise ConnectionError("the downstream is still down")
        if event.id in REPLAY["fail_once"]:
            REPLAY["fail_once"].discard(event.id)
            raise ConnectionError("the downstream blinked")
        REPLAY["applied"].append(event.id)
        return {"n": event.json()["n"]}


class Slow(Doubler):
    """`Doubler`, taking ONCEFLOW_TEST_SLOW seconds per event (none when unset)."""

    def process(self, event: Event) -> dict[str, Any]:
        """The doubled value, after a pause."""
        time.sleep(float(os.environ.get("ONCEFLOW_TEST_SLOW", "0")))
        return super().process(event)
