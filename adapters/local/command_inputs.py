"""What the local commands open from their arguments: the state folder and the processor."""

from __future__ import annotations

import inspect
from typing import Any

from onceflow.adapters.local.database import StateError
from onceflow.adapters.local.state import LocalState
from onceflow.cli import CliError, load_object

__all__ = ["load_processor", "open_state"]


def open_state(folder: str, *, create: bool) -> LocalState:
    """The state folder; a missing one (when not `create`) is a one-line error."""
    try:
        return LocalState(folder, create=create)
    except StateError:
        raise
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None


def load_processor(spec: str) -> Any:
    """The processor named by `spec`: a class is instantiated without arguments."""
    try:
        target = load_object(spec)
    except CliError:
        raise
    except Exception as exc:  # the user's module failed while importing
        raise CliError(f"cannot load {spec}: {type(exc).__name__}: {exc}") from exc
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise CliError(f"cannot create {spec}(): {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(target, "process", None)) and not callable(target):
        raise CliError(f"{spec} has no process(event) method and is not a function")
    return target
