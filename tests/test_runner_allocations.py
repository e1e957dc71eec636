"""The runner's per-event shortcuts give what the plain reads give."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime

from onceflow import Event, Pipeline
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.batch import State
from onceflow.event import FIELDS_IN_DICT, EventTemplate
from onceflow.failures import FailureKind
from onceflow.records import ClaimStatus, OutcomeStatus, Output


class Echo:
    def process(self, event: Event) -> dict[str, object]:
        return {"n": event.json()["n"]}


class Shouted(Event):
    """An Event subclass: read by field name, not through the instance dict."""


def outputs_for(event: Event) -> list[Output]:
    sink = MemorySink()
    pipeline = Pipeline(Echo(), sink, MemoryIdempotencyStore(), MemorySink())
    result = pipeline.run_batch([event])
    assert result.processed == [event.id]
    return list(sink.outputs.values())


def test_events_keep_their_fields_in_the_instance_dict() -> None:
    # What the runner's fast path reads; pydantic's layout decides it (event.FIELDS_IN_DICT).
    assert FIELDS_IN_DICT
    event = Event(id="1", source="s", data=b"{}")
    built = EventTemplate(source="s").event("2", b"{}", "p", "7")
    for one in (event, built):
        assert set(Event.model_fields) <= set(one.__dict__)


def test_output_from_the_instance_dict_equals_the_one_read_by_name() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    fields = {
        "id": "e1",
        "source": "src",
        "time": when,
        "partition_key": "p",
        "sequence": "12",
        "data": b'{"n": 3}',
    }
    plain, subclassed = outputs_for(Event(**fields)), outputs_for(Shouted(**fields))
    expected = Output("src#e1#0", "src#e1", "e1", 0, {"n": 3}, "p", when, "12", None)
    assert plain == subclassed == [expected]


def test_item_states_are_constants_kept_by_identity() -> None:
    states = [State.PENDING, State.DONE, State.DEAD, State.FAILED, State.DUPLICATE]
    assert len({id(s) for s in states}) == 5
    assert [s.value for s in states] == [0, 1, 2, 3, 4]
    for state in states:
        assert pickle.loads(pickle.dumps(state)) is state
        assert copy.deepcopy(state) is state
        assert repr(state) == f"<State.{state.name}: {state.value}>"


def test_enums_hash_by_identity_and_still_look_up_by_value() -> None:
    for enum_type in (ClaimStatus, OutcomeStatus, FailureKind):
        table = {member: member.value for member in enum_type}
        for member in enum_type:
            assert table[enum_type(member.value)] == member.value
            assert hash(member) == object.__hash__(member)
            assert pickle.loads(pickle.dumps(member)) is member
