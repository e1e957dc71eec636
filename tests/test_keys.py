"""Business idempotency keys: `Pipeline(key="payment.id")` and `onceflow run --key-field`.

On the memory backend, and on SQLite through the real `onceflow run` command line.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from onceflow import ConfigurationError, Event, FailureKind, Pipeline
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.decode import decode
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.cli import main
from onceflow.identity import event_key
from onceflow.keys import business_key


def apply(event: Event) -> dict[str, Any]:
    return {"payment": event.json()["payment"]["id"]}


def message(n: int, payment: Any) -> Event:
    body = {"payment": {"id": payment, "amount": n}}
    return Event(id=f"msg-{n}", source="orders-queue", data=json.dumps(body).encode())


def pipeline(**options: Any) -> tuple[Pipeline, MemorySink, MemorySink]:
    sink, letters = MemorySink(), MemorySink()
    return Pipeline(apply, sink, MemoryIdempotencyStore(), letters, **options), sink, letters


def test_two_messages_carrying_one_payment_apply_once() -> None:
    pipe, sink, _ = pipeline(key="payment.id")
    first = pipe.run_batch([message(1, "p-1")])
    again = pipe.run_batch([message(2, "p-1"), message(3, 42)])
    assert first.processed == ["msg-1"]
    assert again.duplicates == ["msg-2"] and again.processed == ["msg-3"]
    assert sorted(sink.contents()) == ["payment.id#42#0", f"{event_key('payment.id', 'p-1')}#0"]


def test_without_a_business_key_the_transport_id_dedupes_nothing() -> None:
    pipe, sink, _ = pipeline()
    pipe.run_batch([message(1, "p-1"), message(2, "p-1")])
    assert len(sink) == 2


def test_a_missing_or_unusable_key_field_dead_letters_that_event_only() -> None:
    pipe, _, letters = pipeline(key="payment.id")
    no_field = Event(id="m-none", source="q", data=b'{"payment":{"card":"4929-secret"}}')
    a_float = message(5, 1.5)
    result = pipe.run_batch([no_field, a_float, message(6, "p-6")])
    assert result.processed == ["msg-6"]
    assert sorted(result.dead_lettered) == ["m-none", "msg-5"]
    assert result.failures["m-none"].kind is FailureKind.INVALID_RECORD
    assert "has no key field 'payment.id'" in result.failures["m-none"].text
    assert "holds a number with a fraction" in result.failures["msg-5"].text
    for letter in letters.values():
        assert "4929-secret" not in letter["message"] + letter["traceback"]


def test_the_key_is_read_through_the_envelope() -> None:
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": aws.TOPIC_ARN,
            "Message": '{"payment":{"id":"p-7"}}',
        }
    )
    delivered = decode(aws.sqs_event(aws.sqs_record("m1", body), aws.sqs_record("m2", body)))
    sink = MemorySink()
    pipe = Pipeline(lambda e: {"ok": 1}, sink, MemoryIdempotencyStore(), key="payment.id")
    result = pipe.run_batch(delivered.records)
    assert result.processed == ["m1"] and result.duplicates == ["m2"]


def test_list_positions_and_bad_paths() -> None:
    key = business_key("items.0.sku")
    assert key(Event(id="1", source="s", data=b'{"items":[{"sku":"A"}]}')) == "items.0.sku#A"
    for bad in ("", "a..b", ".a"):
        with pytest.raises(ConfigurationError):
            business_key(bad)


def test_onceflow_run_key_field_on_sqlite(tmp_path: Path) -> None:
    rows = [{"payment": {"id": "p1"}, "n": 1}, {"payment": {"id": "p1"}, "n": 2}, {"n": 3}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = tmp_path / "st"
    code = main(
        [
            "run",
            "tests.local.processors:Doubler",
            "-i",
            str(source),
            "--state",
            str(state),
            "--key-field",
            "payment.id",
            "--quiet",
        ]
    )
    assert code == 1  # the row without a payment id is dead-lettered
    with sqlite3.connect(state / "state.db") as conn:
        stored = dict(conn.execute("SELECT output_id, value FROM outputs"))
    assert list(stored) == ["payment.id#p1#0"]
    letters = (state / "dead-letters.jsonl").read_text().splitlines()
    assert len(letters) == 1 and "no key field 'payment.id'" in json.loads(letters[0])["message"]
