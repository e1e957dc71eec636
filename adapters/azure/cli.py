"""`onceflow azure scaffold`: write a deployable function app folder for a pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onceflow.cli import CliError

__all__ = ["TRIGGERS", "generated_app", "register", "scaffold"]

TRIGGERS = ("eventhub", "blob", "queue")


def register(subparsers: Any) -> None:
    """Add `azure scaffold` to the `onceflow` command line."""
    azure = subparsers.add_parser("azure", help="Azure Functions tooling")
    commands = azure.add_subparsers(dest="azure_command", metavar="COMMAND", required=True)
    scaffold_parser = commands.add_parser(
        "scaffold",
        help="write a self-contained Functions app folder for a function app or pipeline",
        description="Write a deployable Azure Functions app (Python v2 model) to DIR: the "
        "user's module copied, function_app.py, host.json sized for the trigger, "
        "requirements.txt, .funcignore and local.settings.json. An app built by "
        "onceflow.adapters.azure.function_app gives its triggers, connections and "
        "deployment; for a Pipeline, a factory or a processor class the --trigger options do.",
    )
    scaffold_parser.add_argument(
        "pipeline",
        metavar="MODULE:NAME",
        help="an app built by function_app(...), a Pipeline, a zero-argument pipeline "
        "factory, or a processor class (then Table storage state is generated)",
    )
    scaffold_parser.add_argument("directory", metavar="DIR", type=Path)
    scaffold_parser.add_argument("--trigger", choices=TRIGGERS, default="eventhub")
    scaffold_parser.add_argument("--event-hub", default="events", help="Event Hub name")
    scaffold_parser.add_argument("--queue", default="events", help="Storage queue name")
    scaffold_parser.add_argument("--blob-path", default="incoming/{name}", help="Blob path")
    scaffold_parser.add_argument("--connection", help="app setting holding the connection")
    scaffold_parser.add_argument("--key-field", help="Event Hubs: JSON body field to key on")
    scaffold_parser.add_argument("--name", default="onceflow", help="the function's name")
    scaffold_parser.add_argument(
        "--requirement",
        help="the onceflow requirement line (default onceflow[azure]==VERSION; until a release "
        "exists, `onceflow[azure] @ file:///.../onceflow-VERSION-py3-none-any.whl`)",
    )
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
        requirement=args.requirement,
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
    requirement: str | None = None,
) -> list[Path]:
    """Write the app folder to `directory`; the paths written. Nothing is written on error."""
    from onceflow.adapters.azure.scaffold import plan_scaffold

    if trigger not in TRIGGERS:
        raise CliError(f"unknown trigger {trigger!r}: choose one of {', '.join(TRIGGERS)}")
    flags = _trigger(trigger, event_hub, queue, blob_path, connection, key_field)
    plan = plan_scaffold(spec, directory, requirement=requirement, flags=flags, name=name)
    return plan.write(force=force)


def _trigger(
    trigger: str,
    event_hub: str,
    queue: str,
    blob_path: str,
    connection: str | None,
    key_field: str | None,
) -> Any:
    from onceflow.adapters.azure.entry import BlobTrigger, EventHubTrigger, QueueTrigger

    if trigger == "eventhub":
        return EventHubTrigger(
            event_hub, connection=connection or "EventHubConnection", key_field=key_field
        )
    if trigger == "queue":
        return QueueTrigger(queue, connection=connection or "AzureWebJobsStorage")
    return BlobTrigger(blob_path, connection=connection or "AzureWebJobsStorage")


def generated_app(module: str, attribute: str, kind: str, trigger: Any, name: str) -> str:
    """function_app.py for a Pipeline, a factory or a processor class, on `trigger`."""
    local = attribute.split(".", maxsplit=1)[0]
    trigger_class = type(trigger).__name__
    if kind == "processor":
        names = sorted(
            ["BlobObjectStore", "QueueSink", "TableIdempotencyStore", "TableSink", trigger_class]
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
    else:
        imports = [
            f"from onceflow.adapters.azure import {trigger_class}, function_app",
            f"from {module} import {local}",
        ]
        factory = ""
        pipeline_ref = attribute
    return (
        f'"""Azure Functions app for {module}:{attribute}, written by `onceflow azure scaffold`."""'
        "\n\n"
        + "\n".join(imports)
        + "\n"
        + factory
        + f"\n\napp = function_app({pipeline_ref}, {_call(trigger)}, name={name!r})\n"
    )


def _call(trigger: Any) -> str:
    """The trigger as the Python expression that builds it (only fields not at their default)."""
    import dataclasses

    fields = dataclasses.fields(trigger)
    first = fields[0]
    arguments = [repr(getattr(trigger, first.name))]
    for field in fields[1:]:
        value = getattr(trigger, field.name)
        if value != field.default:
            arguments.append(f"{field.name}={value!r}")
    return f"{type(trigger).__name__}({', '.join(arguments)})"
