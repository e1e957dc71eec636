"""Malformed Lambda payloads through the handler: every bad record is a dead letter.

Two campaigns on the memory backend, each through `lambda_handler`:

- Deterministic one-field mutations of valid payloads from `onceflow.adapters.aws.testing`
  (Kinesis, SQS standard and FIFO, S3 direct, through SQS and through SNS, DynamoDB
  Streams, EventBridge and EventBridge S3): every field path of one record of a batch of
  three (and of the JSON documents an SQS body carries) is deleted or set to null, a
  value of the wrong type, a huge integer, NaN, invalid base64, a lone surrogate, a long
  run of digits, an empty string, or nesting too deep to read.
- Hypothesis-generated malformed records of every trigger (issue 16, item 4).

Each bad record must become a dead letter whose reason names the record (its sequence
number, message id, object or position in the batch) and the cause, and never a payload
value; the rest of the batch is processed; the handler answers with no failure. Only a
payload that is no trigger's batch at all is refused, with `UnrecognisedEvent`. Nothing
else may escape. Logs are scanned for payload values too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onceflow.adapters.aws import BatchFailed, UnrecognisedEvent, lambda_handler
from onceflow.adapters.aws import decode as decoders
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.decode import decode
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps
from onceflow.watermarks import LANE_ATTRIBUTE, lane_of, position_of

SECRET = "SECRET"
"""Marks every payload value of the valid payloads: no reason or log line may carry it."""


def _deep(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


DELETE = object()
DEEP_TEXT = "[" * 100_000 + "]" * 100_000
"""Inside a JSON document an SQS body carries, deep nesting is text (json.dumps cannot)."""
_DEEP_MARK = "\x00deep\x00"
LONG_DIGITS = "9" * 5000


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, str):
        return 12345
    if isinstance(value, int | float):
        return "soon"
    if isinstance(value, dict):
        return ["not", "an", "object"]
    if isinstance(value, list):
        return {"not": "an array"}
    return {"unexpected": "object"}


MUTATIONS: dict[str, Callable[[Any], Any]] = {
    "deleted": lambda v: DELETE,
    "null": lambda v: None,
    "wrong type": _wrong_type,
    "huge int": lambda v: 10**400,
    "NaN": lambda v: float("nan"),
    "invalid base64": lambda v: "%%% not base64 %%%",
    "lone surrogate": lambda v: "lone \ud800 surrogate",
    "long digits": lambda v: LONG_DIGITS,
    "empty": lambda v: "",
    "deep nesting": lambda v: _deep(5000),
}

JSON = object()
"""A path segment: the string here is a JSON document; the path goes on inside it."""

# Fields that name the record: their (mutated) text may appear in a reason as its name.
IDENTITY = {
    "messageId",
    "eventID",
    "eventSourceARN",
    "sequenceNumber",
    "SequenceNumber",
    "id",
    "source",
    "name",
    "key",
}


def _embedded(value: Any) -> Any:
    """The JSON document a string holds when it is an envelope an SQS body can carry."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return None
        if isinstance(doc, dict) and ("Records" in doc or "Message" in doc):
            return doc
    return None


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field path in `value`, descending into embedded JSON documents."""
    yield prefix
    if len(prefix) > 30:
        return  # inside a deeply nested mutation: nothing more worth mutating
    if isinstance(value, dict):
        for name, member in value.items():
            yield from paths(member, (*prefix, name))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield from paths(member, (*prefix, index))
    elif (doc := _embedded(value)) is not None:
        yield from paths(doc, (*prefix, JSON))


def mutated(value: Any, path: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    """A copy of `value` with the field at `path` changed (containers copied along the path)."""
    if not path:
        return change(value)
    head, rest = path[0], path[1:]
    if head is JSON:
        inner = mutated(json.loads(value), rest, change)
        if inner is DELETE:
            return ""
        try:
            return json.dumps(inner)
        except RecursionError:
            marked = mutated(json.loads(value), rest, lambda v: _DEEP_MARK)
            return json.dumps(marked).replace(json.dumps(_DEEP_MARK), DEEP_TEXT)
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    new = mutated(copy[head], rest, change)
    if new is DELETE:
        del copy[head]
    else:
        copy[head] = new
    return copy


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for head in path:
        value = json.loads(value) if head is JSON else value[head]
    return value


# -- the valid payloads ---------------------------------------------------------------------


def _kinesis(n: int) -> dict[str, Any]:
    data = json.dumps({"user": f"{SECRET}-user-{n}"}).encode()
    return aws.kinesis_record(n, data, partition_key=f"{SECRET}-pk-{n}")


def _sqs(n: int, group: str | None = None) -> dict[str, Any]:
    record = aws.sqs_record(f"m{n}", json.dumps({"email": f"{SECRET}{n}@x"}), group=group, seq=n)
    record["messageAttributes"]["tenant"]["stringValue"] = f"{SECRET}-tenant"
    return record


def _sqs_plain(n: int) -> dict[str, Any]:
    """A standard queue's message without message attributes: the one-pass reader's shape."""
    record = aws.sqs_record(f"m{n}", json.dumps({"email": f"{SECRET}{n}@x"}))
    record["messageAttributes"] = {}
    return record


def _s3(n: int) -> dict[str, Any]:
    return aws.s3_record("bkt", f"in/report+{n}.csv", version_id=f"v{n}")


def _dynamodb(n: int) -> dict[str, Any]:
    keys = {"id": {"S": f"{SECRET}-id-{n}"}}
    image = {
        **keys,
        "name": {"S": f"{SECRET}-name"},
        "n": {"N": str(n)},
        "b": {"B": base64.b64encode(SECRET.encode()).decode()},
        "tags": {"SS": [f"{SECRET}-a", f"{SECRET}-b"]},
        "m": {"M": {"inner": {"L": [{"N": "1"}, {"S": SECRET}]}}},
    }
    return aws.dynamodb_record(n, "MODIFY", keys, new_image=image, old_image=image)


@dataclass(frozen=True)
class Trigger:
    """A trigger's valid payload and where its mutated record sits."""

    name: str
    payload: Callable[[], Any]
    target: tuple[Any, ...]
    """The path of the record that is mutated; () for a single event."""
    refusable: frozenset[tuple[Any, ...]] = field(default_factory=frozenset)
    """Paths whose mutation may make the payload no trigger's at all (refused)."""


def _batch(make: Callable[[int], dict[str, Any]]) -> Callable[[], Any]:
    return lambda: {"Records": [make(n) for n in range(3)]}


BATCH_REFUSABLE = frozenset({(), ("Records",)})
TRIGGERS = [
    Trigger("kinesis", _batch(_kinesis), ("Records", 1), BATCH_REFUSABLE),
    Trigger("sqs", _batch(_sqs), ("Records", 1), BATCH_REFUSABLE),
    Trigger("sqs-plain", _batch(_sqs_plain), ("Records", 1), BATCH_REFUSABLE),
    Trigger("sqs-fifo", _batch(lambda n: _sqs(n, f"g-{SECRET}")), ("Records", 1), BATCH_REFUSABLE),
    Trigger("s3", _batch(_s3), ("Records", 1), BATCH_REFUSABLE),
    Trigger(
        "s3-via-sqs",
        _batch(lambda n: aws.s3_via_sqs(f"m{n}", _s3(n))),
        ("Records", 1),
        BATCH_REFUSABLE,
    ),
    Trigger(
        "s3-via-sns",
        _batch(lambda n: aws.s3_via_sns(f"m{n}", _s3(n))),
        ("Records", 1),
        BATCH_REFUSABLE,
    ),
    Trigger("dynamodb", _batch(_dynamodb), ("Records", 1), BATCH_REFUSABLE),
    Trigger(
        "eventbridge",
        lambda: aws.eventbridge_event(
            "eb-1", {"order": f"{SECRET}-o1", "items": [{"sku": SECRET}]}
        ),
        (),
        frozenset({(), ("detail-type",), ("source",)}),
    ),
    Trigger(
        "eventbridge-s3",
        lambda: aws.eventbridge_s3_event("eb-2", "bkt", "in/report.csv", version_id="v1"),
        (),
        frozenset({(), ("detail-type",), ("source",)}),
    ),
]


# -- running one payload and judging the outcome --------------------------------------------


class Seen:
    """A processor that records the events it was given and returns a constant output."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def process(self, event: Event) -> Any:
        self.ids.append(event.key)
        return {"ok": True}


def run(payload: Any) -> tuple[Any, Seen, MemorySink]:
    clock = ManualClock()
    seen, letters = Seen(), MemorySink()
    pipeline = Pipeline(
        seen,
        MemorySink(),
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),
    )
    return lambda_handler(pipeline)(payload, aws.LambdaContext()), seen, letters


def identities(payload: Any, target: tuple[Any, ...]) -> list[str]:
    """How the target record is named in a reason: its id, sequence number, object, position."""
    names = ["record 1 of the batch", "S3 notification record", "(no readable id)"]
    record = at(payload, target)
    names += [record.get("messageId", ""), record.get("id", "")]
    if "s3" in record:
        names.append(f"s3://{record['s3']['bucket']['name']}/{record['s3']['object']['key']}")
    for service, seq in (("kinesis", "sequenceNumber"), ("dynamodb", "SequenceNumber")):
        names.append(record.get(service, {}).get(seq, ""))
    return [n for n in names if n]


@dataclass
class Outcome:
    """How the handler took one payload: what is wrong (None when all is well), the letters."""

    problem: str | None = None
    letters: list[dict[str, Any]] = field(default_factory=list)


def handled(payload: Any, good: list[str], refusable: bool) -> Outcome:
    """The checks every malformed payload must pass, whatever was mutated."""
    try:
        delivery = decode(payload)
    except UnrecognisedEvent:
        delivery = None
    except Exception as exc:
        return Outcome(f"decode raised {type(exc).__name__}")
    try:
        answer, seen, sink = run(payload)
    except UnrecognisedEvent as exc:
        if not refusable:
            return Outcome(f"refused a payload with one bad record: {exc}")
        text = str(exc)
        if "onceflow decodes" not in text or SECRET in text:
            return Outcome(f"not one clear refusal: {text[:300]}")
        return Outcome()
    except Exception as exc:
        return Outcome(f"the handler raised {type(exc).__name__}")
    assert delivery is not None
    if answer.get("batchItemFailures") or answer.get("failed"):
        return Outcome(f"answered with failures: {answer}")
    missing = [key for key in good if key not in seen.ids]
    if missing:
        return Outcome(f"good records not processed: {missing}")
    letters = sink.values()
    letter_ids = {letter["event"]["id"] for letter in letters}
    keys_seen = set(seen.ids)
    for record in delivery.records:
        if isinstance(record, Event):
            if record.key not in keys_seen:
                return Outcome(f"event {record.id} neither processed nor dead-lettered")
            problem = lane_problem(record, delivery.kind)
            if problem is not None:
                return Outcome(problem)
        elif record.id not in letter_ids:
            return Outcome(f"invalid record {record.id} not dead-lettered")
    for letter in letters:
        message = letter["message"]
        try:
            dumps(letter).encode("utf-8")
        except Exception as exc:
            return Outcome(f"the letter cannot be stored ({type(exc).__name__})")
        if SECRET in message or SECRET in letter["traceback"]:
            return Outcome(f"a payload value in the reason: {message}")
    return Outcome(letters=letters)


def lane_problem(event: Event, kind: str) -> str | None:
    """What is wrong with the lane an event is on, whatever was mutated (None: all is well).

    Only Kinesis and SQS FIFO records are put on lanes, at a decimal position: a Kinesis
    record on the shard its eventID names (`<shard>:<sequence>`), a FIFO one on its group.
    """
    lane = event.attributes.get(LANE_ATTRIBUTE)
    if lane is None:
        return None
    if kind not in {"kinesis", "sqs-fifo"} or lane_of(event) is None:
        return f"event {event.id} of a {kind} batch is on a lane"
    if position_of(event) is None:
        return f"event {event.id} is on a lane without a decimal position"
    if kind == "kinesis" and event.id != f"{lane}:{event.sequence}":
        return f"event {event.id} is on a lane that is not its eventID's shard"
    if kind == "sqs-fifo" and lane != event.partition_key:
        return f"event {event.id} is on a lane that is not its message group"
    return None


def judge(
    trigger: Trigger, payload: Any, path: tuple[Any, ...], value: Any, good: list[str]
) -> str | None:
    """What is wrong with how the handler took `payload` (None when all is well)."""
    outcome = handled(payload, good, path in trigger.refusable)
    if outcome.problem is not None:
        return outcome.problem
    names = identities(trigger.payload(), trigger.target)
    for letter in outcome.letters:
        message = letter["message"]
        leaked = isinstance(value, str) and len(value) > 1 and value in message
        if leaked and (not path or path[-1] not in IDENTITY):
            return f"the mutated value in the reason: {message[:300]}"
        if not any(name in message for name in names):
            return f"the reason does not name the record: {message[:300]}"
        if "could not be decoded (" in message:
            return f"the reason names no field: {message[:300]}"
    return None


def good_keys(trigger: Trigger) -> list[str]:
    """The keys of the records that are not mutated."""
    payload = trigger.payload()
    if trigger.target == ():
        return []
    delivery = decode(payload)
    skip = trigger.target[-1]
    return [
        record.key
        for n, item in enumerate(delivery.items)
        if n != skip
        for record in delivery.records
        if record.id in item.record_ids
    ]


@pytest.fixture
def no_payload_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    leaked = [r.getMessage()[:200] for r in caplog.records if SECRET in r.getMessage()]
    assert not leaked, leaked[:3]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=[t.name for t in TRIGGERS])
@pytest.mark.usefixtures("no_payload_in_logs")
def test_every_one_field_mutation_is_dead_lettered_or_refused(trigger: Trigger) -> None:
    base = trigger.payload()
    good = good_keys(trigger)
    assert good or trigger.target == ()
    _, seen, letters = run(base)
    assert not letters.values() and set(good) <= set(seen.ids)
    problems: list[str] = []
    cases = 0
    # The target's ancestors (the payload, its Records) and every path inside the target.
    top = [trigger.target[:n] for n in range(len(trigger.target))]
    targeted = [p for p in paths(base) if p[: len(trigger.target)] == trigger.target]
    for path in [*top, *targeted]:
        for label, change in MUTATIONS.items():
            if label == "deleted" and not path:
                continue
            value = change(at(base, path))
            cases += 1
            problem = judge(trigger, mutated(base, path, change), path, value, good)
            if problem is not None:
                problems.append(f"{_show(path)} {label}: {problem}")
    assert not problems, f"{len(problems)} of {cases} mutations: " + "\n".join(problems[:15])


def _show(path: tuple[Any, ...]) -> str:
    return ".".join("<json>" if p is JSON else str(p) for p in path) or "<root>"


# -- the platform's answer when a bad record's letter cannot be written --------------------


class DownSink:
    """A dead-letter sink whose every write fails (the dead-letter queue is unreachable)."""

    async def write(self, outputs: Any) -> None:
        raise ConnectionError("dead-letter queue unreachable")


def handler_with_letters_down() -> Any:
    clock = ManualClock()
    pipeline = Pipeline(
        Seen(),
        MemorySink(),
        MemoryIdempotencyStore(clock=clock),
        DownSink(),
        clock=clock,
        retry=RetryPolicy(attempts=1),
        backend_retry=RetryPolicy(attempts=1),
    )
    return lambda_handler(pipeline)


def test_a_bad_record_whose_letter_fails_comes_back_by_its_own_identifier() -> None:
    handler = handler_with_letters_down()
    records = [_kinesis(n) for n in range(3)]
    records[1] = mutated(records[1], ("kinesis", "data"), lambda v: "%%% not base64 %%%")
    answer = handler(aws.kinesis_event(*records), aws.LambdaContext())
    assert answer == {
        "batchItemFailures": [{"itemIdentifier": records[1]["kinesis"]["sequenceNumber"]}]
    }
    messages = [_sqs(0), mutated(_sqs(1), ("body",), lambda v: None), _sqs(2)]
    answer = handler(aws.sqs_event(*messages), aws.LambdaContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


def test_an_sqs_batch_of_only_bad_records_whose_letters_fail_raises_as_today() -> None:
    handler = handler_with_letters_down()
    bad = [mutated(_sqs(n), ("attributes",), lambda v: "x") for n in range(2)]
    with pytest.raises(BatchFailed, match="all 2 sqs message"):
        handler(aws.sqs_event(*bad), aws.LambdaContext())


def test_a_bad_fifo_message_whose_letter_fails_holds_its_group_back() -> None:
    handler = handler_with_letters_down()
    messages = [_sqs(n, group="A" if n != 1 else "B") for n in range(4)]
    messages[0] = mutated(messages[0], ("body",), lambda v: 7)
    answer = handler(aws.sqs_event(*messages), aws.LambdaContext())
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == ["m0", "m2", "m3"]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "text",
        {"Records": []},
        {"Records": [None, 3, "x"]},
        {"Records": [{"eventSource": "aws:sns", "Sns": {}}]},
        {"Records": [{"eventSource": ["aws:sqs"]}]},
        {1: "x", "lone \ud800": 2},
        {"detail": {"order": SECRET}},
    ],
    ids=repr,
)
def test_a_payload_that_is_no_triggers_batch_is_refused_with_one_clear_error(payload: Any) -> None:
    with pytest.raises(UnrecognisedEvent) as raised:
        run(payload)
    text = str(raised.value)
    text.encode("utf-8")  # a refusal names the shape in text every log can carry
    assert "onceflow decodes" in text and "Kinesis" in text and SECRET not in text


# -- hypothesis: several random mutations in several records of every trigger --------------


class _Deep:
    """Drawn for nesting too deep to read (built at use: hypothesis cannot print it)."""

    def __repr__(self) -> str:
        return "<3000 nested arrays>"


DEEP = _Deep()


def _value(drawn: Any) -> Any:
    return _deep(3000) if drawn is DEEP else drawn


def _replacing(drawn: Any) -> Callable[[Any], Any]:
    """A mutation putting `drawn` in place of whatever was there."""
    return lambda _: _value(drawn)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=()), max_size=20),
    st.sampled_from(["%%% not base64 %%%", "", LONG_DIGITS, "\ud800", "x" * 300_000]),
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
) | st.just(DEEP)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_malformed_records_never_escape_the_handler(data: st.DataObject) -> None:
    trigger = data.draw(st.sampled_from(TRIGGERS), label="trigger")
    base = trigger.payload()
    if not trigger.target:
        path = data.draw(st.sampled_from(list(paths(base))), label="path")
        value = data.draw(VALUES, label="value")
        payload = mutated(base, path, lambda v: _value(value))
        refusable = path in trigger.refusable
        outcome = handled(payload, [], refusable)
        assert outcome.problem is None, outcome.problem
        return
    records = base["Records"]
    bad = data.draw(st.sets(st.integers(0, len(records) - 1), min_size=1), label="bad records")
    for index in sorted(bad):
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            path = data.draw(st.sampled_from(list(paths(records[index]))[1:]), label="path")
            value = data.draw(VALUES | st.just(DELETE), label="value")
            records[index] = mutated(records[index], path, _replacing(value))
    delivery = decode(trigger.payload())
    good = [
        record.key
        for n, item in enumerate(delivery.items)
        if n not in bad
        for record in delivery.records
        if record.id in item.record_ids
    ]
    # With every record broken, none may name its trigger: then a refusal is right.
    outcome = handled({"Records": records}, good, len(bad) == len(records))
    assert outcome.problem is None, outcome.problem


# -- the one-pass readers read exactly what the field-by-field readers read --------------------

ONE_PASS = {"kinesis": "_kinesis_fast", "sqs": "_sqs_fast", "sqs-plain": "_sqs_fast"}


def _field_by_field(payload: Any, monkeypatch: pytest.MonkeyPatch, reader: str) -> Any:
    """`decode(payload)` with the one-pass reader turned off (it gives up on every record)."""
    with monkeypatch.context() as patched:
        patched.setattr(decoders, reader, lambda templates, delivery: lambda raw: False)
        return decode(payload)


def _same_delivery(fast: Any, careful: Any) -> str | None:
    """Why two decodings of one payload differ, or None (a time read as now may differ)."""
    if fast.kind != careful.kind or fast.items != careful.items:
        return f"items differ: {fast.items[:3]} / {careful.items[:3]}"
    for mine, theirs in zip(fast.records, careful.records, strict=True):
        if type(mine) is not type(theirs):
            return f"{mine.id}: {type(mine).__name__} / {type(theirs).__name__}"
        if isinstance(mine, Event):
            drift = abs((mine.time - theirs.time).total_seconds())
            if mine.model_copy(update={"time": theirs.time}) != theirs or drift > 60:
                return f"{mine.id}: {mine!r} / {theirs!r}"
            if mine.model_fields_set != theirs.model_fields_set:
                return f"{mine.id}: fields set {mine.model_fields_set} / {theirs.model_fields_set}"
        elif mine != theirs:
            return f"{mine.id}: {mine!r} / {theirs!r}"
    return None


@pytest.mark.parametrize("name", sorted(ONE_PASS))
def test_the_one_pass_readers_agree_with_the_field_by_field_readers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = next(t for t in TRIGGERS if t.name == name)
    base = trigger.payload()
    assert isinstance(decode(base).records[1], Event)
    problems: list[str] = []
    read = 0
    for path in [p for p in paths(base) if p[: len(trigger.target)] == trigger.target]:
        for label, change in MUTATIONS.items():
            payload = mutated(base, path, change)
            fast = decode(payload)
            read += isinstance(fast.records[1], Event)
            problem = _same_delivery(fast, _field_by_field(payload, monkeypatch, ONE_PASS[name]))
            if problem is not None:
                problems.append(f"{_show(path)} {label}: {problem}")
    assert not problems, "\n".join(problems[:10])
    assert read > 10  # mutations the records survive (an extra field, another region...)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_records_read_alike_in_one_pass_and_field_by_field(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(ONE_PASS)), label="trigger")
    trigger = next(t for t in TRIGGERS if t.name == name)
    records = trigger.payload()["Records"]
    for index in sorted(data.draw(st.sets(st.integers(0, len(records) - 1)), label="records")):
        path = data.draw(st.sampled_from(list(paths(records[index]))[1:]), label="path")
        value = data.draw(VALUES | st.just(DELETE), label="value")
        records[index] = mutated(records[index], path, _replacing(value))
    payload = {"Records": records}
    with pytest.MonkeyPatch.context() as monkeypatch:
        careful = _field_by_field(payload, monkeypatch, ONE_PASS[name])
    assert _same_delivery(decode(payload), careful) is None
