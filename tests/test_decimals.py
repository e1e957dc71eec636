"""Exact decimals: JSON text keeps every digit, pydantic Decimal fields become Arrow decimals.

The JSON choice: a Decimal is written as exact JSON number text. Exercised on memory, on
SQLite (what `SqliteSink` stores), the JSON-lines dead letters, and Parquet and Delta
tables written by the lake sinks on local disk.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.local import LocalState, SqliteSink
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.lake.schema import arrow_schema, outputs_to_table
from onceflow.records import Output
from onceflow.serialization import dumps
from onceflow.typed import typed_process

BIG = Decimal("12345678901234567.89")


def test_dumps_writes_decimals_as_exact_number_text() -> None:
    text = dumps({"a": BIG, "b": [Decimal("2"), Decimal("2.0"), Decimal("1E+3")], "c": b"\x01"})
    assert text == '{"a":12345678901234567.89,"b":[2,2.0,1000],"c":"AQ=="}'
    assert json.loads(text, parse_float=Decimal)["a"] == BIG
    assert dumps({"x": Decimal("1E+100")}) == '{"x":1E+100}'  # still a JSON number


class Payment(BaseModel):
    id: str
    amount: Decimal = Field(max_digits=20, decimal_places=2)


def book(p: Payment) -> dict[str, object]:
    return {"id": p.id, "amount": p.amount}


def event(n: int, amount: str) -> Event:
    return Event(id=f"e{n}", source="q", data=f'{{"id":"p{n}","amount":{amount}}}'.encode())


def test_a_typed_decimal_reaches_the_memory_sink_exactly() -> None:
    sink = MemorySink()
    Pipeline(book, sink, MemoryIdempotencyStore()).run_batch([event(1, str(BIG))])
    assert sink.values() == [{"id": "p1", "amount": BIG}]


def test_sqlite_stores_every_digit_and_jsonl_dead_letters_too(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state")

    def fails_for_big(p: Payment) -> dict[str, object]:
        if p.amount > 10**15:
            raise PermanentError("too large to book")
        return {"id": p.id, "amount": p.amount}

    pipe = Pipeline(fails_for_big, state.sink, state.store, state.dead_letters)
    pipe.run_batch([event(1, "1234567890.12"), event(2, str(BIG))])
    state.dead_letters.export()
    with sqlite3.connect(state.folder / "state.db") as conn:
        (text,) = conn.execute("SELECT value FROM outputs").fetchone()
    assert text == '{"id":"p1","amount":1234567890.12}'
    # The dead letter keeps the original event, digits and all.
    (line,) = state.dead_letters.jsonl_path.read_text().splitlines()
    assert str(BIG).encode() in Event.from_cloudevent(json.loads(line)["event"]).data

    direct = SqliteSink(tmp_path / "other.db")
    anyio.run(direct.write, [Output("k#0", "k", "e", 0, {"amount": BIG})])
    with sqlite3.connect(tmp_path / "other.db") as conn:
        (stored,) = conn.execute("SELECT value FROM outputs").fetchone()
    assert json.loads(stored, parse_float=Decimal)["amount"] == BIG
    state.close()


class Colour(enum.Enum):
    RED = "red"


class Level(enum.Enum):
    LOW = 1


class Line(BaseModel):
    sku: str
    price: Decimal = Field(max_digits=12, decimal_places=2)


class Row(BaseModel):
    amount: Decimal = Field(max_digits=20, decimal_places=2)
    huge: Annotated[Decimal, Field(max_digits=50, decimal_places=10)] = Decimal(0)
    loose: Decimal = Decimal(0)
    kind: Literal["debit", "credit"] = "debit"
    rank: Literal[1, 2] | None = None
    colour: Colour = Colour.RED
    level: Level = Level.LOW
    lines: list[Line] = []
    main: Line | None = None


def test_pydantic_to_arrow_schema() -> None:
    schema = arrow_schema(Row)
    assert schema.field("amount").type == pa.decimal128(20, 2)
    assert schema.field("huge").type == pa.decimal256(50, 10)
    assert schema.field("loose").type == pa.decimal128(38, 9)
    assert schema.field("kind").type == pa.string()
    assert schema.field("rank").type == pa.int64() and schema.field("rank").nullable
    assert schema.field("colour").type == pa.string()
    assert schema.field("level").type == pa.int64()
    line = pa.struct(
        [
            pa.field("sku", pa.string(), nullable=False),
            pa.field("price", pa.decimal128(12, 2), nullable=False),
        ]
    )
    assert schema.field("lines").type == pa.list_(line)
    assert schema.field("main").type == line


class Mixed(BaseModel):
    odd: Literal["a", 1]


def test_types_with_no_single_arrow_type_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"Mixed\.odd"):
        arrow_schema(Mixed)


class Ledger(BaseModel):
    id: str
    amount: Decimal = Field(max_digits=20, decimal_places=2)
    kind: Literal["debit", "credit"]
    lines: list[Line]


ROW = {
    "id": "p1",
    "amount": BIG,
    "kind": "debit",
    "lines": [{"sku": "s", "price": Decimal("9999999999.99")}],
}


def test_parquet_keeps_the_decimal_exactly(tmp_path: Path) -> None:
    table, refused = outputs_to_table([Output("k#0", "k", "e", 0, ROW)], arrow_schema(Ledger))
    assert not refused
    pq.write_table(table, tmp_path / "f.parquet")
    back = pq.read_table(tmp_path / "f.parquet")
    assert back.schema.field("amount").type == pa.decimal128(20, 2)
    assert back.column("amount").to_pylist() == [BIG]
    assert back.column("lines").to_pylist()[0][0]["price"] == Decimal("9999999999.99")


def test_a_decimal_with_more_places_than_the_column_is_refused() -> None:
    value = {**ROW, "amount": Decimal("1.234")}
    _, refused = outputs_to_table([Output("k#0", "k", "e", 0, value)], arrow_schema(Ledger))
    assert refused["k#0"].startswith("column amount:")


@pytest.mark.anyio
async def test_delta_table_schema_and_values(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from onceflow.lake import DeltaSink

    uri = str(tmp_path / "ledger")
    await DeltaSink(uri, schema=Ledger, ordered=False).write([Output("k#0", "k", "e", 0, ROW)])
    table = DeltaTable(uri).to_pyarrow_table()
    assert table.schema.field("amount").type == pa.decimal128(20, 2)
    assert table.column("amount").to_pylist() == [BIG]


class Loose(BaseModel):
    amount: Decimal


def read_amount(p: Loose) -> Decimal:
    return p.amount


@settings(max_examples=300, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_a_typed_decimal_keeps_every_digit_of_the_json_text(value: Decimal) -> None:
    parse = typed_process(read_amount, None)
    assert parse is not None
    got = parse(Event(id="e", source="s", data=f'{{"amount":{value}}}'.encode()))
    assert str(got) == str(value)
