"""`onceflow plan aws|azure`: capacity and dollars per hour for each design, side by side."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from onceflow.capacity import (
    AWS_DESIGNS,
    AWS_PRICE_SETS,
    AZURE_DESIGNS,
    AwsPrices,
    AzurePrices,
    Plan,
    dynamodb_line,
    find_figures,
    load_prices,
    plan_aws,
    plan_azure,
    plans_table,
    price_assumption,
)
from onceflow.cli import CliError
from onceflow.errors import ConfigurationError

__all__ = ["register"]

CAPACITIES = ("provisioned", "on-demand")


def register(subparsers: Any) -> None:
    """Add `onceflow plan` and its two clouds."""
    plan = subparsers.add_parser(
        "plan", help="capacity and cost per hour of a pipeline at a given event rate"
    )
    clouds = plan.add_subparsers(dest="cloud", metavar="CLOUD")
    aws = clouds.add_parser("aws", help="Kinesis -> Lambda -> DynamoDB")
    _common(aws, AWS_DESIGNS, memory=1024)
    aws.add_argument(
        "--capacity",
        default="provisioned",
        help="DynamoDB capacity mode: provisioned (default) or on-demand",
    )
    aws.add_argument(
        "--lake-puts-per-batch",
        default="0",
        help="S3 PUTs per batch when the pipeline writes a lake (files + manifest entry)",
    )
    aws.set_defaults(func=_aws)
    azure = clouds.add_parser("azure", help="Event Hubs -> Functions -> Table or Cosmos DB")
    _common(azure, AZURE_DESIGNS, memory=1536)
    azure.set_defaults(func=_azure)
    plan.set_defaults(func=lambda args: _missing_cloud())


def _missing_cloud() -> int:
    raise CliError("name a cloud: onceflow plan aws ... or onceflow plan azure ...")


def _common(parser: argparse.ArgumentParser, designs: tuple[str, ...], memory: int) -> None:
    # Values are read as text and checked here, so a bad one is one line naming the flag
    # (argparse's own type errors print the whole usage first).
    parser.add_argument("--events-per-second", required=True)
    parser.add_argument("--record-bytes", default="1024")
    parser.add_argument(
        "--mode",
        default="all",
        help=f"one design or all (default): {', '.join(designs)}",
    )
    parser.add_argument("--batch-size", default="100")
    parser.add_argument("--memory-mb", default=str(memory))
    parser.add_argument("--work-ms", default="0", help="your processor's own time per event")
    parser.add_argument("--request-ms", default="5", help="latency of one state-store request")
    parser.add_argument(
        "--figures",
        help="per-event figures (default: benchmarks/results.json when present, else the "
        "shipped cost_figures.json)",
    )
    named = f" or a named set ({', '.join(AWS_PRICE_SETS)})" if "naive" in designs else ""
    parser.add_argument("--prices", help=f"a JSON file of prices replacing the list prices{named}")


def _number(args: argparse.Namespace, name: str, whole: bool = False) -> Any:
    text = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise CliError(f"{flag} {text!r} is not {kind}") from None
    if not math.isfinite(value) or value < 0:
        raise CliError(f"{flag} {text!r}: give a finite number, 0 or more")
    return value


def _numbers(args: argparse.Namespace) -> None:
    """Every numeric flag parsed in place, before anything is read."""
    for name in ("events_per_second", "work_ms", "request_ms", "lake_puts_per_batch"):
        if hasattr(args, name):
            setattr(args, name, _number(args, name))
    for name in ("record_bytes", "batch_size", "memory_mb"):
        setattr(args, name, _number(args, name, whole=True))
    if getattr(args, "capacity", "provisioned") not in CAPACITIES:
        raise CliError(f"unknown --capacity {args.capacity!r}: one of {', '.join(CAPACITIES)}")


def _designs(args: argparse.Namespace, known: tuple[str, ...]) -> list[str]:
    if args.mode == "all":
        return list(known)
    if args.mode not in known:
        raise CliError(f"unknown --mode {args.mode!r}: one of all, {', '.join(known)}")
    return [args.mode]


def _aws(args: argparse.Namespace) -> int:
    _numbers(args)
    return _plan(
        args,
        AWS_DESIGNS,
        AwsPrices,
        plan_aws,
        capacity=args.capacity,
        lake_puts_per_batch=args.lake_puts_per_batch,
    )


def _azure(args: argparse.Namespace) -> int:
    _numbers(args)
    return _plan(args, AZURE_DESIGNS, AzurePrices, plan_azure)


def _plan(
    args: argparse.Namespace,
    known: tuple[str, ...],
    prices_kind: type[Any],  # AwsPrices or AzurePrices
    planner: Callable[..., Plan],
    **extra: Any,
) -> int:
    designs = _designs(args, known)
    try:
        figures, where = find_figures(args.figures)
        prices = load_prices(prices_kind, args.prices)
        common: dict[str, Any] = {
            "events_per_second": args.events_per_second,
            "record_bytes": args.record_bytes,
            "figures": figures,
            "prices": prices,
            "batch_size": args.batch_size,
            "memory_mb": args.memory_mb,
            "work_ms": args.work_ms,
            "request_ms": args.request_ms,
        }
        plans = [planner(design, **common, **extra) for design in designs]
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    _print(plans, args)
    print(f"\nfigures: {where}")
    if isinstance(prices, AwsPrices):
        print(f"prices: {price_assumption(args.prices)}")

        def rerun(design: str, other: AwsPrices) -> Plan:
            return planner(design, **{**common, "prices": other}, **extra)

        _classic(plans, prices, rerun)
    return 0


def _classic(plans: list[Plan], prices: AwsPrices, rerun: Callable[[str, AwsPrices], Plan]) -> None:
    """The back-of-the-envelope DynamoDB line, at its own prices and at these, and ours beside."""
    classic = load_prices(AwsPrices, "classic")
    _, text = dynamodb_line(classic)
    print(f"naive design, the classic line: {text} (`--prices classic`: back-solved, see docs)")
    if prices != classic:
        _, here = dynamodb_line(prices)
        print(f"naive design at these prices: {here}")
    ours = [p for p in plans if p.design not in ("naive", "powertools")]
    if not ours:
        return

    def dynamodb(plan: Plan) -> float:
        return sum(line.dollars_per_hour for line in plan.lines if line.component == "DynamoDB")

    here_text = ", ".join(f"{p.design} ${dynamodb(p):,.2f}" for p in ours)
    print(f"onceflow DynamoDB per hour at this load and these prices: {here_text}")
    if prices != classic:
        there = ", ".join(f"{p.design} ${dynamodb(rerun(p.design, classic)):,.2f}" for p in ours)
        print(f"onceflow DynamoDB per hour at this load and the classic prices: {there}")


def _print(plans: list[Plan], args: argparse.Namespace) -> None:
    print(
        f"{args.events_per_second:,.0f} events/s of {args.record_bytes} B, "
        f"batches of {args.batch_size}: dollars per hour"
    )
    rows = plans_table(plans)
    names = [p.design for p in plans]
    widths = [max(len("component"), *(len(r["component"]) for r in rows))]
    widths += [max(len(n), 12) for n in names]
    print("  ".join(h.ljust(w) for h, w in zip(["component", *names], widths, strict=True)))
    for row in rows:
        cells = [row["component"], *(f"${row[n]:,.2f}" for n in names)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print()
    for plan in plans:
        for line in plan.lines:
            print(f"{plan.design:<12} {line.component:<18} {line.basis}")
