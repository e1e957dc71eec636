"""Lane watermark rows on Azurite: chunks of 99 writes plus the lane row, chained by ETag."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError

from onceflow.adapters.azure.table_lanes import (
    lane_chunks,
    lane_operation,
    read_lane,
    sequence_text,
)
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


@pytest.fixture
def table(azurite_server: Azurite) -> Iterator[TableClient]:
    """A fresh table on the session Azurite."""
    service = TableServiceClient.from_connection_string(azurite_server.connection_string)
    name = f"lanes{uuid.uuid4().hex[:10]}"
    yield service.create_table(name)
    service.delete_table(name)


def test_chunks_chain_by_etag_refuse_a_second_worker_and_keep_a_half_failed_batch(
    table: TableClient,
) -> None:
    """Each chunk commits 99 writes and the lane row on the ETag the last chunk left."""
    writes = [
        (sequence_text(str(n)) or "", ("upsert", {"PartitionKey": "p", "RowKey": f"o{n:04}"}))
        for n in range(1, 151)
    ]
    read = read_lane(table, "p", "0")
    assert read.watermark is None and not read.settles("1")
    (high1, ops1), (high2, ops2) = lane_chunks(writes)
    assert len(ops1) == 99 and len(ops2) == 51 and high2 == sequence_text("150")
    answer = table.submit_transaction([*ops1, lane_operation(read, high1, read.etag)])
    etag = dict(answer[-1])["etag"]
    # Failed half-way: the watermark is the first chunk's, every event up to 99 settled.
    after = read_lane(table, "p", "0")
    assert after.settles("99") and not after.settles("100")
    # A second worker that read the lane before the first chunk is refused whole.
    with pytest.raises(TableTransactionError):
        table.submit_transaction(
            [
                ("upsert", {"PartitionKey": "p", "RowKey": "x"}),
                lane_operation(read, high2, read.etag),
            ]
        )
    assert not list(table.query_entities("RowKey eq 'x'"))
    table.submit_transaction([*ops2, lane_operation(read, high2, etag)])
    assert read_lane(table, "p", "0").settles("150")
    assert len(list(table.list_entities())) == 151
