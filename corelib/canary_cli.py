"""`onceflow canary`: send a marked event through the real source, wait for its output in the sink.

On SQS the canary event carries the attribute `onceflow.canary` (its value: the canary's
id), so a processor can tell it from real traffic (`onceflow.canary.is_canary(event)`) and
a traced pipeline passes the mark on to its outputs; a local file's events carry no
attributes, so there the mark is the payload's `onceflow.canary` member and the file name.

On SQS the output is looked up by the id the runner gives it (`output_id(event_key(source,
id), 0)`): the pipeline must use the default key (source and id) and write the canary's
first output where the command looks; locally, by the event id in the state's outputs.

Targets: `sqs` (the source queue; the output in a DynamoDB sink table) and `local` (a
JSONL file in the landing folder `onceflow run --watch` reads; the output in its state).

Exit status: 0 when the output is seen before `--deadline`, 1 when it is not, 2 on bad
input (one line naming the cause).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

from onceflow.canary import CANARY
from onceflow.cli import CliError
from onceflow.identity import event_key, first_output_id

__all__ = ["CanaryOutcome", "register", "sqs_canary", "wait_for"]


def register(subparsers: Any) -> None:
    """Add `onceflow canary` and its targets."""
    canary = subparsers.add_parser(
        "canary", help="send a marked event through the source and wait for its output"
    )
    targets = canary.add_subparsers(dest="target", metavar="TARGET")
    sqs = targets.add_parser(
        "sqs", help="send to an SQS queue; wait for the output in a DynamoDB sink table"
    )
    sqs.add_argument("queue_url", help="the pipeline's source queue")
    sqs.add_argument("--table", required=True, help="the DynamoDB table the pipeline writes")
    sqs.add_argument("--key-attribute", default="pk", help="the table's key attribute (default pk)")
    sqs.add_argument("--endpoint-url", default=None, help="an AWS endpoint (a local emulator)")
    sqs.add_argument("--region", default=None)
    _common(sqs)
    sqs.set_defaults(func=_sqs)
    local = targets.add_parser(
        "local",
        help="land a JSONL file in the folder `onceflow run --watch` reads; wait for its output",
    )
    local.add_argument("landing", help="the landing folder the local runner watches")
    local.add_argument("--state", required=True, help="the runner's state folder (its --state)")
    local.add_argument(
        "--id-field",
        default=None,
        help="the runner's --id-field: the canary's id goes in this field of the body",
    )
    _common(local)
    local.set_defaults(func=_local)
    canary.set_defaults(func=lambda args: _missing_target())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deadline", default="60", help="seconds to wait for the output (default 60)"
    )
    parser.add_argument("--poll", default="1", help="seconds between looks (default 1)")
    parser.add_argument(
        "--body",
        default=None,
        help='the canary\'s JSON payload (default {"onceflow.canary": ID})',
    )
    parser.add_argument("--id", default=None, help="the canary's id (default canary-<uuid>)")


def _missing_target() -> int:
    raise CliError(
        "name a target: onceflow canary sqs QUEUE_URL --table TABLE, "
        "or onceflow canary local LANDING --state DIR"
    )


def wait_for(
    seen: Callable[[], bool],
    deadline: float,
    poll: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Seconds until `seen()` held, looking every `poll` seconds; None if not by `deadline`."""
    started = clock()
    while True:
        if seen():
            return clock() - started
        left = started + deadline - clock()
        if left <= 0:
            return None
        sleep(min(poll, left))


def _seconds(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"{flag} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise CliError(f"{flag} {text!r}: give a positive number of seconds")
    return value


def _payload(args: argparse.Namespace, canary_id: str) -> str:
    if args.body is None:
        return json.dumps({CANARY: canary_id})
    try:
        json.loads(args.body)
    except ValueError as exc:
        raise CliError(f"--body is not JSON ({exc.__class__.__name__} at {exc})") from None
    return str(args.body)


def _report(canary_id: str, where: str, waited: float | None, deadline: float) -> int:
    if waited is None:
        print(f"canary {canary_id}: no output in {where} within {deadline:g} s", file=sys.stderr)
        return 1
    print(f"canary {canary_id}: output seen in {where} after {waited:.1f} s")
    return 0


# -- SQS source, DynamoDB sink --------------------------------------------------------------


def _sqs(args: argparse.Namespace) -> int:
    deadline = _seconds(args.deadline, "--deadline")
    poll = _seconds(args.poll, "--poll")
    canary_id = args.id or f"canary-{uuid.uuid4().hex}"
    outcome = sqs_canary(
        args.queue_url,
        args.table,
        deadline=deadline,
        poll=poll,
        body=_payload(args, canary_id),
        canary_id=canary_id,
        key_attribute=args.key_attribute,
        endpoint_url=args.endpoint_url,
        region=args.region,
    )
    return _report(canary_id, outcome.where, outcome.waited, deadline)


class CanaryOutcome(NamedTuple):
    """What a canary came to: its id, where its output was looked for, and how long it took."""

    canary_id: str
    where: str
    waited: float | None
    """Seconds until the output was seen; None when it was not seen by the deadline."""


def sqs_canary(
    queue_url: str,
    table: str,
    *,
    deadline: float = 60.0,
    poll: float = 1.0,
    body: str | None = None,
    canary_id: str | None = None,
    key_attribute: str = "pk",
    endpoint_url: str | None = None,
    region: str | None = None,
) -> CanaryOutcome:
    """Send a canary to `queue_url` and wait for its first output in DynamoDB `table`.

    For a scheduled canary function as well as the command: raises `CliError` (one line)
    when the queue or table cannot be used.
    """
    canary_id = canary_id or f"canary-{uuid.uuid4().hex}"
    body = body if body is not None else json.dumps({CANARY: canary_id})
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CliError("`onceflow canary sqs` needs boto3: pip install 'onceflow[aws]'") from None
    given = {"endpoint_url": endpoint_url, "region_name": region}
    options = {k: v for k, v in given.items() if v}
    client: Any = boto3.client  # keyword arguments from a dict fit none of its overloads
    try:
        sqs = client("sqs", **options)
        dynamodb = client("dynamodb", **options)
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        dynamodb.describe_table(TableName=table)
        message: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MessageBody": body,
            "MessageAttributes": {CANARY: {"DataType": "String", "StringValue": canary_id}},
        }
        if queue_url.endswith(".fifo"):
            message["MessageGroupId"] = "onceflow-canary"
            message["MessageDeduplicationId"] = canary_id[:128]
        message_id = sqs.send_message(**message)["MessageId"]
    except (BotoCoreError, ClientError) as exc:
        raise CliError(f"canary not sent to {queue_url}: {_aws_cause(exc)}") from None
    oid = first_output_id(event_key(arn, message_id))
    key = {key_attribute: {"S": oid}}

    def seen() -> bool:
        try:
            return "Item" in dynamodb.get_item(
                TableName=table, Key=key, ProjectionExpression="#k",
                ExpressionAttributeNames={"#k": key_attribute},
            )  # fmt: skip
        except ClientError as exc:
            if _aws_code(exc) in {"ResourceNotFoundException", "ValidationException"}:
                raise CliError(f"cannot read table {table}: {_aws_cause(exc)}") from None
            return False  # throttled or unavailable: look again at the next poll
        except BotoCoreError:
            return False

    waited = wait_for(seen, deadline, poll)
    return CanaryOutcome(canary_id, f"table {table} (output {oid})", waited)


def _aws_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _aws_cause(exc: Exception) -> str:
    code = _aws_code(exc)
    return f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"


# -- a local landing folder, the local runner's SQLite state ----------------------------------

LANDED_PREFIX = "onceflow-canary-"
"""The canary file's name starts so: a person listing the landing folder sees what it is."""


def _local(args: argparse.Namespace) -> int:
    deadline = _seconds(args.deadline, "--deadline")
    poll = _seconds(args.poll, "--poll")
    canary_id = args.id or f"canary-{uuid.uuid4().hex}"
    landing, database = Path(args.landing), Path(args.state) / "state.db"
    if not landing.is_dir():
        raise CliError(f"landing folder {landing} does not exist")
    if not database.is_file():
        raise CliError(f"no onceflow state in {args.state} (expected {database})")
    if args.body is None:
        doc: Any = {CANARY: canary_id}
    else:
        doc = json.loads(_payload(args, canary_id))
    if args.id_field is not None:
        if not isinstance(doc, dict):
            raise CliError(f"--id-field {args.id_field}: --body must be a JSON object")
        doc[args.id_field] = canary_id
    name = f"{LANDED_PREFIX}{canary_id}.jsonl"
    if "/" in name or "\\" in name:
        raise CliError(f"--id {canary_id!r}: an id cannot hold a path separator")
    # Written under a hidden name, then renamed: the runner skips hidden files, so it never
    # reads the canary half-written.
    hidden = landing / f".{name}"
    hidden.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    hidden.replace(landing / name)
    # The file reader's event id: the file's name and line, or the --id-field's value.
    event_id = canary_id if args.id_field is not None else f"{name}:1"

    def seen() -> bool:
        try:
            with closing(
                sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)
            ) as db:
                row = db.execute(
                    "SELECT 1 FROM outputs WHERE event_id = ? LIMIT 1", (event_id,)
                ).fetchone()
        except sqlite3.OperationalError:
            return False  # no outputs table yet, or the runner holds a write lock
        return row is not None

    waited = wait_for(seen, deadline, poll)
    return _report(canary_id, f"{database} (event {event_id})", waited, deadline)
