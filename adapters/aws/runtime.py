"""The Lambda Handler of a function whose handler a factory makes: `ONCEFLOW_HANDLER` names it.

`onceflow aws template MODULE:FACTORY` sets `Handler: onceflow.adapters.aws.runtime.handler`
and `ONCEFLOW_HANDLER=MODULE:FACTORY`; the factory runs once per container, at the first
invocation.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import Any

from onceflow.errors import ConfigurationError

__all__ = ["handler"]


@cache
def _handler() -> Any:
    target = os.environ.get("ONCEFLOW_HANDLER", "")
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigurationError(
            f"ONCEFLOW_HANDLER is {target!r}: set it to MODULE:FACTORY (onceflow aws template does)"
        )
    return getattr(importlib.import_module(module), name)()


def handler(event: Any, context: Any = None) -> Any:
    """Run the handler the factory in `ONCEFLOW_HANDLER` built."""
    return _handler()(event, context)
