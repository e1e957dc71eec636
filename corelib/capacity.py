"""A capacity and cost model: what a pipeline at a given event rate needs, and costs per hour.

The per-event figures (store requests, write and read units, runner time) are the ones the
benchmarks measure (`benchmarks/cost_figures.py` writes `benchmarks/results.json` and the
`cost_figures.json` shipped with the package); prices are list prices, overridable with a
JSON file of the same keys as `AwsPrices` / `AzurePrices`. Every formula is in
docs/operations.md and in the `basis` text of each line, so a reader can redo the arithmetic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from onceflow.errors import ConfigurationError

__all__ = [
    "AWS_DESIGNS",
    "AWS_PRICE_SETS",
    "AZURE_DESIGNS",
    "RESULTS_FORMAT",
    "AwsPrices",
    "AzurePrices",
    "Figures",
    "Line",
    "Plan",
    "dynamodb_line",
    "find_figures",
    "load_figures",
    "load_prices",
    "plan_aws",
    "plan_azure",
    "price_assumption",
    "results_document",
]

KIB = 1024
HOUR = 3600.0
EVENTHUB_STANDARD_TUS = 40
"""The most throughput units one Standard-tier Event Hubs namespace takes."""

AWS_DESIGNS = ("upsert", "optimistic", "atomic", "powertools", "naive")
"""onceflow's three DynamoDB modes, a Powertools-style per-event design, and the classic
back-of-the-envelope line: one item write and one strongly consistent read per event."""
AZURE_DESIGNS = ("table", "cosmos", "per-event")


@dataclass(frozen=True)
class AwsPrices:
    """US East (N. Virginia) list prices, USD."""

    kinesis_shard_hour: float = 0.015
    kinesis_put_million_units: float = 0.014
    """Per million 25 KB PUT payload units."""
    lambda_gb_second: float = 0.0000166667
    lambda_million_requests: float = 0.20
    dynamodb_wcu_hour: float = 0.00065
    dynamodb_rcu_hour: float = 0.00013
    dynamodb_million_write_units: float = 0.625
    dynamodb_million_read_units: float = 0.125
    s3_thousand_puts: float = 0.005


@dataclass(frozen=True)
class AzurePrices:
    """East US list prices, USD."""

    eventhub_tu_hour: float = 0.03
    eventhub_million_events: float = 0.028
    functions_gb_second: float = 0.000016
    functions_million_executions: float = 0.20
    table_ten_thousand_transactions: float = 0.00036
    cosmos_hundred_rus_hour: float = 0.008


@dataclass(frozen=True)
class Figures:
    """Measured per-event costs of one design."""

    requests: float
    """Store requests per event, first delivery."""
    write_units: float
    """DynamoDB write units (1 per KB written, 2 per KB in a transaction) per event."""
    read_units: float
    runner_us: float
    """Framework CPU time per event in the handler (microseconds), processor work excluded."""
    items_written: float = 1.0
    """Items (of the record's size) the design writes per event: units scale with size."""


@dataclass(frozen=True)
class Line:
    """One component of a plan: how much, of what, at what cost per hour, and why."""

    component: str
    quantity: float
    unit: str
    dollars_per_hour: float
    basis: str


@dataclass
class Plan:
    """The lines of one design at one load, and their total."""

    design: str
    lines: list[Line] = field(default_factory=list)

    @property
    def dollars_per_hour(self) -> float:
        """The sum of every line."""
        return sum(line.dollars_per_hour for line in self.lines)


RESULTS_FORMAT = "onceflow-benchmark-results/1"
"""The `format` of `benchmarks/results.json`: the benchmarks' results, figures included."""
RESULTS_PATH = Path("benchmarks") / "results.json"
"""Where `onceflow plan` looks (from the current directory) for the benchmarks' results."""
RESULTS_ENV = "ONCEFLOW_BENCHMARK_RESULTS"
"""An environment variable naming another results file."""


def results_document(figures: dict[str, Figures], *, measured: str, source: str) -> dict[str, Any]:
    """A `benchmarks/results.json` document carrying `figures` (benchmarks may add tables)."""
    return {
        "format": RESULTS_FORMAT,
        "measured": measured,
        "cost_figures": {
            "source": source,
            "designs": {name: vars(each) for name, each in sorted(figures.items())},
        },
    }


def _parse_figures(text: str, where: str) -> dict[str, Figures]:
    try:
        document = json.loads(text)
        if isinstance(document, dict) and "format" in document:
            if document["format"] != RESULTS_FORMAT:
                raise ConfigurationError(
                    f"{where}: unknown results format {str(document['format'])[:40]!r}"
                )
            document = document["cost_figures"]
        raw = document["designs"]
        return {name: Figures(**values) for name, values in raw.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{where} is not a figures file: {type(exc).__name__}") from None


def find_figures(path: str | Path | None = None) -> tuple[dict[str, Figures], str]:
    """Per-design figures and where they came from.

    `path` if given; else the benchmarks' results (`$ONCEFLOW_BENCHMARK_RESULTS`, or
    `benchmarks/results.json` under the current directory) when present; else the
    `cost_figures.json` the package ships.
    """
    if path is None:
        named = os.environ.get(RESULTS_ENV)
        if named:
            path = named
        elif RESULTS_PATH.is_file():
            path = RESULTS_PATH
    if path is None:
        text = resources.files("onceflow").joinpath("cost_figures.json").read_text()
        where = "the shipped cost_figures.json"
        return _parse_figures(text, where), where
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read figures file {path}: {exc}") from None
    return _parse_figures(text, str(path)), str(path)


def load_figures(path: str | Path | None = None) -> dict[str, Figures]:
    """Per-design figures from `path`, the benchmarks' results, or the shipped file."""
    return find_figures(path)[0]


P = TypeVar("P", AwsPrices, AzurePrices)


# Reserved capacity (DynamoDB, US East): per 100 units, an upfront fee and an hourly rate;
# the upfront fee is spread over the term's hours so a line stays dollars per hour.
_YEAR = 8760.0
AWS_PRICE_SETS: dict[str, tuple[str, dict[str, float]]] = {
    "list": ("list prices, US East (N. Virginia), provisioned capacity without a reservation", {}),
    "reserved-1y": (
        "DynamoDB 1-year reserved capacity: $150 + $0.0128/h per 100 WCU, "
        "$30 + $0.0025/h per 100 RCU, upfront spread over 8,760 h",
        {
            "dynamodb_wcu_hour": (150 / _YEAR + 0.0128) / 100,
            "dynamodb_rcu_hour": (30 / _YEAR + 0.0025) / 100,
        },
    ),
    "reserved-3y": (
        "DynamoDB 3-year reserved capacity: $180 + $0.0081/h per 100 WCU, "
        "$36 + $0.0016/h per 100 RCU, upfront spread over 26,280 h",
        {
            "dynamodb_wcu_hour": (180 / (3 * _YEAR) + 0.0081) / 100,
            "dynamodb_rcu_hour": (36 / (3 * _YEAR) + 0.0016) / 100,
        },
    ),
    "classic": (
        "the classic back-of-the-envelope line, back-solved: $162.50/h for 1M WCU + 1M RCU "
        "is $0.00008125 per unit-hour for both; no AWS price schedule we found gives it "
        "(list prices give $780/h)",
        {"dynamodb_wcu_hour": 0.00008125, "dynamodb_rcu_hour": 0.00008125},
    ),
}
"""Named AWS price sets for `--prices`: the assumption each makes, and the prices it changes."""


def price_assumption(name: str | None) -> str:
    """The assumption a named AWS price set makes, or which file replaced the list prices."""
    if name is None:
        return AWS_PRICE_SETS["list"][0]
    if name in AWS_PRICE_SETS:
        return AWS_PRICE_SETS[name][0]
    return f"list prices with those of {name} replacing them"


def load_prices(kind: type[P], path: str | Path | None) -> P:
    """Default `kind` prices, changed by a named set (AWS) or the keys of a JSON file."""
    prices = kind()
    if path is None:
        return prices
    if kind is AwsPrices and str(path) in AWS_PRICE_SETS:
        return replace(prices, **AWS_PRICE_SETS[str(path)][1])
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        names = ", ".join(AWS_PRICE_SETS) if kind is AwsPrices else "none"
        raise ConfigurationError(
            f"cannot read prices file {path} (named sets: {names}): {type(exc).__name__}"
        ) from None
    if not isinstance(given, dict):
        raise ConfigurationError(f"prices file {path} is not a JSON object")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigurationError(f"prices file {path}: unknown price {unknown[0]!r}")
    return replace(prices, **{k: float(v) for k, v in given.items()})


def dynamodb_line(
    prices: AwsPrices, *, writes_per_second: float = 1e6, reads_per_second: float = 1e6
) -> tuple[float, str]:
    """The back-of-the-envelope DynamoDB line: provisioned WCU + RCU, dollars per hour."""
    dollars = writes_per_second * prices.dynamodb_wcu_hour + (
        reads_per_second * prices.dynamodb_rcu_hour
    )
    text = (
        f"{writes_per_second:,.0f} WCU x ${_price(prices.dynamodb_wcu_hour)} + "
        f"{reads_per_second:,.0f} RCU x ${_price(prices.dynamodb_rcu_hour)} = "
        f"${dollars:,.2f} per hour at provisioned prices for {writes_per_second:,.0f} writes "
        f"and {reads_per_second:,.0f} reads per second"
    )
    return dollars, text


def _price(value: float) -> str:
    return f"{value:.10f}".rstrip("0").rstrip(".")


def _check_load(events_per_second: float, record_bytes: int, batch_size: int) -> None:
    if events_per_second <= 0:
        raise ConfigurationError("--events-per-second must be positive")
    if record_bytes <= 0:
        raise ConfigurationError("--record-bytes must be positive")
    if batch_size <= 0:
        raise ConfigurationError("--batch-size must be positive")


def plan_aws(
    design: str,
    *,
    events_per_second: float,
    record_bytes: int,
    figures: dict[str, Figures],
    prices: AwsPrices | None = None,
    batch_size: int = 100,
    memory_mb: int = 1024,
    work_ms: float = 0.0,
    request_ms: float = 5.0,
    capacity: str = "provisioned",
    lake_puts_per_batch: float = 0.0,
) -> Plan:
    """Kinesis -> Lambda -> DynamoDB (and optionally an S3 lake) for one design."""
    _check_load(events_per_second, record_bytes, batch_size)
    if design not in AWS_DESIGNS:
        raise ConfigurationError(f"unknown design {design!r}: one of {', '.join(AWS_DESIGNS)}")
    if capacity not in ("provisioned", "on-demand"):
        raise ConfigurationError(f"unknown capacity {capacity!r}: provisioned or on-demand")
    if design not in figures:
        raise ConfigurationError(f"the figures file has no figures for {design!r}")
    price = prices or AwsPrices()
    each = figures[design]
    eps = events_per_second
    plan = Plan(design)

    by_bytes = math.ceil(eps * record_bytes / (1024 * KIB))
    shards = max(by_bytes, math.ceil(eps / 1000))
    put_units = eps * math.ceil(record_bytes / (25 * KIB)) * HOUR
    plan.lines.append(
        Line(
            "Kinesis shards",
            shards,
            "shards",
            shards * price.kinesis_shard_hour + put_units / 1e6 * price.kinesis_put_million_units,
            f"max(ceil({eps:g} x {record_bytes} B / 1 MiB/s), ceil({eps:g} / 1,000 rec/s)) "
            f"shards x ${price.kinesis_shard_hour}/h + 25 KB PUT units",
        )
    )

    invocations = eps / batch_size
    seconds = batch_size * (each.runner_us / 1e6 + work_ms / 1e3) + (
        batch_size * each.requests * request_ms / 1e3
    )
    gb_seconds = invocations * seconds * memory_mb / 1024 * HOUR
    concurrency = math.ceil(invocations * seconds)
    plan.lines.append(
        Line(
            "Lambda compute",
            gb_seconds,
            "GB-s/h",
            gb_seconds * price.lambda_gb_second
            + invocations * HOUR / 1e6 * price.lambda_million_requests,
            f"{invocations:,.0f} invocations/s x {seconds * 1000:.1f} ms x {memory_mb} MB "
            f"(runner {each.runner_us:g} us + work {work_ms:g} ms per event, "
            f"{each.requests:g} requests/event x {request_ms:g} ms); concurrency {concurrency:,}",
        )
    )

    size_units = math.ceil(record_bytes / KIB)
    # Units were measured with items under 1 KB: each record-sized item an event writes costs
    # `size_units` instead of 1; markers and watermarks stay small.
    writes = eps * (each.write_units + each.items_written * (size_units - 1))
    reads = eps * each.read_units * math.ceil(record_bytes / (4 * KIB))
    if capacity == "provisioned":
        ddb = writes * price.dynamodb_wcu_hour + reads * price.dynamodb_rcu_hour
        unit_basis = f"WCU x ${price.dynamodb_wcu_hour}/h + RCU x ${price.dynamodb_rcu_hour}/h"
    else:
        ddb = (
            writes * HOUR / 1e6 * price.dynamodb_million_write_units
            + reads * HOUR / 1e6 * price.dynamodb_million_read_units
        )
        unit_basis = "on-demand write and read request units"
    plan.lines.append(
        Line(
            "DynamoDB",
            writes,
            "WCU",
            ddb,
            f"{each.write_units:g} write units and {each.read_units:g} read units per event "
            f"({writes:,.0f} WCU, {reads:,.0f} RCU); {unit_basis}",
        )
    )
    if lake_puts_per_batch:
        puts = invocations * lake_puts_per_batch * HOUR
        plan.lines.append(
            Line(
                "S3 requests",
                puts,
                "PUT/h",
                puts / 1000 * price.s3_thousand_puts,
                f"{lake_puts_per_batch:g} PUTs per batch x {invocations:,.0f} batches/s",
            )
        )
    return plan


def plan_azure(
    design: str,
    *,
    events_per_second: float,
    record_bytes: int,
    figures: dict[str, Figures],
    prices: AzurePrices | None = None,
    batch_size: int = 100,
    memory_mb: int = 1536,
    work_ms: float = 0.0,
    request_ms: float = 5.0,
) -> Plan:
    """Event Hubs -> Functions -> Table or Cosmos state for one design."""
    _check_load(events_per_second, record_bytes, batch_size)
    if design not in AZURE_DESIGNS:
        raise ConfigurationError(f"unknown design {design!r}: one of {', '.join(AZURE_DESIGNS)}")
    key = f"azure-{design}"
    if key not in figures:
        raise ConfigurationError(f"the figures file has no figures for {key!r}")
    price = prices or AzurePrices()
    each = figures[key]
    eps = events_per_second
    plan = Plan(design)
    units = max(math.ceil(eps * record_bytes / (1024 * KIB)), math.ceil(eps / 1000))
    plan.lines.append(
        Line(
            "Event Hubs",
            units,
            "TU",
            units * price.eventhub_tu_hour + eps * HOUR / 1e6 * price.eventhub_million_events,
            f"max(ceil({eps:g} x {record_bytes} B / 1 MiB/s), ceil({eps:g} / 1,000 ev/s)) "
            f"throughput units x ${price.eventhub_tu_hour}/h + ingress events"
            + (
                f"; {units:,} TUs is over the Standard tier's {EVENTHUB_STANDARD_TUS} per "
                "namespace: spread over namespaces, or price Premium/Dedicated"
                if units > EVENTHUB_STANDARD_TUS
                else ""
            ),
        )
    )
    invocations = eps / batch_size
    seconds = batch_size * (each.runner_us / 1e6 + work_ms / 1e3 + each.requests * request_ms / 1e3)
    gb_seconds = invocations * seconds * memory_mb / 1024 * HOUR
    plan.lines.append(
        Line(
            "Functions compute",
            gb_seconds,
            "GB-s/h",
            gb_seconds * price.functions_gb_second
            + invocations * HOUR / 1e6 * price.functions_million_executions,
            f"{invocations:,.0f} executions/s x {seconds * 1000:.1f} ms x {memory_mb} MB",
        )
    )
    if design == "cosmos":
        # Request units per second: writes cost ~5 RU per KB, point reads 1 RU.
        rus = eps * (each.write_units * 5 * math.ceil(record_bytes / KIB) + each.read_units)
        plan.lines.append(
            Line(
                "Cosmos DB",
                rus,
                "RU/s",
                rus / 100 * price.cosmos_hundred_rus_hour,
                f"{each.write_units:g} writes x 5 RU/KB + {each.read_units:g} reads x 1 RU "
                f"per event, provisioned RU/s x ${price.cosmos_hundred_rus_hour}/100/h",
            )
        )
    else:
        transactions = eps * each.requests * HOUR
        plan.lines.append(
            Line(
                "Table storage",
                transactions,
                "transactions/h",
                transactions / 1e4 * price.table_ten_thousand_transactions,
                f"{each.requests:g} transactions per event (an entity batch is one)",
            )
        )
    return plan


def plans_table(plans: list[Plan]) -> list[dict[str, Any]]:
    """Rows of component costs per design, for printing side by side."""
    components: list[str] = []
    for plan in plans:
        for line in plan.lines:
            if line.component not in components:
                components.append(line.component)
    rows = []
    for component in [*components, "total"]:
        row: dict[str, Any] = {"component": component}
        for plan in plans:
            if component == "total":
                row[plan.design] = plan.dollars_per_hour
            else:
                found = [line for line in plan.lines if line.component == component]
                row[plan.design] = found[0].dollars_per_hour if found else 0.0
        rows.append(row)
    return rows
