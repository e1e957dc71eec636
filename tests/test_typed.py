"""Typed processors: payloads parsed into the annotated type, through the platform envelopes.

On the memory backend, and once on SQLite (the local backend's store and sinks).
Envelopes are exercised with real Lambda payloads decoded by `onceflow.adapters.aws.decode`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from onceflow import Event, FailureKind, InvalidRecord, Pipeline
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.decode import S3Object, decode
from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.envelopes import dynamodb_new_image, eventbridge, sns
from onceflow.typed import InvalidPayload, current_event


class Payment(BaseModel):
    id: str
    amount: Decimal = Field(max_digits=20, decimal_places=2)
    currency: str = "EUR"


class Ledger:
    def process(self, payment: Payment, event: Event) -> dict[str, Any]:
        return {"id": payment.id, "amount": payment.amount, "event": event.id}


def payment(n: int, amount: str = "10.50") -> Event:
    return Event(id=f"m{n}", source="queue", data=f'{{"id":"p{n}","amount":{amount}}}'.encode())


def run(processor: Any, records: list[Any], **options: Any) -> tuple[Any, MemorySink, MemorySink]:
    sink, letters = MemorySink(), MemorySink()
    pipeline = Pipeline(processor, sink, MemoryIdempotencyStore(), letters, **options)
    return pipeline.run_batch(records), sink, letters


def test_a_model_annotation_gets_the_parsed_payload_and_the_event_second() -> None:
    result, sink, _ = run(Ledger(), [payment(1, "12345678901234567.89")])
    assert result.processed == ["m1"]
    # Every digit survives: JSON numbers are read as exact decimals for Decimal fields.
    assert sink.values() == [{"id": "p1", "amount": Decimal("12345678901234567.89"), "event": "m1"}]


def test_function_and_async_processors_and_the_context_accessor() -> None:
    def plain(p: Payment) -> dict[str, str]:
        return {"id": p.id, "via": current_event().id}

    class Async:
        async def process(self, p: Payment) -> dict[str, str]:
            return {"id": p.id, "via": current_event().source}

    assert run(plain, [payment(1)])[1].values() == [{"id": "p1", "via": "m1"}]
    assert run(Async(), [payment(2)])[1].values() == [{"id": "p2", "via": "queue"}]


def test_any_type_pydantic_accepts_works_and_event_processors_are_untouched() -> None:
    def many(rows: list[int]) -> list[dict[str, int]]:
        return [{"n": n} for n in rows]

    def untyped(event):  # type: ignore[no-untyped-def]
        return {"raw": event.data.decode()}

    def event_typed(event: Event) -> dict[str, str]:
        return {"id": event.id}

    assert run(many, [Event(id="a", source="s", data=b"[1,2]")])[1].values() == [{"n": 1}, {"n": 2}]
    assert run(untyped, [Event(id="a", source="s", data=b"x")])[1].values() == [{"raw": "x"}]
    assert run(event_typed, [Event(id="a", source="s", data=b"x")])[1].values() == [{"id": "a"}]


class Wallet(BaseModel):
    owner: str
    balances: dict[str, int]
    amount: Decimal = Field(max_digits=5, decimal_places=2)


def test_a_payload_that_does_not_fit_is_dead_lettered_at_once_naming_fields_not_values() -> None:
    def process(w: Wallet) -> None:
        raise AssertionError("never called")

    secret_key, secret_value = "alice@example.com", "not-a-number-4929"
    bad = Event(
        id="w1",
        source="queue",
        data=json.dumps({"balances": {secret_key: secret_value}, "amount": "123456.789"}).encode(),
    )
    result, sink, letters = run(process, [bad])
    assert result.dead_lettered == ["w1"] and len(sink) == 0
    failure = result.failures["w1"]
    assert failure.kind is FailureKind.PERMANENT_ERROR
    assert "owner: missing" in failure.text
    assert "balances.*: int_parsing" in failure.text  # the dict key is data: shown as *
    assert "amount: decimal_max_digits" in failure.text
    (letter,) = letters.values()
    assert letter["attempts"] == 1 and letter["error_type"] == "InvalidPayload"
    for text in (letter["message"], letter["traceback"], failure.text):
        assert secret_key not in text and secret_value not in text and "123456" not in text


def test_invalid_payload_carries_locations_and_types() -> None:
    from onceflow.typed import typed_process

    def process(w: Wallet) -> None: ...

    typed = typed_process(process, None)
    assert typed is not None
    with pytest.raises(InvalidPayload) as caught:
        typed(Event(id="x", source="s", data=b'{"owner":"o","balances":{"k":"v"},"amount":1}'))
    assert caught.value.errors == [("balances.*", "int_parsing")]


# -- envelopes, with payloads as Lambda delivers them ---------------------------------------


class Order(BaseModel):
    order: str
    total: Decimal


def records(payload: dict[str, Any]) -> list[Any]:
    return list(decode(payload).records)


def order_of(o: Order) -> dict[str, Any]:
    return {"order": o.order, "total": o.total}


EXPECTED = [{"order": "o1", "total": Decimal("99.95")}]
ORDER = {"order": "o1", "total": Decimal("99.95")}


def test_sns_inside_sqs_is_unwrapped() -> None:
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": aws.TOPIC_ARN,
            "Message": '{"order":"o1","total":99.95}',
            "Timestamp": "2024-01-01T12:00:00.000Z",
        }
    )
    delivered = records(aws.sqs_event(aws.sqs_record("m1", body)))
    assert run(order_of, delivered)[1].values() == EXPECTED
    assert run(order_of, delivered, envelope=sns)[1].values() == EXPECTED


def test_eventbridge_detail_directly_and_through_sqs() -> None:
    event = aws.eventbridge_event("e1", {"order": "o1", "total": 99.95})
    assert run(order_of, records(event))[1].values() == EXPECTED
    through_sqs = records(aws.sqs_event(aws.sqs_record("m1", json.dumps(event))))
    assert run(order_of, through_sqs)[1].values() == EXPECTED
    assert run(order_of, through_sqs, envelope=eventbridge)[1].values() == EXPECTED


def test_dynamodb_streams_new_image_and_removed_old_image() -> None:
    image = {"order": {"S": "o1"}, "total": {"N": "99.95"}}
    inserted = aws.dynamodb_record(1, "INSERT", {"order": {"S": "o1"}}, new_image=image)
    removed = aws.dynamodb_record(2, "REMOVE", {"order": {"S": "o1"}}, old_image=image)
    result, sink, _ = run(order_of, records(aws.dynamodb_event(inserted, removed)))
    assert result.processed and sink.values() == EXPECTED * 2
    explicit = run(order_of, records(aws.dynamodb_event(inserted)), envelope=dynamodb_new_image)
    assert explicit[1].values() == EXPECTED


def test_s3_notifications_by_every_route_parse_into_the_object() -> None:
    def where(obj: S3Object) -> dict[str, str]:
        return {"bucket": obj.bucket, "key": obj.key}

    note = aws.s3_record("photos", "a+b.jpg", version_id="v1")
    routes = [
        aws.s3_event(note),
        aws.sqs_event(aws.s3_via_sqs("m1", note)),
        aws.sqs_event(aws.s3_via_sns("m2", note)),
        aws.eventbridge_s3_event("e1", "photos", "a b.jpg", version_id="v1"),
    ]
    for payload in routes:
        assert run(where, records(payload))[1].values() == [{"bucket": "photos", "key": "a b.jpg"}]


class Note(BaseModel):
    detail: str


def test_a_user_message_with_a_detail_member_is_not_taken_for_an_envelope() -> None:
    def keep(n: Note) -> dict[str, str]:
        return {"detail": n.detail}

    delivered = records(aws.sqs_event(aws.sqs_record("m1", '{"detail":"x","detail-type":"y"}')))
    assert run(keep, delivered)[1].values() == [{"detail": "x"}]


# -- the same on SQLite ----------------------------------------------------------------------


def test_typed_processor_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sink, letters = SqliteSink(db), SqliteSink(db, table="dead_letters")
    pipeline = Pipeline(Ledger(), sink, SqliteIdempotencyStore(db), letters)
    bad = Event(id="bad", source="queue", data=b'{"id":"p9","amount":"secret-77"}')
    result = pipeline.run_batch([payment(1), payment(1), bad])
    assert result.processed == ["m1"] and result.duplicates == ["m1"]
    assert result.dead_lettered == ["bad"]
    assert [v["id"] for v in sink.contents().values()] == ["p1"]
    (letter,) = letters.contents().values()
    assert "amount: decimal_parsing" in letter["message"]
    assert "secret-77" not in letter["message"] + letter["traceback"]
    again = pipeline.run_batch([payment(1), bad])
    assert again.duplicates == ["m1", "bad"]


def test_an_annotation_that_cannot_be_resolved_is_refused_when_the_pipeline_is_built() -> None:
    from onceflow import ConfigurationError

    def process(p: Unknown) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    with pytest.raises(ConfigurationError, match="cannot be resolved"):
        Pipeline(process, MemorySink(), MemoryIdempotencyStore())


def test_partials_and_callable_objects() -> None:
    import functools

    def with_rate(p: Payment, event: Event, *, rate: int) -> dict[str, Any]:
        return {"id": p.id, "scaled": p.amount * rate}

    class Callable_:
        def __call__(self, event: Event) -> dict[str, str]:
            return {"id": event.id}

    scaled = run(functools.partial(with_rate, rate=2), [payment(1)])[1].values()
    assert scaled == [{"id": "p1", "scaled": Decimal("21.00")}]
    assert run(Callable_(), [payment(2)])[1].values() == [{"id": "m2"}]


class Numbered(BaseModel):
    n: int


class Sleepy:
    async def process(self, m: Numbered) -> dict[str, Any]:
        import anyio

        await anyio.sleep(0.001 * (5 - m.n))  # finish in the reverse order of starting
        return {"n": m.n, "event": current_event().id}


def test_current_event_is_each_lanes_own_while_lanes_run_concurrently() -> None:
    events = [
        Event(id=f"e{i}", source="s", partition_key=f"p{i}", data=b'{"n":%d}' % i) for i in range(5)
    ]
    values = run(Sleepy(), events)[1].values()
    assert sorted((v["n"], v["event"]) for v in values) == [(i, f"e{i}") for i in range(5)]


def test_a_union_with_event_takes_the_event() -> None:
    def either(event: Event | InvalidRecord) -> dict[str, str]:
        return {"id": event.id}

    assert run(either, [payment(3)])[1].values() == [{"id": "m3"}]
