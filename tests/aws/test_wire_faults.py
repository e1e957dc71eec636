"""Faults at the wire, between botocore and the moto server (`tests.support.proxy`).

The proxy relays real HTTP: botocore signs, sends and parses as it would against AWS, and
moto applies what reaches it. A lost reply is a request moto applied whose answer the
client never got; a reset is a request moto never saw; an answer is DynamoDB's own error
text, parsed by botocore into the `ClientError` it raises for the real service.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.aws.moto_clients import proxied_dynamodb_client
from tests.support.proxy import Fault, FaultKind, FaultProxy, amz_target, dynamodb_error
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator


def _get(client: Any, table: str, pk: str) -> Any:
    return client.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")


def test_the_proxy_relays_drops_resets_delays_and_answers(
    moto: MotoServer, moto_proxy: FaultProxy, dynamodb_tables: Any
) -> None:
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

    table = dynamodb_tables("wire")
    client = proxied_dynamodb_client(moto, moto_proxy, read_timeout=0.5)
    put = amz_target("PutItem")

    def write(pk: str) -> None:
        client.put_item(TableName=table, Item={"pk": {"S": pk}})

    write("relayed")  # kept alive: the next requests reuse the connection
    assert _get(client, table, "relayed") == {"pk": {"S": "relayed"}}

    moto_proxy.add(Fault.drop_reply(put))
    with pytest.raises(ConnectionClosedError):
        write("lost-reply")
    assert _get(client, table, "lost-reply") is not None  # applied all the same

    moto_proxy.add(Fault.reset(put))
    with pytest.raises(ConnectionClosedError):
        write("reset")
    assert _get(client, table, "reset") is None  # never reached moto

    moto_proxy.add(Fault.delay_reply(put, 1.0))
    with pytest.raises(ReadTimeoutError):
        write("late")
    assert _get(client, table, "late") is not None

    moto_proxy.add(Fault.answer(put, dynamodb_error(), skip=1, times=2))
    write("skipped")
    for pk in ("throttled-1", "throttled-2"):
        with pytest.raises(ClientError) as raised:
            write(pk)
        assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    write("after")
    assert _get(client, table, "throttled-1") is None and _get(client, table, "after") is not None

    faulted = [s.fault for s in moto_proxy.seen if s.fault is not None]
    assert faulted == [
        FaultKind.DROP_REPLY,
        FaultKind.RESET,
        FaultKind.DELAY_REPLY,
        FaultKind.ANSWER,
        FaultKind.ANSWER,
    ]
    assert moto_proxy.fired == 5
