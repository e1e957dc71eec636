"""Payload values never reach reasons, dead-letter messages or logs (issue 17, privacy).

Processors raise what real code raises on a bad payload field: a KeyError of a value
used as a key, ValueErrors from `int()`, `float()`, `datetime.fromisoformat()`, Decimal's
InvalidOperation, json errors, pydantic validation errors (an invalid value, a dict key
that is data, a validator quoting its input). Each carries a marker value; the marker
must not appear in any dead letter's message or traceback, any BatchResult reason, or
any log record captured at DEBUG (message, formatted traceback, and the JSON line).
The letter's `event` field carries the original event, payload included, by design.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from onceflow import Event, Pipeline
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.failures import safe_text, safe_traceback
from onceflow.logs import JsonFormatter
from onceflow.pipeline import DEFAULT_PERMANENT
from onceflow.retry import RetryPolicy

# Built at run time, so no code object holds the marker as a constant.
MARKER = "".join(["alice.", "secret", "@example.com"])
NUMBER = int("".join(["4111", "1111", "1111", "1111"]))  # a card-number-like value


class Amount(BaseModel):
    amount: int


class Tagged(BaseModel):
    tags: dict[str, int]


class Checked(BaseModel):
    email: str

    @field_validator("email")
    @classmethod
    def _known(cls, value: str) -> str:
        raise ValueError(f"unknown customer {value}")


PRICES: dict[str, int] = {}


def _body(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.data)
    return body


def unknown_customer(event: Event) -> None:
    # Unquoted, as code often writes it: recognised as an address, and as a long number.
    body = _body(event)
    raise ValueError(f"unknown customer {body['value']} with card {body['number']}")


PROCESSORS: dict[str, Callable[[Event], Any]] = {
    "message_with_values": unknown_customer,
    "key_error": lambda e: PRICES[_body(e)["value"]],
    "int": lambda e: int(_body(e)["value"]),
    "float": lambda e: float(_body(e)["value"]),
    "decimal": lambda e: Decimal(_body(e)["value"]),
    "fromisoformat": lambda e: datetime.fromisoformat(_body(e)["value"]),
    "json": lambda e: json.loads(_body(e)["value"] + "{"),
    "date_number": lambda e: datetime(_body(e)["number"], 1, 1),
    "pydantic_value": lambda e: Amount.model_validate({"amount": _body(e)["value"]}),
    "pydantic_dict_key": lambda e: Tagged.model_validate({"tags": {_body(e)["value"]: "x"}}),
    "pydantic_validator": lambda e: Checked.model_validate({"email": _body(e)["value"]}),
}


def event(n: int) -> Event:
    data = json.dumps({"value": MARKER, "number": NUMBER}).encode()
    return Event(id=f"e{n}", source="shop", partition_key="p", sequence=str(n), data=data)


def scan(text: str, where: str) -> None:
    assert MARKER not in text, f"{where}: {text}"
    assert str(NUMBER) not in text, f"{where}: {text}"


def scan_logs(caplog: pytest.LogCaptureFixture) -> None:
    plain, as_json = logging.Formatter(), JsonFormatter()
    assert caplog.records
    for record in caplog.records:
        scan(plain.format(record), "log line")
        scan(as_json.format(record), "JSON log line")


@pytest.mark.parametrize("permanent", [True, False], ids=["dead-lettered", "retried"])
@pytest.mark.parametrize("name", list(PROCESSORS))
def test_no_payload_value_in_reasons_letters_or_logs(
    name: str, permanent: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="onceflow")
    letters = MemorySink()
    clock = ManualClock()
    errors = DEFAULT_PERMANENT + ((Exception,) if permanent else ())
    pipeline = Pipeline(
        PROCESSORS[name],
        MemorySink(),
        MemoryIdempotencyStore(clock=clock),
        letters,
        permanent_errors=errors,
        retry=RetryPolicy(attempts=2),
        max_deliveries=2,
        clock=clock,
    )
    results = [pipeline.run_batch([event(1), event(2)]) for _ in range(2)]
    assert any(r.dead_lettered for r in results)
    for result in results:
        for event_id, reason in result.reasons.items():
            scan(reason, f"reason of {event_id}")
    assert letters.values()
    for letter in letters.values():
        scan(letter["message"], "letter message")
        scan(letter["traceback"], "letter traceback")
        assert letter["error_type"]
    scan_logs(caplog)


def test_a_key_function_that_fails_on_a_value_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="onceflow")
    letters = MemorySink()
    owners: dict[str, str] = {}
    pipeline = Pipeline(
        lambda e: {"ok": True},
        MemorySink(),
        MemoryIdempotencyStore(),
        letters,
        key=lambda e: owners[_body(e)["value"]],
    )
    result = pipeline.run_batch([event(1)])
    assert result.dead_lettered == ["e1"]
    scan(result.reasons["e1"], "reason")
    (letter,) = letters.values()
    scan(letter["message"], "letter message")
    scan_logs(caplog)


def test_the_json_formatter_writes_tracebacks_without_values() -> None:
    try:
        PRICES[MARKER]
    except KeyError:
        record = logging.LogRecord(
            "onceflow",
            logging.ERROR,
            __file__,
            1,
            "lookup failed",
            None,
            sys.exc_info(),
        )
    line = json.loads(JsonFormatter().format(record))
    assert "KeyError: missing key" in line["exception"]
    scan(line["exception"], "JSON exception")


def test_the_rule_keeps_what_the_code_wrote_and_drops_what_the_payload_held() -> None:
    def read(body: dict[str, str]) -> str:
        return body["customer"]

    try:
        read({})
    except KeyError as exc:
        assert safe_text(exc) == "KeyError: missing key 'customer'"  # a literal of the code
    try:
        int(MARKER)
    except ValueError as exc:
        assert safe_text(exc) == "ValueError: invalid literal for int() with base 10: <value>"
        assert "Traceback" in safe_traceback(exc)
    try:
        Tagged.model_validate({"tags": {MARKER: "x"}})
    except ValueError as exc:
        assert "tags.<key>: Input should be a valid integer" in safe_text(exc)
