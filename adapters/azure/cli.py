"""`onceflow azure scaffold`: write a deployable function app for a pipeline."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from onceflow.cli import CliError, load_object
from onceflow.pipeline import Pipeline

__all__ = ["HOST_JSON", "register", "scaffold"]

HOST_JSON: dict[str, Any] = {
    "version": "2.0",
    "extensionBundle": {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    },
    "functionTimeout": "00:10:00",
    "extensions": {
        "eventHubs": {
            # Big batches make the bookkeeping cheap (one query and a transaction per 100
            # events); the wait bounds the latency a quiet partition adds.
            "maxEventBatchSize": 500,
            "minEventBatchSize": 1,
            "maxWaitTime": "00:00:05",
            # Prefetch ahead of the batch so the next one is ready when this returns.
            "prefetchCount": 1000,
            # Checkpoint after every batch: a restart redelivers at most one batch, and
            # the idempotency store absorbs it.
            "batchCheckpointFrequency": 1,
        },
        "queues": {
            # After 5 failed dequeues the host moves a message to `<queue>-poison`.
            "maxDequeueCount": 5,
            "batchSize": 16,
            "visibilityTimeout": "00:00:30",
        },
    },
    "logging": {"logLevel": {"default": "Information", "Function": "Information"}},
}

REQUIREMENTS = """\
# The Functions host installs these into the app's environment.
azure-functions>=1.20
onceflow[azure]
"""

TRIGGERS = ("eventhub", "blob", "queue")


def register(subparsers: Any) -> None:
    """Add `azure scaffold` to the `onceflow` command line."""
    azure = subparsers.add_parser("azure", help="Azure Functions tooling")
    commands = azure.add_subparsers(dest="azure_command", metavar="COMMAND", required=True)
    scaffold_parser = commands.add_parser(
        "scaffold",
        help="write function_app.py, host.json and requirements.txt for a pipeline",
        description="Write a deployable Azure Functions app (Python v2 model) to DIR for the "
        "pipeline factory or processor class named by PIPELINE_MODULE (MODULE:NAME).",
    )
    scaffold_parser.add_argument(
        "pipeline",
        metavar="PIPELINE_MODULE",
        help="MODULE:NAME of a pipeline factory, "
        "a Pipeline, or a processor class (then Table storage state is generated)",
    )
    scaffold_parser.add_argument("directory", metavar="DIR", type=Path)
    scaffold_parser.add_argument("--trigger", choices=TRIGGERS, default="eventhub")
    scaffold_parser.add_argument("--event-hub", default="events", help="Event Hub name")
    scaffold_parser.add_argument("--queue", default="events", help="Storage queue name")
    scaffold_parser.add_argument("--blob-path", default="incoming/{name}", help="Blob path")
    scaffold_parser.add_argument("--connection", help="app setting holding the connection")
    scaffold_parser.add_argument("--key-field", help="Event Hubs: JSON body field to key on")
    scaffold_parser.add_argument("--name", default="onceflow", help="the function's name")
    scaffold_parser.add_argument("--force", action="store_true", help="overwrite files")
    scaffold_parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    written = scaffold(
        args.pipeline,
        args.directory,
        trigger=args.trigger,
        event_hub=args.event_hub,
        queue=args.queue,
        blob_path=args.blob_path,
        connection=args.connection,
        key_field=args.key_field,
        name=args.name,
        force=args.force,
    )
    for path in written:
        print(path)
    return 0


def scaffold(
    spec: str,
    directory: Path,
    *,
    trigger: str = "eventhub",
    event_hub: str = "events",
    queue: str = "events",
    blob_path: str = "incoming/{name}",
    connection: str | None = None,
    key_field: str | None = None,
    name: str = "onceflow",
    force: bool = False,
) -> list[Path]:
    """Write the app's files to `directory`; the paths written."""
    if trigger not in TRIGGERS:
        raise CliError(f"unknown trigger {trigger!r}: choose one of {', '.join(TRIGGERS)}")
    target = load_object(spec)
    module, _, attribute = spec.partition(":")
    files = {
        "function_app.py": _function_app(
            module,
            attribute,
            target,
            trigger,
            event_hub,
            queue,
            blob_path,
            connection,
            key_field,
            name,
        ),
        "host.json": json.dumps(HOST_JSON, indent=2) + "\n",
        "requirements.txt": REQUIREMENTS,
        "local.settings.json": json.dumps(
            {
                "IsEncrypted": False,
                "Values": {
                    "FUNCTIONS_WORKER_RUNTIME": "python",
                    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                    **({"EventHubConnection": ""} if trigger == "eventhub" else {}),
                },
            },
            indent=2,
        )
        + "\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    clash = [n for n in files if (directory / n).exists()]
    if clash and not force:
        raise CliError(f"{directory} already has {', '.join(clash)}: pass --force to overwrite")
    written = []
    for filename, text in files.items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written


def _function_app(
    module: str,
    attribute: str,
    target: Any,
    trigger: str,
    event_hub: str,
    queue: str,
    blob_path: str,
    connection: str | None,
    key_field: str | None,
    name: str,
) -> str:
    local = attribute.split(".", maxsplit=1)[0]
    if inspect.isclass(target) and hasattr(target, "process"):
        names = sorted(
            [
                "BlobObjectStore",
                "QueueSink",
                "TableIdempotencyStore",
                "TableSink",
                _trigger_class(trigger),
            ]
        )
        imports = [
            "import os",
            "",
            "from onceflow.adapters.azure import (",
            *[f"    {n}," for n in [*names, "function_app"]],
            ")",
            "from onceflow import Pipeline",
            f"from {module} import {local}",
        ]
        factory = f'''

def build_pipeline() -> Pipeline:
    """The pipeline, built once per worker on its first invocation."""
    storage = os.environ["AzureWebJobsStorage"]
    store = TableIdempotencyStore("onceflow", connection_string=storage, create=True)
    spill = BlobObjectStore("onceflow-spill", connection_string=storage, create=True)
    return Pipeline(
        {attribute}(),
        TableSink("onceflow", connection_string=storage),  # same table: atomic with the store
        store,
        QueueSink("onceflow-dead-letters", connection_string=storage, spill=spill, create=True),
        name={name!r},
    )
'''
        pipeline_ref = "build_pipeline"
    elif isinstance(target, Pipeline) or callable(target):
        imports = [
            f"from onceflow.adapters.azure import {_trigger_class(trigger)}, function_app",
            f"from {module} import {local}",
        ]
        factory = ""
        pipeline_ref = attribute
    else:
        raise CliError(
            f"{module}:{attribute} is a {type(target).__name__}: name a pipeline factory, "
            "a Pipeline or a processor class"
        )
    settings = _trigger_call(trigger, event_hub, queue, blob_path, connection, key_field)
    return (
        f'"""Azure Functions app for {module}:{attribute}, written by `onceflow azure scaffold`."""'
        "\n\n"
        + "\n".join(imports)
        + "\n"
        + factory
        + f"\n\napp = function_app({pipeline_ref}, {settings}, name={name!r})\n"
    )


def _trigger_class(trigger: str) -> str:
    return {"eventhub": "EventHubTrigger", "blob": "BlobTrigger", "queue": "QueueTrigger"}[trigger]


def _trigger_call(
    trigger: str,
    event_hub: str,
    queue: str,
    blob_path: str,
    connection: str | None,
    key_field: str | None,
) -> str:
    arguments: list[str]
    if trigger == "eventhub":
        arguments = [repr(event_hub)]
        if key_field:
            arguments.append(f"key_field={key_field!r}")
    elif trigger == "queue":
        arguments = [repr(queue)]
    else:
        arguments = [repr(blob_path)]
    if connection:
        arguments.append(f"connection={connection!r}")
    return f"{_trigger_class(trigger)}({', '.join(arguments)})"
