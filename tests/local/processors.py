"""Processors the command-line tests load by MODULE:CLASS."""

from __future__ import annotations

import os
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
