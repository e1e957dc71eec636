"""Structured JSON log lines carrying the event key, for CloudWatch, App Insights or a file."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from onceflow.failures import safe_traceback

__all__ = ["JsonFormatter", "configure_json_logging", "log_context"]

log_context: dict[str, Any] = {}
"""Fields every JSON line carries for the invocation in progress (the Lambda entry sets
the request id, function name and cold start): one process serves one invocation at a
time on Lambda, so a module-level mapping updated per invocation, not per event, is enough."""

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every `extra` field.

    An exception's traceback is written with `onceflow.failures.safe_text` messages, never
    the exception's own text, which may quote a payload value.
    """

    def __init__(self, **static: Any) -> None:
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
            **log_context,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            # Its message may quote a payload value (`KeyError: 'alice@example.com'`).
            line["exception"] = safe_traceback(record.exc_info[1])
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_json_logging(level: int = logging.INFO, **static: Any) -> logging.Handler:
    """Send the `onceflow` logger's records to stderr as JSON lines; the handler added."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(**static))
    logger = logging.getLogger("onceflow")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
